"""The VMM: live migration of a VM holding an SR-IOV VF, as the seed's Xen did it.

Two strategies (seed, "The VMM level migration process" and "Late-detach
migration"):

* ``three-stage`` — detach the VF, migrate the VM (pre-copy rounds, then
  stop-and-copy and restore), attach a new VF to the resumed guest on the
  destination. The VM runs without a device through the whole pre-copy.
* ``late-detach`` — keep the VF through pre-copy; detach it just before
  stop-and-copy; do not give the destination a VF during the early restore but
  attach the new one "at the final stage of the restoration": the guest is
  still paused for the hot-plug and unpauses once it is done. The VM's own
  pause is then stop-and-copy + restore + attach; under three-stage it is
  stop-and-copy + restore. :class:`~.timeline.Stage` marks the paused stages.

Every stage costs what the timing profile (:mod:`.profile`) says and is spent
as a trio sleep on the fabric's clock, so under ``MockClock(autojump_threshold=0)``
a seconds-long migration runs instantly and the same inputs give the same
:class:`~.timeline.Timeline`. The memory copy follows :mod:`.precopy`.

The hot-plug primitives themselves are the fabric's (``fabric.detach`` /
``fabric.attach``); the VMM composes them and adds the time they take:

* detach: ``fabric.detach(vm, grace)`` (waits for the guest to release the
  device, up to ``grace``), then ``hotplug_detach``. ``grace=0`` is a surprise
  removal. A refusal (:class:`~rdsx.errors.DeviceBusy`) abandons the migration
  before the VM stops: it stays on its source with its VF.
* restore: ``resume`` (rebuild and unpause the guest on the destination).
* attach: ``hotplug_attach``, then sm-update: ``sm_reaction``, the fabric's
  attach (the SM assigns the vGUID, and under vSwitch re-homes the VM's old
  LID, writing only the LFT blocks whose route changed), then one ``smp_rtt``
  per SMP it sent.

With a standby device (a VM created with ``standby=True``, :mod:`.standby`),
the guest is never without a device: the emulated one carries its traffic from
the VF's removal notice on. So BOTH strategies then attach the new VF to the
running guest after the restore: the seed attached it inside the pause under
late detach only because the guest had no network otherwise; with the standby
there is nothing to gain by keeping the guest stopped for a hot-plug, and the
pause is stop-and-copy + restore. Around the pause: the emulated device is
frozen at the start of stop-and-copy (packets to and from it are dropped);
under vSwitch its LID is re-homed to the destination during the restore (the
LFT blocks that change, charged like the VF's LID follow, within the restore's
time unless they take longer) and it thaws at the resume, its QPs resyncing
with their peers; under the shared port model it cannot keep its identity: the
old incarnation is surprise-removed at the resume and a new one offered on the
destination. The new VF's arrival retires the standby (a graceful removal
notice, ``Fabric.standby_grace``); :attr:`~.timeline.Timeline.standby` marks
when it carried the traffic.

Crashes: the VMM notices a crashed source or destination at stage boundaries
and, while memory is being copied, every :attr:`VMM.crash_check` seconds (the
migration stream breaking). A crashed destination before the VM resumed there
abandons the migration and the VM carries on at its source (with a new VF if it
had lost its own); any other crash loses the VM.
"""

from __future__ import annotations

import math
import weakref
from pathlib import Path
from typing import NoReturn, TypeVar

import trio

from rdsx.errors import (
    DetachRefused,
    DeviceBusy,
    HostCrashed,
    InvalidArgument,
    InvalidMigration,
    MigrationInProgress,
    NotAttached,
    UnknownHost,
)

from . import standby as sb
from .fabric import Fabric
from .hca import Host, PortModel
from .precopy import PrecopyPlan, plan_precopy
from .profile import TimingProfile, load_profile
from .timeline import (
    ATTACH,
    DETACH,
    PRE_COPY,
    RESTORE,
    SM_UPDATE,
    STOP_AND_COPY,
    Stage,
    Strategy,
    Timeline,
)
from .vm import Vm

__all__ = ["VMM", "plan_for"]

T = TypeVar("T")

# VMs being migrated, per fabric, whichever VMM instance migrates them.
_MIGRATING: weakref.WeakKeyDictionary[Fabric, set[str]] = weakref.WeakKeyDictionary()


def plan_for(
    profile: TimingProfile,
    *,
    memory: int | None = None,
    dirty_rate: float | None = None,
    working_set: int | None = None,
) -> PrecopyPlan:
    """Return the pre-copy plan of a guest under ``profile`` (its defaults where not given)."""
    p = profile
    return plan_precopy(
        memory=int(p["vm_memory"] if memory is None else memory),
        dirty_rate=p["vm_dirty_rate"] if dirty_rate is None else dirty_rate,
        working_set=int(p["vm_working_set"] if working_set is None else working_set),
        bandwidth=p["migration_bandwidth"],
        page_size=int(p["page_size"]),
        max_rounds=int(p["max_rounds"]),
        stop_threshold=p["stop_threshold"],
        max_sent_factor=p["max_sent_factor"],
    )


def _first(given: T | None, fallback: T | None) -> T | None:
    return given if given is not None else fallback


class _Crash(Exception):
    """Internal: a host involved in the migration crashed."""

    def __init__(self, host: Host) -> None:
        super().__init__(host.name)
        self.host = host


class _Run:
    """The mutable record of one migration while it runs."""

    def __init__(self, fabric: Fabric, vm: Vm, source: Host, dest: Host) -> None:
        self.fabric = fabric
        self.vm = vm
        self.source = source
        self.dest = dest
        self.start = trio.current_time()
        self.smps0 = fabric.sm.smps_sent
        self.sa0 = fabric.sm.sa_queries
        self.lft0 = fabric.sm.lft_blocks_written
        self.stages: list[Stage] = []
        self.resumed_on_dest = False
        self.device_ready: float | None = None
        self.released: float | None = None
        self.new_lid: int | None = None
        #: True while the VM's standby device is frozen by this migration.
        self.frozen = False
        #: The hosts whose crash matters now: both until the guest resumes.
        self.watch: tuple[Host, ...] = (source, dest)

    def add(
        self,
        name: str,
        start: float,
        *,
        round: int | None = None,
        nbytes: int = 0,
        smps: int = 0,
        paused: bool = False,
    ) -> None:
        end = trio.current_time()
        stage = Stage(
            name=name, start=start, end=end, round=round, bytes=nbytes, smps=smps, paused=paused
        )
        self.stages.append(stage)


class VMM:
    """Migrates VMs between the hosts of one fabric.

    Args:
        fabric: the fabric whose hosts and VMs it manages.
        profile: a shipped profile name (``"seed-cx2-xen"``, ``"modern"``), a
            path to a profile JSON file, or a loaded :class:`TimingProfile`.

    Attributes:
        fabric: the fabric.
        profile: the timing profile in use.
        crash_check: how often, in seconds, a memory copy notices a crashed
            peer (assumption: the migration stream breaks within 100 ms).
        history: every timeline this VMM produced, failed ones included.

    Raises:
        InvalidArgument: the profile cannot be loaded.
    """

    def __init__(
        self, fabric: Fabric, profile: str | Path | TimingProfile = "seed-cx2-xen"
    ) -> None:
        self.fabric = fabric
        self.profile = load_profile(profile)
        self.crash_check = 0.1
        self.history: list[Timeline] = []

    def plan(
        self,
        *,
        memory: int | None = None,
        dirty_rate: float | None = None,
        working_set: int | None = None,
    ) -> PrecopyPlan:
        """Return the pre-copy plan for a guest (the profile's defaults where not given)."""
        return plan_for(self.profile, memory=memory, dirty_rate=dirty_rate, working_set=working_set)

    async def migrate(
        self,
        vm: Vm,
        to: Host | str,
        *,
        strategy: Strategy | str = Strategy.THREE_STAGE,
        grace: float | None = 2.0,
        memory: int | None = None,
        dirty_rate: float | None = None,
        working_set: int | None = None,
    ) -> Timeline:
        """Live-migrate ``vm`` to host ``to``.

        Args:
            vm: a VM of this fabric holding a VF.
            to: the destination host, or its name.
            strategy: ``"three-stage"`` or ``"late-detach"``.
            grace: seconds the guest gets to release the VF when it is detached
                (the ``DEVICE_REMOVAL`` deadline). ``0`` (or None) is a surprise
                removal: the VF is pulled at once.
            memory: guest memory in bytes (default: ``vm.memory`` if the VM has
                one, else the profile's ``vm_memory``).
            dirty_rate: bytes per second the guest dirties (``vm.dirty_rate``,
                else the profile's).
            working_set: where dirty bytes saturate (``vm.working_set``, else
                the profile's).

        Returns:
            The migration's :class:`Timeline`. The VM then runs on ``to`` with
            a new VF (under vSwitch with its old LID, under shared with the
            destination port's LID).

        Raises:
            InvalidMigration: ``to`` is the VM's own host or has crashed, the
                VM crashed, the strategy is unknown or ``grace`` is negative.
            UnknownHost: ``to`` is not a host of this fabric.
            NotAttached: the VM holds no VF.
            MigrationInProgress: the VM is already migrating.
            ResourceExhausted: the destination has no free VF.
            DetachRefused: the VF was still in use at the grace deadline (also a
                :class:`~rdsx.errors.DeviceBusy`); the VM stays on its source
                with its VF. ``.timeline`` holds what ran.
            HostCrashed: the source or destination crashed; ``.vm_lost`` says
                whether the VM went with it; ``.timeline`` holds what ran.
        """
        try:
            strat = Strategy(strategy)
        except ValueError:
            raise InvalidMigration(f"unknown strategy {strategy!r}") from None
        if grace is not None and (math.isnan(grace) or grace < 0):
            raise InvalidMigration(f"grace must be >= 0 seconds, not {grace}")
        busy = _MIGRATING.setdefault(self.fabric, set())
        if vm.name in busy:
            raise MigrationInProgress(f"{vm.name} is already migrating")
        dest = self._host(to)
        if vm.crashed:
            raise InvalidMigration(f"{vm.name} crashed with its host")
        if vm.device is None or vm.host is None:
            raise NotAttached(f"{vm.name} holds no VF")
        source = vm.host
        if dest is source:
            raise InvalidMigration(f"{vm.name} already runs on {dest.name}")
        if dest.crashed:
            raise InvalidMigration(f"destination {dest.name} has crashed")
        dest.hca.free_vf()  # ResourceExhausted now rather than after the VM moved
        # Explicit arguments first, then what the VM says of itself, then the profile.
        plan = self.plan(
            memory=_first(memory, getattr(vm, "memory", None)),
            dirty_rate=_first(dirty_rate, getattr(vm, "dirty_rate", None)),
            working_set=_first(working_set, getattr(vm, "working_set", None)),
        )
        busy.add(vm.name)
        try:
            return await self._migrate(vm, source, dest, strat, grace, plan)
        finally:
            busy.discard(vm.name)

    # ------------------------------------------------------------------ internals

    def _host(self, to: Host | str) -> Host:
        name = to if isinstance(to, str) else to.name
        host = self.fabric.hosts.get(name)
        if host is None or (not isinstance(to, str) and host is not to):
            raise UnknownHost(f"no host {name!r} in this fabric")
        return host

    async def _migrate(
        self,
        vm: Vm,
        source: Host,
        dest: Host,
        strategy: Strategy,
        grace: float | None,
        plan: PrecopyPlan,
    ) -> Timeline:
        run = _Run(self.fabric, vm, source, dest)
        device = vm.device
        old_lid = device.lid if device is not None else None
        surprise = grace is None or grace == 0
        try:
            if strategy is Strategy.THREE_STAGE:
                await self._detach(run, grace)
            for rnd in plan.rounds:
                t0 = trio.current_time()
                await self._copy(run, rnd.duration)
                run.add(PRE_COPY, t0, round=rnd.index, nbytes=rnd.bytes)
            if strategy is Strategy.LATE_DETACH:
                await self._detach(run, grace)
            t0 = trio.current_time()
            p = self.profile
            if vm.standby:
                sb.freeze(self.fabric, vm)
                run.frozen = True
            await self._copy(run, p["suspend"] + plan.final_copy)
            run.add(STOP_AND_COPY, t0, nbytes=plan.final_bytes, paused=True)
            t0 = trio.current_time()
            # vSwitch: the standby's LID follows the VM while it is restored.
            smps = sb.rehome(self.fabric, vm, dest) if vm.standby else 0
            await trio.sleep(max(p["resume"], smps * p["smp_rtt"]))
            self._check(run)
            run.add(RESTORE, t0, paused=True, smps=smps)
            late = strategy is Strategy.LATE_DETACH and not vm.standby
            if late:
                # Seed: the new VF is attached at the final stage of the restoration,
                # the guest still paused; it unpauses with the VF plugged in.
                await self._hotplug(run, paused=True)
            # The guest runs on the destination: from here on it lives there.
            vm.host = dest
            run.resumed_on_dest = True
            run.watch = (dest,)
            if run.frozen:
                run.frozen = False
                if self.fabric.port_model is PortModel.VSWITCH:
                    sb.thaw(self.fabric, vm)
                else:
                    vm.backend.frozen = False
                    sb.reincarnate(self.fabric, vm)
            if not late:
                await self._hotplug(run, paused=False)
            await self._sm_update(run, dest, old_lid)
        except DeviceBusy as exc:
            crashed = self._crashed(run)
            if crashed is not None:
                # The source died under the detach: that, not the refusal, is the outcome.
                await self._after_crash(run, crashed, old_lid, strategy, plan, surprise)
            timeline = self._timeline(run, strategy, plan, old_lid, surprise, "detach-refused")
            raise DetachRefused(
                f"{vm.name}: VF still in use at the grace deadline; it stays on "
                f"{source.name}: {exc}",
                timeline=timeline,
            ) from exc
        except _Crash as crash:
            await self._after_crash(run, crash.host, old_lid, strategy, plan, surprise)
        return self._timeline(run, strategy, plan, old_lid, surprise, "migrated")

    async def _detach(self, run: _Run, grace: float | None) -> None:
        t0 = trio.current_time()
        try:
            await self.fabric.detach(run.vm, None if grace == 0 else grace)
        except DeviceBusy:
            # The refusal took the whole grace period: the stage shows it.
            run.add(DETACH, t0)
            raise
        run.released = trio.current_time()
        await trio.sleep(self.profile["hotplug_detach"])
        run.add(DETACH, t0)
        self._check(run)

    async def _attach(self, run: _Run, host: Host, old_lid: int | None) -> None:
        """Hot-plug a VF into the running guest on ``host`` and let the SM set it up."""
        await self._hotplug(run, paused=False)
        await self._sm_update(run, host, old_lid)

    async def _hotplug(self, run: _Run, *, paused: bool) -> None:
        t0 = trio.current_time()
        await trio.sleep(self.profile["hotplug_attach"])
        run.add(ATTACH, t0, paused=paused)
        self._check(run)

    async def _sm_update(self, run: _Run, host: Host, old_lid: int | None) -> None:
        p = self.profile
        t0 = trio.current_time()
        await trio.sleep(p["sm_reaction"])
        self._check(run)
        sm = self.fabric.sm
        smps0 = sm.smps_sent
        lid = old_lid if self.fabric.port_model is PortModel.VSWITCH else None
        try:
            device = await self.fabric.attach(run.vm, host, lid=lid)
        except InvalidArgument:
            # The old LID was given to someone else meanwhile: take a new one.
            device = await self.fabric.attach(run.vm, host)
        run.device_ready = trio.current_time()
        run.new_lid = device.lid
        smps = sm.smps_sent - smps0
        # Already on its way to the VM; the SMPs' microseconds end the stage.
        await trio.sleep(smps * p["smp_rtt"])
        run.add(SM_UPDATE, t0, smps=smps)
        self._check(run)

    async def _copy(self, run: _Run, duration: float) -> None:
        """Copy memory for ``duration`` seconds, noticing a crash every ``crash_check``."""
        deadline = trio.current_time() + duration
        while True:
            self._check(run)
            now = trio.current_time()
            if now >= deadline:
                return
            await trio.sleep_until(min(deadline, now + self.crash_check))

    def _crashed(self, run: _Run) -> Host | None:
        return next((host for host in run.watch if host.crashed), None)

    def _check(self, run: _Run) -> None:
        crashed = self._crashed(run)
        if crashed is not None:
            raise _Crash(crashed)

    async def _after_crash(
        self,
        run: _Run,
        crashed: Host,
        old_lid: int | None,
        strategy: Strategy,
        plan: PrecopyPlan,
        surprise: bool,
    ) -> NoReturn:
        vm = run.vm
        lost = crashed is (run.dest if run.resumed_on_dest else run.source)
        outcome = f"{'destination' if crashed is run.dest else 'source'}-crashed"
        if not lost:
            vm.host = run.source
            run.watch = (run.source,)
            if vm.device is None:
                # Back on the source without a VF: give it one, as a failed restore would.
                try:
                    await self._attach(run, run.source, old_lid)
                except _Crash:
                    lost = True
        if run.frozen:
            run.frozen = False
            if lost:
                sb.drop_all(self.fabric, vm)
            else:
                sb.rehome(self.fabric, vm, run.source)
                sb.thaw(self.fabric, vm)
        if lost:
            # A VF-less VM is on no VF list of its host: the fabric cannot mark it.
            vm.crashed = True
            vm.device = None
        timeline = self._timeline(run, strategy, plan, old_lid, surprise, outcome)
        where = "the VM is lost" if lost else f"{vm.name} carries on at {run.source.name}"
        raise HostCrashed(
            f"{crashed.name} crashed while migrating {vm.name}: {where}",
            timeline=timeline,
            vm_lost=lost,
        )

    def _standby_intervals(self, run: _Run) -> tuple[tuple[float, float], ...]:
        """The VM's standby incarnations during ``run``, each cut at the new VF's arrival."""
        now = trio.current_time()
        cut = run.device_ready if run.device_ready is not None else now
        out = []
        for start, end in run.vm.standby_log:
            assert start is not None
            stop = min(end if end is not None else now, cut)
            if start >= run.start and stop >= start:
                out.append((start, stop))
        return tuple(out)

    def _timeline(
        self,
        run: _Run,
        strategy: Strategy,
        plan: PrecopyPlan,
        old_lid: int | None,
        surprise: bool,
        outcome: str,
    ) -> Timeline:
        sm = self.fabric.sm
        timeline = Timeline(
            vm=run.vm.name,
            source=run.source.name,
            destination=run.dest.name,
            strategy=strategy,
            port_model=self.fabric.port_model.value,
            profile=self.profile.name,
            stages=tuple(run.stages),
            start=run.start,
            end=trio.current_time(),
            smps=sm.smps_sent - run.smps0,
            sa_queries=sm.sa_queries - run.sa0,
            lft_blocks=sm.lft_blocks_written - run.lft0,
            device_ready=run.device_ready,
            released=run.released,
            old_lid=old_lid,
            new_lid=run.new_lid,
            surprise=surprise,
            precopy_stop=plan.reason,
            outcome=outcome,
            standby=self._standby_intervals(run),
        )
        self.history.append(timeline)
        return timeline
