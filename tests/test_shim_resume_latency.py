"""Resume in one round trip: the key map rides in RECONNECT / RESUMED (virtual time)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from shim_world import ACCESS, World, migrate, ok, open_world, rdma_write_with_old_rkey, take

from rdsx.shim.control import ControlPlane
from rdsx.shim.protocol import Reconnect, Resumed, decode, encode
from rdsx.shim.resources import VirtualCQ, VirtualMR
from rdsx.verbs import WcStatus


def test_key_map_rides_in_reconnect_and_resumed() -> None:
    keys = (0x1000, 0x2345, 0x1001, 0xFFFF_FFFF)
    for message in (
        Reconnect(src_vqpn=1, dst_vqpn=2, received=3, inc=2, peer_inc=1, keys=keys),
        Resumed(received=7, inc=3, keys=keys),
    ):
        assert decode(encode(message))[0] == message


def test_an_empty_key_map_costs_no_bytes() -> None:
    """Without keys the wire format is the one peers without the field speak."""
    plain = Reconnect(src_vqpn=1, dst_vqpn=2, received=3, inc=2, peer_inc=1)
    data = encode(plain)
    assert data == encode(Reconnect(src_vqpn=1, dst_vqpn=2, received=3, inc=2, peer_inc=1, keys=()))
    assert len(data) < len(encode(Reconnect(**{**_fields(plain), "keys": (1, 2)})))
    assert decode(data)[0] == plain


def test_a_key_map_too_big_for_the_private_data_is_refused() -> None:
    big = Reconnect(src_vqpn=1, dst_vqpn=2, received=3, inc=2, peer_inc=1, keys=(1 << 31,) * 64)
    with pytest.raises(ValueError):
        encode(big)


def _fields(message: Reconnect) -> dict[str, object]:
    return {
        "src_vqpn": message.src_vqpn,
        "dst_vqpn": message.dst_vqpn,
        "received": message.received,
        "inc": message.inc,
        "peer_inc": message.peer_inc,
    }


async def _squat_keys(world: World) -> None:
    """Another VM on host C takes keys from the shared HCA, so A's rkey moves there."""
    other = world.fabric.create_vm("vmX", address="127.0.0.9")
    squatter = await world.fabric.attach(other, world.hosts["C"])
    ctx = await squatter.open()
    pd = ctx.alloc_pd()
    for _ in range(8):
        pd.reg_mr(bytearray(64), ACCESS)


async def _control_requests_of_a_surprise_resume() -> int:
    """A moves by surprise to host C, whose shared HCA already hands out A's rkey; A's
    SENDs and B's RDMA WRITE with A's old rkey work after. Returns how many control
    requests B's shim served for the resume."""
    with trio.fail_after(60):
        async with open_world(port_model="shared", seed=3) as world:
            a, b = world.a, world.b
            rkey, addr = a.mr.rkey, a.mr.addr
            await _squat_keys(world)
            before = b.shim.statistics().control_requests
            await migrate(world, a.vm, "C", grace=None)
            a.send(b"hello after")
            assert ok(await take(b.rcq, 1))
            assert isinstance(a.mr, VirtualMR) and a.mr.physical is not None
            assert a.mr.physical.rkey != rkey  # the map had something to carry
            served = b.shim.statistics().control_requests - before
            await rdma_write_with_old_rkey(world, rkey, addr, b"written-with-the-old-rkey")
            return served


async def test_surprise_resume_is_one_control_request(autojump_clock: trio.abc.Clock) -> None:
    """A's rkey moved, yet B's shim serves only the RECONNECT (no KeyMap push first)."""
    assert await _control_requests_of_a_surprise_resume() == 1


async def test_a_map_too_big_to_ride_along_is_pushed_first(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback (the map does not fit): KeyMap pushes first, then the RECONNECT."""

    def never_fits(self: ControlPlane, message: Reconnect | Resumed) -> bytes | None:
        return None if self._s.inc > 1 else encode(message)

    monkeypatch.setattr(ControlPlane, "with_keys", never_fits)
    assert await _control_requests_of_a_surprise_resume() == 2  # KeyMap, RECONNECT


async def test_a_cq_wait_with_completions_ready_is_still_a_checkpoint(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A reader draining a backlog yields between batches (the tasks it feeds run)."""
    with trio.fail_after(30):
        async with open_world(seed=4) as world:
            a, b = world.a, world.b
            a.send(b"ready before the wait")
            rcq = b.rcq
            assert isinstance(rcq, VirtualCQ)
            while not rcq._ready:
                rcq.drain_now()
                await trio.sleep(0.001)
            with trio.testing.assert_checkpoints():
                (wc,) = await rcq.wait(1)
            assert wc.status is WcStatus.SUCCESS
