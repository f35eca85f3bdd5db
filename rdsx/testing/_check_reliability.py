"""Checks of RC reliability: completion only once the responder has it, RNR and retry
exhaustion, and the flush of every WR once a QP is in ERR."""

from __future__ import annotations

import random

import trio

from ..verbs import AsyncEventType, Opcode, QpAttr, QpState, RecvWR, SendWR, WcOpcode, WcStatus
from ._fixture import (
    QUIET,
    End,
    Node,
    expect_state,
    expect_wc,
    link,
    open_nodes,
    quiet,
    take,
    take_one,
    wait_event,
)
from ._harness import Harness
from ._registry import check


async def _expect_flushing(end: End, node: Node, rule: str) -> None:
    """``end`` is in ERR and every later post completes with WR_FLUSH_ERR."""
    expect_state(end.qp, QpState.ERR, rule)
    off = node.alloc(16)
    end.qp.post_send([SendWR(900 + i, Opcode.SEND, (node.sge(off, 16),)) for i in range(2)])
    end.qp.post_recv([RecvWR(910 + i, (node.sge(off, 16),)) for i in range(2)])
    for cq, base in ((end.scq, 900), (end.rcq, 910)):
        wcs = await take(cq, 2, f"{rule}: WRs posted in ERR")
        for i, wc in enumerate(wcs):
            expect_wc(
                wc,
                f"{rule}: a WR posted in ERR flushes",
                wr_id=base + i,
                status=WcStatus.WR_FLUSH_ERR,
            )
    await quiet([end.scq, end.rcq], f"{rule}: each flushed WR completes once")


@check("rc-send-completes-at-responder")
async def check_responder_first(harness: Harness, rng: random.Random) -> None:
    """No receive posted: the send does not complete. Once posted (rnr_retry=7) it succeeds,
    and by then the responder already holds its receive completion."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b, rnr_retry=7)
        off, roff = a.alloc(64), b.alloc(64)
        data = rng.randbytes(64)
        a.put(off, data)
        ea.qp.post_send(SendWR(1, Opcode.SEND, (a.sge(off, 64),)))
        await quiet([ea.scq], "RC: a send must not complete while the responder has no receive")
        eb.qp.post_recv(RecvWR(2, (b.sge(roff, 64),)))
        expect_wc(
            await take_one(ea.scq, "the send after a late receive (rnr_retry=7)"),
            "rnr_retry=7 retries until a receive is posted",
            wr_id=1,
            opcode=WcOpcode.SEND,
        )
        at_responder = eb.rcq.poll()
        if len(at_responder) != 1:
            raise AssertionError(
                "RC: when the requester sees SUCCESS the responder must already have the message "
                f"(its receive completion), found {at_responder}"
            )
        expect_wc(at_responder[0], "late receive", wr_id=2, opcode=WcOpcode.RECV, byte_len=64)
        if b.get(roff, 64) != data:
            raise AssertionError("the late-received message is corrupt")


@check("rnr-retry-exhausted")
async def check_rnr_exhausted(harness: Harness, rng: random.Random) -> None:
    """No receive and a finite rnr_retry: RNR_RETRY_EXC_ERR after rnr_retry waits of the
    responder's min_rnr_timer, the QP is in ERR, later posts flush."""
    async with open_nodes(harness) as (a, b):
        rnr_retry, min_rnr_timer = rng.randrange(1, 4), 0.02
        ea, eb = link(a, b, rnr_retry=rnr_retry, min_rnr_timer=min_rnr_timer)
        off = a.alloc(16)
        start = trio.current_time()
        ea.qp.post_send(SendWR(1, Opcode.SEND, (a.sge(off, 16),)))
        rule = f"no receive posted, rnr_retry={rnr_retry}"
        expect_wc(await take_one(ea.scq, rule), rule, wr_id=1, status=WcStatus.RNR_RETRY_EXC_ERR)
        waited = trio.current_time() - start
        if waited < rnr_retry * min_rnr_timer:
            raise AssertionError(
                f"{rule}, min_rnr_timer={min_rnr_timer}: gave up after {waited:.3f}s, before "
                f"{rnr_retry} retries spaced by min_rnr_timer"
            )
        await _expect_flushing(ea, a, "after RNR_RETRY_EXC_ERR")
        eb.qp.post_recv(RecvWR(3, (b.sge(b.alloc(16), 16),)))
        await quiet([eb.rcq], "a send that failed with RNR_RETRY_EXC_ERR must never arrive")


@check("retry-exhausted-partition")
async def check_retry_exhausted(harness: Harness, rng: random.Random) -> None:
    """Every packet lost: RETRY_EXC_ERR after retry_cnt retries of timeout each, then ERR
    and flushes."""
    async with open_nodes(harness) as (a, b):
        retry_cnt, timeout = rng.randrange(1, 4), 0.05
        ea, eb = link(a, b, retry_cnt=retry_cnt, timeout=timeout)
        off = a.alloc(16)
        eb.qp.post_recv(RecvWR(3, (b.sge(b.alloc(16), 16),)))
        rule = f"all packets lost (harness.partition), retry_cnt={retry_cnt}"
        with harness.partition(a.device, b.device):
            start = trio.current_time()
            ea.qp.post_send(SendWR(1, Opcode.SEND, (a.sge(off, 16),)))
            expect_wc(await take_one(ea.scq, rule), rule, wr_id=1, status=WcStatus.RETRY_EXC_ERR)
            waited = trio.current_time() - start
        if waited < retry_cnt * timeout:
            raise AssertionError(
                f"{rule}, timeout={timeout}: gave up after {waited:.3f}s, before "
                f"{retry_cnt} retries of {timeout}s each"
            )
        await _expect_flushing(ea, a, "after RETRY_EXC_ERR")
        await quiet([eb.rcq], f"{rule}: nothing may arrive")


@check("flush-on-err")
async def check_flush(harness: Harness, rng: random.Random) -> None:
    """Moving to ERR flushes every outstanding send and receive, in order, exactly once."""
    async with open_nodes(harness) as (a, b):
        ea, _eb = link(a, b, rnr_retry=7)
        off = a.alloc(64)
        recvs = [RecvWR(100 + i, (a.sge(off, 64),)) for i in range(rng.randrange(1, 5))]
        ea.qp.post_recv(recvs)
        # The first SEND waits for a receive that never comes (RNR, forever); RC completes
        # in order, so nothing behind it may complete either.
        opcodes = [Opcode.SEND, Opcode.RDMA_WRITE, Opcode.SEND, Opcode.RDMA_READ]
        sends = [
            SendWR(i, op, (a.sge(off, 8),), remote_addr=b.mr.addr, rkey=b.mr.rkey)
            for i, op in enumerate(opcodes)
        ]
        ea.qp.post_send(sends)
        await quiet([ea.scq, ea.rcq], "RC completes in order: nothing passes a stuck SEND")
        ea.qp.modify(QpAttr(state=QpState.ERR))
        queues = ((ea.scq, [wr.wr_id for wr in sends]), (ea.rcq, [wr.wr_id for wr in recvs]))
        for cq, wr_ids in queues:
            wcs = await take(cq, len(wr_ids), "flush of outstanding WRs")
            for wr_id, wc in zip(wr_ids, wcs, strict=True):
                expect_wc(
                    wc,
                    "moving to ERR flushes every outstanding WR in order",
                    wr_id=wr_id,
                    status=WcStatus.WR_FLUSH_ERR,
                )
        await _expect_flushing(ea, a, "after modify(ERR)")


@check("failed-completion-byte-len")
async def check_failed_byte_len(harness: Harness, rng: random.Random) -> None:
    """``byte_len`` means something only for a SUCCESS: a failed send (RNR exhaustion),
    the WRs flushed behind it or by a move to ERR, and WRs posted in ERR all report 0,
    whatever their length (ibverbs leaves it undefined; the contract pins it)."""
    async with open_nodes(harness) as (a, b):
        size = rng.randrange(1, 256)
        off = a.alloc(size)
        opcodes = [Opcode.SEND, Opcode.RDMA_WRITE, Opcode.SEND, Opcode.RDMA_READ]

        def sends(base: int) -> list[SendWR]:
            return [
                SendWR(base + i, op, (a.sge(off, size),), remote_addr=b.mr.addr, rkey=b.mr.rkey)
                for i, op in enumerate(opcodes)
            ]

        # The peer never posts a receive: rnr_retry=0 fails the first SEND, the rest flush.
        failed, _ = link(a, b, rnr_retry=0)
        # Left outstanding until the move to ERR: the peer's first SEND waits forever (RNR).
        stuck, _ = link(a, b, rnr_retry=7)
        for end, base in ((failed, 10), (stuck, 20)):
            end.qp.post_recv([RecvWR(base + 100 + i, (a.sge(off, size),)) for i in range(2)])
            end.qp.post_send(sends(base))
        await quiet([stuck.scq, stuck.rcq], "RC completes in order: nothing passes a stuck SEND")
        stuck.qp.modify(QpAttr(state=QpState.ERR))
        for end, what in ((failed, "after RNR_RETRY_EXC_ERR"), (stuck, "after modify(ERR)")):
            expect_state(end.qp, QpState.ERR, what)
            end.qp.post_send(SendWR(90, Opcode.SEND, (a.sge(off, size),)))
            end.qp.post_recv(RecvWR(190, (a.sge(off, size),)))
            wcs = await take(end.scq, len(opcodes) + 1, f"{what}: every send completes")
            wcs += await take(end.rcq, 3, f"{what}: every receive completes")
            for wc in wcs:
                if wc.status is WcStatus.SUCCESS or wc.byte_len != 0:
                    raise AssertionError(
                        f"{what}: a failed or flushed WR of {size} bytes must complete with an "
                        f"error status and byte_len 0, got {wc}"
                    )


@check("partition-heals")
async def check_partition_heals(harness: Harness, rng: random.Random) -> None:
    """Loss shorter than the retry budget is repaired: every send completes, exactly once,
    in order."""
    count = rng.randrange(3, 9)
    async with open_nodes(harness) as (a, b):
        # Budget: timeout x (retry_cnt + 1) = 0.8 s; the partition lasts an eighth of it, so
        # a loaded real clock overshooting the sleep does not exhaust it.
        ea, eb = link(a, b, retry_cnt=7, timeout=0.1)
        off, roff = a.alloc(16 * count), b.alloc(16 * count)
        for i in range(count):
            a.put(off + 16 * i, rng.randbytes(16))
        eb.qp.post_recv([RecvWR(i, (b.sge(roff + 16 * i, 16),)) for i in range(count)])
        with harness.partition(a.device, b.device):
            ea.qp.post_send(
                [SendWR(i, Opcode.SEND, (a.sge(off + 16 * i, 16),)) for i in range(count)]
            )
            await trio.sleep(0.1)
        rule = "sends across a 0.1 s partition (retry_cnt=7, timeout=0.1)"
        for i, wc in enumerate(await take(ea.scq, count, rule)):
            expect_wc(wc, f"{rule} must all succeed, in order", wr_id=i)
        for i, wc in enumerate(await take(eb.rcq, count, rule)):
            expect_wc(wc, f"{rule} arrive in order", wr_id=i, byte_len=16)
        if b.get(roff, 16 * count) != a.get(off, 16 * count):
            raise AssertionError(f"{rule}: data corrupt after retransmission")
        await quiet([ea.scq, eb.rcq], f"{rule}: retransmission must not duplicate")


@check("qp-close-discards")
async def check_qp_close(harness: Harness, rng: random.Random) -> None:
    """Destroying a QP discards its outstanding WRs without completions; its peer's next
    send exhausts its retries."""
    async with open_nodes(harness) as (a, b):
        ea, _eb = link(a, b, rnr_retry=7)
        off = a.alloc(16)
        ea.qp.post_recv([RecvWR(i, (a.sge(off, 16),)) for i in range(3)])
        ea.qp.post_send([SendWR(10 + i, Opcode.SEND, (a.sge(off, 16),)) for i in range(3)])
        ea.qp.close()
        await quiet([ea.scq, ea.rcq], "qp.close discards outstanding WRs without completions")
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b, retry_cnt=2)
        eb.qp.close()
        ea.qp.post_send(SendWR(1, Opcode.SEND, (a.sge(a.alloc(8), 8),)))
        rule = "a send to a destroyed peer QP"
        expect_wc(await take_one(ea.scq, rule), rule, wr_id=1, status=WcStatus.RETRY_EXC_ERR)


@check("qp-fatal-event")
async def check_qp_fatal(harness: Harness, rng: random.Random) -> None:
    """A QP that goes to ERR on its own (RNR exhaustion, a remote access error) raises
    QP_FATAL for its qp_num; one the owner moves to ERR does not."""
    async with open_nodes(harness) as (a, b):
        off = a.alloc(16)
        rnr, _ = link(a, b, rnr_retry=0)
        rnr.qp.post_send(SendWR(1, Opcode.SEND, (a.sge(off, 16),)))
        await take(rnr.scq, 1, "RNR exhaustion")
        await wait_event(
            a.ctx, AsyncEventType.QP_FATAL, "a QP failed by RNR exhaustion", qp_num=rnr.qp.qp_num
        )
        bad, _ = link(a, b)
        wrong = b.mr.rkey ^ 0x00A5A5A5
        bad.qp.post_send(
            SendWR(2, Opcode.RDMA_WRITE, (a.sge(off, 16),), remote_addr=b.mr.addr, rkey=wrong)
        )
        await take(bad.scq, 1, "a remote access error")
        await wait_event(
            a.ctx, AsyncEventType.QP_FATAL, "a QP failed by REM_ACCESS_ERR", qp_num=bad.qp.qp_num
        )
        mine, _ = link(a, b)
        mine.qp.modify(QpAttr(state=QpState.ERR))
        with trio.move_on_after(QUIET):
            while True:
                event = await a.ctx.get_async_event()
                if event.type is AsyncEventType.QP_FATAL and event.qp_num == mine.qp.qp_num:
                    raise AssertionError(
                        "QP_FATAL is for a QP that went to ERR on its own, not by modify(ERR)"
                    )
