"""rdsx-stress statistics: counters, rds-stress's rows and summary, histogram, JSON.

The printed formats are rds-stress's, byte for byte::

    header  "%4s %6s %6s %10s %10s %10s %7s %8s %5s"
    row     "%4u %6u %6u %10.2f %10.2f %10.2f %7.2f %8.2f %5.2f"
    summary 45 dashes, then the row format followed by "  (average)"

Columns: running tasks; requests sent and received per second; (request and
ack bytes, sent and received)/1024 per second; RDMA KiB/s in and out; mean µs
per send call; mean request→ack RTT in µs; CPU % (-1.00 without ``-c``).
Counts are scaled by the measured interval, as rds-stress scales them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from .options import Options
from .verify import Tally

__all__ = [
    "DASHES",
    "HEADER",
    "JSON_KEYS",
    "Counters",
    "Row",
    "RttHistogram",
    "build_json",
    "cpu_percent",
    "format_histogram",
    "format_params",
    "format_perfdata",
    "format_perfdata_header",
    "format_row",
    "format_summary",
    "make_row",
    "percentile",
]

# The C format strings are kept verbatim so they can be compared with rds-stress.c.
HEADER = "%4s %6s %6s %10s %10s %10s %7s %8s %5s" % (  # noqa: UP031
    "tsks",
    "tx/s",
    "rx/s",
    "tx+rx K/s",
    "mbi K/s",
    "mbo K/s",
    "tx us/c",
    "rtt us",
    "cpu %",
)
_ROW = "%4u %6u %6u %10.2f %10.2f %10.2f %7.2f %8.2f %5.2f"
DASHES = "-" * 45
BUCKETS = 16

#: The keys every JSON report has (the README documents each one).
JSON_KEYS = (
    "tool",
    "schema",
    "options",
    "duration_s",
    "tx_per_s",
    "rx_per_s",
    "kib_per_s",
    "mbi_kib_per_s",
    "mbo_kib_per_s",
    "tx_us_per_call",
    "rtt_us",
    "cpu_percent",
    "sent",
    "received",
    "lost",
    "duplicated",
    "reordered",
    "errors",
    "requests_sent",
    "unanswered",
    "max_gap_s",
    "ok",
    "rows",
    "histogram",
)


@attrs.define(slots=True)
class Counters:
    """What one task (or a sum of tasks) did; mutable, one per task."""

    req_tx: int = 0
    req_rx: int = 0
    ack_tx: int = 0
    ack_rx: int = 0
    req_tx_bytes: int = 0
    req_rx_bytes: int = 0
    ack_tx_bytes: int = 0
    ack_rx_bytes: int = 0
    rdma_in_bytes: int = 0
    rdma_out_bytes: int = 0
    send_calls: int = 0
    send_usecs: float = 0.0
    rtt_count: int = 0
    rtt_usecs: float = 0.0

    def copy(self) -> Counters:
        """An independent copy."""
        return attrs.evolve(self)

    def __add__(self, other: Counters) -> Counters:
        return Counters(
            *(a + b for a, b in zip(attrs.astuple(self), attrs.astuple(other), strict=True))
        )

    def __sub__(self, other: Counters) -> Counters:
        return Counters(
            *(a - b for a, b in zip(attrs.astuple(self), attrs.astuple(other), strict=True))
        )

    @staticmethod
    def total(items: Iterable[Counters]) -> Counters:
        """The sum of ``items``."""
        out = Counters()
        for c in items:
            out = out + c
        return out


@attrs.frozen(slots=True, kw_only=True)
class Row:
    """One printed line: a second of the run, or the whole run's average."""

    tasks: int
    tx_per_s: int
    rx_per_s: int
    kib_per_s: float
    mbi_kib_per_s: float
    mbo_kib_per_s: float
    tx_us_per_call: float
    rtt_us: float
    cpu_percent: float


def make_row(delta: Counters, elapsed: float, tasks: int, cpu: float) -> Row:
    """Turn what happened during ``elapsed`` seconds into a :class:`Row`.

    Args:
        delta: counters accumulated over the interval.
        elapsed: the measured interval in seconds (must be positive).
        tasks: the number of running tasks to show.
        cpu: CPU percent, or -1.0 when not measured.
    """
    scale = 1.0 / elapsed
    kib = (delta.req_tx_bytes + delta.req_rx_bytes + delta.ack_tx_bytes + delta.ack_rx_bytes) / 1024
    return Row(
        tasks=tasks,
        tx_per_s=int(delta.req_tx * scale),
        rx_per_s=int(delta.req_rx * scale),
        kib_per_s=kib * scale,
        mbi_kib_per_s=delta.rdma_in_bytes / 1024 * scale,
        mbo_kib_per_s=delta.rdma_out_bytes / 1024 * scale,
        tx_us_per_call=delta.send_usecs / delta.send_calls if delta.send_calls else 0.0,
        rtt_us=delta.rtt_usecs / delta.rtt_count if delta.rtt_count else 0.0,
        cpu_percent=cpu,
    )


def format_row(row: Row) -> str:
    """The row in rds-stress's format (no newline)."""
    return _ROW % (
        row.tasks,
        row.tx_per_s,
        row.rx_per_s,
        row.kib_per_s,
        row.mbi_kib_per_s,
        row.mbo_kib_per_s,
        row.tx_us_per_call,
        row.rtt_us,
        row.cpu_percent,
    )


def format_summary(row: Row, summary_only: bool = False) -> str:
    """The dashes (unless ``-z``) and the ``(average)`` line, newline-terminated."""
    dashes = "" if summary_only else DASHES + "\n"
    return f"{dashes}{format_row(row)}  (average)\n"


def format_params(opts: Options) -> str:
    """rds-stress's ``--show-params`` block (``"  %-10s %-7u"`` lines, then a blank line)."""
    lines = ["Options:"]
    for name, value in (
        ("Tasks", opts.tasks),
        ("Req size", opts.req_bytes),
        ("ACK size", opts.ack_bytes),
        ("RDMA size", opts.rdma_bytes),
    ):
        lines.append("  %-10s %-7u" % (name, value))  # noqa: UP031
    lines.append("  %-10s (defaults)" % "RDMA opts")  # noqa: UP031
    return "\n".join(lines) + "\n\n"


PERFDATA_FIELDS = (
    "nr_tasks:count,req_size:bytes,ack_size:bytes,rdma_size:bytes,"
    "req_sent:count,thruput:kB/s,thruput_rdma:kB/s,tx_delay:microseconds,"
    "rtt:microseconds,cpu:percent"
)


def format_perfdata_header(counter_names: Sequence[str]) -> str:
    """The ``--show-perfdata`` CSV header: rds-stress's fields, then one per counter."""
    return "::" + PERFDATA_FIELDS + "".join(f",{name}:count" for name in counter_names)


def format_perfdata(opts: Options, delta: Counters, row: Row, counters: Sequence[int]) -> str:
    """One ``--show-perfdata`` line for a second.

    As in rds-stress, the values are ``%u,%u,%u,%u,`` (tasks and sizes), then
    requests sent in the interval and six ``%f`` (throughput, RDMA in, RDMA out,
    µs per send, RTT µs, CPU % with 0 for unmeasured): one more than the header
    names, as rds-stress prints it. Then the counters' increments.
    """
    head = "%u,%u,%u,%u," % (opts.tasks, opts.req_bytes, opts.ack_bytes, opts.rdma_bytes)  # noqa: UP031
    body = "%u,%f,%f,%f,%f,%f,%f" % (  # noqa: UP031
        delta.req_tx,
        row.kib_per_s,
        row.mbi_kib_per_s,
        row.mbo_kib_per_s,
        row.tx_us_per_call,
        row.rtt_us,
        row.cpu_percent if row.cpu_percent >= 0 else 0.0,
    )
    return "::" + head + body + "".join(f",{n}" for n in counters)


def cpu_percent(cpu_start: float, cpu_end: float, wall_start: float, wall_end: float) -> float:
    """Process CPU time over wall time, in percent of one core."""
    wall = wall_end - wall_start
    return 100.0 * (cpu_end - cpu_start) / wall if wall > 0 else 0.0


class RttHistogram:
    """rds-stress's 16 power-of-two RTT buckets: bucket i holds [2^i, 2^(i+1)) µs.

    RTTs under 2 µs fall in the first bucket and those of 2^16 µs or more in the last.
    """

    def __init__(self) -> None:
        self.counts = [0] * BUCKETS

    def add(self, rtt_us: float) -> None:
        """Count one RTT of ``rtt_us`` microseconds."""
        i = int(math.log2(rtt_us)) if rtt_us >= 1 else 0
        self.counts[min(max(i, 0), BUCKETS - 1)] += 1

    def merge(self, other: RttHistogram) -> None:
        """Add ``other``'s counts to this one."""
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]


def format_histogram(counts: Sequence[int]) -> str:
    """The ``--show-histogram`` block, as rds-stress prints it after the summary."""
    total = sum(counts)
    lines = ["", "RTT histogram", "RTT (us)        \t\t    Count"]
    for i, n in enumerate(counts):
        share = n / total * 100.0 if total else 0.0
        fmt = "[%6u - %6u] \t\t %8u \t\t (%.2f%%)"
        lines.append(fmt % (1 << i, 1 << (i + 1), n, share))
    return "\n".join(lines) + "\n"


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0-100) of already sorted values; 0.0 when empty."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def _row_json(row: Row, t: float | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {} if t is None else {"t": round(t, 6)}
    out.update(attrs.asdict(row))
    return out


def build_json(
    *,
    options: Options,
    summary: Row,
    rows: Sequence[tuple[float, Row]],
    tally: Tally,
    rtt_us: Sequence[float],
    histogram: Sequence[int],
    duration: float,
    max_gap: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON report of one run (keys in :data:`JSON_KEYS`, documented in the README).

    Args:
        options: the run's options (recorded under ``options``).
        summary: the ``(average)`` row.
        rows: (seconds since start, row) for each printed second.
        tally: the verification totals.
        rtt_us: every RTT sample in µs (any order).
        histogram: the 16 bucket counts.
        duration: seconds the summary covers.
        max_gap: the longest time any task went without receiving anything
            while traffic was flowing (the service downtime), in seconds.
        extra: more top-level keys (e.g. the device-removal timeline).
    """
    ordered = sorted(rtt_us)
    out: dict[str, Any] = {
        "tool": "rdsx-stress",
        "schema": 1,
        "options": attrs.asdict(options),
        "duration_s": duration,
        "tx_per_s": summary.tx_per_s,
        "rx_per_s": summary.rx_per_s,
        "kib_per_s": summary.kib_per_s,
        "mbi_kib_per_s": summary.mbi_kib_per_s,
        "mbo_kib_per_s": summary.mbo_kib_per_s,
        "tx_us_per_call": summary.tx_us_per_call,
        "rtt_us": {
            "mean": sum(ordered) / len(ordered) if ordered else 0.0,
            "p50": percentile(ordered, 50),
            "p99": percentile(ordered, 99),
            "min": ordered[0] if ordered else 0.0,
            "max": ordered[-1] if ordered else 0.0,
            "count": len(ordered),
        },
        "cpu_percent": summary.cpu_percent,
        "sent": tally.sent,
        "received": tally.received,
        "lost": tally.lost,
        "duplicated": tally.duplicated,
        "reordered": tally.reordered,
        "errors": tally.errors,
        "requests_sent": tally.requests_sent,
        "unanswered": tally.unanswered,
        "max_gap_s": max_gap,
        "ok": tally.ok,
        "rows": [_row_json(row, t) for t, row in rows],
        "histogram": [
            {"lo_us": 1 << i, "hi_us": 1 << (i + 1), "count": n} for i, n in enumerate(histogram)
        ],
    }
    if extra:
        out.update(extra)
    return out
