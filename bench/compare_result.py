"""One ``--compare`` run's result and its JSON form (:mod:`bench.compare`).

A run is one combination of mode × strategy × port model × device (the VF only,
or the VF and an emulated standby device while it is away,
:mod:`transports.sim.standby`). With a standby device the outage is the guest's
pause, not the VF's absence, so the device-gap split of the stack cost
(quiesce, resume: :mod:`bench.downtime`) does not apply: those figures are
``None`` in the JSON (see :func:`stack_applies`).
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from transports.sim.timeline import Timeline

from .downtime import DowntimeReport, Edge
from .stress import Outcome

__all__ = ["BIN", "DEVICES", "RunResult", "finite", "stack_applies"]

#: Width of the throughput bins kept in the JSON, seconds.
BIN = 0.05
#: The device column's values: without and with a standby device.
DEVICES = {False: "VF", True: "VF+standby"}


@attrs.frozen(slots=True, kw_only=True)
class RunResult:
    """One migration under load.

    Attributes:
        mode: the nodes' mode.
        strategy: the VMM strategy.
        port_model: the fabric's port model.
        standby: the migrating VM had an emulated standby device while its VF
            was away (``--standby``).
        outcome: rdsx-stress's outcome (rows, verification, JSON report);
            None if the run crashed (``error`` says how).
        timeline: the migration's timeline (None if it never started).
        error: the migration's failure, if it failed.
        downtime: the downtime report (None without a timeline).
        smps: SMPs the SM sent from the migration's start to the run's end.
        sa_queries: SA queries from the migration's start to the run's end
            (both nodes' path look-ups while reconnecting included).
        timelines: every migration's timeline (``timeline`` is the first).
        downtimes: one downtime report per timeline.
        reconnects: the RDS layer's ``conn_reset`` per node address.
        throughput: delivered messages per second (requests and acks, both
            nodes) ``before`` the first migration, ``during`` the migrations
            and ``after`` the last, while traffic ran.
        series: delivered messages per second in :data:`BIN` bins from the
            start of the traffic (for the plot).
        traffic: (start, end) clock times of the traffic.
    """

    mode: str
    strategy: str
    port_model: str
    outcome: Outcome | None
    timeline: Timeline | None
    error: str | None
    downtime: DowntimeReport | None
    smps: int | None = None
    sa_queries: int | None = None
    timelines: tuple[Timeline, ...] = ()
    downtimes: tuple[DowntimeReport, ...] = ()
    reconnects: dict[str, int] = attrs.field(factory=dict)
    throughput: dict[str, float] = attrs.field(factory=dict)
    series: tuple[float, ...] = ()
    traffic: tuple[float, float] | None = None
    standby: bool = False

    @property
    def device(self) -> str:
        """The device column: ``VF``, or ``VF+standby`` with a standby device."""
        return DEVICES[self.standby]

    @property
    def label(self) -> str:
        """``mode/strategy/port_model/device``: unique within a comparison."""
        return f"{self.mode}/{self.strategy}/{self.port_model}/{self.device}"

    @property
    def ok(self) -> bool:
        """Every message exactly once and in order, and the VM migrated."""
        return (
            self.outcome is not None
            and self.outcome.tally.ok
            and self.error is None
            and self.downtime is not None
        )

    @property
    def rds_reconnects(self) -> int | None:
        """``conn_reset`` summed over both nodes (None if the run crashed)."""
        return sum(self.reconnects.values()) if self.outcome is not None else None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary of the run."""
        tally = self.outcome.tally if self.outcome is not None else None
        downtimes = [
            _downtime_dict(d, stack_applies(self.timelines[n] if n < len(self.timelines) else None))
            for n, d in enumerate(self.downtimes)
        ]
        return {
            "mode": self.mode,
            "strategy": self.strategy,
            "port_model": self.port_model,
            "standby": self.standby,
            "device": self.device,
            "label": self.label,
            "ok": self.ok,
            "migration": None if self.timeline is None else self.timeline.to_dict(),
            "migrations": [t.to_dict() for t in self.timelines],
            "migration_error": self.error,
            "smps": self.smps,
            "sa_queries": self.sa_queries,
            "rds_reconnects": self.rds_reconnects,
            "conn_reset": dict(self.reconnects),
            "throughput_msgs_per_s": dict(self.throughput),
            "downtime": (
                None
                if self.downtime is None
                else _downtime_dict(self.downtime, stack_applies(self.timeline))
            ),
            "downtimes": downtimes,
            "series": {"bin_s": BIN, "msgs_per_s": list(self.series)},
            "verified": None if tally is None else attrs.asdict(tally),
            "stress": None if self.outcome is None else self.outcome.report,
        }


def stack_applies(timeline: Timeline | None) -> bool:
    """True if the stack cost's split (quiesce, resume) means something for this migration.

    It assumes nothing is delivered between the VF's release and the new VF;
    with a standby device carrying the traffic then, the outage is the guest's
    pause and DESIGN's added downtime is the whole of what the stack cost.
    """
    return timeline is None or not timeline.standby


def _downtime_dict(d: DowntimeReport, split: bool) -> dict[str, Any]:
    def stack(x: float) -> float | None:
        return finite(x) if split else None

    return {
        "service_s": finite(d.edge_service),
        "added_s": finite(d.edge_added),
        "resolution_s": finite(d.edge_resolution),
        "exact": d.edge_exact,
        "service_worst": d.edge_worst,
        "gap_s": finite(d.service_downtime),
        "gap_added_s": finite(d.added_downtime),
        "gap_resolution_s": finite(d.resolution),
        "pause_s": d.pause,
        "device_gap_s": d.device_gap,
        "beyond_device_gap_s": stack(d.service_downtime - d.device_gap),
        "stack_s": stack(d.stack),
        "quiesce_s": stack(d.quiesce),
        "resume_s": stack(d.resume),
        "worst": d.worst,
        "recovered": d.recovered,
        "breakdown_s": dict(d.breakdown),
        "receivers": {
            r.receiver: {
                "gap_s": finite(r.service_downtime),
                "gap_added_s": finite(r.added_downtime),
                "gap_resolution_s": finite(r.resolution),
                **_edge_dict(r.edge),
                "idle_s": r.idle,
                "quiesce_s": stack(r.quiesce),
                "resume_s": stack(r.resume),
                "gap": [r.gap_start, r.gap_end],
            }
            for r in d.receivers
        },
    }


def _edge_dict(e: Edge | None) -> dict[str, Any]:
    if e is None:
        return {}
    return {
        "service_s": finite(e.service),
        "added_s": finite(e.added),
        "resolution_s": finite(e.resolution),
        "start": e.start,
        "start_by": e.start_by,
        "end": finite(e.end),
        "backlog": e.backlog,
        "anchored": e.anchored,
        "first_sent": e.first_sent,
        "latency_s": finite(e.latency),
    }


def finite(x: float) -> float | None:
    """``x``, or None if it is inf/nan (JSON has neither: "never recovered", "unknown")."""
    return x if math.isfinite(x) else None
