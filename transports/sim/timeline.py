"""What one migration did and when: the stages, the VM's own pause, what the SM spent.

A :class:`Timeline` is what :meth:`transports.sim.vmm.VMM.migrate` returns (and
what a failed migration carries on its exception). Times are
``trio.current_time()`` values of the fabric's clock, so under a
``MockClock`` they are virtual seconds.

Stage names, in the order the two strategies run them (``*`` = the guest is
paused; :attr:`Stage.paused` says so per stage)::

    three-stage:  detach, pre-copy ×N, stop-and-copy*, restore*, attach, sm-update
    late-detach:  pre-copy ×N, detach, stop-and-copy*, restore*, attach*, sm-update

``stop-and-copy`` suspends the guest and sends the last dirty pages;
``restore`` rebuilds it on the destination, still paused. ``attach`` is the
hot-plug of the new VF: under three-stage into the running guest after the
migration (stage 3 of the seed's three); under late detach "at the final stage
of the restoration" (seed, "Late-detach migration"), so the guest is still
paused for it and unpauses when it ends. The VM's own pause
(:attr:`Timeline.pause`) is the sum of the paused stages. ``sm-update`` is the
subnet manager making the new port usable (vGUID and LID under the shared port
model, LFT entries under vSwitch), the guest running. The new VF reaches the VM
during ``sm-update``, once the SM has reacted (:attr:`Timeline.device_ready`);
the SMPs' own round trips, microseconds, are charged after it.

With a standby device (``create_vm(..., standby=True)``) both strategies
attach the new VF to the running guest after the restore, so the pause is
stop-and-copy + restore; :attr:`Timeline.standby` says when the emulated device
carried the VM's traffic instead.

The device gap (:attr:`Timeline.device_gap`) is the time the VM has no VF at
all: from the moment the old one is released (:attr:`Timeline.released`: the
guest let go within its grace, or at once on a surprise removal) to
:attr:`Timeline.device_ready`.
"""

from __future__ import annotations

import enum
import math
from typing import Any

import attrs

__all__ = [
    "ATTACH",
    "DETACH",
    "PRE_COPY",
    "RESTORE",
    "SM_UPDATE",
    "STAGE_NAMES",
    "STOP_AND_COPY",
    "Stage",
    "Strategy",
    "Timeline",
]

PRE_COPY = "pre-copy"
DETACH = "detach"
STOP_AND_COPY = "stop-and-copy"
RESTORE = "restore"
ATTACH = "attach"
SM_UPDATE = "sm-update"
_ALWAYS_PAUSED = (STOP_AND_COPY, RESTORE)
#: Every stage name a timeline may hold.
STAGE_NAMES = (PRE_COPY, DETACH, STOP_AND_COPY, RESTORE, ATTACH, SM_UPDATE)


class Strategy(enum.Enum):
    """How the VMM handles the VF around the memory copy (seed, "late-detach migration")."""

    #: Detach the VF, migrate (pre-copy + stop-and-copy), attach a new VF.
    THREE_STAGE = "three-stage"
    #: Keep the VF through pre-copy; detach just before stop-and-copy; attach at
    #: the very end of the restore.
    LATE_DETACH = "late-detach"


@attrs.frozen(slots=True, kw_only=True)
class Stage:
    """One stage of a migration.

    Attributes:
        name: one of :data:`STAGE_NAMES`.
        start: clock time the stage began.
        end: clock time it ended.
        round: the pre-copy round (1, 2, ...); None for other stages.
        bytes: guest memory copied during the stage (pre-copy, stop-and-copy).
        smps: SMPs the subnet manager sent during the stage.
        paused: True if the guest is paused for the whole stage (default:
            True for stop-and-copy and restore, which always pause it).
    """

    name: str = attrs.field(validator=attrs.validators.in_(STAGE_NAMES))
    start: float
    end: float
    round: int | None = None
    bytes: int = 0
    smps: int = 0
    paused: bool = attrs.field(
        default=attrs.Factory(lambda self: self.name in _ALWAYS_PAUSED, takes_self=True)
    )

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return self.end - self.start

    @property
    def label(self) -> str:
        """The name, with the round for pre-copy (``pre-copy 2``)."""
        return self.name if self.round is None else f"{self.name} {self.round}"


@attrs.frozen(slots=True, kw_only=True)
class Timeline:
    """The record of one migration (or of the part that ran before it failed).

    Attributes:
        vm: the VM's name.
        source: the host it left.
        destination: the host it was sent to.
        strategy: three-stage or late-detach.
        port_model: ``"shared"`` or ``"vswitch"``.
        profile: the timing profile's name.
        stages: every stage that ran, in order.
        start: when ``migrate`` began.
        end: when it returned (or failed).
        smps: SMPs the subnet manager sent between start and end.
        sa_queries: SA queries answered between start and end.
        lft_blocks: the LFT-block SMPs among ``smps`` (the vSwitch "one SMP").
        device_ready: when the new VF reached the VM; None if none did.
        released: when the old VF was gone: the guest released it within its
            grace (or it was pulled, on a surprise removal); None if no VF
            was detached (or the detach was refused).
        old_lid: the VM's LID before; None if it had none.
        new_lid: its LID after; None if no new VF was attached.
        surprise: True when the VF was removed with no grace (surprise removal).
        precopy_stop: why pre-copy stopped (see :mod:`transports.sim.precopy`).
        outcome: ``"migrated"``, or what went wrong (``"detach-refused"``,
            ``"source-crashed"``, ``"destination-crashed"``).
        standby: ``(start, end)`` of each incarnation of the VM's emulated
            standby device during the migration: from its offer (the VF's
            removal notice, or the resume under the shared port model) to its
            removal or the new VF's arrival, whichever came first; empty
            without a standby device.
    """

    vm: str
    source: str
    destination: str
    strategy: Strategy
    port_model: str
    profile: str
    stages: tuple[Stage, ...]
    start: float
    end: float
    smps: int = 0
    sa_queries: int = 0
    lft_blocks: int = 0
    device_ready: float | None = None
    released: float | None = None
    old_lid: int | None = None
    new_lid: int | None = None
    surprise: bool = False
    precopy_stop: str = ""
    outcome: str = "migrated"
    standby: tuple[tuple[float, float], ...] = ()

    def named(self, name: str) -> tuple[Stage, ...]:
        """Return the stages called ``name``, in order (several for pre-copy)."""
        return tuple(s for s in self.stages if s.name == name)

    def stage(self, name: str) -> Stage | None:
        """Return the single stage called ``name``, or None if it did not run."""
        found = self.named(name)
        return found[0] if found else None

    @property
    def pause(self) -> float:
        """The VM's own pause: the paused stages' total (0 if it never stopped)."""
        return math.fsum(s.duration for s in self.stages if s.paused)

    @property
    def paused_stages(self) -> tuple[str, ...]:
        """Labels of the stages the guest is paused for, in order."""
        return tuple(s.label for s in self.stages if s.paused)

    @property
    def device_gap(self) -> tuple[float, float] | None:
        """When the VM had no VF: :attr:`released` to :attr:`device_ready`.

        None if no VF was released; the end is ``self.end`` if none came back.
        """
        if self.released is None:
            return None
        return (self.released, self.device_ready if self.device_ready is not None else self.end)

    @property
    def removal_notice(self) -> float | None:
        """When the guest was told its VF goes (the detach stage's start), if it was."""
        detach = self.stage(DETACH)
        return None if detach is None else detach.start

    @property
    def rounds(self) -> int:
        """Number of pre-copy rounds."""
        return len(self.named(PRE_COPY))

    @property
    def duration(self) -> float:
        """Seconds from start to end."""
        return self.end - self.start

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (for rdsx-stress output)."""
        return {
            "vm": self.vm,
            "source": self.source,
            "destination": self.destination,
            "strategy": self.strategy.value,
            "port_model": self.port_model,
            "profile": self.profile,
            "outcome": self.outcome,
            "start": self.start,
            "end": self.end,
            "pause": self.pause,
            "smps": self.smps,
            "sa_queries": self.sa_queries,
            "lft_blocks": self.lft_blocks,
            "device_ready": self.device_ready,
            "released": self.released,
            "paused_stages": list(self.paused_stages),
            "old_lid": self.old_lid,
            "new_lid": self.new_lid,
            "surprise": self.surprise,
            "precopy_stop": self.precopy_stop,
            "standby": [list(interval) for interval in self.standby],
            "stages": [
                {
                    "name": s.name,
                    "round": s.round,
                    "start": s.start,
                    "end": s.end,
                    "bytes": s.bytes,
                    "smps": s.smps,
                    "paused": s.paused,
                }
                for s in self.stages
            ],
        }

    def format_table(self) -> str:
        """Return the timeline as a fixed-width table, times relative to the start."""
        head = (
            f"migration of {self.vm}: {self.source} -> {self.destination}, "
            f"{self.strategy.value}, {self.port_model} port, profile {self.profile}: "
            f"{self.outcome}"
        )
        lines = [
            head,
            f"{'stage':<16} {'start s':>10} {'end s':>10} {'dur ms':>11} {'MiB':>9}  guest",
        ]
        for s in self.stages:
            lines.append(
                f"{s.label:<16} {s.start - self.start:>10.4f} {s.end - self.start:>10.4f} "
                f"{s.duration * 1e3:>11.3f} {s.bytes / 2**20:>9.2f}  "
                + ("paused" if s.paused else "running")
            )
        gap = self.device_gap
        if gap is not None:
            lines.append(
                f"no VF from {gap[0] - self.start:.4f} s (released) to "
                f"{gap[1] - self.start:.4f} s (new VF ready): {(gap[1] - gap[0]) * 1e3:.3f} ms"
            )
        for start, end in self.standby:
            lines.append(
                f"standby device from {start - self.start:.4f} s to {end - self.start:.4f} s: "
                f"{(end - start) * 1e3:.3f} ms"
            )
        lines.append(
            f"VM pause {self.pause * 1e3:.3f} ms ({', '.join(self.paused_stages) or '-'}), "
            f"total {self.duration:.4f} s, "
            f"{self.rounds} pre-copy rounds ({self.precopy_stop or '-'}), "
            f"SMPs {self.smps} (LFT blocks {self.lft_blocks}), SA queries {self.sa_queries}, "
            f"LID {self.old_lid} -> {self.new_lid}"
            + (", surprise removal" if self.surprise else "")
        )
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.format_table()
