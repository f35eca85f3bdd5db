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

* **Edge-exact service downtime** (:class:`Edge`), the figure the targets are
  judged on: the measured gap with its pacing taken off both ends, where the
  delivery and send times say it can be.

  - Start: the later of the gap's start and the outage's timeline event: the
    removal notice (graceful) or the removal itself (surprise). Before that
    event the device worked and nothing was due (``idle``). If a message *sent*
    before the event was only delivered after the gap, the outage began by its
    send time, and that is the start instead.
  - End: the gap's end, which is exact if the first delivery after the gap is
    **backlog**: a message sent before the new VF was ready, queued through the
    outage and delivered as soon as the path was back. If it was sent later,
    nothing was waiting, and the end is pacing-limited: it is only known to lie
    between the new VF's arrival and that delivery.
  - If deliveries went on after the VF was released (something else, a
    standby device, carried the traffic), the VF anchors nothing: the path
    worked after the release, so the start is the guest's pause (``pause``;
    a dense load's gap starts there too, ``bench/RESULTS.md``), and the path
    is back when the guest runs again if deliveries resume before the new VF.
  - Resolution: how far a dense load's gap could be from it: the one-way
    latency (p99 of send to delivery before the migration: a message due at
    the start still arrives that much later), plus the time from the start to
    the VF's release when the start is the notice or a delivery (the stack
    might have delivered until it let go), plus, for a pacing-limited end,
    the time from the new VF's arrival (or the start) to the first delivery.
    Without send times, or without a VF loss to anchor the edges, the edge
    figure is the measured gap and its resolution the pacing's.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence

import attrs

from transports.sim.timeline import STAGE_NAMES, Timeline

__all__ = ["DowntimeReport", "Edge", "ReceiverDowntime", "downtime", "edge", "receiver_downtime"]

#: Breakdown keys besides the stage names.
BEFORE, OTHER, AFTER = "before", "other", "after"
#: What an edge-exact start rests on (:attr:`Edge.start_by`).
NOTICE, REMOVAL, PAUSE, SENT, DELIVERY = "notice", "removal", "pause", "sent", "delivery"


@attrs.frozen(slots=True, kw_only=True)
class Edge:
    """One receiver's edge-exact outage (see the module docstring).

    Attributes:
        start: when the outage began: the gap's start, or the timeline event
            (or the earliest send of the backlog) if later.
        start_by: what ``start`` is: ``notice``, ``removal`` (surprise),
            ``pause`` (deliveries went on past the VF's release until the
            guest paused), ``sent`` (a message sent before the event was held)
            or ``delivery`` (the gap's own start: a delivery after the event,
            or nothing to anchor on).
        end: the first delivery after the gap (``inf`` if none came).
        service: ``end - start``.
        added: ``service`` minus the VM's pause.
        resolution: how far ``service`` may be from what a dense load would
            measure (``nan`` if unknown).
        backlog: the first delivery after the gap was sent before the path
            was back (the new VF ready; or, if deliveries resumed before it,
            the guest running again): queued through the outage, so ``end`` is
            exact. False means the end is pacing-limited (or send times were
            not recorded).
        anchored: the start rests on the timeline: the gap began before the
            VF was gone, or (traffic carried past the release) before the
            guest paused. False otherwise: the start is then the last
            delivery, pacing-limited.
        first_sent: the send time of that first delivery, if recorded.
        latency: p99 one-way latency (send to delivery) away from the
            migration; ``nan`` without send times.
    """

    start: float
    start_by: str
    end: float
    service: float
    added: float
    resolution: float
    backlog: bool
    anchored: bool = True
    first_sent: float | None = None
    latency: float = math.nan

    @property
    def exact(self) -> bool:
        """True if neither edge is limited by the pacing (anchored start, backlog end)."""
        return self.backlog and self.anchored


@attrs.frozen(slots=True, kw_only=True)
class ReceiverDowntime:
    """The downtime seen by one receiver.

    Attributes:
        receiver: the receiver's name (an address, ``addr:port``, ...).
        gap_start: the last delivery before the gap (or the window's start).
        gap_end: the first delivery after it; None if it never came.
        service_downtime: ``gap_end - gap_start``, the measured gap (``inf``
            if not recovered); pacing-limited at its start (:attr:`edge` is
            the judged figure).
        added_downtime: the measured gap minus the VM's pause.
        breakdown: seconds of the gap per stage name and ``before``/``other``/``after``.
        resolution: 99th-percentile gap between deliveries away from the
            migration (``nan`` when there are too few deliveries to tell).
        messages: deliveries counted.
        idle: gap time before the removal notice (pacing, not the stack).
        quiesce: notice (or the last delivery after it) to the VF's release.
        resume: the new VF's arrival to the gap's end (``inf`` if never).
        device_gap: seconds the VM had no VF (0 if it never lost one).
        edge: the edge-exact outage (the judged figure); None only for
            reports built by hand.
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
    edge: Edge | None = None

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
        service_downtime: the worst receiver's measured gap (0 if none).
        added_downtime: ``service_downtime - pause``.
        worst: the receiver with the longest gap; None without receivers.
        breakdown: that receiver's per-stage breakdown.
        resolution: the coarsest receiver pacing resolution, i.e. the measured
            gap's (``nan`` if unknown).
        device_gap: seconds the VM had no VF.
        stack: the largest stack cost (quiesce + resume) over the receivers.
        quiesce: that receiver's quiesce.
        resume: that receiver's resume.
        edge: the longest edge-exact outage over the receivers (None without
            receivers or edges).
        edge_worst: its receiver.
        edge_resolution: the coarsest edge resolution over the receivers (the
            longest edge-exact outage is known to within it).
        edge_exact: every receiver's gap ended on backlog.
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
    edge: Edge | None = None
    edge_worst: str | None = None
    edge_resolution: float = math.nan
    edge_exact: bool = False

    @property
    def recovered(self) -> bool:
        """True if every receiver got a delivery after the migration."""
        return all(r.recovered for r in self.receivers)

    @property
    def edge_service(self) -> float:
        """The judged service downtime: the longest edge-exact outage (else the measured gap)."""
        return self.edge.service if self.edge is not None else self.service_downtime

    @property
    def edge_added(self) -> float:
        """The judged added downtime: :attr:`edge_service` minus the VM's pause."""
        return self.edge_service - self.pause

    def format_table(self) -> str:
        """Return the report as text: one row per receiver, then the worst's breakdown."""
        lines = [
            f"{'receiver':<24} {'msgs':>7} {'gap ms':>11} {'pace ms':>8} {'service ms':>11} "
            f"{'added ms':>10} {'res ms':>8}  start by, end"
        ]
        for r in self.receivers:
            e = r.edge
            tail = "-" if e is None else f"{e.start_by}, {'backlog' if e.backlog else 'pacing'}"
            lines.append(
                f"{r.receiver:<24} {r.messages:>7} {r.service_downtime * 1e3:>11.3f} "
                f"{r.resolution * 1e3:>8.3f} {_ms(e, 'service'):>11} {_ms(e, 'added'):>10} "
                f"{_ms(e, 'resolution'):>8}  {tail}"
            )
        lines.append(
            f"service downtime (edge-exact) {self.edge_service * 1e3:.3f} ms, VM pause "
            f"{self.pause * 1e3:.3f} ms, added {self.edge_added * 1e3:.3f} ms (resolution "
            f"{self.edge_resolution * 1e3:.3f} ms, "
            f"{'exact' if self.edge_exact else 'pacing-limited'}, worst {self.edge_worst})"
        )
        lines.append(
            f"measured gap {self.service_downtime * 1e3:.3f} ms, added "
            f"{self.added_downtime * 1e3:.3f} ms (pacing resolution "
            f"{self.resolution * 1e3:.3f} ms, worst {self.worst})"
        )
        parts = ", ".join(f"{k} {v * 1e3:.3f}" for k, v in self.breakdown.items() if v > 0)
        lines.append(f"breakdown ms: {parts or '-'}")
        lines.append(
            f"device gap (no VF) {self.device_gap * 1e3:.3f} ms; stack cost "
            f"{self.stack * 1e3:.3f} ms = quiesce {self.quiesce * 1e3:.3f} + resume "
            f"{self.resume * 1e3:.3f}"
        )
        return "\n".join(lines)


def _ms(e: Edge | None, name: str) -> str:
    return "-" if e is None else f"{getattr(e, name) * 1e3:.3f}"


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
    receiver: str,
    timestamps: Sequence[float],
    timeline: Timeline,
    sent: Sequence[float] | None = None,
) -> ReceiverDowntime:
    """Compute one receiver's downtime around ``timeline``.

    Args:
        receiver: a name for the report.
        timestamps: clock times of its deliveries (any order).
        timeline: the migration.
        sent: the send time of each delivered message, in the order of
            ``timestamps`` (``nan`` where unknown); None if not recorded.

    Returns:
        The receiver's longest gap overlapping the migration window, with its
        breakdown and its edge-exact outage.

    Raises:
        ValueError: ``sent`` and ``timestamps`` differ in length.
    """
    if sent is not None and len(sent) != len(timestamps):
        raise ValueError(f"{len(sent)} send times for {len(timestamps)} deliveries")
    times = sent if sent is not None else [math.nan] * len(timestamps)
    pairs_sent = sorted(zip(timestamps, times, strict=True))
    ts = [d for d, _ in pairs_sent]
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
        edge=edge(g0, g1, pairs_sent if sent is not None else None, timeline, resolution),
    )


def edge(
    g0: float,
    g1: float,
    deliveries: Sequence[tuple[float, float]] | None,
    timeline: Timeline,
    pacing: float,
) -> Edge:
    """The edge-exact outage of the gap ``[g0, g1]`` (see the module docstring).

    Args:
        g0: the gap's start (the last delivery before it).
        g1: its end (the first delivery after it; ``inf`` if none).
        deliveries: (delivery time, send time) of every delivery, sorted by
            delivery time; None if send times were not recorded.
        timeline: the migration.
        pacing: the measured gap's resolution, used where no edge can be anchored.

    Returns:
        The outage's start, end, figures and resolution.
    """
    span = timeline.device_gap
    event = timeline.released if timeline.surprise else timeline.removal_notice
    if span is None or event is None or math.isinf(g1):
        # No VF loss to anchor the start on (or no recovery): the measured gap is all there is.
        return Edge(
            start=g0,
            start_by=DELIVERY,
            end=g1,
            service=g1 - g0,
            added=g1 - g0 - timeline.pause,
            resolution=pacing,
            backlog=False,
            anchored=False,
        )
    released, ready = span
    paused = [st for st in timeline.stages if st.paused]
    anchored = g0 <= released
    if not anchored and paused and g0 <= paused[0].start:
        # Something else carried the traffic past the VF's release (a standby device): the
        # path worked then, and only the guest's pause stops it.
        event = down = paused[0].start
        by_event, anchored = PAUSE, True
    else:
        # Nothing can be delivered once the VF is gone (or, unanchored, once the guest paused).
        by_event = REMOVAL if timeline.surprise else NOTICE
        down = released if anchored or not paused else max(g0, paused[0].start)
    # The path is back with the new VF; if deliveries resumed before it, when the guest ran again.
    up = ready if g1 >= ready else max([st.end for st in paused if st.end <= g1], default=g0)
    after = [] if deliveries is None else deliveries[bisect.bisect_left(deliveries, (g1,)) :]
    known = [s for _, s in after if not math.isnan(s)]
    first_sent = None if not after or math.isnan(after[0][1]) else after[0][1]
    # A message sent before the event but held past the gap: the outage began by then.
    held = min(known, default=math.inf)
    anchor, by = (held, SENT) if held < event else (event, by_event)
    t0, by = (anchor, by) if anchor > g0 else (g0, DELIVERY)
    latency = _latency(deliveries or (), timeline.start, g1)
    backlog = first_sent is not None and first_sent < up
    # A dense load's last delivery may come as late as ``down`` (the stack might still deliver
    # until it lets go of the VF), and a message due at the start still arrives one latency
    # later; without backlog the path may have been back any time from ``up`` on.
    start_slack = max(0.0, down - t0) if by in (NOTICE, DELIVERY) else 0.0
    end_slack = 0.0 if backlog else max(0.0, g1 - max(up, t0))
    res = (0.0 if math.isnan(latency) else latency) + start_slack + end_slack
    return Edge(
        start=t0,
        start_by=by,
        end=g1,
        service=g1 - t0,
        added=g1 - t0 - timeline.pause,
        resolution=res,
        backlog=backlog,
        anchored=anchored,
        first_sent=first_sent,
        latency=latency,
    )


def _latency(deliveries: Sequence[tuple[float, float]], start: float, g1: float) -> float:
    """p99 one-way latency in steady state: before the migration, set-up excluded.

    Messages sent before the receiver's first delivery waited for the connection
    to be made; those sent after the gap queue behind the backlog. Only if there
    is nothing before the migration are the ones after the gap used (an over-estimate).
    """
    sent = [(d, s) for d, s in deliveries if not math.isnan(s)]
    if not sent:
        return math.nan
    first = sent[0][0]
    steady = [d - s for d, s in sent if d < start and s >= first]
    return _p99(steady or [d - s for d, s in sent if s > g1])


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


def downtime(
    deliveries: Mapping[str, Sequence[float]],
    timeline: Timeline,
    sent: Mapping[str, Sequence[float]] | None = None,
) -> DowntimeReport:
    """Compute service and added downtime over every receiver.

    Args:
        deliveries: receiver name -> clock times of its deliveries.
        timeline: the migration (from :meth:`transports.sim.vmm.VMM.migrate`).
        sent: receiver name -> the send time of each of those deliveries, in
            the same order (``nan`` where unknown); None if not recorded.
            Without it the edge-exact figures fall back to pacing-limited ones.

    Returns:
        Per-receiver figures and the overall ones (the worst receiver's).
    """
    receivers = tuple(
        receiver_downtime(
            k, v, timeline, None if sent is None else sent.get(k, [math.nan] * len(v))
        )
        for k, v in deliveries.items()
    )
    worst = max(receivers, key=lambda r: r.service_downtime, default=None)
    service = worst.service_downtime if worst is not None else 0.0
    known = [r.resolution for r in receivers if not math.isnan(r.resolution)]
    costly = max(receivers, key=lambda r: r.stack, default=None)
    edged = [r for r in receivers if r.edge is not None]
    longest = max(edged, key=lambda r: r.edge.service if r.edge else 0.0, default=None)
    edge_res = [r.edge.resolution for r in edged if r.edge and not math.isnan(r.edge.resolution)]
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
        edge=longest.edge if longest is not None else None,
        edge_worst=longest.receiver if longest is not None else None,
        edge_resolution=max(edge_res) if edge_res else math.nan,
        edge_exact=bool(edged) and all(r.edge is not None and r.edge.exact for r in edged),
    )
