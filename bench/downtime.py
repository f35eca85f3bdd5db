"""Service downtime and added downtime of a migration, from delivery timestamps.

Pure functions over numbers (DESIGN §6): no trio, no clock.

* **Service downtime** at a receiver: the longest gap between two consecutive
  deliveries that overlaps the migration window ``[timeline.start,
  timeline.end]``. A receiver with no delivery before the window counts from the
  window's start; one with no delivery after it never recovered (downtime
  ``inf``).
* **Added downtime**: service downtime minus the VM's own stop-and-copy pause,
  i.e. what the messaging stack and the device hand-over cost on top of the
  migration itself.
* **Breakdown**: how the longest gap splits over the timeline's stages, plus
  ``before`` (gap time before the migration started), ``after`` (after the
  VMM was done: reconnect, resend) and ``other`` (inside the window but in no
  stage).
* **Resolution**: the 99th-percentile gap between deliveries away from the
  migration; a downtime is only known to within about that much, since the
  load is paced (a recovery shows only at the next delivery).
* **Stack cost**: service downtime minus the device gap (the time the VM had
  no VF at all, :attr:`~transports.sim.timeline.Timeline.device_gap`), i.e.
  what the two modes really differ in. It splits into

  - ``idle``: gap time before the removal notice. Nothing had happened yet;
    no message was due (pacing). It is the load's resolution, not the stack's.
  - ``quiesce``: from the notice (or the last delivery after it) to the VF's
    release: the stack letting go of the device (timeline-exact).
  - ``resume``: from the new VF's arrival to the first delivery after the
    gap. Senders keep queueing through the outage, so the backlog flows as
    soon as the path is back: this end is not limited by the pacing.

  ``stack = quiesce + resume``; ``service = idle + quiesce + device gap + resume``.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence

import attrs

from transports.sim.timeline import STAGE_NAMES, Timeline

__all__ = ["DowntimeReport", "ReceiverDowntime", "downtime", "receiver_downtime"]

#: Breakdown keys besides the stage names.
BEFORE, OTHER, AFTER = "before", "other", "after"


@attrs.frozen(slots=True, kw_only=True)
class ReceiverDowntime:
    """The downtime seen by one receiver.

    Attributes:
        receiver: the receiver's name (an address, ``addr:port``, ...).
        gap_start: the last delivery before the gap (or the window's start).
        gap_end: the first delivery after it; None if it never came.
        service_downtime: ``gap_end - gap_start`` (``inf`` if not recovered).
        added_downtime: service downtime minus the VM's pause.
        breakdown: seconds of the gap per stage name and ``before``/``other``/``after``.
        resolution: 99th-percentile gap between deliveries away from the
            migration (``nan`` when there are too few deliveries to tell).
        messages: deliveries counted.
        idle: gap time before the removal notice (pacing, not the stack).
        quiesce: notice (or the last delivery after it) to the VF's release.
        resume: the new VF's arrival to the gap's end (``inf`` if never).
        device_gap: seconds the VM had no VF (0 if it never lost one).
    """

    receiver: str
    gap_start: float
    gap_end: float | None
    service_downtime: float
    added_downtime: float
    breakdown: Mapping[str, float]
    resolution: float
    messages: int
    idle: float = 0.0
    quiesce: float = 0.0
    resume: float = 0.0
    device_gap: float = 0.0

    @property
    def recovered(self) -> bool:
        """True if a delivery followed the migration."""
        return self.gap_end is not None

    @property
    def stack(self) -> float:
        """The stack's own cost: ``quiesce + resume``."""
        return self.quiesce + self.resume

    @property
    def beyond_device_gap(self) -> float:
        """``service_downtime - device_gap`` (= ``idle + stack``)."""
        return self.service_downtime - self.device_gap


@attrs.frozen(slots=True, kw_only=True)
class DowntimeReport:
    """The downtime of one migration over every receiver.

    Attributes:
        receivers: one entry per receiver, in the order given.
        pause: the VM's own stop-and-copy pause.
        service_downtime: the worst receiver's service downtime (0 if none).
        added_downtime: ``service_downtime - pause``.
        worst: the receiver with the longest gap; None without receivers.
        breakdown: that receiver's per-stage breakdown.
        resolution: the coarsest receiver resolution (``nan`` if unknown).
        device_gap: seconds the VM had no VF.
        stack: the largest stack cost (quiesce + resume) over the receivers.
        quiesce: that receiver's quiesce.
        resume: that receiver's resume.
    """

    receivers: tuple[ReceiverDowntime, ...]
    pause: float
    service_downtime: float
    added_downtime: float
    worst: str | None
    breakdown: Mapping[str, float]
    resolution: float
    device_gap: float = 0.0
    stack: float = 0.0
    quiesce: float = 0.0
    resume: float = 0.0

    @property
    def recovered(self) -> bool:
        """True if every receiver got a delivery after the migration."""
        return all(r.recovered for r in self.receivers)

    def format_table(self) -> str:
        """Return the report as text: one row per receiver, then the worst's breakdown."""
        lines = [f"{'receiver':<24} {'msgs':>7} {'service ms':>11} {'added ms':>10} {'res ms':>8}"]
        for r in self.receivers:
            lines.append(
                f"{r.receiver:<24} {r.messages:>7} {r.service_downtime * 1e3:>11.3f} "
                f"{r.added_downtime * 1e3:>10.3f} {r.resolution * 1e3:>8.3f}"
            )
        lines.append(
            f"service downtime {self.service_downtime * 1e3:.3f} ms, VM pause "
            f"{self.pause * 1e3:.3f} ms, added {self.added_downtime * 1e3:.3f} ms "
            f"(resolution {self.resolution * 1e3:.3f} ms, worst {self.worst})"
        )
        parts = ", ".join(f"{k} {v * 1e3:.3f}" for k, v in self.breakdown.items() if v > 0)
        lines.append(f"breakdown ms: {parts or '-'}")
        lines.append(
            f"device gap (no VF) {self.device_gap * 1e3:.3f} ms; stack cost "
            f"{self.stack * 1e3:.3f} ms = quiesce {self.quiesce * 1e3:.3f} + resume "
            f"{self.resume * 1e3:.3f}"
        )
        return "\n".join(lines)


def _overlap(a0: float, a1: float, b0: float, b1: float) -> float:
    return max(0.0, min(a1, b1) - max(a0, b0))


def _breakdown(g0: float, g1: float, timeline: Timeline) -> dict[str, float]:
    parts = dict.fromkeys((BEFORE, *STAGE_NAMES, OTHER, AFTER), 0.0)
    parts[BEFORE] = _overlap(g0, g1, -math.inf, timeline.start)
    parts[AFTER] = _overlap(g0, g1, timeline.end, math.inf)
    covered = 0.0
    for stage in timeline.stages:
        share = _overlap(g0, g1, stage.start, stage.end)
        parts[stage.name] += share
        covered += share
    parts[OTHER] = max(0.0, _overlap(g0, g1, timeline.start, timeline.end) - covered)
    return parts


def _p99(values: list[float]) -> float:
    # Interleaved streams make most gaps tiny; the slow tail is what bounds the error.
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[int(0.99 * (len(ordered) - 1))]


def receiver_downtime(
    receiver: str, timestamps: Sequence[float], timeline: Timeline
) -> ReceiverDowntime:
    """Compute one receiver's downtime around ``timeline``.

    Args:
        receiver: a name for the report.
        timestamps: clock times of its deliveries (any order).
        timeline: the migration.

    Returns:
        The receiver's longest gap overlapping the migration window, with its
        breakdown.
    """
    ts = sorted(timestamps)
    start, end = timeline.start, timeline.end
    points = list(ts)
    if not ts or ts[0] > start:
        # Nothing delivered before the migration: count the gap from its start.
        bisect.insort(points, start)
    pairs = list(itertools.pairwise(points))
    if not ts or ts[-1] < end:
        pairs.append((points[-1], math.inf))
    in_window = [(a, b) for a, b in pairs if a <= end and b >= start and b > a]
    seen = set(in_window)
    normal = [b - a for a, b in itertools.pairwise(ts) if (a, b) not in seen]
    resolution = _p99(normal)
    g0, g1 = max(in_window, key=lambda p: p[1] - p[0], default=(start, start))
    service = g1 - g0
    idle, quiesce, resume, gap = _split(g0, g1, timeline)
    return ReceiverDowntime(
        receiver=receiver,
        gap_start=g0,
        gap_end=None if math.isinf(g1) else g1,
        service_downtime=service,
        added_downtime=service - timeline.pause,
        breakdown=_breakdown(g0, g1, timeline),
        resolution=resolution,
        messages=len(ts),
        idle=idle,
        quiesce=quiesce,
        resume=resume,
        device_gap=gap,
    )


def _split(g0: float, g1: float, timeline: Timeline) -> tuple[float, float, float, float]:
    """(idle, quiesce, resume, device gap) of the gap ``[g0, g1]``; zeros without a VF loss."""
    span = timeline.device_gap
    notice = timeline.removal_notice
    if span is None or notice is None:
        return 0.0, 0.0, 0.0, 0.0
    released, ready = span
    idle = max(0.0, min(notice, g1) - g0)
    quiesce = max(0.0, released - max(g0, notice))
    resume = max(0.0, g1 - ready)
    return idle, quiesce, resume, ready - released


def downtime(deliveries: Mapping[str, Sequence[float]], timeline: Timeline) -> DowntimeReport:
    """Compute service and added downtime over every receiver.

    Args:
        deliveries: receiver name -> clock times of its deliveries.
        timeline: the migration (from :meth:`transports.sim.vmm.VMM.migrate`).

    Returns:
        Per-receiver figures and the overall ones (the worst receiver's).
    """
    receivers = tuple(receiver_downtime(k, v, timeline) for k, v in deliveries.items())
    worst = max(receivers, key=lambda r: r.service_downtime, default=None)
    service = worst.service_downtime if worst is not None else 0.0
    known = [r.resolution for r in receivers if not math.isnan(r.resolution)]
    costly = max(receivers, key=lambda r: r.stack, default=None)
    span = timeline.device_gap
    return DowntimeReport(
        receivers=receivers,
        pause=timeline.pause,
        service_downtime=service,
        added_downtime=service - timeline.pause,
        worst=worst.receiver if worst is not None else None,
        breakdown=dict(worst.breakdown) if worst is not None else {},
        resolution=max(known) if known else math.nan,
        device_gap=0.0 if span is None else span[1] - span[0],
        stack=costly.stack if costly is not None else 0.0,
        quiesce=costly.quiesce if costly is not None else 0.0,
        resume=costly.resume if costly is not None else 0.0,
    )
