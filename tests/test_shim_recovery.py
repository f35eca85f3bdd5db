"""Surprise removal (resequencing), peers that never come back, removals during recovery."""

from __future__ import annotations

import contextlib
import random

import pytest
import trio
from shim_world import ACCESS, PORT, End, World, cm_link, migrate, ok, open_world, take

from rdsx.errors import ConnectionRejected, PeerResumeTimeout, VerbsError
from rdsx.shim import ShimConfig
from rdsx.shim.protocol import MAGIC, Reconnect, encode
from rdsx.shim.qp import VirtualQP
from rdsx.shim.resources import VirtualMR
from rdsx.verbs import AsyncEventType, QpAttr, QpState, WcStatus
from transports.sim import Packet
from transports.sim.packet import Kind


def burst(end: End, count: int, tag: bytes) -> list[bytes]:
    """Post ``count`` sends; return their payloads in order."""
    payloads = [tag + b"-%03d" % i for i in range(count)]
    for payload in payloads:
        end.send(payload)
    return payloads


async def expect_exactly(receiver: End, sender: End, payloads: list[bytes]) -> None:
    """``receiver`` gets exactly ``payloads`` in order; ``sender`` sees each send complete once."""
    first = sender.sent - len(payloads)
    recvs = await take(receiver.rcq, len(payloads))
    assert ok(recvs)
    assert [receiver.received(wc) for wc in recvs] == payloads
    sends = await take(sender.scq, len(payloads))
    assert ok(sends)
    assert sorted(wc.wr_id for wc in sends) == list(range(first, sender.sent))
    with trio.move_on_after(1.0):
        extra = await receiver.rcq.wait()
        raise AssertionError(f"duplicate or stray receive: {extra}")
    assert sender.scq.poll() == []


@pytest.mark.parametrize("seed", [0, 1, 2])
async def test_surprise_removal_resends_the_gap_exactly_once(
    autojump_clock: trio.abc.Clock, seed: int
) -> None:
    with trio.fail_after(120):
        async with open_world(seed=seed, recvs=64) as world:
            a, b = world.a, world.b
            to_b = burst(a, 40, b"a")
            to_a = burst(b, 40, b"b")
            await trio.sleep(seed * 0.5e-6)  # the removal lands at a different point per seed
            await migrate(world, a.vm, "C", grace=None)
            await expect_exactly(b, a, to_b)
            await expect_exactly(a, b, to_a)
            record = a.shim.statistics().migrations[0]
            assert not record.graceful
            # A's in-flight sends reached B (completed without resending); B's
            # sends towards A died with A's device and were resent.
            assert record.duplicates_dropped + record.resent > 0
            assert b.shim.statistics().resent > 0
            assert a.qp.state is QpState.RTS and b.qp.state is QpState.RTS


async def test_surprise_removal_drops_what_the_peer_already_has(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The peer got every message but no ACK came back: nothing is sent twice."""
    with trio.fail_after(120):
        async with open_world(seed=7, recvs=64) as world:
            a, b = world.a, world.b
            fabric = world.fabric
            deliver = fabric.route_packet
            lid_b = b.vm.device.lid if b.vm.device is not None else -1

            def lose_acks_from_b(packet: Packet) -> None:
                if packet.kind == Kind.ACK and packet.src_lid == lid_b:
                    fabric.drop_packet(packet, "test: ack lost")
                    return
                deliver(packet)

            fabric.route_packet = lose_acks_from_b
            to_b = burst(a, 20, b"a")
            recvs = await take(b.rcq, 20)
            assert a.scq.poll() == []  # B has them all, A saw no completion
            await world.fabric.detach(a.vm, None)
            fabric.route_packet = deliver
            await world.fabric.attach(a.vm, world.hosts["C"])
            sends = await take(a.scq, 20)
            assert ok(sends) and [wc.wr_id for wc in sends] == list(range(20))
            assert [b.received(wc) for wc in recvs] == to_b
            with trio.move_on_after(1.0):
                extra = await b.rcq.wait()
                raise AssertionError(f"duplicate delivered: {extra}")
            stats = a.shim.statistics()
            assert stats.duplicates_dropped == 20 and stats.resent == 0


async def test_a_peer_that_never_comes_back_times_out(autojump_clock: trio.abc.Clock) -> None:
    config = ShimConfig(resume_timeout=2.0)
    with trio.fail_after(60):
        async with open_world(seed=8, config=config) as world:
            a, b = world.a, world.b
            await world.fabric.detach(a.vm, grace=1.0)
            burst(b, 3, b"b")  # held while suspended
            start = trio.current_time()
            assert b.cm is not None
            with pytest.raises(PeerResumeTimeout):
                await b.cm.next_event()
            assert trio.current_time() - start == pytest.approx(2.0, abs=0.1)
            assert b.qp.state is QpState.ERR
            flushed = await take(b.scq, 3)
            assert [wc.status for wc in flushed] == [WcStatus.WR_FLUSH_ERR] * 3
            recv_flush = b.rcq.poll(64)
            assert recv_flush and all(wc.status is WcStatus.WR_FLUSH_ERR for wc in recv_flush)
            event = await b.ctx.get_async_event()
            assert event.type is AsyncEventType.QP_FATAL and event.qp_num == b.qp.qp_num
            assert b.shim.statistics().resume_timeouts == 1


async def test_reconnecting_to_a_vanished_peer_times_out(autojump_clock: trio.abc.Clock) -> None:
    config = ShimConfig(resume_timeout=2.0)
    with trio.fail_after(60):
        async with open_world(seed=9, config=config) as world:
            a, b = world.a, world.b
            await world.fabric.detach(b.vm, grace=1.0)  # B leaves for good
            await world.fabric.detach(a.vm, grace=1.0)
            await world.fabric.attach(a.vm, world.hosts["C"])
            assert a.cm is not None
            with pytest.raises(PeerResumeTimeout):
                await a.cm.next_event()
            assert a.qp.state is QpState.ERR
            assert a.shim.statistics().migrations[0].peers_timed_out == 1


async def _second_removal(world: World, first_grace: float | None) -> None:
    a = world.a
    await world.fabric.detach(a.vm, first_grace)
    await world.fabric.attach(a.vm, world.hosts["C"])
    await trio.sleep(1e-6)  # the new device is being set up / reconnecting
    await world.fabric.detach(a.vm, None)
    await world.fabric.attach(a.vm, world.hosts["A"])


@pytest.mark.parametrize("first_grace", [1.0, None])
async def test_a_second_removal_during_recovery(
    autojump_clock: trio.abc.Clock, first_grace: float | None
) -> None:
    with trio.fail_after(120):
        async with open_world(seed=10, recvs=64) as world:
            a, b = world.a, world.b
            to_b = burst(a, 30, b"a")
            to_a = burst(b, 30, b"b")
            await _second_removal(world, first_grace)
            await expect_exactly(b, a, to_b)
            await expect_exactly(a, b, to_a)
            stats = a.shim.statistics()
            assert stats.devices == 3 and len(stats.migrations) == 2
            assert stats.migrations[0].resumed_at is None  # interrupted
            assert stats.migrations[1].resumed_at is not None
            assert isinstance(a.qp, VirtualQP) and a.qp.held is None


async def test_both_sides_migrate_at_once(autojump_clock: trio.abc.Clock) -> None:
    """Both devices replaced: the reconnect duel resolves to one binding."""
    with trio.fail_after(120):
        async with open_world(seed=11, recvs=64) as world:
            a, b = world.a, world.b
            to_b = burst(a, 10, b"a")
            to_a = burst(b, 10, b"b")
            async with trio.open_nursery() as nursery:
                nursery.start_soon(migrate, world, a.vm, "C", 1.0)
                nursery.start_soon(migrate, world, b.vm, "A", 1.0)
            await expect_exactly(b, a, to_b)
            await expect_exactly(a, b, to_a)
            a.send(b"again")
            assert ok(await take(b.rcq, 1))


async def test_verbs_calls_racing_a_surprise_removal_are_never_errors(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Calls made before the shim has noticed the removal hit zombies; none of it shows."""
    with trio.fail_after(120):
        async with open_world(seed=12, recvs=8) as world:
            a, b = world.a, world.b
            await world.fabric.detach(a.vm, None)
            # No checkpoint since the device vanished: the shim has not noticed yet.
            pd = a.ctx.alloc_pd()
            mr = pd.reg_mr(bytearray(4096), ACCESS)
            scq, rcq = a.ctx.create_cq(), a.ctx.create_cq()
            fresh = pd.create_qp(scq, rcq)
            manual = pd.create_qp(scq, rcq)
            manual.modify(QpAttr(state=QpState.INIT, access_flags=ACCESS))
            a_listener = await a.ctx.cm_listen(PORT + 2)
            to_b = burst(a, 3, b"a")  # on the old connection: held
            listener = await b.ctx.cm_listen(PORT + 1)
            async with trio.open_nursery() as nursery:

                async def serve() -> None:
                    while True:
                        request = await listener.get_request()
                        with contextlib.suppress(VerbsError):
                            assert isinstance(b.mr, VirtualMR)
                            await request.accept(b.mr.pd.create_qp(b.scq, b.rcq))
                            return

                nursery.start_soon(serve)
                # cm_connect waits for the next device and connects on it.
                nursery.start_soon(world.fabric.attach, a.vm, world.hosts["C"])
                cm = await a.ctx.cm_connect(fresh, b.vm.address, PORT + 1, timeout=10.0)
            assert cm.qp is fresh and fresh.state is QpState.RTS
            assert isinstance(mr, VirtualMR) and mr.physical is not None
            assert isinstance(manual, VirtualQP) and manual.physical is not None
            assert manual.state is QpState.INIT and manual.physical.state is QpState.INIT
            await expect_exactly(b, a, to_b)
            a_listener.close()


async def test_a_given_up_qp_can_be_reset_and_connected_again(
    autojump_clock: trio.abc.Clock,
) -> None:
    """After PeerResumeTimeout both sides reset their QPs and connect anew (what RDS does)."""
    config = ShimConfig(resume_timeout=1.0)
    with trio.fail_after(60):
        async with open_world(seed=13, config=config, recvs=4) as world:
            a, b = world.a, world.b
            await world.fabric.detach(a.vm, grace=1.0)
            assert b.cm is not None
            with pytest.raises(PeerResumeTimeout):
                await b.cm.next_event()
            await world.fabric.attach(a.vm, world.hosts["C"])
            assert a.cm is not None
            with pytest.raises(PeerResumeTimeout):
                await a.cm.next_event()  # B no longer knows the connection
            for end in (a, b):
                end.scq.poll(64)
                end.rcq.poll(64)
                end.qp.modify(QpAttr(state=QpState.RESET))
                assert end.qp.state is QpState.RESET
            a.cm, b.cm = await cm_link(a, a.qp, b, b.qp, PORT + 3)
            b.post_recvs(2)
            a.send(b"again")
            (wc,) = await take(b.rcq, 1)
            assert ok([wc]) and b.received(wc) == b"again"


async def test_garbage_on_the_control_port_is_refused_and_harmless(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A stranger's malformed or lying control requests are rejected; traffic goes on."""
    rng = random.Random(14)
    with trio.fail_after(60):
        async with open_world(seed=14) as world:
            a, b = world.a, world.b
            stranger = world.fabric.create_vm("vmX", address="127.0.0.9")
            device = await world.fabric.attach(stranger, world.hosts["C"])
            ctx = await device.open()
            pd = ctx.alloc_pd()
            cq = ctx.create_cq()
            port = b.shim.config.control_port
            forged = encode(
                Reconnect(src_vqpn=1, dst_vqpn=b.qp.qp_num, received=0, inc=2, peer_inc=1)
            )
            payloads = [rng.randbytes(rng.randrange(0, 60)) for _ in range(10)]
            payloads += [MAGIC + rng.randbytes(rng.randrange(0, 40)) for _ in range(10)]
            payloads.append(forged)  # names B's real QP, from the wrong node
            for data in payloads:
                qp = pd.create_qp(cq, cq)
                with pytest.raises(ConnectionRejected):
                    await ctx.cm_connect(qp, b.vm.address, port, data)
                qp.close()
            assert b.qp.state is QpState.RTS and isinstance(b.qp, VirtualQP) and b.qp.held is None
            a.send(b"still-fine")
            (wc,) = await take(b.rcq, 1)
            assert b.received(wc) == b"still-fine"
            ctx.close()
