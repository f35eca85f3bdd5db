"""``--compare``'s table, its notes and the issue's target verdicts (:mod:`bench.compare`).

One row per run (and per migration of a run with several), keyed by mode,
strategy, port model and device (``VF``, or ``VF+standby``: an emulated
standby device carries the traffic while the VF is away). With a standby
device the stack cost's split (``stack``, ``quiesce``, ``resume``) does not
apply and reads ``-`` (:func:`bench.compare_result.stack_applies`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .compare_result import RunResult, finite, stack_applies
from .downtime import DowntimeReport
from .verify import Tally

__all__ = ["COLUMNS", "TARGETS", "format_results", "targets"]

#: The comparison table's columns: (title, width).
COLUMNS = (
    ("mode", 12),
    ("strategy", 12),
    ("port", 8),
    ("device", 10),
    ("before", 7),
    ("during", 7),
    ("after", 7),
    ("pause", 8),
    ("gap", 8),
    ("pace", 5),
    ("service", 8),
    ("added", 8),
    ("no-VF", 8),
    ("stack", 7),
    ("quiesce", 8),
    ("resume", 7),
    ("res", 6),
    ("RDS-rc", 7),
    ("SMP", 4),
    ("SA", 3),
    ("lost", 5),
    ("dup", 4),
    ("reord", 6),
)
_LEFT = ("mode", "strategy", "port", "device")
#: The issue's targets for the transparent mode under late detach: added downtime per port model.
TARGETS = {"vswitch": 1e-3, "shared": 5e-3}


def _row(cells: Sequence[str]) -> str:
    out = []
    for (title, width), cell in zip(COLUMNS, cells, strict=True):
        out.append(f"{cell:<{width}}" if title in _LEFT else f"{cell:>{width}}")
    return " ".join(out)


def _figures(d: DowntimeReport | None, split: bool) -> tuple[str, ...]:
    if d is None:
        return ("-",) * 10
    stack = (_ms(d.stack, 2), _ms(d.quiesce, 2), _ms(d.resume, 2)) if split else ("-",) * 3
    return (
        _ms(d.pause),
        _ms(d.service_downtime),
        _ms(d.resolution),
        _ms(d.edge_service),
        _ms(d.edge_added),
        _ms(d.device_gap),
        *stack,
        _ms(d.edge_resolution, 3) + ("" if d.edge_exact else "*"),
    )


def format_results(results: Sequence[RunResult]) -> str:
    """The comparison table: one row per run (per migration), then notes and target verdicts."""
    lines = [_row([t for t, _ in COLUMNS]) + "  result"]
    for r in results:
        t = r.outcome.tally if r.outcome is not None else Tally()
        tp = r.throughput
        reports: Sequence[DowntimeReport | None] = r.downtimes or (r.downtime,)
        for n, d in enumerate(reports):
            tl = r.timelines[n] if n < len(r.timelines) else r.timeline
            cells = (
                r.mode if n == 0 else f"  #{n + 1}",
                r.strategy,
                r.port_model,
                r.device,
                _rate(tp.get("before")),
                _rate(tp.get("during")),
                _rate(tp.get("after")),
                *_figures(d, stack_applies(tl)),
                _n(r.rds_reconnects),
                _n(r.smps),
                _n(r.sa_queries),
                str(t.lost),
                str(t.duplicated),
                str(t.reordered),
            )
            lines.append(_row(cells) + "  " + (_verdict(r, t) if n == 0 else ""))
    lines.extend(_notes(results))
    lines.extend(_target_lines(results))
    for r in results:
        for n, d in enumerate(r.downtimes or ((r.downtime,) if r.downtime else ())):
            parts = ", ".join(f"{k} {v * 1e3:.1f}" for k, v in d.breakdown.items() if v > 0)
            tag = f" #{n + 1}" if len(r.downtimes) > 1 else ""
            lines.append(f"  {r.label}{tag}: {parts}")
    return "\n".join(lines)


def _verdict(r: RunResult, t: Tally) -> str:
    if r.ok:
        return "ok"
    if r.error is not None:
        return r.error
    return "not exactly-once in order" if not t.ok else "no migration"


def _notes(results: Sequence[RunResult]) -> list[str]:
    reports = [d for r in results for d in r.downtimes]
    pace = max((d.resolution for d in reports if math.isfinite(d.resolution)), default=math.nan)
    res = max((d.edge_resolution for d in reports if math.isfinite(d.edge_resolution)), default=0)
    limited = [r.label for r in results for d in r.downtimes if not d.edge_exact]
    lines = [
        "before/during/after: delivered msgs/s (both nodes); times in ms of the run's clock.",
        "device: VF = the VF only; VF+standby = an emulated standby device carries the VM's "
        "traffic while its VF is away (--standby), so the outage is the guest's pause.",
        "pause: the guest's own pause (its paused stages); gap: the longest delivery gap measured "
        "at any socket, known to within pace (p99 gap between deliveries at one socket under "
        f"this pacing; worst {_ms(pace)} ms).",
        "service: the same outage edge-exact (DESIGN's service downtime, judged): from the later "
        "of the gap's start and the removal notice (surprise: the removal; traffic carried past "
        "the VF's release: the guest's pause; earlier if a message sent before it was held past "
        "the gap) to the first delivery after the gap, which is "
        "backlog sent before the new VF was ready, so neither end waits for the pacing; "
        "added = service - pause (DESIGN); res: their resolution (p99 one-way latency, + notice "
        "-> VF released, the stack might have delivered until then, + for an end not on backlog "
        f"the time from the new VF to it; worst {_ms(res, 3)} ms).",
        "no-VF: the device gap (VF released -> new VF ready); stack = service - no-VF = quiesce "
        "(removal notice -> VF released) + resume (new VF -> first delivery); '-' with a standby "
        "device (traffic flows while the VF is away: added is then the stack's whole cost).",
        "RDS-rc: the RDS layer's reconnects (conn_reset, both nodes); SMP, SA: spent from the "
        "first migration's start to the run's end.",
    ]
    if limited:
        lines.append(
            "* pacing-limited (at some socket the first delivery after the gap was sent after the "
            "path was back, or deliveries went on after the VF's release; res covers it): "
            f"{', '.join(limited)}"
        )
    return lines


def _verdict_within(value: float, res: float, limit: float) -> str:
    """``met``/``not met`` when ``value`` is under/over ``limit`` by more than ``res``."""
    if not math.isfinite(res):
        return "met" if value < limit else "not met"
    if value + res < limit:
        return "met"
    return "not met" if value - res >= limit else "undecided"


def targets(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """The issue's targets (transparent, late detach), judged on the edge-exact added downtime.

    Returns:
        One entry per port model and device that ran (``label`` names the
        row): the target; DESIGN's added downtime, edge-exact, with its
        resolution and verdict (``met``, ``not met``, or ``undecided`` within
        the resolution); the measured gap's added downtime and its pacing
        resolution; and the stack cost (seconds) of the first migration and
        whether it is under the target (both None with a standby device).
    """
    out = []
    for r in results:
        d = r.downtime
        limit = TARGETS.get(r.port_model)
        if r.mode != "transparent" or r.strategy != "late-detach" or d is None or limit is None:
            continue
        verdict = _verdict_within(d.edge_added, d.edge_resolution, limit)
        split = stack_applies(r.timeline)
        out.append(
            {
                "port_model": r.port_model,
                "standby": r.standby,
                "device": r.device,
                "label": r.label,
                "target_s": limit,
                "added_s": finite(d.edge_added),
                "added_resolution_s": finite(d.edge_resolution),
                "added_exact": d.edge_exact,
                "added_verdict": verdict,
                "added_met": verdict == "met",
                "gap_added_s": finite(d.added_downtime),
                "gap_resolution_s": finite(d.resolution),
                "stack_s": finite(d.stack) if split else None,
                "stack_met": d.stack < limit if split else None,
            }
        )
    return out


def _target_lines(results: Sequence[RunResult]) -> list[str]:
    lines = []
    found = targets(results)
    for t in found:
        added = math.inf if t["added_s"] is None else t["added_s"]
        res = math.nan if t["added_resolution_s"] is None else t["added_resolution_s"]
        gap = math.inf if t["gap_added_s"] is None else t["gap_added_s"]
        pace = math.nan if t["gap_resolution_s"] is None else t["gap_resolution_s"]
        if t["stack_met"] is None:
            stack = "stack cost n/a (standby)"
        else:
            stack_s = math.inf if t["stack_s"] is None else t["stack_s"]
            stack = f"stack cost {_ms(stack_s, 2)} ms ({'met' if t['stack_met'] else 'not met'})"
        lines.append(
            f"target {t['label']} < {_ms(t['target_s'])} ms: "
            f"DESIGN's added downtime (edge-exact) {_ms(added, 3)} ms +-{_ms(res, 3)} "
            f"({t['added_verdict']}{'' if t['added_exact'] else ', pacing-limited'}); "
            f"{stack}; measured gap's added {_ms(gap)} ms +-{_ms(pace)}"
        )
    if found:
        by: dict[str, list[str]] = {}
        for t in found:
            by.setdefault(t["added_verdict"], []).append(t["label"])
        parts = [f"{v}: {', '.join(by[v])}" for v in ("met", "undecided", "not met") if v in by]
        lines.append("targets (DESIGN's added downtime) " + "; ".join(parts))
    return lines


def _n(x: int | None) -> str:
    return "-" if x is None else str(x)


def _rate(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.0f}"


def _ms(x: float, digits: int = 1) -> str:
    return f"{x * 1e3:.{digits}f}" if math.isfinite(x) else ("inf" if x > 0 else "-")
