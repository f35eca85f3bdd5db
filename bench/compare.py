"""rdsx-stress's live-migration experiments: ``--migrate-at`` and ``--compare`` (sim only).

``--migrate-at S`` migrates the active node's VM, S seconds into the run, to a
fresh host with the sim VMM (:mod:`transports.sim.vmm`), while rds-stress's
traffic keeps running. Every delivery is timestamped per receiving socket; the
migration's :class:`~transports.sim.timeline.Timeline` and those timestamps
give the service downtime, the added downtime (minus the VM's own
stop-and-copy pause) and the split of the longest gap over the stages
(:mod:`bench.downtime`).

``--compare`` runs that experiment over every mode × strategy × port model
(``reconnect``/``transparent`` × ``three-stage``/``late-detach`` ×
``shared``/``vswitch``) with the same seed, load and profile, and prints one
table. Options of its own (the rest are rdsx-stress's):

* ``--migration three-stage|late-detach`` (default ``late-detach``)
* ``--profile NAME|FILE`` timing profile (default ``seed-cx2-xen``)
* ``--clock virtual|real`` (default ``virtual``: ``MockClock(autojump_threshold=0)``;
  a virtual run needs ``--rate``, which defaults to 1000 requests/s per task here)
* ``--migrate-at S`` (repeatable: one migration each, to a fresh host every
  time, in order; default 2 s)
* ``--plot FILE.png`` throughput over time per combination, the migration
  stages shaded (matplotlib, the ``bench`` extra; imported only then)
* ``--no-sa-cache`` every CM connect asks the SA (default: the sim CM caches
  PathRecords, as Tasoulas et al., CCGrid 2015; a record survives a migration
  only if the VM kept its LID, i.e. under vSwitch)
* ``--jobs N`` combinations run in N processes at once (virtual clock only;
  default: the CPU count, at most 2). A real-clock comparison runs one at a time
  so the runs do not slow each other down.

With ``-T 0`` the run lasts until the last migration is over plus 3 s.

The table gives, per combination: delivered messages per second before,
during and after the migration; the VM's own pause; the longest delivery gap
measured at any receiving socket (``gap``) and its pacing resolution
(``pace``); the service downtime (DESIGN §6) edge-exact, i.e. that gap with its
pacing taken off both ends (from the removal notice to the first delivery of
the backlog queued through the outage, each socket's send times recorded to
check it), the added downtime (minus the pause) and their resolution
(``res``); the device gap (no VF at all) and the stack's own cost beyond it,
split into quiesce (removal notice to release) and resume (new VF to first
delivery) (:mod:`bench.downtime`); the RDS layer's reconnects
(``conn_reset`` over both nodes: the transparent shim must keep them at 0);
SMPs and SA queries; lost, duplicated and reordered messages.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import functools
import io
import json
import math
import os
import sys
from collections.abc import Sequence
from typing import Any, Literal, TextIO, cast

import attrs
import trio
import trio.testing

from rdsx.errors import MigrationFailed, RdsError
from transports.sim import SimNetwork
from transports.sim.timeline import Timeline

from .downtime import DowntimeReport, Edge, downtime
from .header import HEADER_SIZE
from .options import Options, parse_args
from .stress import Experiment, Outcome, run_stress
from .verify import Tally

__all__ = [
    "MigrationOptions",
    "RunResult",
    "format_results",
    "main",
    "parse",
    "plot_results",
    "run_compare",
    "run_compare_parallel",
    "run_migration",
    "wants_migration",
]

_OWN_FLAGS = (
    "--compare",
    "--migrate-at",
    "--migration",
    "--profile",
    "--clock",
    "--plot",
    "--jobs",
    "--no-sa-cache",
)
MODES: tuple[Literal["reconnect", "transparent"], ...] = ("reconnect", "transparent")
STRATEGIES = ("three-stage", "late-detach")
PORT_MODELS = ("shared", "vswitch")
#: Requests per second per task when a virtual-time run was given no --rate: the
#: whole 8-run comparison of the issue's command (-t 7, -T 20) then fits in two
#: minutes on 2 cores; the edge-exact service downtime and the stack cost do not
#: depend on it (see :mod:`bench.downtime`), the measured gap does (``pace``).
DEFAULT_RATE = 30.0
#: Seconds of traffic after the migration ends when -T is 0.
TAIL = 3.0
#: Width of the throughput bins kept in the JSON, seconds.
BIN = 0.05
#: Width of the bins the plot draws, seconds.
PLOT_BIN = 0.5


@attrs.frozen(slots=True, kw_only=True)
class MigrationOptions:
    """The migration experiment's own options.

    Attributes:
        compare: run every mode × strategy × port model.
        migrate_at: seconds into the run at which each migration starts, in
            order (a migration still running delays the next).
        strategy: ``three-stage`` or ``late-detach``.
        profile: timing profile name or path.
        virtual: run on ``MockClock(autojump_threshold=0)``.
        plot: PNG file to draw throughput over time into, if any.
        jobs: processes running combinations at once (virtual clock only).
        sa_cache: the sim CM caches SA PathRecords (``Fabric.path_cache``).
    """

    compare: bool = False
    migrate_at: tuple[float, ...] = (2.0,)
    strategy: str = "late-detach"
    profile: str = "seed-cx2-xen"
    virtual: bool = True
    plot: str | None = None
    jobs: int = 1
    sa_cache: bool = True


@attrs.frozen(slots=True, kw_only=True)
class RunResult:
    """One migration under load.

    Attributes:
        mode: the nodes' mode.
        strategy: the VMM strategy.
        port_model: the fabric's port model.
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
        return {
            "mode": self.mode,
            "strategy": self.strategy,
            "port_model": self.port_model,
            "ok": self.ok,
            "migration": None if self.timeline is None else self.timeline.to_dict(),
            "migrations": [t.to_dict() for t in self.timelines],
            "migration_error": self.error,
            "smps": self.smps,
            "sa_queries": self.sa_queries,
            "rds_reconnects": self.rds_reconnects,
            "conn_reset": dict(self.reconnects),
            "throughput_msgs_per_s": dict(self.throughput),
            "downtime": None if self.downtime is None else _downtime_dict(self.downtime),
            "downtimes": [_downtime_dict(d) for d in self.downtimes],
            "series": {"bin_s": BIN, "msgs_per_s": list(self.series)},
            "verified": None if tally is None else attrs.asdict(tally),
            "stress": None if self.outcome is None else self.outcome.report,
        }


def _downtime_dict(d: DowntimeReport) -> dict[str, Any]:
    return {
        "service_s": _finite(d.edge_service),
        "added_s": _finite(d.edge_added),
        "resolution_s": _finite(d.edge_resolution),
        "exact": d.edge_exact,
        "service_worst": d.edge_worst,
        "gap_s": _finite(d.service_downtime),
        "gap_added_s": _finite(d.added_downtime),
        "gap_resolution_s": _finite(d.resolution),
        "pause_s": d.pause,
        "device_gap_s": d.device_gap,
        "beyond_device_gap_s": _finite(d.service_downtime - d.device_gap),
        "stack_s": _finite(d.stack),
        "quiesce_s": d.quiesce,
        "resume_s": _finite(d.resume),
        "worst": d.worst,
        "recovered": d.recovered,
        "breakdown_s": dict(d.breakdown),
        "receivers": {
            r.receiver: {
                "gap_s": _finite(r.service_downtime),
                "gap_added_s": _finite(r.added_downtime),
                "gap_resolution_s": _finite(r.resolution),
                **_edge_dict(r.edge),
                "idle_s": r.idle,
                "quiesce_s": r.quiesce,
                "resume_s": _finite(r.resume),
                "gap": [r.gap_start, r.gap_end],
            }
            for r in d.receivers
        },
    }


def _edge_dict(e: Edge | None) -> dict[str, Any]:
    if e is None:
        return {}
    return {
        "service_s": _finite(e.service),
        "added_s": _finite(e.added),
        "resolution_s": _finite(e.resolution),
        "start": e.start,
        "start_by": e.start_by,
        "end": _finite(e.end),
        "backlog": e.backlog,
        "anchored": e.anchored,
        "first_sent": e.first_sent,
        "latency_s": _finite(e.latency),
    }


def _finite(x: float) -> float | None:
    # JSON has no inf/nan: "never recovered" and "unknown" become null.
    return x if math.isfinite(x) else None


def wants_migration(argv: Sequence[str]) -> bool:
    """True if ``argv`` asks for a migration experiment (the rdsx-stress hook)."""
    return any(a == f or a.startswith(f + "=") for a in argv for f in _OWN_FLAGS)


def parse(argv: Sequence[str]) -> tuple[Options, MigrationOptions]:
    """Split ``argv`` into rdsx-stress's options and the migration's own.

    Raises:
        SystemExit: status 2 on a bad option.
    """
    p = argparse.ArgumentParser(
        prog="rdsx-stress", add_help=False, description="live-migration experiments (sim)"
    )
    add = p.add_argument
    add("--compare", action="store_true", help="every mode x strategy x port model")
    add(
        "--migrate-at",
        type=float,
        action="append",
        default=None,
        metavar="S",
        help="migrate S s in (2); repeatable",
    )
    add("--migration", choices=STRATEGIES, default="late-detach", help="VMM strategy")
    add("--profile", default="seed-cx2-xen", metavar="NAME|FILE", help="timing profile")
    add("--clock", choices=("virtual", "real"), default="virtual", help="trio clock")
    add("--plot", default=None, metavar="FILE.png", help="throughput over time (matplotlib)")
    add("--jobs", type=int, default=None, metavar="N", help="processes (virtual clock)")
    add("--no-sa-cache", action="store_true", help="every connect asks the SA")
    if "-h" in argv or "--help" in argv:
        # rdsx-stress's own parser prints the rest and exits.
        p.print_help()
        print()
    ns, rest = p.parse_known_args(list(argv))
    opts = parse_args(rest)
    if opts.transport != "sim":
        p.error("live migration needs --transport sim")
    if ns.migrate_at is not None and any(t < 0 for t in ns.migrate_at):
        p.error("--migrate-at must not be negative")
    if ns.jobs is not None and ns.jobs < 1:
        p.error("--jobs must be at least 1")
    from transports.sim.profile import load_profile

    try:
        load_profile(ns.profile)
    except RdsError as exc:
        p.error(str(exc))
    virtual = ns.clock == "virtual"
    jobs = ns.jobs if ns.jobs is not None else min(2, os.cpu_count() or 1)
    mig = MigrationOptions(
        compare=ns.compare,
        migrate_at=(2.0,) if ns.migrate_at is None else tuple(ns.migrate_at),
        strategy=ns.migration,
        profile=ns.profile,
        virtual=virtual,
        plot=ns.plot,
        jobs=jobs if virtual else 1,
        sa_cache=not ns.no_sa_cache,
    )
    if mig.virtual and opts.rate is None:
        opts = attrs.evolve(opts, rate=DEFAULT_RATE)
    return attrs.evolve(opts, virtual_time=mig.virtual), mig


class _Deliveries:
    """Delivery times per receiving socket (``address:port``), and each delivery's send time.

    Both nodes run in this process, so a message's send time is kept under its
    rdsx-stress header (unique: it names the stream and the sequence number)
    until the receiving socket hands it out. The send time is when the task
    asked to send (a blocking send counts from its call: the message was due
    then).
    """

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = collections.defaultdict(list)
        self.sent: dict[str, list[float]] = collections.defaultdict(list)
        self.pending: dict[bytes, float] = {}


class _RecordingSocket:
    """A socket that notes the send time of every datagram and the time it is handed out."""

    def __init__(self, inner: Any, address: str, log: _Deliveries) -> None:
        self._inner = inner
        self._address = address
        self._log = log
        self._times: list[float] = []
        self._sent: list[float] = []

    def bind(self, port: int = 0) -> int:
        bound: int = self._inner.bind(port)
        self._times = self._log.times[f"{self._address}:{bound}"]
        self._sent = self._log.sent[f"{self._address}:{bound}"]
        return bound

    async def sendto(self, data: bytes, dest: tuple[str, int]) -> int:
        # Noted before the call: the receiver may have it before the call returns.
        key = bytes(data[:HEADER_SIZE])
        self._log.pending[key] = trio.current_time()
        try:
            sent: int = await self._inner.sendto(data, dest)
        except BaseException:
            del self._log.pending[key]
            raise
        return sent

    def sendto_nowait(self, data: bytes, dest: tuple[str, int]) -> int:
        key = bytes(data[:HEADER_SIZE])
        self._log.pending[key] = trio.current_time()
        try:
            sent: int = self._inner.sendto_nowait(data, dest)
        except BaseException:
            del self._log.pending[key]
            raise
        return sent

    async def recvfrom(self) -> tuple[bytes, tuple[str, int]]:
        got: tuple[bytes, tuple[str, int]] = await self._inner.recvfrom()
        self._times.append(trio.current_time())
        self._sent.append(self._log.pending.pop(bytes(got[0][:HEADER_SIZE]), math.nan))
        return got

    def close(self) -> None:
        self._inner.close()


class _RecordingNode:
    """A node whose sockets record their deliveries (composition, no hook in the node)."""

    def __init__(self, inner: Any, address: str, log: _Deliveries) -> None:
        self._inner = inner
        self._address = address
        self._log = log

    def socket(self, *, sndbuf: int, rcvbuf: int) -> _RecordingSocket:
        sock = self._inner.socket(sndbuf=sndbuf, rcvbuf=rcvbuf)
        return _RecordingSocket(sock, self._address, self._log)

    def statistics(self) -> Any:
        """The node's rds-info counters (``conn_reset`` is the RDS layer's reconnects)."""
        return self._inner.statistics()


def _make_migration(
    network: Any, opts: Options, mig: MigrationOptions, result: dict[str, Any]
) -> Experiment:
    from transports.sim.vmm import VMM

    fabric = network.fabric
    vmm = VMM(fabric, profile=mig.profile)

    async def experiment(start: float) -> dict[str, Any]:
        result["start"] = start
        timelines: list[Timeline] = result.setdefault("timelines", [])
        for n, at in enumerate(sorted(mig.migrate_at), 1):
            # Until the migration is done, a cancelled run means -T was too short.
            result["error"] = "the run ended before the migration (raise -T or use -T 0)"
            await trio.sleep_until(start + at)
            vm = fabric.vm_at(opts.recv_addr)
            dest = fabric.add_host(f"host-{opts.recv_addr}-dest{n}", num_vfs=network.num_vfs)
            # Counted after the new host is cabled: its own LID is not the migration's.
            result.setdefault("sm0", (fabric.sm.smps_sent, fabric.sm.sa_queries))
            timeline: Timeline | None
            try:
                timeline = await vmm.migrate(vm, dest, strategy=mig.strategy, grace=opts.grace)
                del result["error"]
            except MigrationFailed as exc:
                result["error"] = f"{type(exc).__name__}: {exc}"
                timeline = exc.timeline if isinstance(exc.timeline, Timeline) else None
            if timeline is not None:
                timelines.append(timeline)
            if "error" in result:
                break
        return {"kind": "migration", "timelines": [t.to_dict() for t in timelines]}

    return experiment


def _open_node() -> Any:
    import rdsx

    found = getattr(rdsx, "open_node", None)
    if found is None:
        from rdsx import node

        found = node.open_node
    return found


def _run_time(opts: Options, mig: MigrationOptions) -> Options:
    if opts.time:
        return opts
    from transports.sim.profile import load_profile
    from transports.sim.vmm import plan_for

    # Long enough for the whole migration and a tail of traffic after it.
    p = load_profile(mig.profile)
    est = plan_for(p).precopy_time + p["suspend"] + p["resume"] + p["hotplug_detach"]
    est += p["hotplug_attach"] + p["sm_reaction"] + (opts.grace or 0.0)
    # Migrations never overlap: each may wait for the one before.
    end = 0.0
    for at in sorted(mig.migrate_at):
        end = max(end, at) + est
    return attrs.evolve(opts, time=math.ceil(end + TAIL))


async def run_migration(
    opts: Options, mig: MigrationOptions, out: TextIO | None = None
) -> RunResult:
    """Run rdsx-stress over a sim network while the active node's VM migrates.

    Args:
        opts: rdsx-stress's options (``mode``, ``port_model``, ``rate``, ``grace``, ...).
        mig: the migration's options (``strategy``, ``profile``, ``migrate_at``).
        out: where rdsx-stress's rows go (default ``sys.stdout``).

    Returns:
        The run's verification, timeline and downtime.
    """
    from rdsx.registry import load_transport

    open_node = _open_node()
    opts = _run_time(opts, mig)
    log = _Deliveries()
    result: dict[str, Any] = {}
    transport = load_transport("sim")
    async with transport.open_network(
        seed=opts.seed, port_model=opts.port_model, profile=mig.profile
    ) as opened:
        net = cast(SimNetwork, opened)
        if mig.sa_cache:
            # The CCGrid 2015 SA cache: this is where the port models differ for the stack.
            net.fabric.path_cache = {}
        dev_a = await net.add_node(opts.recv_addr, standby=opts.standby)
        dev_p = await net.add_node(opts.send_addr)
        experiment = _make_migration(net, opts, mig, result)
        async with (
            open_node(opts.recv_addr, dev_a, mode=opts.mode) as active,
            open_node(opts.send_addr, dev_p, mode=opts.mode) as passive,
        ):
            outcome = await run_stress(
                opts,
                _RecordingNode(active, opts.recv_addr, log),
                _RecordingNode(passive, opts.send_addr, log),
                out=out,
                experiment=experiment,
            )
        sm = net.fabric.sm
        sm0 = result.get("sm0")
        spent = (sm.smps_sent - sm0[0], sm.sa_queries - sm0[1]) if sm0 else None
    timelines: list[Timeline] = result.get("timelines", [])
    reports = [downtime(log.times, t, log.sent) for t in timelines]
    start = result.get("start", 0.0)
    traffic = (start, start + opts.time)
    counters = outcome.report.get("counters", {})
    return RunResult(
        mode=opts.mode,
        strategy=mig.strategy,
        port_model=opts.port_model,
        outcome=outcome,
        timeline=timelines[0] if timelines else None,
        error=result.get("error"),
        downtime=reports[0] if reports else None,
        smps=None if spent is None else spent[0],
        sa_queries=None if spent is None else spent[1],
        timelines=tuple(timelines),
        downtimes=tuple(reports),
        reconnects={a: int(c.get("conn_reset", 0)) for a, c in sorted(counters.items())},
        throughput=throughput(log.times, timelines, traffic),
        series=binned(log.times, traffic),
        traffic=traffic,
    )


def throughput(
    deliveries: dict[str, list[float]], timelines: Sequence[Timeline], traffic: tuple[float, float]
) -> dict[str, float]:
    """Delivered messages per second before, during and after the migrations.

    Args:
        deliveries: receiver -> delivery times.
        timelines: the migrations, in order.
        traffic: (start, end) of the traffic.

    Returns:
        ``before``, ``during`` and ``after`` rates (``nan`` for an empty window).
    """
    t0, t1 = traffic
    if not timelines:
        return {}
    m0, m1 = timelines[0].start, timelines[-1].end
    windows = {"before": (t0, m0), "during": (m0, m1), "after": (m1, t1)}
    times = [t for ts in deliveries.values() for t in ts]
    rates = {}
    for name, (a, b) in windows.items():
        n = sum(1 for t in times if a <= t < b)
        rates[name] = n / (b - a) if b > a else math.nan
    return rates


def binned(deliveries: dict[str, list[float]], traffic: tuple[float, float]) -> tuple[float, ...]:
    """Delivered messages per second in :data:`BIN`-second bins over the traffic."""
    t0, t1 = traffic
    bins = [0] * max(1, math.ceil((t1 - t0) / BIN))
    for ts in deliveries.values():
        for t in ts:
            k = int((t - t0) / BIN)
            if 0 <= k < len(bins):
                bins[k] += 1
    return tuple(n / BIN for n in bins)


Mode = Literal["reconnect", "transparent"]


def _combinations() -> list[tuple[Mode, str, str]]:
    return [(m, s, p) for m in MODES for s in STRATEGIES for p in PORT_MODELS]


def _crashed(mode: str, strategy: str, port_model: str, exc: BaseException) -> RunResult:
    return RunResult(
        mode=mode,
        strategy=strategy,
        port_model=port_model,
        outcome=None,
        timeline=None,
        error=f"crashed: {_leaf(exc)}",
        downtime=None,
    )


async def run_compare(
    opts: Options, mig: MigrationOptions, out: TextIO | None = None
) -> list[RunResult]:
    """Run :func:`run_migration` for every mode × strategy × port model, one after another.

    rdsx-stress's own rows go to ``out`` if given, else nowhere; the
    comparison table is the caller's (:func:`format_results`).
    """
    results = []
    for mode, strategy, port_model in _combinations():
        one = attrs.evolve(opts, mode=mode, port_model=port_model)
        sink = out if out is not None else io.StringIO()
        try:
            result = await run_migration(one, attrs.evolve(mig, strategy=strategy), out=sink)
        except Exception as exc:
            # One broken combination must not hide the others' figures.
            result = _crashed(mode, strategy, port_model, exc)
        results.append(result)
    return results


def _run_one(opts: Options, mig: MigrationOptions, combo: tuple[Mode, str, str]) -> RunResult:
    """One combination in a worker process, on its own (virtual or real) clock."""
    mode, strategy, port_model = combo
    one = attrs.evolve(opts, mode=mode, port_model=port_model)
    clock = trio.testing.MockClock(autojump_threshold=0) if mig.virtual else None
    run = functools.partial(
        run_migration, one, attrs.evolve(mig, strategy=strategy), out=io.StringIO()
    )
    try:
        return trio.run(run, clock=clock)
    except Exception as exc:
        return _crashed(mode, strategy, port_model, exc)


def run_compare_parallel(opts: Options, mig: MigrationOptions) -> list[RunResult]:
    """:func:`run_compare` over ``mig.jobs`` processes (each run keeps its own clock).

    Results come back in the combinations' order, whatever order they finish in.
    """
    combos = _combinations()
    if mig.jobs <= 1:
        return [_run_one(opts, mig, c) for c in combos]
    with concurrent.futures.ProcessPoolExecutor(max_workers=mig.jobs) as pool:
        return list(pool.map(_run_one, [opts] * len(combos), [mig] * len(combos), combos))


def _leaf(exc: BaseException) -> str:
    """The first real error inside (nested) exception groups, as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


#: The comparison table's columns: (title, width).
COLUMNS = (
    ("mode", 12),
    ("strategy", 12),
    ("port", 8),
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


def _row(cells: Sequence[str]) -> str:
    out = []
    for (title, width), cell in zip(COLUMNS, cells, strict=True):
        out.append(
            f"{cell:<{width}}" if title in ("mode", "strategy", "port") else f"{cell:>{width}}"
        )
    return " ".join(out)


def format_results(results: Sequence[RunResult]) -> str:
    """The comparison table: one row per run (per migration), then notes and breakdowns."""
    lines = [_row([t for t, _ in COLUMNS]) + "  result"]
    for r in results:
        t = r.outcome.tally if r.outcome is not None else Tally()
        tp = r.throughput
        reports: Sequence[DowntimeReport | None] = r.downtimes or (r.downtime,)
        for n, d in enumerate(reports):
            dt = (
                ("-",) * 10
                if d is None
                else (
                    _ms(d.pause),
                    _ms(d.service_downtime),
                    _ms(d.resolution),
                    _ms(d.edge_service),
                    _ms(d.edge_added),
                    _ms(d.device_gap),
                    _ms(d.stack, 2),
                    _ms(d.quiesce, 2),
                    _ms(d.resume, 2),
                    _ms(d.edge_resolution, 3) + ("" if d.edge_exact else "*"),
                )
            )
            cells = (
                r.mode if n == 0 else f"  #{n + 1}",
                r.strategy,
                r.port_model,
                _rate(tp.get("before")),
                _rate(tp.get("during")),
                _rate(tp.get("after")),
                *dt,
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
            lines.append(f"  {r.mode}/{r.strategy}/{r.port_model}{tag}: {parts}")
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
    limited = [
        f"{r.mode}/{r.strategy}/{r.port_model}"
        for r in results
        for d in r.downtimes
        if not d.edge_exact
    ]
    lines = [
        "before/during/after: delivered msgs/s (both nodes); times in ms of the run's clock.",
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
        "(removal notice -> VF released) + resume (new VF -> first delivery).",
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


#: The issue's targets for the transparent mode under late detach: added downtime per port model.
TARGETS = {"vswitch": 1e-3, "shared": 5e-3}


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
        One entry per port model that ran: the target; DESIGN's added downtime,
        edge-exact, with its resolution and verdict (``met``, ``not met``, or
        ``undecided`` within the resolution); the measured gap's added downtime
        and its pacing resolution; and the stack cost (seconds) of the first
        migration and whether it is under the target.
    """
    out = []
    for r in results:
        d = r.downtime
        limit = TARGETS.get(r.port_model)
        if r.mode != "transparent" or r.strategy != "late-detach" or d is None or limit is None:
            continue
        verdict = _verdict_within(d.edge_added, d.edge_resolution, limit)
        out.append(
            {
                "port_model": r.port_model,
                "target_s": limit,
                "added_s": _finite(d.edge_added),
                "added_resolution_s": _finite(d.edge_resolution),
                "added_exact": d.edge_exact,
                "added_verdict": verdict,
                "added_met": verdict == "met",
                "gap_added_s": _finite(d.added_downtime),
                "gap_resolution_s": _finite(d.resolution),
                "stack_s": _finite(d.stack),
                "stack_met": d.stack < limit,
            }
        )
    return out


def _target_lines(results: Sequence[RunResult]) -> list[str]:
    lines = []
    for t in targets(results):
        added = math.inf if t["added_s"] is None else t["added_s"]
        res = math.nan if t["added_resolution_s"] is None else t["added_resolution_s"]
        gap = math.inf if t["gap_added_s"] is None else t["gap_added_s"]
        pace = math.nan if t["gap_resolution_s"] is None else t["gap_resolution_s"]
        stack = math.inf if t["stack_s"] is None else t["stack_s"]
        lines.append(
            f"target transparent/late-detach/{t['port_model']} < {_ms(t['target_s'])} ms: "
            f"DESIGN's added downtime (edge-exact) {_ms(added, 3)} ms +-{_ms(res, 3)} "
            f"({t['added_verdict']}{'' if t['added_exact'] else ', pacing-limited'}); "
            f"stack cost {_ms(stack, 2)} ms ({'met' if t['stack_met'] else 'not met'}); "
            f"measured gap's added {_ms(gap)} ms +-{_ms(pace)}"
        )
    return lines


def _n(x: int | None) -> str:
    return "-" if x is None else str(x)


def _rate(x: float | None) -> str:
    return "-" if x is None or not math.isfinite(x) else f"{x:.0f}"


def _ms(x: float, digits: int = 1) -> str:
    return f"{x * 1e3:.{digits}f}" if math.isfinite(x) else ("inf" if x > 0 else "-")


def plot_results(results: Sequence[RunResult], path: str) -> None:
    """Draw delivered messages per second over time, one panel per combination.

    Rates are drawn in :data:`PLOT_BIN` bins. Every migration stage is shaded
    (paused stages hatched); dashed lines mark the VF's release (red) and the
    new VF's arrival (green). The y axis is
    clipped at 2.5× the median rate (the backlog's burst at the resume goes
    off the top). Needs matplotlib (the ``bench`` extra).

    Raises:
        RuntimeError: matplotlib is not installed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise RuntimeError(
            "--plot needs matplotlib: pip install 'rdsx[bench]' (or .venv/bin/pip install "
            "matplotlib)"
        ) from None
    colours = {
        "pre-copy": "#c6dbef",
        "detach": "#fdae6b",
        "stop-and-copy": "#e6550d",
        "restore": "#a63603",
        "attach": "#74c476",
        "sm-update": "#9e9ac8",
    }
    rows = max(1, math.ceil(len(results) / 2))
    fig, axes = plt.subplots(rows, 2, figsize=(11, 2.0 * rows), sharex=True, squeeze=False)
    for ax, r in zip(axes.flat, results, strict=False):
        t0 = r.traffic[0] if r.traffic else 0.0
        # Coarser bins than the JSON's: paced ticks beat against 50 ms bins.
        k = max(1, round(PLOT_BIN / BIN))
        ys = [sum(r.series[i : i + k]) / k for i in range(0, len(r.series), k)]
        xs = [i * k * BIN for i in range(len(ys))]
        ax.step(xs, ys, where="post", lw=0.8, color="black")
        for tl in r.timelines:
            for stage in tl.stages:
                ax.axvspan(
                    stage.start - t0,
                    stage.end - t0,
                    color=colours.get(stage.name, "grey"),
                    alpha=0.5,
                    hatch="//" if stage.paused else None,
                    lw=0,
                )
            gap = tl.device_gap
            if gap is not None:
                ax.axvline(gap[0] - t0, color="red", lw=0.6, ls="--")
                ax.axvline(gap[1] - t0, color="green", lw=0.6, ls="--")
        steady = sorted(v for v in ys if v > 0)
        if steady:
            # The backlog's burst at the resume would flatten everything else: clip it.
            ax.set_ylim(0, 2.5 * steady[len(steady) // 2])
        ax.set_title(f"{r.mode} / {r.strategy} / {r.port_model}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_ylabel("msgs/s", fontsize=7)
    for ax in axes.flat[len(results) :]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("s since the traffic started", fontsize=7)
    handles = [matplotlib.patches.Patch(color=c, alpha=0.5, label=n) for n, c in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=6, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=70)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for rdsx-stress with migration flags; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    opts, mig = parse(args)
    clock = trio.testing.MockClock(autojump_threshold=0) if mig.virtual else None
    try:
        if mig.compare:
            results = run_compare_parallel(opts, mig)
        else:
            results = [trio.run(functools.partial(run_migration, opts, mig), clock=clock)]
    except KeyboardInterrupt:
        return 130
    except RdsError as exc:
        print(f"rdsx-stress: {exc}", file=sys.stderr)
        return 2
    if not mig.compare:
        for timeline, report in zip(results[0].timelines, results[0].downtimes, strict=True):
            print(timeline.format_table())
            print(report.format_table())
    print(format_results(results))
    if mig.plot:
        try:
            plot_results(results, mig.plot)
        except RuntimeError as exc:
            print(f"rdsx-stress: {exc}", file=sys.stderr)
            return 2
    if opts.json_path:
        with open(opts.json_path, "w") as fh:
            json.dump(
                {
                    "tool": "rdsx-stress",
                    "experiment": "compare" if mig.compare else "migration",
                    "profile": mig.profile,
                    "clock": "virtual" if mig.virtual else "real",
                    "schema": 3,
                    "options": {
                        "migrate_at": list(mig.migrate_at),
                        "rate": opts.rate,
                        "tasks": opts.tasks,
                        "time": opts.time,
                        "req_bytes": opts.req_bytes,
                        "ack_bytes": opts.ack_bytes,
                        "seed": opts.seed,
                        "grace": opts.grace,
                        "jobs": mig.jobs,
                        "sa_cache": mig.sa_cache,
                        "standby": opts.standby,
                    },
                    "columns": [t for t, _ in COLUMNS],
                    "targets": targets(results),
                    "table": format_results(results).splitlines(),
                    "runs": [r.to_dict() for r in results],
                },
                fh,
                indent=2,
            )
    return 0 if all(r.ok for r in results) else 1
