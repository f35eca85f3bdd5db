"""A memory region registered after a migration whose rkey cannot keep its physical number:
the peer may use its (virtual) rkey for RDMA as soon as it learns it (virtual time)."""

from __future__ import annotations

import struct

import trio
from shim_world import ACCESS, SLOT, World, migrate, ok, open_world, take

from rdsx.shim.protocol import KeyMap
from rdsx.shim.resources import VirtualMR
from rdsx.verbs import MR, PD, WcOpcode, WcStatus

#: Where the new MR's key and address are written in A's send half of the buffer.
KEY_MESSAGE = struct.Struct("!IQ")


async def _move_a_so_its_next_rkey_collides(world: World) -> tuple[PD, VirtualMR]:
    """Migrate A so that its next physical rkey is one of its own virtual rkeys.

    Before the move A registers X and Y and deregisters X; on the new VF (a fresh key
    space) its MRs are registered again in order: A's first MR keeps its key, Y takes X's
    old key, so Y's virtual key is the new device's next one: an MR registered now cannot
    have it. Returns A's PD and Y.
    """
    a = world.a
    assert isinstance(a.mr, VirtualMR)
    pd = a.mr.pd
    spare = pd.reg_mr(bytearray(256), ACCESS)
    kept = pd.reg_mr(bytearray(256), ACCESS)
    spare.close()
    assert isinstance(kept, VirtualMR)
    await migrate(world, a.vm, "C")
    a.send(b"resumed")  # once it is through, A's shim is on its new device
    assert ok(await take(world.b.rcq, 1)) and ok(await take(a.scq, 1))
    return pd, kept


def _register_a_moved_rkey(pd: PD) -> VirtualMR:
    """Register a new MR in ``pd``, whose rkey had to move off its physical one."""
    mr = pd.reg_mr(bytearray(4096), ACCESS)
    assert isinstance(mr, VirtualMR) and mr.physical is not None
    assert mr.rkey != mr.physical.rkey  # so the new MR's rkey moved: pushed to B
    return mr


async def _tell_b(world: World, mr: MR) -> tuple[int, int]:
    """A sends ``mr``'s rkey and address to B in a SEND; return them as B received them."""
    world.a.send(KEY_MESSAGE.pack(mr.rkey, mr.addr))
    (wc,) = await take(world.b.rcq, 1)
    assert ok([wc])
    rkey, addr = KEY_MESSAGE.unpack(world.b.received(wc)[: KEY_MESSAGE.size])
    return rkey, addr


async def test_the_peer_uses_a_moved_rkey_as_soon_as_it_is_told(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A sends the new MR's rkey to B in a SEND right after registering it; B writes and
    reads that MR at once: both succeed, in A's new MR and nowhere else."""
    with trio.fail_after(60):
        async with open_world(seed=31) as world:
            a, b = world.a, world.b
            pd, kept = await _move_a_so_its_next_rkey_collides(world)
            mr = _register_a_moved_rkey(pd)
            assert mr.physical is not None and mr.physical.rkey == kept.rkey  # the collision
            mr.buffer[1024:1040] = b"read-me-remotely"
            rkey, addr = await _tell_b(world, mr)
            payload = b"written-with-the-pushed-key"
            b.qp.post_send(
                [
                    b.rdma_write(1001, payload, addr, rkey),
                    b.rdma_read(1002, SLOT, 16, addr + 1024, rkey),
                ]
            )
            wcs = await take(b.scq, 2)
            assert [(wc.wr_id, wc.status, wc.opcode) for wc in wcs] == [
                (1001, WcStatus.SUCCESS, WcOpcode.RDMA_WRITE),
                (1002, WcStatus.SUCCESS, WcOpcode.RDMA_READ),
            ]
            assert bytes(mr.buffer[: len(payload)]) == payload
            assert bytes(b.buf[SLOT : SLOT + 16]) == b"read-me-remotely"
            assert bytes(a.buf[: len(payload)]) != payload  # nobody else's memory


async def _rdma_into(world: World, mr: MR, payload: bytes) -> None:
    """A tells B ``mr``'s rkey in a SEND; B RDMA-writes ``payload`` into it at once."""
    a, b = world.a, world.b
    rkey, addr = await _tell_b(world, mr)
    assert ok(await take(a.scq, 1))
    b.qp.post_send(b.rdma_write(2001, payload, addr, rkey))
    (done,) = await take(b.scq, 1)
    assert (done.wr_id, done.status) == (2001, WcStatus.SUCCESS), done
    assert bytes(mr.buffer[: len(payload)]) == payload


async def test_a_key_moved_while_the_peer_is_away_rides_in_its_resume(
    autojump_clock: trio.abc.Clock,
) -> None:
    """B is migrating when A's new rkey moves: the push cannot reach it, A's sends wait,
    and B's reconnect (A's RESUMED carries the key map) releases them."""
    with trio.fail_after(60):
        async with open_world(seed=32) as world:
            a, b = world.a, world.b
            pd, _ = await _move_a_so_its_next_rkey_collides(world)
            await world.fabric.detach(b.vm, grace=1.0)  # A's QP is suspended meanwhile
            mr = _register_a_moved_rkey(pd)
            await world.fabric.attach(b.vm, world.hosts["A"])
            await _rdma_into(world, mr, b"written-after-both-moved")
            # The push may still have been retrying when B came back: nothing doubled.
            with trio.move_on_after(1.0):
                extra = await b.rcq.wait()
                raise AssertionError(f"stray receive at B: {extra}")
            assert a.scq.poll() == []


async def test_a_late_key_map_from_an_older_device_is_ignored(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A KeyMap of an incarnation the peer has left must not replace the current map."""
    with trio.fail_after(60):
        async with open_world(seed=33) as world:
            a, b = world.a, world.b
            core = b.shim._core
            session = core.session
            assert session is not None
            session.control._on_keymap(a.vm.address, KeyMap(inc=3, pairs=(7, 8), first=True))
            session.control._on_keymap(a.vm.address, KeyMap(inc=2, pairs=(7, 9), first=False))
            assert core.peer_keys[a.vm.address] == (3, {7: 8})
