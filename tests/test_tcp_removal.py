"""Device removal on tcp: grace deadlines, DeviceBusy, zombies, and a new device arriving."""

from __future__ import annotations

import pytest
import trio
from _tcp_helpers import bring_up, make_end, pair, wait_wcs

from rdsx.errors import (
    AddressInUse,
    AddressNotAvailable,
    DeviceBusy,
    DeviceRemoved,
    InvalidState,
)
from rdsx.verbs import AsyncEventType, CmEventType, WcStatus
from transports.tcp import TcpDevice


async def test_graceful_removal_when_every_context_is_released() -> None:
    with trio.fail_after(5):
        async with pair() as (net, da, db):
            b = await make_end(db)
            removal_seen = trio.Event()

            async def holder() -> None:
                event = await b.ctx.get_async_event()
                assert event.type is AsyncEventType.DEVICE_REMOVAL
                assert event.deadline is not None
                assert event.deadline > trio.current_time()
                removal_seen.set()
                b.ctx.close()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(holder)
                await db.detach(1.0)
            assert removal_seen.is_set() and db.removed
            with pytest.raises(DeviceRemoved):
                b.qp.post_recv([])
            with pytest.raises(DeviceRemoved):
                await db.open()
            # The address comes back: a new device with a new listener on the same node.
            node = net.nodes[db.address]  # the harness already took db from it
            fresh = await node.attach()
            assert await node.next_device() is fresh
            assert fresh.address == db.address and fresh.locator != db.locator
            a, c = await make_end(da), await make_end(fresh)
            bring_up(a, c)
            c.post_recvs(1)
            a.send(1, b"to the new device")
            assert (await wait_wcs(a.cq, 1))[0].status is WcStatus.SUCCESS


async def test_removal_fails_with_device_busy_when_a_context_is_held() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b)
            with pytest.raises(DeviceBusy):
                await db.detach(0.1)
            assert not db.removed
            assert (await b.ctx.get_async_event()).type is AsyncEventType.DEVICE_REMOVAL
            b.post_recvs(1)  # the device stays and keeps working
            a.send(1, b"still here")
            assert (await wait_wcs(a.cq, 1))[0].status is WcStatus.SUCCESS


async def test_surprise_removal_makes_zombies_and_tells_cm_ids() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            listener = await b.ctx.cm_listen(5000)

            async def passive() -> None:
                await (await listener.get_request()).accept(b.qp)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(passive)
                cm_a = await a.ctx.cm_connect(a.qp, db.address, 5000)
            waiter_error: list[BaseException] = []

            async def waiter() -> None:
                try:
                    await b.cq.wait()
                except DeviceRemoved as exc:
                    waiter_error.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiter)
                await trio.sleep(0.01)
                await db.detach(None)
            assert waiter_error, "a CQ waiter must wake with DeviceRemoved"
            event = await b.ctx.get_async_event()
            assert event.type is AsyncEventType.DEVICE_REMOVAL and event.deadline is None
            with pytest.raises(DeviceRemoved):
                await b.ctx.get_async_event()
            for call in (b.ctx.alloc_pd, b.cq.poll, lambda: b.qp.state):
                with pytest.raises(DeviceRemoved):
                    call()
            # The surviving side learns through its CM id.
            assert (await cm_a.next_event()).type is CmEventType.DISCONNECTED
            a.send(1, b"into the void")
            assert (await wait_wcs(a.cq, 1))[0].status is WcStatus.RETRY_EXC_ERR
            assert isinstance(da, TcpDevice) and not da.removed


async def test_a_device_removed_before_it_was_read_is_skipped() -> None:
    with trio.fail_after(5):
        async with pair() as (net, _da, db):
            node = net.nodes[db.address]
            await db.detach(None)
            gone = await node.attach()
            await gone.detach(None)
            fresh = await node.attach()
            assert await node.next_device() is fresh


async def test_add_node_refuses_foreign_and_duplicate_addresses() -> None:
    with trio.fail_after(5):
        async with pair() as (net, da, _db):
            with pytest.raises(AddressInUse):
                await net.add_node(da.address)
            with pytest.raises(AddressNotAvailable):
                await net.add_node("198.51.100.77")  # not an address of this host: bind fails
            with pytest.raises(AddressNotAvailable):
                await net.add_node("not-an-address")
            with pytest.raises(AddressInUse):
                await net.nodes[da.address].attach()  # it still has its device


async def test_a_surprise_removal_overtakes_a_graceful_one() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, _da, db):
            ctx = await db.open()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(db.detach, 10.0)
                event = await ctx.get_async_event()
                assert event.type is AsyncEventType.DEVICE_REMOVAL
                with pytest.raises(InvalidState):
                    await db.detach(1.0)
                await db.detach(None)  # the graceful detach returns at once, without DeviceBusy
            assert db.removed
