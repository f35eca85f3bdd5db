"""The sim CM: messages on an established connection, and where a QP's setup time goes."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from sim_support import connect, open_end

from rdsx.errors import DeviceRemoved, InvalidArgument, InvalidHandle, InvalidState
from rdsx.verbs import MSG_PRIVATE_DATA, QP, CmEventType, CmRequest, Context
from transports.sim import open_fabric
from transports.sim.fabric import QP_CREATE_SHARE, Fabric
from transports.sim.verbs import SimDevice

SETUP = 0.001


async def _devices(fabric: Fabric) -> tuple[SimDevice, SimDevice]:
    a, b = fabric.add_host("a", num_vfs=2), fabric.add_host("b", num_vfs=2)
    da = await fabric.attach(fabric.create_vm("va", address="127.0.0.1"), a)
    db = await fabric.attach(fabric.create_vm("vb", address="127.0.0.2"), b)
    return da, db


async def test_a_message_reaches_the_peers_id_both_ways(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        async with open_fabric(seed=1) as fabric:
            fabric.qp_setup_time = SETUP
            da, db = await _devices(fabric)
            a, b = await connect(da, db)
            assert a.cm_id is not None and b.cm_id is not None
            start = trio.current_time()
            await a.cm_id.send_message(b"suspend?")
            event = await b.cm_id.next_event()
            assert event.type is CmEventType.MESSAGE and event.private_data == b"suspend?"
            await b.cm_id.send_message(bytes(MSG_PRIVATE_DATA))
            event = await a.cm_id.next_event()
            assert event.type is CmEventType.MESSAGE and len(event.private_data) == MSG_PRIVATE_DATA
            # A MAD each way over one switch: no QP setup is spent on it.
            assert trio.current_time() - start < SETUP / 100
            with pytest.raises(InvalidArgument):
                await a.cm_id.send_message(bytes(MSG_PRIVATE_DATA + 1))
            await a.cm_id.disconnect()
            with pytest.raises(InvalidState):
                await a.cm_id.send_message(b"late")
            a.cm_id.close()
            with pytest.raises(InvalidHandle):
                await a.cm_id.send_message(b"closed")
            await fabric.detach(db.vm, None)
            with pytest.raises(DeviceRemoved):
                await b.cm_id.send_message(b"gone")


async def _accept_time(ahead: bool) -> float:
    """Seconds from the REQ's arrival to the passive side's REP leaving."""
    async with open_fabric(seed=2) as fabric:
        fabric.qp_setup_time = SETUP
        da, db = await _devices(fabric)
        a = await open_end(da)
        ctx_b: Context = await db.open()
        pd, cq = ctx_b.alloc_pd(), ctx_b.create_cq()
        listener = await ctx_b.cm_listen(7)
        made: list[QP] = []
        if ahead:
            made.append(pd.create_qp(cq, cq))
        await trio.sleep(SETUP)  # well before the request: a made-ahead QP is ready
        took: list[float] = []

        async def passive() -> None:
            request: CmRequest = await listener.get_request()
            qp = made[0] if made else pd.create_qp(cq, cq)
            start = trio.current_time()
            await request.accept(qp, b"")
            took.append(trio.current_time() - start)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(passive)
            await a.ctx.cm_connect(a.qp, db.address, 7, b"")
        return took[0]


async def test_a_qp_made_ahead_leaves_only_rtr_and_rts_to_the_accept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(10):
        on_request = await _accept_time(ahead=False)
        ahead = await _accept_time(ahead=True)
        create = SETUP * QP_CREATE_SHARE
        # Each accept also waits for the RTU, the same round trip in both.
        assert on_request - ahead == pytest.approx(create, rel=1e-6)
        assert ahead >= SETUP - create
