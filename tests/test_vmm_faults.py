"""VMM bad input and faults: each gives one typed outcome, and the VM ends up somewhere sane."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from rdsx.errors import (
    DetachRefused,
    DeviceBusy,
    DeviceRemoved,
    HostCrashed,
    InvalidMigration,
    MigrationError,
    MigrationInProgress,
    NotAttached,
    ResourceExhausted,
    UnknownHost,
)
from rdsx.verbs import Access, AsyncEventType
from transports.sim import Fabric, open_fabric
from transports.sim.timeline import Timeline
from transports.sim.vmm import VMM

STRATEGIES = ["three-stage", "late-detach"]


@asynccontextmanager
async def world(model: str = "vswitch") -> AsyncIterator[Fabric]:
    async with open_fabric(port_model=model, seed=1) as fabric:
        for name in ("hostA", "hostB", "hostC"):
            fabric.add_host(name, num_vfs=2)
        vm = fabric.create_vm("vm1", address="127.0.0.1")
        await fabric.attach(vm, fabric.hosts["hostA"])
        yield fabric


async def test_bad_requests_are_refused_before_anything_happens(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world() as fabric, open_fabric(seed=2) as other:
        vm = fabric.vms["vm1"]
        device = vm.device
        vmm = VMM(fabric)
        stranger = other.add_host("hostB")
        cases: list[tuple[type[MigrationError], dict[str, object]]] = [
            (InvalidMigration, {"to": "hostA"}),
            (InvalidMigration, {"to": fabric.hosts["hostA"]}),
            (UnknownHost, {"to": "hostZ"}),
            (UnknownHost, {"to": stranger}),
            (InvalidMigration, {"to": "hostB", "grace": -1.0}),
            (InvalidMigration, {"to": "hostB", "strategy": "teleport"}),
        ]
        t0 = trio.current_time()
        for error, kwargs in cases:
            with pytest.raises(error):
                await vmm.migrate(vm, **kwargs)  # type: ignore[arg-type]
        assert issubclass(UnknownHost, LookupError) and issubclass(InvalidMigration, ValueError)
        assert trio.current_time() == t0 and not vmm.history
        assert vm.device is device and vm.host is fabric.hosts["hostA"]


async def test_a_vm_without_a_vf_is_not_migrated(autojump_clock: trio.abc.Clock) -> None:
    async with world() as fabric:
        vm = fabric.vms["vm1"]
        await fabric.detach(vm, grace=0.1)
        with pytest.raises(NotAttached):
            await VMM(fabric).migrate(vm, "hostB")
        never = fabric.create_vm("vm2", address="127.0.0.2")
        with pytest.raises(NotAttached):
            await VMM(fabric).migrate(never, "hostB")


async def test_a_full_or_crashed_destination_is_refused(autojump_clock: trio.abc.Clock) -> None:
    async with world() as fabric:
        full = fabric.add_host("full", num_vfs=0)
        vm = fabric.vms["vm1"]
        with pytest.raises(ResourceExhausted):
            await VMM(fabric).migrate(vm, full)
        fabric.hosts["hostC"].crash()
        with pytest.raises(InvalidMigration):
            await VMM(fabric).migrate(vm, "hostC")
        assert vm.device is not None and not vm.device.removed


async def test_one_migration_per_vm_at_a_time(autojump_clock: trio.abc.Clock) -> None:
    async with world() as fabric:
        vm = fabric.vms["vm1"]
        first, second = VMM(fabric), VMM(fabric)
        done: list[Timeline] = []

        async def run_first() -> None:
            done.append(await first.migrate(vm, "hostB"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_first)
            await trio.sleep(1.0)
            with pytest.raises(MigrationInProgress):
                await first.migrate(vm, "hostC")
            # A second VMM on the same fabric is refused too.
            with pytest.raises(MigrationInProgress):
                await second.migrate(vm, "hostC")
        assert done[0].outcome == "migrated" and vm.host is fabric.hosts["hostB"]
        # Once it is over the VM may move again.
        tl = await second.migrate(vm, "hostC")
        assert tl.source == "hostB" and tl.destination == "hostC"


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_a_grace_of_zero_is_a_surprise_removal(
    autojump_clock: trio.abc.Clock, strategy: str
) -> None:
    async with world() as fabric:
        vm = fabric.vms["vm1"]
        old = vm.device
        assert old is not None
        ctx = await old.open()
        pd = ctx.alloc_pd()  # held, never released: a surprise removal does not wait
        vmm = VMM(fabric)
        tl = await vmm.migrate(vm, "hostB", strategy=strategy, grace=0)
        assert tl.surprise and tl.outcome == "migrated"
        assert tl.stage("detach").duration == pytest.approx(vmm.profile["hotplug_detach"])
        assert old.removed and vm.device is not None and vm.device is not old
        event = await ctx.get_async_event()
        assert event.type is AsyncEventType.DEVICE_REMOVAL and event.deadline is None
        with pytest.raises(DeviceRemoved):
            pd.reg_mr(bytearray(64), Access.LOCAL_WRITE)


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_held_verbs_resources_make_the_migration_fail_cleanly(
    autojump_clock: trio.abc.Clock, strategy: str
) -> None:
    """The seed's problem 1b: nothing releases the QP, so the detach times out."""
    with trio.fail_after(120):
        async with world() as fabric:
            vm = fabric.vms["vm1"]
            old = vm.device
            assert old is not None
            ctx = await old.open()
            pd = ctx.alloc_pd()
            cq = ctx.create_cq(16)
            qp = pd.create_qp(cq, cq)
            vmm = VMM(fabric)
            with pytest.raises(DetachRefused) as info:
                await vmm.migrate(vm, "hostB", strategy=strategy, grace=1.5)
            assert isinstance(info.value, DeviceBusy) and not info.value.vm_lost
            tl = info.value.timeline
            assert isinstance(tl, Timeline) and tl.outcome == "detach-refused"
            assert tl.stages[-1].name == "detach"
            assert tl.stages[-1].duration == pytest.approx(1.5)
            assert tl.stage("stop-and-copy") is None and tl.pause == 0
            # The VM is where it was, with the same working VF and QP.
            assert vm.host is fabric.hosts["hostA"] and vm.device is old and not old.removed
            assert qp.qp_num in old.function.space.qps and tl in vmm.history
            ctx.close()
            # With the resources released the same request now succeeds.
            done = await vmm.migrate(vm, "hostB", strategy=strategy, grace=1.5)
            assert done.outcome == "migrated" and vm.host is fabric.hosts["hostB"]


async def test_a_guest_that_releases_in_time_lets_the_detach_proceed(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world() as fabric:
        vm = fabric.vms["vm1"]
        assert vm.device is not None
        ctx = await vm.device.open()
        ctx.alloc_pd()
        vmm = VMM(fabric)

        async def guest() -> None:
            await ctx.get_async_event()
            await trio.sleep(0.3)  # the library tears its resources down
            ctx.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(guest)
            tl = await vmm.migrate(vm, "hostB", strategy="three-stage", grace=1.0)
        release_and_unplug = 0.3 + vmm.profile["hotplug_detach"]
        assert tl.stage("detach").duration == pytest.approx(release_and_unplug)


async def _crash_at(fabric: Fabric, host: str, when: float) -> None:
    await trio.sleep_until(when)
    fabric.hosts[host].crash()


async def _migrate_with_crash(
    vmm: VMM, host: str, when: float, **kwargs: object
) -> Timeline | MigrationError:
    """Migrate vm1 to hostB while ``host`` crashes at ``when``; return the outcome."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_crash_at, vmm.fabric, host, when)
        try:
            return await vmm.migrate(vmm.fabric.vms["vm1"], "hostB", **kwargs)  # type: ignore[arg-type]
        except MigrationError as exc:
            return exc
        finally:
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_destination_crash_during_precopy_leaves_the_vm_at_its_source(
    autojump_clock: trio.abc.Clock, strategy: str
) -> None:
    with trio.fail_after(120):
        async with world() as fabric:
            vm = fabric.vms["vm1"]
            assert vm.device is not None
            old, old_lid = vm.device, vm.device.lid
            vmm = VMM(fabric)
            when = trio.current_time() + 2.0
            crash = await _migrate_with_crash(vmm, "hostB", when, strategy=strategy)
            assert isinstance(crash, HostCrashed)
            assert not crash.vm_lost and isinstance(crash.timeline, Timeline)
            assert crash.timeline.outcome == "destination-crashed"
            assert crash.timeline.stage("stop-and-copy") is None
            assert vm.host is fabric.hosts["hostA"] and not vm.crashed
            assert vm.device is not None and vm.device.function.host is fabric.hosts["hostA"]
            if strategy == "late-detach":
                # It never lost its VF; the crash was noticed within one check.
                assert vm.device is old and not old.removed
                assert crash.timeline.end - when <= vmm.crash_check
            else:
                # It had detached its VF: it gets a new one at home, same LID (vSwitch).
                assert vm.device is not old and vm.device.lid == old_lid
                assert crash.timeline.stage("attach") is not None


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_source_crash_before_the_switch_over_loses_the_vm(
    autojump_clock: trio.abc.Clock, strategy: str
) -> None:
    async with world() as fabric:
        vm = fabric.vms["vm1"]
        when = trio.current_time() + 2.0
        crash = await _migrate_with_crash(VMM(fabric), "hostA", when, strategy=strategy)
        assert isinstance(crash, HostCrashed) and isinstance(crash.timeline, Timeline)
        assert crash.vm_lost and vm.crashed and vm.device is None
        assert crash.timeline.outcome == "source-crashed"
        with pytest.raises(InvalidMigration):
            await VMM(fabric).migrate(vm, "hostC")


async def test_after_the_switch_over_only_the_destination_matters(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world() as fabric:
        vm = fabric.vms["vm1"]
        vmm = VMM(fabric)
        resume = vmm.plan().precopy_time + 1.0  # inside the attach stage (three-stage)
        tl = await _migrate_with_crash(vmm, "hostA", trio.current_time() + resume)
        assert isinstance(tl, Timeline) and tl.outcome == "migrated"
        assert vm.device is not None and not vm.crashed

    async with world() as fabric:
        vm = fabric.vms["vm1"]
        crash = await _migrate_with_crash(VMM(fabric), "hostB", trio.current_time() + resume)
        assert isinstance(crash, HostCrashed) and isinstance(crash.timeline, Timeline)
        assert crash.vm_lost and vm.crashed and vm.device is None
        assert crash.timeline.outcome == "destination-crashed"
        assert crash.timeline.stage("stop-and-copy") is not None


async def test_a_source_crash_while_the_detach_waits_is_a_crash_not_a_refusal(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world() as fabric:
        vm = fabric.vms["vm1"]
        assert vm.device is not None
        await vm.device.open()  # held: the detach waits out its grace
        when = trio.current_time() + 0.5
        crash = await _migrate_with_crash(VMM(fabric), "hostA", when, grace=2.0)
        assert isinstance(crash, HostCrashed) and not isinstance(crash, DeviceBusy)
        assert crash.vm_lost and vm.crashed
        assert isinstance(crash.timeline, Timeline)
        assert crash.timeline.outcome == "source-crashed"
