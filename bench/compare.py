"""rdsx-stress's live-migration experiments: ``--migrate-at`` and ``--compare`` (sim only).

``--migrate-at S`` migrates the active node's VM, S seconds into the run, to a
fresh host with the sim VMM (:mod:`transports.sim.vmm`), while rds-stress's
traffic keeps running. Every delivery is timestamped per receiving socket; the
migration's :class:`~transports.sim.timeline.Timeline` and those timestamps
give the service downtime, the added downtime (minus the VM's own
stop-and-copy pause) and the split of the longest gap over the stages
(:mod:`bench.downtime`).

``--compare`` runs that experiment over every mode × strategy × port model ×
device (``reconnect``/``transparent`` × ``three-stage``/``late-detach`` ×
``shared``/``vswitch`` × ``VF``/``VF+standby``: the VF only, or with an
emulated standby device while it is away, :mod:`transports.sim.standby`) with
the same seed, load and profile, and prints one table
(:mod:`bench.compare_table`). Options of its own (the rest are rdsx-stress's;
``--standby`` alone keeps only the standby rows):

* ``--no-standby`` only the rows without a standby device
* ``--migration three-stage|late-detach`` (default ``late-detach``)
* ``--profile NAME|FILE`` timing profile (default ``seed-cx2-xen``)
* ``--clock virtual|real`` (default ``virtual``: ``MockClock(autojump_threshold=0)``;
  a virtual run needs ``--rate``, which defaults to :data:`DEFAULT_RATE` here)
* ``--migrate-at S`` (repeatable: one migration each, to a fresh host every
  time, in order; default 2 s)
* ``--plot FILE.png`` throughput over time per combination, the migration
  stages shaded (:mod:`bench.compare_plot`; matplotlib, the ``bench`` extra)
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
delivery) (:mod:`bench.downtime`; ``-`` with a standby device); the RDS
layer's reconnects (``conn_reset`` over both nodes: the transparent shim must
keep them at 0); SMPs and SA queries; lost, duplicated and reordered messages.

The JSON (``--json``) is schema 4: schema 3 plus the device per run
(``standby``, ``device``, ``label`` = mode/strategy/port/device, unique) and per
target entry, and ``null`` stack/quiesce/resume figures with a standby device.
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

from .compare_plot import plot_results
from .compare_result import BIN, DEVICES, RunResult
from .compare_table import COLUMNS, TARGETS, format_results, targets
from .downtime import downtime
from .header import HEADER_SIZE
from .options import Options, parse_args
from .stress import Experiment, run_stress

__all__ = [
    "COLUMNS",
    "TARGETS",
    "MigrationOptions",
    "RunResult",
    "format_results",
    "main",
    "parse",
    "plot_results",
    "run_compare",
    "run_compare_parallel",
    "run_migration",
    "targets",
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
    "--no-standby",
)
MODES: tuple[Literal["reconnect", "transparent"], ...] = ("reconnect", "transparent")
STRATEGIES = ("three-stage", "late-detach")
PORT_MODELS = ("shared", "vswitch")
#: Requests per second per task when a virtual-time run was given no --rate: the
#: whole 16-run comparison of the issue's command (-t 7, -T 20) then fits in two
#: minutes on 2 cores; the edge-exact service downtime and the stack cost do not
#: depend on it (see :mod:`bench.downtime`), the measured gap does (``pace``).
DEFAULT_RATE = 30.0
#: Seconds of traffic after the migration ends when -T is 0.
TAIL = 3.0


@attrs.frozen(slots=True, kw_only=True)
class MigrationOptions:
    """The migration experiment's own options.

    Attributes:
        compare: run every mode × strategy × port model × device.
        migrate_at: seconds into the run at which each migration starts, in
            order (a migration still running delays the next).
        strategy: ``three-stage`` or ``late-detach``.
        profile: timing profile name or path.
        virtual: run on ``MockClock(autojump_threshold=0)``.
        plot: PNG file to draw throughput over time into, if any.
        jobs: processes running combinations at once (virtual clock only).
        sa_cache: the sim CM caches SA PathRecords (``Fabric.path_cache``).
        devices: the comparison's device variants, in order: False = the VF
            only, True = with a standby device (``--standby`` keeps only True,
            ``--no-standby`` only False). A single run follows ``Options.standby``.
    """

    compare: bool = False
    migrate_at: tuple[float, ...] = (2.0,)
    strategy: str = "late-detach"
    profile: str = "seed-cx2-xen"
    virtual: bool = True
    plot: str | None = None
    jobs: int = 1
    sa_cache: bool = True
    devices: tuple[bool, ...] = (False, True)


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
    add("--compare", action="store_true", help="every mode x strategy x port model x device")
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
    add("--no-standby", action="store_true", help="--compare: only the rows without --standby")
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
    if ns.no_standby and not ns.compare:
        p.error("--no-standby only applies to --compare (a single run has no standby by default)")
    if ns.no_standby and opts.standby:
        p.error("--standby and --no-standby exclude each other")
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
        devices=(True,) if opts.standby else (False,) if ns.no_standby else (False, True),
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
    # No fabric trace: nothing here reads it, and it would cost every packet a record.
    async with transport.open_network(
        seed=opts.seed, port_model=opts.port_model, profile=mig.profile, trace=False
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
        standby=opts.standby,
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
#: One row of the comparison: mode, strategy, port model, standby device.
Combo = tuple[Mode, str, str, bool]


def _combinations(mig: MigrationOptions) -> list[Combo]:
    # The device innermost: each combination's rows with and without a standby side by side.
    return [
        (m, s, p, d) for m in MODES for s in STRATEGIES for p in PORT_MODELS for d in mig.devices
    ]


def _crashed(combo: Combo, exc: BaseException) -> RunResult:
    mode, strategy, port_model, standby = combo
    return RunResult(
        mode=mode,
        strategy=strategy,
        port_model=port_model,
        standby=standby,
        outcome=None,
        timeline=None,
        error=f"crashed: {_leaf(exc)}",
        downtime=None,
    )


def _options(
    opts: Options, mig: MigrationOptions, combo: Combo
) -> tuple[Options, MigrationOptions]:
    mode, strategy, port_model, standby = combo
    one = attrs.evolve(opts, mode=mode, port_model=port_model, standby=standby)
    return one, attrs.evolve(mig, strategy=strategy)


async def run_compare(
    opts: Options, mig: MigrationOptions, out: TextIO | None = None
) -> list[RunResult]:
    """Run :func:`run_migration` for every mode × strategy × port model × device, in turn.

    rdsx-stress's own rows go to ``out`` if given, else nowhere; the
    comparison table is the caller's (:func:`format_results`).
    """
    results = []
    for combo in _combinations(mig):
        sink = out if out is not None else io.StringIO()
        try:
            result = await run_migration(*_options(opts, mig, combo), out=sink)
        except Exception as exc:
            # One broken combination must not hide the others' figures.
            result = _crashed(combo, exc)
        results.append(result)
    return results


def _run_one(opts: Options, mig: MigrationOptions, combo: Combo) -> RunResult:
    """One combination in a worker process, on its own (virtual or real) clock."""
    clock = trio.testing.MockClock(autojump_threshold=0) if mig.virtual else None
    run = functools.partial(run_migration, *_options(opts, mig, combo), out=io.StringIO())
    try:
        return trio.run(run, clock=clock)
    except Exception as exc:
        return _crashed(combo, exc)


def run_compare_parallel(opts: Options, mig: MigrationOptions) -> list[RunResult]:
    """:func:`run_compare` over ``mig.jobs`` processes (each run keeps its own clock).

    Results come back in the combinations' order, whatever order they finish in.
    """
    combos = _combinations(mig)
    if mig.jobs <= 1:
        return [_run_one(opts, mig, c) for c in combos]
    with concurrent.futures.ProcessPoolExecutor(max_workers=mig.jobs) as pool:
        return list(pool.map(_run_one, [opts] * len(combos), [mig] * len(combos), combos))


def _leaf(exc: BaseException) -> str:
    """The first real error inside (nested) exception groups, as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


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
                    "schema": 4,
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
                        "devices": [DEVICES[d] for d in mig.devices] if mig.compare else None,
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
