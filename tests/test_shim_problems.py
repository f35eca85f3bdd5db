"""The seed's four problems, one at a time, with and without the shim (virtual time)."""

from __future__ import annotations

import pytest
import trio
from shim_world import ACCESS, migrate, ok, open_world, rdma_write_with_old_rkey, take

from rdsx.errors import DeviceBusy
from rdsx.shim.qp import Hold, VirtualQP
from rdsx.shim.resources import VirtualMR
from rdsx.verbs import QpState, WcStatus
from transports.sim import open_fabric


def vqp(qp: object) -> VirtualQP:
    assert isinstance(qp, VirtualQP)
    return qp


async def test_problem1_detach_refused_while_a_raw_qp_is_held(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Without the shim nobody releases the context: the hot-unplug fails (1b)."""
    with trio.fail_after(30):
        async with open_fabric(seed=1) as fabric:
            host = fabric.add_host("hostA", num_vfs=2)
            vm = fabric.create_vm("vmA", address="127.0.0.1")
            device = await fabric.attach(vm, host)
            ctx = await device.open()
            pd = ctx.alloc_pd()
            cq = ctx.create_cq()
            pd.create_qp(cq, cq)
            with pytest.raises(DeviceBusy):
                await fabric.detach(vm, grace=0.5)
            assert vm.device is device and not device.removed
            ctx.close()


async def test_problem1_shim_releases_before_the_deadline(autojump_clock: trio.abc.Clock) -> None:
    """With the shim the same QP (connected, even) is released in time; the detach succeeds."""
    with trio.fail_after(30):
        async with open_world(seed=2) as world:
            device = world.a.vm.device
            assert device is not None
            start = trio.current_time()
            await world.fabric.detach(world.a.vm, grace=0.5)
            assert device.removed and world.a.vm.device is None
            record = world.a.shim.statistics().migrations[0]
            assert record.graceful and record.released_at is not None
            assert record.deadline == pytest.approx(start + 0.5)
            assert record.released_at < record.deadline
            assert vqp(world.a.qp).held is Hold.LOCAL
            assert world.a.qp.state is QpState.RTS  # the layer above sees no change


async def test_problem2_virtual_handles_survive_a_host_that_uses_them(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Shared port: the destination HCA already hands out our QPN and keys to another VM."""
    with trio.fail_after(60):
        async with open_world(port_model="shared", seed=3) as world:
            a, b = world.a, world.b
            qpn, lkey, rkey, addr = a.qp.qp_num, a.mr.lkey, a.mr.rkey, a.mr.addr
            assert vqp(a.qp).physical is not None
            # Another VM on host C takes QPNs and keys from the shared HCA space.
            other = world.fabric.create_vm("vmX", address="127.0.0.9")
            squatter = await world.fabric.attach(other, world.hosts["C"])
            ctx = await squatter.open()
            pd = ctx.alloc_pd()
            cq = ctx.create_cq()
            qps = [pd.create_qp(cq, cq) for _ in range(8)]
            mrs = [pd.reg_mr(bytearray(64), ACCESS) for _ in range(8)]
            assert qpn in {qp.qp_num for qp in qps}
            assert lkey in {mr.lkey for mr in mrs} or rkey in {mr.rkey for mr in mrs}

            await migrate(world, a.vm, "C")
            a.send(b"hello after")
            assert ok(await take(b.rcq, 1))
            physical = vqp(a.qp).physical
            assert physical is not None and physical.qp_num != qpn
            assert (a.qp.qp_num, a.mr.lkey, a.mr.rkey, a.mr.addr) == (qpn, lkey, rkey, addr)
            assert isinstance(a.mr, VirtualMR) and a.mr.physical is not None
            assert (a.mr.physical.lkey, a.mr.physical.rkey) != (lkey, rkey)

            # The peer still names our memory with the old (virtual) rkey and address.
            await rdma_write_with_old_rkey(world, rkey, addr, b"rdma-written-after-migration")
            ctx.close()


async def test_problem3_sends_drain_before_the_detach(autojump_clock: trio.abc.Clock) -> None:
    """Sends outstanding at the removal notice all complete before the VF goes."""
    with trio.fail_after(60):
        async with open_world(seed=4, recvs=48) as world:
            a, b = world.a, world.b
            for i in range(40):
                a.send(b"x%d" % i)
            await world.fabric.detach(a.vm, grace=1.0)
            # Every completion arrived before the detach returned: nothing crosses it.
            done = a.scq.poll(64)
            assert len(done) == 40 and ok(done)
            assert [wc.wr_id for wc in done] == list(range(40))
            assert len(b.rcq.poll(64)) == 40
            record = a.shim.statistics().migrations[0]
            assert record.drained > 0
            await world.fabric.attach(a.vm, world.hosts["C"])
            a.send(b"later")
            assert ok(await take(b.rcq, 1))
            assert a.shim.statistics().resent == 0


async def test_problem4_peer_suspends_and_resumes_on_a_new_qp(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The peer drains to SQD (never ERR) while we are gone, holds its posts, then resumes."""
    with trio.fail_after(60):
        async with open_world(seed=5) as world:
            a, b = world.a, world.b
            old = vqp(b.qp).physical
            assert old is not None
            await world.fabric.detach(a.vm, grace=1.0)
            assert vqp(b.qp).held is Hold.SUSPENDED
            # Drained to SQD, then ERR from the DREQ A's released CM id sent (the contract).
            assert old.state in (QpState.SQD, QpState.ERR)
            for i in range(5):
                b.send(b"while-suspended-%d" % i)  # held, never an error
            assert b.scq.poll() == []
            await trio.sleep(2.0)  # longer than any RC retry budget: still no error
            assert b.qp.state is QpState.RTS and b.scq.poll() == []
            await world.fabric.attach(a.vm, world.hosts["C"])
            recvs = await take(a.rcq, 5)
            assert [a.received(wc) for wc in recvs] == [b"while-suspended-%d" % i for i in range(5)]
            sends = await take(b.scq, 5)
            assert ok(sends)
            new = vqp(b.qp).physical
            assert new is not None and new is not old and new.state is QpState.RTS
            assert vqp(b.qp).held is None
            stats_b = b.shim.statistics()
            assert stats_b.held == 5 and stats_b.resume_timeouts == 0
            assert a.shim.statistics().migrations[0].peers_suspended == 1


async def test_problem2_rdma_in_flight_is_rekeyed_on_resend(
    autojump_clock: trio.abc.Clock,
) -> None:
    """RDMA posted by the peer before a surprise removal is re-posted with A's new keys."""
    with trio.fail_after(60):
        async with open_world(port_model="shared", seed=6) as world:
            a, b = world.a, world.b
            other = world.fabric.create_vm("vmX", address="127.0.0.9")
            squatter = await world.fabric.attach(other, world.hosts["C"])
            ctx = await squatter.open()
            pd = ctx.alloc_pd()
            mrs = [pd.reg_mr(bytearray(64), ACCESS) for _ in range(8)]
            assert a.mr.rkey in {mr.rkey for mr in mrs}  # A's key is someone else's on C
            a.buf[7000:7016] = b"read-me-remotely"
            payload = b"written-across-a-surprise"
            b.qp.post_send(
                [
                    b.rdma_write(1, payload, a.mr.addr + 4096, a.mr.rkey),
                    b.rdma_read(2, 256, 16, a.mr.addr + 7000, a.mr.rkey),
                ]
            )
            await migrate(world, a.vm, "C", grace=None)  # before any of it completed
            wcs = await take(b.scq, 2)
            assert [(wc.wr_id, wc.status) for wc in wcs] == [
                (1, WcStatus.SUCCESS),
                (2, WcStatus.SUCCESS),
            ]
            assert bytes(a.buf[4096 : 4096 + len(payload)]) == payload
            assert bytes(b.buf[256:272]) == b"read-me-remotely"
            assert all(bytes(mr.buffer[:8]) == bytes(8) for mr in mrs)  # nobody else written
            assert b.shim.statistics().resent == 2  # both really crossed the removal
            ctx.close()
