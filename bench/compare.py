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
* ``--migrate-at`` (default 2 s with ``--compare``)

With ``-T 0`` the run lasts until the migration is over plus 3 s.
"""

from __future__ import annotations

import argparse
import collections
import functools
import io
import json
import math
import sys
from collections.abc import Sequence
from typing import Any, Literal, TextIO, cast

import attrs
import trio
import trio.testing

from rdsx.errors import MigrationFailed, RdsError
from transports.sim import SimNetwork
from transports.sim.timeline import Timeline

from .downtime import DowntimeReport, downtime
from .options import Options, parse_args
from .stress import Experiment, Outcome, run_stress
from .verify import Tally

__all__ = [
    "MigrationOptions",
    "RunResult",
    "format_results",
    "main",
    "parse",
    "run_compare",
    "run_migration",
    "wants_migration",
]

_OWN_FLAGS = ("--compare", "--migrate-at", "--migration", "--profile", "--clock")
MODES: tuple[Literal["reconnect", "transparent"], ...] = ("reconnect", "transparent")
STRATEGIES = ("three-stage", "late-detach")
PORT_MODELS = ("shared", "vswitch")
#: Requests per second per task when a virtual-time run was given no --rate.
DEFAULT_RATE = 1000.0
#: Seconds of traffic after the migration ends when -T is 0.
TAIL = 3.0


@attrs.frozen(slots=True, kw_only=True)
class MigrationOptions:
    """The migration experiment's own options.

    Attributes:
        compare: run every mode × strategy × port model.
        migrate_at: seconds into the run at which the migration starts.
        strategy: ``three-stage`` or ``late-detach``.
        profile: timing profile name or path.
        virtual: run on ``MockClock(autojump_threshold=0)``.
    """

    compare: bool = False
    migrate_at: float = 2.0
    strategy: str = "late-detach"
    profile: str = "seed-cx2-xen"
    virtual: bool = True


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

    @property
    def ok(self) -> bool:
        """Every message exactly once and in order, and the VM migrated."""
        return (
            self.outcome is not None
            and self.outcome.tally.ok
            and self.error is None
            and self.downtime is not None
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary of the run."""
        d = self.downtime
        tally = self.outcome.tally if self.outcome is not None else None
        return {
            "mode": self.mode,
            "strategy": self.strategy,
            "port_model": self.port_model,
            "migration": None if self.timeline is None else self.timeline.to_dict(),
            "migration_error": self.error,
            "smps": self.smps,
            "sa_queries": self.sa_queries,
            "downtime": None
            if d is None
            else {
                "service_s": _finite(d.service_downtime),
                "added_s": _finite(d.added_downtime),
                "pause_s": d.pause,
                "resolution_s": _finite(d.resolution),
                "worst": d.worst,
                "recovered": d.recovered,
                "breakdown_s": dict(d.breakdown),
                "receivers": {
                    r.receiver: {
                        "service_s": _finite(r.service_downtime),
                        "added_s": _finite(r.added_downtime),
                        "gap": [r.gap_start, r.gap_end],
                    }
                    for r in d.receivers
                },
            },
            "verified": None if tally is None else attrs.asdict(tally),
            "stress": None if self.outcome is None else self.outcome.report,
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
    add("--migrate-at", type=float, default=None, metavar="S", help="migrate S s in (2)")
    add("--migration", choices=STRATEGIES, default="late-detach", help="VMM strategy")
    add("--profile", default="seed-cx2-xen", metavar="NAME|FILE", help="timing profile")
    add("--clock", choices=("virtual", "real"), default="virtual", help="trio clock")
    if "-h" in argv or "--help" in argv:
        # rdsx-stress's own parser prints the rest and exits.
        p.print_help()
        print()
    ns, rest = p.parse_known_args(list(argv))
    opts = parse_args(rest)
    if opts.transport != "sim":
        p.error("live migration needs --transport sim")
    if ns.migrate_at is not None and ns.migrate_at < 0:
        p.error("--migrate-at must not be negative")
    from transports.sim.profile import load_profile

    try:
        load_profile(ns.profile)
    except RdsError as exc:
        p.error(str(exc))
    mig = MigrationOptions(
        compare=ns.compare,
        migrate_at=2.0 if ns.migrate_at is None else ns.migrate_at,
        strategy=ns.migration,
        profile=ns.profile,
        virtual=ns.clock == "virtual",
    )
    if mig.virtual and opts.rate is None:
        opts = attrs.evolve(opts, rate=DEFAULT_RATE)
    return attrs.evolve(opts, virtual_time=mig.virtual), mig


class _Deliveries:
    """Delivery times per receiving socket (``address:port``)."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = collections.defaultdict(list)


class _RecordingSocket:
    """A socket that notes the time of every datagram it hands out."""

    def __init__(self, inner: Any, address: str, log: _Deliveries) -> None:
        self._inner = inner
        self._address = address
        self._log = log
        self._times: list[float] = []

    def bind(self, port: int = 0) -> int:
        bound: int = self._inner.bind(port)
        self._times = self._log.times[f"{self._address}:{bound}"]
        return bound

    async def sendto(self, data: bytes, dest: tuple[str, int]) -> int:
        sent: int = await self._inner.sendto(data, dest)
        return sent

    def sendto_nowait(self, data: bytes, dest: tuple[str, int]) -> int:
        sent: int = self._inner.sendto_nowait(data, dest)
        return sent

    async def recvfrom(self) -> tuple[bytes, tuple[str, int]]:
        got: tuple[bytes, tuple[str, int]] = await self._inner.recvfrom()
        self._times.append(trio.current_time())
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


def _make_migration(
    network: Any, opts: Options, mig: MigrationOptions, result: dict[str, Any]
) -> Experiment:
    from transports.sim.vmm import VMM

    fabric = network.fabric
    vmm = VMM(fabric, profile=mig.profile)

    async def experiment(start: float) -> dict[str, Any]:
        # Until the migration is done, a cancelled run means -T was too short.
        result["error"] = "the run ended before the migration (raise -T or use -T 0)"
        await trio.sleep_until(start + mig.migrate_at)
        vm = fabric.vm_at(opts.recv_addr)
        dest = fabric.add_host(f"host-{opts.recv_addr}-dest", num_vfs=network.num_vfs)
        # Counted after the new host is cabled: its own LID is not the migration's.
        result["sm0"] = (fabric.sm.smps_sent, fabric.sm.sa_queries)
        timeline: Timeline | None
        try:
            timeline = await vmm.migrate(vm, dest, strategy=mig.strategy, grace=opts.grace)
            del result["error"]
        except MigrationFailed as exc:
            result["error"] = f"{type(exc).__name__}: {exc}"
            timeline = exc.timeline if isinstance(exc.timeline, Timeline) else None
        result["timeline"] = timeline
        return {"kind": "migration", "timeline": None if timeline is None else timeline.to_dict()}

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
    return attrs.evolve(opts, time=math.ceil(mig.migrate_at + est + TAIL))


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
        dev_a = await net.add_node(opts.recv_addr)
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
    timeline = result.get("timeline")
    report = downtime(log.times, timeline) if timeline is not None else None
    return RunResult(
        mode=opts.mode,
        strategy=mig.strategy,
        port_model=opts.port_model,
        outcome=outcome,
        timeline=timeline,
        error=result.get("error"),
        downtime=report,
        smps=None if spent is None else spent[0],
        sa_queries=None if spent is None else spent[1],
    )


async def run_compare(
    opts: Options, mig: MigrationOptions, out: TextIO | None = None
) -> list[RunResult]:
    """Run :func:`run_migration` for every mode × strategy × port model.

    rdsx-stress's own rows go to ``out`` if given, else nowhere; the
    comparison table is the caller's (:func:`format_results`).
    """
    results = []
    for mode in MODES:
        for strategy in STRATEGIES:
            for port_model in PORT_MODELS:
                one = attrs.evolve(opts, mode=mode, port_model=port_model)
                sink = out if out is not None else io.StringIO()
                try:
                    result = await run_migration(
                        one, attrs.evolve(mig, strategy=strategy), out=sink
                    )
                except Exception as exc:
                    # One broken combination must not hide the others' figures.
                    result = RunResult(
                        mode=mode,
                        strategy=strategy,
                        port_model=port_model,
                        outcome=None,
                        timeline=None,
                        error=f"crashed: {_leaf(exc)}",
                        downtime=None,
                    )
                results.append(result)
    return results


def _leaf(exc: BaseException) -> str:
    """The first real error inside (nested) exception groups, as ``Type: message``."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}"


def format_results(results: Sequence[RunResult]) -> str:
    """The comparison table: one row per run, downtimes in ms, then each run's breakdown."""
    head = (
        f"{'mode':<12}{'strategy':<13}{'port':<9}{'pause':>9}{'service':>10}{'added':>10}"
        f"{'res':>7}{'SMP':>5}{'SA':>4}{'lost':>6}{'dup':>5}{'reord':>6}  result"
    )
    lines = [head]
    for r in results:
        d = r.downtime
        t = r.outcome.tally if r.outcome is not None else Tally()
        cells = (
            ("-", "-", "-", "-")
            if d is None
            else (
                f"{d.pause * 1e3:.1f}",
                _ms(d.service_downtime),
                _ms(d.added_downtime),
                _ms(d.resolution),
            )
        )
        if r.ok:
            verdict = "ok"
        elif r.error is not None:
            verdict = r.error
        else:
            verdict = "not exactly-once in order" if not t.ok else "no migration"
        lines.append(
            f"{r.mode:<12}{r.strategy:<13}{r.port_model:<9}{cells[0]:>9}{cells[1]:>10}"
            f"{cells[2]:>10}{cells[3]:>7}{_n(r.smps):>5}{_n(r.sa_queries):>4}"
            f"{t.lost:>6}{t.duplicated:>5}{t.reordered:>6}  {verdict}"
        )
    lines.append(
        "downtimes in ms; res = load resolution (p99 gap between deliveries); "
        "SMP, SA = spent from the migration's start to the run's end"
    )
    for r in results:
        if r.downtime is not None:
            parts = ", ".join(
                f"{k} {v * 1e3:.1f}" for k, v in r.downtime.breakdown.items() if v > 0
            )
            lines.append(f"  {r.mode}/{r.strategy}/{r.port_model}: {parts}")
    return "\n".join(lines)


def _n(x: int | None) -> str:
    return "-" if x is None else str(x)


def _ms(x: float) -> str:
    return f"{x * 1e3:.1f}" if math.isfinite(x) else ("inf" if x > 0 else "-")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for rdsx-stress with migration flags; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    opts, mig = parse(args)
    clock = trio.testing.MockClock(autojump_threshold=0) if mig.virtual else None
    try:
        if mig.compare:
            results = trio.run(functools.partial(run_compare, opts, mig), clock=clock)
        else:
            results = [trio.run(functools.partial(run_migration, opts, mig), clock=clock)]
    except KeyboardInterrupt:
        return 130
    except RdsError as exc:
        print(f"rdsx-stress: {exc}", file=sys.stderr)
        return 2
    if not mig.compare and results[0].timeline is not None:
        print(results[0].timeline.format_table())
        if results[0].downtime is not None:
            print(results[0].downtime.format_table())
    print(format_results(results))
    if opts.json_path:
        with open(opts.json_path, "w") as fh:
            json.dump(
                {
                    "tool": "rdsx-stress",
                    "experiment": "compare" if mig.compare else "migration",
                    "profile": mig.profile,
                    "clock": "virtual" if mig.virtual else "real",
                    "runs": [r.to_dict() for r in results],
                },
                fh,
                indent=2,
            )
    return 0 if all(r.ok for r in results) else 1
