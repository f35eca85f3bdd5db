"""PCI hot-plug: the arrival stream, graceful detach, DeviceBusy, zombies, surprise removal."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from sim_support import connect, open_end

from rdsx.errors import DeviceBusy, DeviceRemoved, InvalidHandle
from rdsx.verbs import AsyncEventType, CmEventType, QpState, WcStatus
from transports.sim import open_fabric


async def _two_vms(fabric):  # type: ignore[no-untyped-def]
    a, b = fabric.add_host("a", num_vfs=2), fabric.add_host("b", num_vfs=2)
    vm_a = fabric.create_vm("va", address="127.0.0.1")
    vm_b = fabric.create_vm("vb", address="127.0.0.2")
    return a, b, vm_a, vm_b, await fabric.attach(vm_a, a), await fabric.attach(vm_b, b)


async def test_arrival_stream_yields_each_new_device(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fabric() as fabric:
        _, b, vm_a, _, dev_a, _ = await _two_vms(fabric)
        assert await vm_a.devices.next_device() is dev_a
        await fabric.detach(vm_a, grace=0.5)
        assert vm_a.device is None
        with trio.fail_after(1):
            async with trio.open_nursery() as nursery:
                got = []

                async def reader() -> None:
                    got.append(await vm_a.devices.next_device())

                nursery.start_soon(reader)
                await trio.sleep(0.1)
                new = await fabric.attach(vm_a, b)
        assert got == [new] and new is not dev_a and vm_a.host is b


async def test_graceful_detach_succeeds_when_released(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fabric() as fabric:
        _, _, vm_a, _, dev_a, dev_b = await _two_vms(fabric)
        a, _ = await connect(dev_a, dev_b)

        async def holder() -> None:
            event = await a.ctx.get_async_event()
            assert event.type is AsyncEventType.DEVICE_REMOVAL
            assert event.deadline == pytest.approx(trio.current_time() + 2.0)
            assert (await a.cm_id.next_event()).type is CmEventType.DEVICE_REMOVAL  # type: ignore[union-attr]
            await trio.sleep(1.0)
            a.ctx.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            start = trio.current_time()
            await fabric.detach(vm_a, grace=2.0)
            assert trio.current_time() - start == pytest.approx(1.0)
        assert dev_a.removed
        with pytest.raises(DeviceRemoved):
            a.qp.post_recv([])
        with pytest.raises(DeviceRemoved):
            await dev_a.open()


async def test_detach_raises_device_busy_and_device_keeps_working(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fabric() as fabric:
        _, _, vm_a, _, dev_a, dev_b = await _two_vms(fabric)
        a, b = await connect(dev_a, dev_b)
        with pytest.raises(DeviceBusy):
            await fabric.detach(vm_a, grace=1.0)
        assert not dev_a.removed and vm_a.device is dev_a
        (await dev_a.open()).close()  # the device still works
        assert (await a.ctx.get_async_event()).type is AsyncEventType.DEVICE_REMOVAL
        b.post_recv(1)
        a.send(2, 0, 10)
        (wc,) = await b.completions(1)
        assert wc.status is WcStatus.SUCCESS


async def test_surprise_removal_makes_zombies_and_wakes_waiters(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fabric() as fabric:
        _, _, vm_a, _, dev_a, dev_b = await _two_vms(fabric)
        a, b = await connect(dev_a, dev_b)
        errors: list[BaseException] = []

        async def wait_cq() -> None:
            try:
                await a.cq.wait()
            except DeviceRemoved as exc:
                errors.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait_cq)
            await trio.sleep(0.01)
            await fabric.detach(vm_a, grace=None)
        assert len(errors) == 1
        event = await a.ctx.get_async_event()
        assert event.type is AsyncEventType.DEVICE_REMOVAL and event.deadline is None
        with pytest.raises(DeviceRemoved):
            await a.ctx.get_async_event()
        assert (await a.cm_id.next_event()).type is CmEventType.DEVICE_REMOVAL  # type: ignore[union-attr]
        for call in (lambda: a.qp.state, lambda: a.cq.poll(), a.ctx.query_port, a.ctx.alloc_pd):
            with pytest.raises(DeviceRemoved):
                call()
        a.ctx.close()  # cleanup of zombies never fails
        # the peer's sends now go nowhere: retries exhausted
        b.send(5, 0, 10)
        (wc,) = await b.completions(1)
        assert wc.status is WcStatus.RETRY_EXC_ERR
        assert b.qp.state is QpState.ERR


async def test_closed_handles_raise_invalid_handle(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        _, _, _, _, dev_a, _ = await _two_vms(fabric)
        end = await open_end(dev_a)
        end.mr.close()
        with pytest.raises(InvalidHandle):
            end.mr.close()
        end.ctx.close()
        end.ctx.close()
        with pytest.raises(InvalidHandle):
            end.cq.poll()
