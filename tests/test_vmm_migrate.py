"""VMM migrations in virtual time: stage order and costs, the VF's life, LIDs, SMPs."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from rdsx.verbs import AsyncEventType
from transports.sim import Fabric, open_fabric
from transports.sim.timeline import Strategy, Timeline
from transports.sim.vmm import VMM

STRATEGIES = ["three-stage", "late-detach"]
MODELS = ["shared", "vswitch"]
SEED_ORDER = {
    "three-stage": ["detach", "pre-copy", "stop-and-copy", "restore", "attach", "sm-update"],
    "late-detach": ["pre-copy", "detach", "stop-and-copy", "restore", "attach", "sm-update"],
}
#: The stages the guest is paused for (seed: late detach attaches at the end of the restore).
PAUSED = {
    "three-stage": ("stop-and-copy", "restore"),
    "late-detach": ("stop-and-copy", "restore", "attach"),
}


@asynccontextmanager
async def world(model: str, *, switches: int = 1) -> AsyncIterator[Fabric]:
    async with open_fabric(port_model=model, seed=0, switches=switches) as fabric:
        fabric.add_host("hostA", num_vfs=2)
        fabric.add_host("hostB", num_vfs=2)
        vm = fabric.create_vm("vm1", address="127.0.0.1")
        await fabric.attach(vm, fabric.hosts["hostA"])
        yield fabric


def _collapse(timeline: Timeline) -> list[str]:
    names: list[str] = []
    for stage in timeline.stages:
        if not names or names[-1] != stage.name:
            names.append(stage.name)
    return names


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("profile", ["seed-cx2-xen", "modern"])
async def test_stage_order_and_costs_come_from_the_profile(
    autojump_clock: trio.abc.Clock, model: str, strategy: str, profile: str
) -> None:
    with trio.fail_after(120):
        async with world(model) as fabric:
            vmm = VMM(fabric, profile=profile)
            p, plan = vmm.profile, vmm.plan()
            t0 = trio.current_time()
            tl = await vmm.migrate(fabric.vms["vm1"], "hostB", strategy=strategy, grace=1.0)
            assert _collapse(tl) == SEED_ORDER[strategy]
            assert (tl.strategy, tl.port_model, tl.profile) == (Strategy(strategy), model, profile)
            assert tl.start == t0 and tl.end == trio.current_time()
            for before, after in zip(tl.stages, tl.stages[1:], strict=False):
                assert before.end == pytest.approx(after.start)
            assert tl.stages[0].start == t0 and tl.stages[-1].end == tl.end
            rounds = tl.named("pre-copy")
            assert [(s.round, s.bytes) for s in rounds] == [(r.index, r.bytes) for r in plan.rounds]
            assert [s.duration for s in rounds] == pytest.approx([r.duration for r in plan.rounds])
            # Nothing holds the VF, so the detach costs only the hot-unplug.
            assert tl.stage("detach").duration == pytest.approx(p["hotplug_detach"])
            copy = p["suspend"] + plan.final_copy
            assert tl.stage("stop-and-copy").duration == pytest.approx(copy)
            assert tl.stage("restore").duration == pytest.approx(p["resume"])
            assert tl.paused_stages == PAUSED[strategy]
            late = p["hotplug_attach"] if strategy == "late-detach" else 0.0
            assert tl.pause == pytest.approx(copy + p["resume"] + late)
            assert tl.stage("stop-and-copy").bytes == plan.final_bytes
            assert tl.stage("attach").duration == pytest.approx(p["hotplug_attach"])
            sm = tl.stage("sm-update")
            assert sm.smps == tl.smps
            assert sm.duration == pytest.approx(p["sm_reaction"] + sm.smps * p["smp_rtt"])
            assert tl.device_ready == pytest.approx(sm.start + p["sm_reaction"])
            assert tl.precopy_stop == plan.reason and tl.outcome == "migrated"
            # Nothing held the VF: it was released as soon as the detach began.
            assert tl.released == tl.stage("detach").start == tl.removal_notice
            assert tl.device_gap == (tl.released, tl.device_ready)
            assert tl in vmm.history
            vm = fabric.vms["vm1"]
            assert vm.host is fabric.hosts["hostB"] and vm.device is not None
            assert vm.device.function.host is fabric.hosts["hostB"]


def test_same_inputs_give_the_same_timeline() -> None:
    async def once() -> Timeline:
        async with world("vswitch") as fabric:
            return await VMM(fabric).migrate(fabric.vms["vm1"], "hostB", strategy="late-detach")

    runs = [trio.run(once, clock=trio.testing.MockClock(autojump_threshold=0)) for _ in range(2)]
    assert runs[0] == runs[1]


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_the_vf_is_present_exactly_until_its_detach(
    autojump_clock: trio.abc.Clock, strategy: str
) -> None:
    """Late detach keeps the VF through pre-copy; three-stage pulls it first."""
    with trio.fail_after(120):
        async with world("vswitch") as fabric:
            vm = fabric.vms["vm1"]
            old = vm.device
            assert old is not None
            ctx = await old.open()
            vmm = VMM(fabric)
            removal_at: list[float] = []
            present_mid_precopy: list[bool] = []

            async def guest() -> None:
                event = await ctx.get_async_event()
                assert event.type is AsyncEventType.DEVICE_REMOVAL
                removal_at.append(trio.current_time())
                ctx.close()  # release in time: the detach goes ahead

            async def probe() -> None:
                await trio.sleep(vmm.plan().precopy_time / 2 + 1.0)
                present_mid_precopy.append(vm.device is old and not old.removed)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(guest)
                nursery.start_soon(probe)
                tl = await vmm.migrate(vm, "hostB", strategy=strategy, grace=2.0)
            detach = tl.stage("detach")
            assert removal_at == [detach.start]
            assert present_mid_precopy == [strategy == "late-detach"]
            if strategy == "late-detach":
                assert detach.start == pytest.approx(tl.named("pre-copy")[-1].end)
                assert detach.end == pytest.approx(tl.stage("stop-and-copy").start)
            else:
                assert detach.end == pytest.approx(tl.named("pre-copy")[0].start)
            assert old.removed and vm.device is not old


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_under_vswitch_the_lid_follows_the_vm(
    autojump_clock: trio.abc.Clock, strategy: str
) -> None:
    async with world("vswitch") as fabric:
        vm = fabric.vms["vm1"]
        assert vm.device is not None
        old_lid, old_guid = vm.device.lid, vm.device.guid
        tl = await VMM(fabric).migrate(vm, "hostB", strategy=strategy)
        assert vm.device.lid == old_lid == tl.old_lid == tl.new_lid
        assert vm.device.guid != old_guid
        assert fabric.sm.lft(0)[old_lid] == "host:hostB"
        # PortInfo (LID) + GUIDInfo (vGUID) + one LFT block on the one switch.
        assert (tl.smps, tl.lft_blocks) == (3, 1)
        assert tl.stage("sm-update").smps == tl.smps


@pytest.mark.parametrize("strategy", STRATEGIES)
async def test_under_shared_the_lid_is_the_destination_port(
    autojump_clock: trio.abc.Clock, strategy: str
) -> None:
    async with world("shared") as fabric:
        vm = fabric.vms["vm1"]
        port_a = fabric.hosts["hostA"].hca.port
        port_b = fabric.hosts["hostB"].hca.port
        assert vm.device is not None and port_a is not None and port_b is not None
        assert vm.device.lid == port_a.lid
        tl = await VMM(fabric).migrate(vm, "hostB", strategy=strategy)
        assert vm.device.lid == port_b.lid == tl.new_lid != tl.old_lid == port_a.lid
        # Only the new vGUID's GUIDInfo: no LID is assigned, no LFT entry moves.
        assert (tl.smps, tl.lft_blocks) == (1, 0)
        # The VF draws QP numbers from the destination HCA's one space.
        assert vm.device.function.space is fabric.hosts["hostB"].hca.space


async def test_lft_updates_are_counted_per_switch(autojump_clock: trio.abc.Clock) -> None:
    # A spine (switch 0) and two leaves; hostA and hostB sit on different leaves,
    # so the moved LID's route changes on all three switches: one block each.
    async with world("vswitch", switches=3) as fabric:
        a, b = fabric.hosts["hostA"], fabric.hosts["hostB"]
        assert a.switch != b.switch
        vm = fabric.vms["vm1"]
        assert vm.device is not None
        lid = vm.device.lid
        before = [fabric.sm.lft(s).get(lid) for s in range(3)]
        tl = await VMM(fabric).migrate(vm, b)
        after = [fabric.sm.lft(s).get(lid) for s in range(3)]
        changed = sum(x != y for x, y in zip(before, after, strict=True))
        assert tl.lft_blocks == changed == 3


async def test_sa_queries_during_the_migration_are_counted(autojump_clock: trio.abc.Clock) -> None:
    async with world("vswitch") as fabric:
        a = fabric.hosts["hostA"]
        port_b = fabric.hosts["hostB"].hca.port
        assert port_b is not None
        vm = fabric.vms["vm1"]

        async def peer() -> None:
            for _ in range(3):
                await trio.sleep(1.0)
                fabric.path_to(a, port_b.lid, 0)

        fabric.path_to(a, port_b.lid, 0)  # before: not counted
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer)
            tl = await VMM(fabric).migrate(vm, "hostB")
        assert tl.sa_queries == 3


async def test_the_table_prints_every_stage(autojump_clock: trio.abc.Clock) -> None:
    async with world("shared") as fabric:
        tl = await VMM(fabric).migrate(fabric.vms["vm1"], "hostB", strategy="late-detach")
        text = tl.format_table()
        # head, column titles, one line per stage, the no-VF line, the summary line
        assert text.count("\n") == len(tl.stages) + 3 and "no VF from" in text
        assert "late-detach" in text and "LID" in text
        assert not math.isnan(tl.pause)


async def test_the_guest_size_comes_from_the_call_the_vm_or_the_profile(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world("vswitch") as fabric:
        vm = fabric.vms["vm1"]
        vmm = VMM(fabric)
        tl = await vmm.migrate(vm, "hostB", memory=64 * 2**20, dirty_rate=0)
        assert [s.bytes for s in tl.named("pre-copy")] == [64 * 2**20]
        assert tl.stage("stop-and-copy").bytes == 0
        vm.memory = 32 * 2**20  # type: ignore[attr-defined]
        tl = await vmm.migrate(vm, "hostA", dirty_rate=0)
        assert [s.bytes for s in tl.named("pre-copy")] == [32 * 2**20]
        del vm.memory  # type: ignore[attr-defined]
        tl = await vmm.migrate(vm, "hostB")
        assert tl.named("pre-copy")[0].bytes == vmm.profile["vm_memory"]
