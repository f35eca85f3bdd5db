"""The suspend in band (a CM message, no QP made) and the peer's pre-setup (virtual time)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from shim_world import World, ok, open_world, take

from rdsx.errors import DeviceRemoved, InvalidHandle, PeerResumeTimeout
from rdsx.shim import ShimConfig
from rdsx.shim.qp import Hold, VirtualQP
from rdsx.verbs import QP, CmId, QpState
from transports.sim import Packet
from transports.sim.cm import Msg, SimCmId
from transports.sim.fabric import QP_CREATE_SHARE

SA, SETUP = 0.0002, 0.001  # the seed profile's sa_query and qp_create
CREATE = SETUP * QP_CREATE_SHARE  # a QP's creation (and INIT)
RTR_RTS = SETUP - CREATE  # what the CM does with it once the peer's QPN is known


def vqp(qp: object) -> VirtualQP:
    assert isinstance(qp, VirtualQP)
    return qp


def profiled(world: World) -> None:
    world.fabric.sa_query_time, world.fabric.qp_setup_time = SA, SETUP


def gone(qp: QP) -> bool:
    """The physical QP was destroyed (or died with its device)."""
    try:
        _ = qp.state
    except (InvalidHandle, DeviceRemoved):
        return True
    return False


async def exchange(world: World, count: int, tag: bytes) -> None:
    """``count`` sends each way arrive exactly once, in order, and complete."""
    a, b = world.a, world.b
    for end in (a, b):
        for i in range(count):
            end.send(tag + b"-%d" % i)
    for receiver, sender in ((b, a), (a, b)):
        recvs = await take(receiver.rcq, count)
        assert ok(recvs)
        assert [receiver.received(wc) for wc in recvs] == [tag + b"-%d" % i for i in range(count)]
        assert ok(await take(sender.scq, count))


@pytest.mark.parametrize("port_model", ["vswitch", "shared"])
async def test_the_suspend_goes_in_band_and_the_peer_presets_its_qp(
    autojump_clock: trio.abc.Clock, port_model: str
) -> None:
    with trio.fail_after(60):
        async with open_world(seed=21, port_model=port_model) as world:
            profiled(world)
            a, b = world.a, world.b
            await exchange(world, 5, b"before")
            old = vqp(b.qp).physical
            await world.fabric.detach(a.vm, grace=1.0)
            record = a.shim.statistics().migrations[0]
            assert record.peers_suspended == 1 and record.suspended_in_band == 1
            # No QP was made for it: the quiesce is a round trip and the drain.
            assert record.release_seconds is not None and record.release_seconds < CREATE / 10
            stats_b = b.shim.statistics()
            assert stats_b.suspends_in_band == 1 and stats_b.control_requests == 0
            # Pre-setup: B made A's replacement QP at once, while A is away.
            assert vqp(b.qp).held is Hold.SUSPENDED
            spare = vqp(b.qp).spare
            assert spare is not None and spare is not old and spare.state is QpState.INIT
            assert stats_b.presetups == 1
            b.send(b"held")
            await trio.sleep(0.5)
            await world.fabric.attach(a.vm, world.hosts["C"])
            recvs = await take(a.rcq, 1)
            assert [a.received(wc) for wc in recvs] == [b"held"]
            assert ok(await take(b.scq, 1))
            assert vqp(b.qp).physical is spare and vqp(b.qp).spare is None
            assert b.shim.statistics().presetups_used == 1
            record = a.shim.statistics().migrations[0]
            # A's QP: created (its SA query meanwhile), REQ; B's RTR/RTS, REP; A's RTR/RTS.
            # B's creation is not on the path (it would add another CREATE).
            assert record.resume_seconds is not None
            assert CREATE + 2 * RTR_RTS <= record.resume_seconds < CREATE + 2 * RTR_RTS + 1e-4
            await exchange(world, 5, b"after")


async def test_without_cm_messages_the_suspend_takes_the_control_port(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A CM that carries no messages (the contract's default, as tcp's): the fallback."""
    monkeypatch.setattr(SimCmId, "send_message", CmId.send_message)
    with trio.fail_after(60):
        async with open_world(seed=22) as world:
            a, b = world.a, world.b
            await world.fabric.detach(a.vm, grace=1.0)
            record = a.shim.statistics().migrations[0]
            assert record.peers_suspended == 1 and record.suspended_in_band == 0
            stats_b = b.shim.statistics()
            assert stats_b.suspends_in_band == 0 and stats_b.control_requests == 1
            assert vqp(b.qp).held is Hold.SUSPENDED and vqp(b.qp).spare is not None
            await world.fabric.attach(a.vm, world.hosts["C"])
            await exchange(world, 5, b"after")
            assert b.shim.statistics().presetups_used == 1


async def test_a_lost_suspend_message_is_sent_again(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(60):
        async with open_world(seed=23) as world:
            a, b = world.a, world.b
            dropped: list[Packet] = []

            def route(packet: Packet) -> None:
                if isinstance(packet.msg, Msg) and not dropped:
                    dropped.append(packet)
                    world.fabric.drop_packet(packet, "test: lose the first CM message")
                else:
                    world.fabric.deliver_packet(packet)

            world.fabric.route_packet = route
            await world.fabric.detach(a.vm, grace=1.0)
            assert len(dropped) == 1
            record = a.shim.statistics().migrations[0]
            assert record.suspended_in_band == 1 and b.shim.statistics().suspends_in_band == 1
            await world.fabric.attach(a.vm, world.hosts["C"])
            await exchange(world, 3, b"after")


async def test_a_peer_that_never_comes_back_drops_the_presetup_qp(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(60):
        async with open_world(seed=24, config=ShimConfig(resume_timeout=2.0)) as world:
            a, b = world.a, world.b
            await world.fabric.detach(a.vm, grace=1.0)
            spare = vqp(b.qp).spare
            assert spare is not None
            assert b.cm is not None
            with pytest.raises(PeerResumeTimeout):
                await b.cm.next_event()
            assert b.qp.state is QpState.ERR
            assert vqp(b.qp).spare is None and gone(spare)


async def test_the_presetup_qp_dies_with_the_peers_own_device(
    autojump_clock: trio.abc.Clock,
) -> None:
    """B is removed by surprise while A is away: its QP made ahead goes too; both resume."""
    with trio.fail_after(60):
        async with open_world(seed=25) as world:
            a, b = world.a, world.b
            await world.fabric.detach(a.vm, grace=1.0)
            spare = vqp(b.qp).spare
            assert spare is not None
            await world.fabric.detach(b.vm, None)
            await trio.testing.wait_all_tasks_blocked()  # B's shim has seen it and let go
            assert b.shim.statistics().migrations[0].released_at is not None
            assert vqp(b.qp).spare is None and gone(spare)
            await world.fabric.attach(b.vm, world.hosts["A"])
            await world.fabric.attach(a.vm, world.hosts["C"])
            await exchange(world, 5, b"after")
            assert b.shim.statistics().presetups_used == 0


async def test_a_suspended_peer_that_crashes_is_given_up_in_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    """B's host dies while A is away (B holding A's QP made ahead): A times out, typed."""
    with trio.fail_after(60):
        async with open_world(seed=26, config=ShimConfig(resume_timeout=2.0)) as world:
            a, b = world.a, world.b
            await world.fabric.detach(a.vm, grace=1.0)
            spare = vqp(b.qp).spare
            assert spare is not None
            world.fabric.crash_host(world.hosts["B"])
            await trio.testing.wait_all_tasks_blocked()
            assert vqp(b.qp).spare is None and gone(spare)
            await world.fabric.attach(a.vm, world.hosts["C"])
            start = trio.current_time()
            assert a.cm is not None
            with pytest.raises(PeerResumeTimeout):
                await a.cm.next_event()
            assert trio.current_time() - start <= 2.0 + 0.1
            assert a.qp.state is QpState.ERR
            assert a.shim.statistics().migrations[0].peers_timed_out == 1
