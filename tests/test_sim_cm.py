"""The connection manager: connect, reject, unreachable, timeout, disconnect."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from sim_support import connect, open_end

from rdsx.errors import (
    AddressInUse,
    ConnectionRejected,
    ConnectTimeout,
    InvalidArgument,
    InvalidState,
    Unreachable,
)
from rdsx.verbs import CmEventType, QpState, WcStatus
from transports.sim import open_fabric, partitioned
from transports.sim.fabric import Fabric
from transports.sim.verbs import SimDevice


async def _devices(fabric: Fabric) -> tuple[SimDevice, SimDevice]:
    a, b = fabric.add_host("a", num_vfs=1), fabric.add_host("b", num_vfs=1)
    da = await fabric.attach(fabric.create_vm("va", address="127.0.0.1"), a)
    db = await fabric.attach(fabric.create_vm("vb", address="127.0.0.2"), b)
    return da, db


async def test_reject_carries_private_data(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        da, db = await _devices(fabric)
        a, b = await open_end(da), await open_end(db)
        listener = await b.ctx.cm_listen(5)

        async def passive() -> None:
            request = await listener.get_request()
            assert (request.private_data, request.source) == (b"let me in", "127.0.0.1")
            await request.reject(b"go away")
            with pytest.raises(InvalidState):
                await request.reject()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(passive)
            with pytest.raises(ConnectionRejected) as info:
                await a.ctx.cm_connect(a.qp, "127.0.0.2", 5, b"let me in")
        assert info.value.private_data == b"go away"


async def test_unreachable(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        da, _db = await _devices(fabric)
        a = await open_end(da)
        with pytest.raises(Unreachable):
            await a.ctx.cm_connect(a.qp, "127.0.0.2", 5)  # nobody listens on port 5
        a2 = await open_end(da)
        with pytest.raises(Unreachable):
            await a2.ctx.cm_connect(a2.qp, "127.0.0.99", 5)  # no such node
        assert fabric.sm.sa_queries == 1


async def test_connect_times_out_across_a_partition(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        da, db = await _devices(fabric)
        a, b = await open_end(da), await open_end(db)
        await b.ctx.cm_listen(5)
        with partitioned(fabric, lambda: da.lid, lambda: db.lid):
            start = trio.current_time()
            with pytest.raises(ConnectTimeout):
                await a.ctx.cm_connect(a.qp, "127.0.0.2", 5, timeout=2.0)
            assert trio.current_time() - start == pytest.approx(2.0)


async def test_argument_checks(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        da, db = await _devices(fabric)
        a, b = await open_end(da), await open_end(db)
        await b.ctx.cm_listen(5)
        with pytest.raises(AddressInUse):
            await b.ctx.cm_listen(5)
        with pytest.raises(InvalidArgument):
            await a.ctx.cm_connect(a.qp, "127.0.0.2", 5, bytes(197))
        any_port = await b.ctx.cm_listen(0)
        assert any_port.port not in (0, 5)


async def test_disconnect_both_sides(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        da, db = await _devices(fabric)
        a, b = await connect(da, db)
        assert a.cm_id is not None and b.cm_id is not None
        b.post_recv(1)
        await a.cm_id.disconnect()
        for end in (a, b):
            assert end.cm_id is not None
            assert (await end.cm_id.next_event()).type is CmEventType.DISCONNECTED
            assert (await end.cm_id.next_event()).type is CmEventType.TIMEWAIT_EXIT
            assert end.qp.state is QpState.ERR
        (flushed,) = await b.completions(1)
        assert flushed.status is WcStatus.WR_FLUSH_ERR


async def test_connect_over_lossy_route_still_works(autojump_clock: trio.testing.MockClock) -> None:
    from transports.sim import chaos

    async with open_fabric(seed=4) as fabric:
        da, db = await _devices(fabric)
        fabric.route_packet = chaos(fabric, drop=0.5, duplicate=0.3)
        with trio.fail_after(30):
            a, b = await connect(da, db)
        assert a.qp.state is QpState.RTS and b.qp.state is QpState.RTS


async def test_close_sends_dreq_resent_until_answered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Closing a connected id sends DREQ; a lost one is resent until its DREP comes back."""
    async with open_fabric() as fabric:
        da, db = await _devices(fabric)
        a, b = await connect(da, db)
        assert a.cm_id is not None and b.cm_id is not None
        with partitioned(fabric, lambda: da.lid, lambda: db.lid):
            a.cm_id.close()
            with trio.move_on_after(0.6):
                await b.cm_id.next_event()
                raise AssertionError("a DREQ crossed a partition")
        with trio.fail_after(1):
            assert (await b.cm_id.next_event()).type is CmEventType.DISCONNECTED
        assert (await b.cm_id.next_event()).type is CmEventType.TIMEWAIT_EXIT
        assert b.qp.state is QpState.ERR
        assert a.qp.state is QpState.RTS  # closing the id leaves the local QP alone


@pytest.mark.parametrize("how", ["surprise", "crash"])
async def test_vanished_peer_sends_nothing(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    """A surprise removal or a host crash sends no DREQ: the peer's id stays silent, even
    when the dead side's context is closed afterwards; its QP learns through RC only."""
    async with open_fabric() as fabric:
        da, db = await _devices(fabric)
        a, b = await connect(da, db)
        assert b.cm_id is not None
        if how == "surprise":
            await fabric.detach(da.vm, None)
        else:
            da.function.host.crash()
        a.ctx.close()
        with trio.move_on_after(5.0):
            event = await b.cm_id.next_event()
            raise AssertionError(f"the peer of a vanished device got {event}")
        assert b.qp.state is QpState.RTS
