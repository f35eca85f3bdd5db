"""QPs the shim cannot resume: connected by hand (no CM) or to a peer without a shim.

The shim cannot tell such a peer where our new QP is, so when our device is replaced the
connection ends explicitly: the QP goes to ERR, what it held flushes, the context reports
QP_FATAL (and a CM id DISCONNECTED), and the QP can be reset and connected again through
the CM. Never a QP that claims RTS and stays silent (virtual time).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import trio
from shim_world import ACCESS, PORT, End, World, cm_link, migrate, ok, open_world, take

from rdsx.errors import VerbsError
from rdsx.shim.resources import VirtualMR
from rdsx.testing._fixture import init_attr, rts_attr
from rdsx.verbs import (
    QP,
    AsyncEvent,
    AsyncEventType,
    CmEventType,
    Context,
    Opcode,
    QpAttr,
    QpDest,
    QpState,
    RecvWR,
    SendWR,
    Sge,
    WcStatus,
)

#: Slots of the world's buffers this file uses (the world's own link uses 0..127).
RECV_SLOT = 100 * 64
SEND_SLOT = 110 * 64


def _recv_wr(end: End, wr_id: int) -> RecvWR:
    """A receive into ``end``'s slot of this file."""
    return RecvWR(wr_id, (Sge(end.mr.addr + RECV_SLOT, 64, end.mr.lkey),))


def _send_wr(end: End, wr_id: int) -> SendWR:
    """An 8-byte SEND from ``end``'s slot of this file."""
    return SendWR(wr_id, Opcode.SEND, (Sge(end.mr.addr + SEND_SLOT, 8, end.mr.lkey),))


def _by_hand(world: World) -> tuple[QP, QP]:
    """A second QP on each side, in the world's PDs and CQs, connected by hand (no CM)."""
    qps = []
    for end in (world.a, world.b):
        assert isinstance(end.mr, VirtualMR)
        qp = end.mr.pd.create_qp(end.scq, end.rcq)
        qp.modify(init_attr(ACCESS))
        qps.append(qp)
    for qp, ctx, peer in ((qps[0], world.b.ctx, qps[1]), (qps[1], world.a.ctx, qps[0])):
        port = ctx.query_port()
        qp.modify(
            QpAttr(
                state=QpState.RTR,
                dest=QpDest(port.address, peer.qp_num),
                path_mtu=port.active_mtu,
                rq_psn=0,
                max_dest_rd_atomic=16,
                min_rnr_timer=0.001,
            )
        )
    for qp in qps:
        qp.modify(rts_attr(timeout=0.05))
    return qps[0], qps[1]


async def _next_event(ctx: Context) -> AsyncEvent:
    with trio.fail_after(1.0):
        return await ctx.get_async_event()


@contextlib.asynccontextmanager
async def _hand_link(seed: int) -> AsyncIterator[tuple[World, QP, QP]]:
    """The world plus a hand-made link that has carried one message A -> B."""
    async with open_world(seed=seed) as world:
        a, b = world.a, world.b
        qa, qb = _by_hand(world)
        qb.post_recv(_recv_wr(b, 500))
        qa.post_send(_send_wr(a, 700))
        assert ok(await take(a.scq, 1)) and ok(await take(b.rcq, 1))
        yield world, qa, qb


async def test_a_hand_connected_qp_ends_explicitly_when_its_device_is_replaced(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A only waits to receive on its hand-made QP when it migrates: instead of waiting
    forever, its receives flush, the QP is in ERR and the context says QP_FATAL."""
    with trio.fail_after(60):
        async with _hand_link(seed=51) as (world, qa, _qb):
            a = world.a
            qa.post_recv([_recv_wr(a, 600 + i) for i in range(2)])
            await migrate(world, a.vm, "C")
            flushed = await take(a.rcq, 2)
            assert [(wc.wr_id, wc.status, wc.byte_len) for wc in flushed] == [
                (600, WcStatus.WR_FLUSH_ERR, 0),
                (601, WcStatus.WR_FLUSH_ERR, 0),
            ]
            assert qa.state is QpState.ERR
            event = await _next_event(a.ctx)
            assert event.type is AsyncEventType.QP_FATAL and event.qp_num == qa.qp_num
            assert "CM" in event.info
            qa.post_send(_send_wr(a, 701))
            (wc,) = await take(a.scq, 1)
            assert (wc.wr_id, wc.status) == (701, WcStatus.WR_FLUSH_ERR)
            # The CM-connected link of the world was resumed meanwhile, untouched.
            a.send(b"cm-link-still-fine")
            (got,) = await take(world.b.rcq, 1)
            assert world.b.received(got) == b"cm-link-still-fine"


async def test_sends_drain_before_the_end_and_the_qp_reconnects_through_the_cm(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A graceful removal still drains the hand-made QP's sends (they reach B); after the
    QP_FATAL, A resets that QP and connects it through the CM, which the shim resumes."""
    with trio.fail_after(60):
        async with _hand_link(seed=52) as (world, qa, qb):
            a, b = world.a, world.b
            qb.post_recv([_recv_wr(b, 510 + i) for i in range(3)])
            qa.post_send([_send_wr(a, 710 + i) for i in range(3)])
            await migrate(world, a.vm, "C")
            sent = await take(a.scq, 3)
            assert [(wc.wr_id, wc.status) for wc in sent] == [
                (710 + i, WcStatus.SUCCESS) for i in range(3)
            ]
            assert [wc.wr_id for wc in await take(b.rcq, 3)] == [510, 511, 512]
            assert (await _next_event(a.ctx)).type is AsyncEventType.QP_FATAL
            assert qa.state is QpState.ERR
            qa.modify(QpAttr(state=QpState.RESET))
            qb.modify(QpAttr(state=QpState.ERR))  # B's end is just as stale: B drops it too
            qb.modify(QpAttr(state=QpState.RESET))
            await cm_link(a, qa, b, qb, PORT + 1)
            qb.post_recv(_recv_wr(b, 520))
            qa.post_send(_send_wr(a, 720))
            assert ok(await take(a.scq, 1)) and ok(await take(b.rcq, 1))
            await migrate(world, a.vm, "A")  # now resumable: nothing to report
            qb.post_recv(_recv_wr(b, 521))
            qa.post_send(_send_wr(a, 721))
            assert ok(await take(a.scq, 1)) and ok(await take(b.rcq, 1))
            assert qa.state is QpState.RTS
            assert a.shim.statistics().unresumable == 1


async def test_a_cm_connection_to_a_peer_without_a_shim_ends_with_disconnected(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The peer accepted without a shim header: A's CM id sees DISCONNECTED when A's
    device is replaced, its QP is in ERR and the context says QP_FATAL."""
    with trio.fail_after(60):
        async with open_world(seed=53) as world:
            a = world.a
            plain = world.fabric.create_vm("vmX", address="127.0.0.9")
            device = await world.fabric.attach(plain, world.hosts["C"])
            ctx = await device.open()
            pd = ctx.alloc_pd()
            cq = ctx.create_cq()
            listener = await ctx.cm_listen(PORT + 1)
            assert isinstance(a.mr, VirtualMR)
            qa = a.mr.pd.create_qp(a.scq, a.rcq)
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    await (await listener.get_request()).accept(pd.create_qp(cq, cq), b"plain")

                nursery.start_soon(serve)
                cm = await a.ctx.cm_connect(qa, plain.address, PORT + 1)
            assert cm.private_data == b"plain"
            qa.post_recv(_recv_wr(a, 800))
            await migrate(world, a.vm, "B")
            (wc,) = await take(a.rcq, 1)
            assert (wc.wr_id, wc.status) == (800, WcStatus.WR_FLUSH_ERR)
            assert qa.state is QpState.ERR
            with trio.fail_after(1.0):
                event = await cm.next_event()
            assert event.type is CmEventType.DISCONNECTED
            fatal = await _next_event(a.ctx)
            assert fatal.type is AsyncEventType.QP_FATAL and fatal.qp_num == qa.qp_num
            ctx.close()


async def test_a_connect_in_flight_when_the_device_goes_is_not_ended(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A QP handed to cm_connect in INIT is mid-connect when A's device goes: not a
    connected QP yet, so it is not ended but connects on the next device."""
    with trio.fail_after(60):
        async with open_world(seed=54) as world:
            a, b = world.a, world.b
            assert isinstance(a.mr, VirtualMR) and isinstance(b.mr, VirtualMR)
            qa = a.mr.pd.create_qp(a.scq, a.rcq)
            qa.modify(init_attr(ACCESS))
            listener = await b.ctx.cm_listen(PORT + 1)
            moved = trio.Event()
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    first = await listener.get_request()
                    await moved.wait()  # answered only once A's device is gone
                    with contextlib.suppress(VerbsError):
                        await first.accept(b.mr.pd.create_qp(b.scq, b.rcq))
                    again = await listener.get_request()
                    await again.accept(b.mr.pd.create_qp(b.scq, b.rcq))

                async def move() -> None:
                    await world.fabric.detach(a.vm, 1.0)
                    moved.set()
                    await world.fabric.attach(a.vm, world.hosts["C"])

                nursery.start_soon(serve)
                nursery.start_soon(move)
                await a.ctx.cm_connect(qa, b.vm.address, PORT + 1, timeout=20.0)
            listener.close()
            assert qa.state is QpState.RTS
            assert a.shim.statistics().unresumable == 0
