"""Checks of the send-queue drain (SQD): drain then ``SQ_DRAINED``, nothing new starts,
no RTS while draining, and a path change to a new peer QP while quiesced."""

from __future__ import annotations

import random

from ..errors import InvalidArgument, InvalidState
from ..verbs import AsyncEventType, Opcode, QpAttr, QpState, RecvWR, SendWR, WcOpcode, WcStatus
from ._fixture import (
    End,
    Node,
    expect_raises,
    expect_state,
    expect_wc,
    init_attr,
    link,
    open_nodes,
    quiet,
    rtr_attr,
    rts_attr,
    take,
    wait_event,
)
from ._harness import Harness
from ._registry import check

S = QpState


def _sends(node: Node, off: int, first: int, count: int) -> list[SendWR]:
    return [
        SendWR(i, Opcode.SEND, (node.sge(off + 8 * i, 8),)) for i in range(first, first + count)
    ]


def _numbered(a: Node, b: Node, count: int) -> tuple[int, int]:
    """Slots at ``a`` holding the numbers ``0..count-1`` (8 bytes each, big-endian) and as
    many receive slots at ``b``; returns both offsets."""
    off, roff = a.alloc(8 * count), b.alloc(8 * count)
    for i in range(count):
        a.put(off + 8 * i, i.to_bytes(8, "big"))
    return off, roff


def _expect_numbered(b: Node, roff: int, numbers: range, what: str) -> None:
    for i in numbers:
        if b.get(roff + 8 * i, 8) != i.to_bytes(8, "big"):
            raise AssertionError(f"message {i} {what} is corrupt")


async def _drained(end: End, rule: str) -> None:
    await wait_event(end.node.ctx, AsyncEventType.SQ_DRAINED, rule, qp_num=end.qp.qp_num)
    if end.qp.sq_draining:
        raise AssertionError(f"{rule}: sq_draining must be False once SQ_DRAINED was raised")


@check("sqd-drain")
async def check_sqd_drain(harness: Harness, rng: random.Random) -> None:
    """Sends in flight complete, then SQ_DRAINED; posts in SQD wait for RTS."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        k, m = rng.randrange(3, 9), rng.randrange(1, 4)
        off, roff = _numbered(a, b, k + m)
        eb.qp.post_recv([RecvWR(i, (b.sge(roff + 8 * i, 8),)) for i in range(k + m)])
        ea.qp.post_send(_sends(a, off, 0, k))
        ea.qp.modify(QpAttr(state=S.SQD, en_sqd_async_notify=True))
        expect_state(ea.qp, S.SQD, "RTS -> SQD")
        if not ea.qp.sq_draining:
            raise AssertionError(f"sq_draining must be True in SQD while {k} sends are in flight")
        with expect_raises((InvalidState, InvalidArgument), "SQD -> RTS while still draining"):
            ea.qp.modify(QpAttr(state=S.RTS))
        expect_state(ea.qp, S.SQD, "a refused SQD -> RTS")
        ea.qp.post_send(_sends(a, off, k, m))  # accepted, queued until RTS
        await _drained(ea, "SQD with sends in flight")
        done = ea.scq.poll()
        if [wc.wr_id for wc in done] != list(range(k)):
            raise AssertionError(
                f"SQ_DRAINED must follow the completions of the {k} sends in flight, CQ had {done}"
            )
        for wc in done:
            expect_wc(wc, "a send in flight when entering SQD", opcode=WcOpcode.SEND)
        await quiet([ea.scq], "no new send starts while in SQD")
        arrived = eb.rcq.poll()
        if len(arrived) != k:
            raise AssertionError(
                f"while in SQD only the {k} sends in flight may arrive, {len(arrived)} did"
            )
        ea.qp.modify(QpAttr(state=S.RTS))
        for i, wc in enumerate(await take(ea.scq, m, "sends queued in SQD, after RTS"), k):
            expect_wc(wc, "sends queued in SQD run after SQD -> RTS", wr_id=i)
        for i, wc in enumerate(await take(eb.rcq, m, "their receives"), k):
            expect_wc(wc, "queued sends arrive in order", wr_id=i, byte_len=8)
        _expect_numbered(b, roff, range(k + m), "across SQD")


@check("sqd-path-change")
async def check_sqd_path_change(harness: Harness, rng: random.Random) -> None:
    """While drained, SQD -> SQD retargets the QP to a new peer QP; RTS then talks to it."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        m, j = rng.randrange(1, 4), rng.randrange(1, 4)
        off, roff = _numbered(a, b, 1 + m + j)
        eb.qp.post_recv(RecvWR(0, (b.sge(roff, 8),)))
        ea.qp.post_send(_sends(a, off, 0, 1))
        await take(ea.scq, 1, "a send before the path change")
        await take(eb.rcq, 1, "its receive at the old peer")
        ea.qp.modify(QpAttr(state=S.SQD, en_sqd_async_notify=True))
        await _drained(ea, "SQD before the path change")
        ea.qp.post_send(_sends(a, off, 1, m))  # queued in SQD, must go to the new peer

        nb = b.end()
        nb.qp.modify(init_attr())
        nb.qp.modify(rtr_attr(b, ea.dest()))
        nb.qp.modify(rts_attr())
        nb.qp.post_recv([RecvWR(i, (b.sge(roff + 8 * i, 8),)) for i in range(1, 1 + m + j)])
        try:
            ea.qp.modify(QpAttr(state=S.SQD, dest=nb.dest(), sq_psn=0))
        except (InvalidState, InvalidArgument) as exc:
            raise AssertionError(f"SQD -> SQD with a new dest must be accepted: {exc}") from exc
        expect_state(ea.qp, S.SQD, "SQD -> SQD path change")
        ea.qp.modify(QpAttr(state=S.RTS))
        ea.qp.post_send(_sends(a, off, 1 + m, j))
        for i, wc in enumerate(await take(ea.scq, m + j, "sends after the path change"), 1):
            expect_wc(wc, "sends after SQD -> SQD -> RTS succeed", wr_id=i)
        for i, wc in enumerate(await take(nb.rcq, m + j, "receives at the new peer"), 1):
            expect_wc(wc, "after a path change the new peer QP gets the sends", wr_id=i)
        _expect_numbered(b, roff, range(1, 1 + m + j), "after the path change")
        await quiet([eb.rcq], "after a path change the old peer QP gets nothing")
        # And the new peer reaches the retargeted QP.
        back = a.alloc(8)
        ea.qp.post_recv(RecvWR(77, (a.sge(back, 8),)))
        nb.qp.post_send(SendWR(78, Opcode.SEND, (b.sge(roff, 8),)))
        await take(nb.scq, 1, "new peer -> retargeted QP")
        expect_wc((await take(ea.rcq, 1, "receive from the new peer"))[0], "reverse path", wr_id=77)


@check("sqd-then-err")
async def check_sqd_then_err(harness: Harness, rng: random.Random) -> None:
    """Sends queued while in SQD are outstanding: moving to ERR flushes them, in order."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        m = rng.randrange(1, 5)
        off = a.alloc(8 * m)
        eb.qp.post_recv([RecvWR(i, (b.sge(b.alloc(8), 8),)) for i in range(m)])
        ea.qp.modify(QpAttr(state=S.SQD, en_sqd_async_notify=True))
        await _drained(ea, "SQD with nothing in flight")
        ea.qp.post_send(_sends(a, off, 0, m))
        ea.qp.modify(QpAttr(state=S.ERR))
        for i, wc in enumerate(await take(ea.scq, m, "sends queued in SQD, then ERR")):
            expect_wc(wc, "ERR flushes sends queued in SQD", wr_id=i, status=WcStatus.WR_FLUSH_ERR)
        await quiet([eb.rcq], "sends queued in SQD and flushed never arrive")


@check("sqd-drain-rdma")
async def check_sqd_drain_rdma(harness: Harness, rng: random.Random) -> None:
    """RDMA WRITEs and READs in flight (several MTUs each) complete before SQ_DRAINED."""
    async with open_nodes(harness) as (a, b):
        ea, _eb = link(a, b)
        mtu = a.port.active_mtu
        n = rng.randrange(mtu + 1, 3 * mtu)
        src, back = a.alloc(n), a.alloc(n)
        wtarget, rsource = b.alloc(n), b.alloc(n)
        written, remote = rng.randbytes(n), rng.randbytes(n)
        a.put(src, written)
        b.put(rsource, remote)
        ea.qp.post_send(
            [
                SendWR(
                    1,
                    Opcode.RDMA_WRITE,
                    (a.sge(src, n),),
                    remote_addr=b.mr.addr + wtarget,
                    rkey=b.mr.rkey,
                ),
                SendWR(
                    2,
                    Opcode.RDMA_READ,
                    (a.sge(back, n),),
                    remote_addr=b.mr.addr + rsource,
                    rkey=b.mr.rkey,
                ),
            ]
        )
        ea.qp.modify(QpAttr(state=S.SQD, en_sqd_async_notify=True))
        await _drained(ea, "SQD with an RDMA WRITE and READ in flight")
        done = ea.scq.poll()
        if [(wc.wr_id, wc.status) for wc in done] != [(1, WcStatus.SUCCESS), (2, WcStatus.SUCCESS)]:
            raise AssertionError(f"SQ_DRAINED before the RDMA in flight completed: CQ had {done}")
        if a.get(back, n) != remote or b.get(wtarget, n) != written:
            raise AssertionError("RDMA data in flight across SQD is corrupt")
