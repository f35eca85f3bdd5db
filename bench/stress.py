"""rdsx-stress: rds-stress's traffic, rows and verification over rdsx sockets.

Model (rds-stress's): each side runs ``-t`` tasks; task i binds RDS port
p+1+i and keeps ``-d`` requests of ``-q`` bytes outstanding to *every* peer
task; every request is answered by an ack of ``-a`` bytes. Both sides send.
With ``--rate N`` the loop is open instead: each task sends N requests per
second round-robin over the peer tasks, whatever is outstanding (virtual-time
runs need this, since a closed loop in virtual time never lets time pass).

Each task (:mod:`bench.task`) has one reader and one writer; every message is
checked by the task's :class:`~bench.verify.TaskLedger`. After ``-T`` seconds
the tasks stop starting requests and the run drains: it waits, at most
``--drain-timeout``, until every request has its ack; what never arrived is
lost. The exit status is 0 only if nothing was lost, duplicated, reordered or
wrong.

Both ends run in this process (the ``sim`` default: two nodes on one sim
network, an active and a passive one); rows show the active side, as
rds-stress's active side does.
"""

from __future__ import annotations

import functools
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol, TextIO

import attrs
import trio
import trio.testing

from rdsx.errors import RdsError

from .options import Options, parse_args
from .report import (
    HEADER,
    Counters,
    Row,
    RttHistogram,
    build_json,
    cpu_percent,
    format_histogram,
    format_params,
    format_perfdata,
    format_perfdata_header,
    format_row,
    format_summary,
    make_row,
)
from .task import Printer, Quiet, StressNode, StressSocket, Task, make_tasks
from .verify import LedgerSnapshot, LedgerView, Tally, reconcile

__all__ = [
    "Outcome",
    "Remote",
    "StressNode",
    "StressSocket",
    "main",
    "run_in_process",
    "run_sides",
    "run_stress",
]

#: An optional experiment run beside the traffic (e.g. a device removal); it
#: gets the run's start time and returns what it wants recorded in the JSON.
Experiment = Callable[[float], Awaitable[dict[str, Any]]]


@attrs.frozen(slots=True, kw_only=True)
class Outcome:
    """What one run produced.

    Attributes:
        summary: the ``(average)`` row of the active side.
        rows: (seconds since start, row) for every printed second.
        tally: verification totals over both sides.
        report: the JSON report (also written to ``--json`` when given).
    """

    summary: Row
    rows: tuple[tuple[float, Row], ...]
    tally: Tally
    report: dict[str, Any]

    @property
    def exit_status(self) -> int:
        """0 when every message arrived exactly once and in order, else 1."""
        return 0 if self.tally.ok else 1


class Remote(Protocol):
    """The other side of a two-process run, reached over the control connection."""

    async def start(self) -> None:
        """Both sides have bound their tasks: start the traffic."""

    async def finish(self, drained: bool) -> bool:
        """Tell the peer this side drained (or gave up); wait for it; return its verdict."""

    async def exchange(
        self, ledgers: list[LedgerSnapshot], errors: int
    ) -> tuple[list[LedgerSnapshot], int]:
        """Swap ledger snapshots and send-error counts with the peer."""


Side = tuple[StressNode, str, str]


async def run_stress(
    opts: Options,
    active: StressNode,
    passive: StressNode,
    *,
    out: TextIO | None = None,
    experiment: Experiment | None = None,
    stop_on_sigint: bool = False,
) -> Outcome:
    """Run rds-stress's traffic between two open nodes and verify every message.

    Args:
        opts: the parsed options (``recv_addr`` is the active node's address,
            ``send_addr`` the passive node's).
        active: the node whose rows are printed.
        passive: the peer node; it sends requests too.
        out: where rows go (default ``sys.stdout``).
        experiment: run beside the traffic from the start; its result is
            added to the JSON report under ``experiment``.
        stop_on_sigint: Ctrl-C ends the reported seconds (then drain and
            summary) instead of interrupting; needs the main thread.

    Returns:
        The rows, summary, verification tally and JSON report.
    """
    sides = [
        (active, opts.recv_addr, opts.send_addr),
        (passive, opts.send_addr, opts.recv_addr),
    ]
    return await run_sides(
        opts, sides, out=out, experiment=experiment, stop_on_sigint=stop_on_sigint
    )


async def run_sides(
    opts: Options,
    sides: Sequence[Side],
    *,
    out: TextIO | None = None,
    experiment: Experiment | None = None,
    stop_on_sigint: bool = False,
    remote: Remote | None = None,
) -> Outcome:
    """Run the tasks of every local side; the first side's rows are printed.

    Args:
        opts: the options.
        sides: (node, its address, its peer's address) per local side.
        out, experiment, stop_on_sigint: as :func:`run_stress`.
        remote: in a two-process run, the peer side's control connection.
    """
    out = out if out is not None else sys.stdout
    printer = Printer(out, opts.max_reports)
    quiet = Quiet()
    # -o: only the active side sends requests (the first side, unless this is the passive process).
    requests = [not opts.one_way or (i == 0 and opts.role != "passive") for i in range(len(sides))]
    per_side = [
        make_tasks(node, local, peer, opts, printer, quiet, requests[i])
        for i, (node, local, peer) in enumerate(sides)
    ]
    mine, theirs = per_side[0], [t for side in per_side[1:] for t in side]
    everyone = mine + theirs
    rows: list[tuple[float, Row]] = []
    extra: dict[str, Any] = {}
    try:
        if remote is not None:
            await remote.start()
        if opts.show_params:
            printer.out.write(format_params(opts))
        printer.line("Starting up....")
        sink = _RowSink(opts, printer, getattr(sides[0][0], "statistics", None))
        sink.header()
        async with trio.open_nursery() as traffic:
            start = trio.current_time()
            for task in everyone:
                traffic.start_soon(task.reader)
                traffic.start_soon(task.writer, start)
                if opts.rdma_bytes:
                    traffic.start_soon(task.notifications)
            if experiment is not None:

                async def _experiment() -> None:
                    extra["experiment"] = await experiment(start)

                traffic.start_soon(_experiment)
            marks: list[_Stamp] = []
            with trio.CancelScope() as reporting:
                if stop_on_sigint:
                    traffic.start_soon(_cancel_on_sigint, reporting)
                await _report_seconds(opts, mine, theirs, sink, rows, start, marks)
            first, last = marks[0], marks[-1]
            for task in everyone:
                task.stop_sending()
            drained = await _drain(everyone, quiet, opts.drain_timeout)
            if remote is not None:
                # Keep answering the peer's requests until it has drained too.
                with trio.fail_after(opts.drain_timeout + 30):
                    drained = await remote.finish(drained) and drained
            traffic.cancel_scope.cancel()
    finally:
        for task in everyone:
            task.sock.close()
    extra["drained"] = drained
    extra["counters"] = _node_counters(sides)
    ledgers: list[LedgerView] = [t.ledger for t in everyone]
    errors = sum(t.send_errors for t in everyone)
    if remote is not None:
        snaps, remote_errors = await remote.exchange(
            [LedgerSnapshot.of(t.ledger) for t in everyone], errors
        )
        ledgers += snaps
        errors += remote_errors
    tally = reconcile(ledgers, errors)
    summary = _summary_row(opts, first, last)
    printer.out.write(format_summary(summary, opts.summary_only))
    histogram = RttHistogram()
    for task in mine:
        histogram.merge(task.histogram)
    if opts.show_histogram:
        printer.out.write(format_histogram(histogram.counts))
    printer.line(
        f"verified {tally.sent} messages: {tally.lost} lost, {tally.duplicated} duplicated, "
        f"{tally.reordered} reordered, {tally.errors} errors"
        + ("" if drained else f" (drain timed out after {opts.drain_timeout:g} s)")
    )
    if theirs:
        extra["passive"] = attrs.asdict(_summary_row(opts, first, last, shown=False))
    report = build_json(
        options=opts,
        summary=summary,
        rows=rows,
        tally=tally,
        rtt_us=[us for task in mine for us in task.rtts],
        histogram=histogram.counts,
        duration=last[0] - first[0],
        max_gap=max(t.max_gap for t in everyone),
        extra=extra,
    )
    return Outcome(summary=summary, rows=tuple(rows), tally=tally, report=report)


def _node_counters(sides: Sequence[Side]) -> dict[str, dict[str, int]]:
    """The non-zero rds-info counters of every local node (``Node.statistics()``), by address."""
    out: dict[str, dict[str, int]] = {}
    for node, local, _peer in sides:
        stats = getattr(node, "statistics", None)
        if stats is None:
            continue
        out[local] = {name: int(value) for name, value in stats().items() if value}
    return out


_Stamp = tuple[float, Counters, float, float, Counters]


def _stamp(tasks: Sequence[Task], others: Sequence[Task]) -> _Stamp:
    """(trio time, shown tasks' counters, process CPU s, wall s, other tasks' counters) now."""
    return (
        trio.current_time(),
        Counters.total(t.counters for t in tasks),
        time.process_time(),
        time.perf_counter(),
        Counters.total(t.counters for t in others),
    )


def _cpu(opts: Options, a: _Stamp, b: _Stamp) -> float:
    return cpu_percent(a[2], b[2], a[3], b[3]) if opts.report_cpu else -1.0


async def _cancel_on_sigint(scope: trio.CancelScope) -> None:
    import signal

    with trio.open_signal_receiver(signal.SIGINT) as signals:
        async for _ in signals:
            scope.cancel()
            return


class _RowSink:
    """Prints each second: rds-stress's row, or a ``::`` perfdata line with counters."""

    def __init__(
        self,
        opts: Options,
        printer: Printer,
        statistics: Callable[[], Mapping[str, int]] | None,
    ) -> None:
        self.opts = opts
        self.printer = printer
        self.stats = statistics if opts.show_perfdata else None
        self.prev: Mapping[str, int] = self.stats() if self.stats is not None else {}
        self.names = sorted(self.prev)

    def header(self) -> None:
        if self.opts.show_perfdata:
            self.printer.line(format_perfdata_header(self.names))
        elif not self.opts.summary_only:
            self.printer.line(HEADER)

    def emit(self, row: Row, delta: Counters) -> None:
        if self.opts.summary_only:
            return
        if not self.opts.show_perfdata:
            self.printer.line(format_row(row))
            return
        now = self.stats() if self.stats is not None else {}
        increments = [now.get(n, 0) - self.prev.get(n, 0) for n in self.names]
        self.prev = now
        self.printer.line(format_perfdata(self.opts, delta, row, increments))


async def _report_seconds(
    opts: Options,
    tasks: Sequence[Task],
    others: Sequence[Task],
    sink: _RowSink,
    rows: list[tuple[float, Row]],
    start: float,
    marks: list[_Stamp],
) -> None:
    """Print one row per second until ``-T`` (forever with ``-T 0``).

    ``marks`` gets the stamp at the start and after every row, so a
    cancelled run still knows which seconds it reported.
    """
    prev = _stamp(tasks, others)
    marks.append(prev)
    k = 1
    while opts.time == 0 or k <= opts.time + 1e-9:
        await trio.sleep_until(start + k)
        now = _stamp(tasks, others)
        row = make_row(now[1] - prev[1], now[0] - prev[0], opts.tasks, _cpu(opts, prev, now))
        rows.append((now[0] - start, row))
        sink.emit(row, now[1] - prev[1])
        marks.append(now)
        prev = now
        k += 1
    # A fractional -T gets a last, shorter interval.
    if opts.time and start + opts.time > prev[0]:
        await trio.sleep_until(start + opts.time)
        now = _stamp(tasks, others)
        if now[0] > prev[0]:
            row = make_row(now[1] - prev[1], now[0] - prev[0], opts.tasks, _cpu(opts, prev, now))
            rows.append((now[0] - start, row))
            sink.emit(row, now[1] - prev[1])
            marks.append(now)


def _summary_row(opts: Options, first: _Stamp, last: _Stamp, shown: bool = True) -> Row:
    # Only what happened in the reported seconds counts, as in rds-stress.
    elapsed = last[0] - first[0]
    if elapsed <= 0:
        return make_row(Counters(), 1.0, opts.tasks, -1.0)
    delta = last[1] - first[1] if shown else last[4] - first[4]
    return make_row(delta, elapsed, opts.tasks, _cpu(opts, first, last))


async def _drain(tasks: Sequence[Task], quiet: Quiet, timeout: float) -> bool:
    """Wait until no request is outstanding anywhere; False if ``timeout`` ran out."""
    with trio.move_on_after(timeout):
        while any(t.ledger.outstanding_count() for t in tasks):
            quiet.event = trio.Event()
            await quiet.event.wait()
        return True
    return False


async def run_in_process(
    opts: Options, out: TextIO | None = None, stop_on_sigint: bool = False
) -> Outcome:
    """Open a network of ``opts.transport`` with both nodes in this process and run.

    Raises:
        TransportNotFound: no transport of that name is installed.
    """
    import rdsx
    from rdsx.registry import load_transport

    transport = load_transport(opts.transport)
    net_options: dict[str, Any] = {}
    if opts.transport == "sim":
        net_options.update(seed=opts.seed, port_model=opts.port_model)
    elif opts.transport == "tcp":
        # Both ends live in this process: a throw-away secret, any free ports.
        net_options.update(secret=secrets.token_bytes(32), port=0)
    async with transport.open_network(**net_options) as net:
        # --standby (sim only): the active VM gets an emulated device while its VF is away.
        dev_a = await net.add_node(opts.recv_addr, **({"standby": True} if opts.standby else {}))
        dev_p = await net.add_node(opts.send_addr)
        if opts.chaos is not None:
            from transports.sim.faults import chaos

            fabric = net.fabric  # type: ignore[attr-defined]
            drop, dup, delay = opts.chaos
            fabric.route_packet = chaos(fabric, drop=drop, duplicate=dup, delay=delay)
        experiment: Experiment | None = None
        if opts.remove_at is not None:
            from .removal import make_removal

            experiment = make_removal(net, opts)
        async with (
            rdsx.open_node(opts.recv_addr, dev_a, mode=opts.mode) as active,
            rdsx.open_node(opts.send_addr, dev_p, mode=opts.mode) as passive,
        ):
            return await run_stress(
                opts,
                active,
                passive,
                out=out,
                experiment=experiment,
                stop_on_sigint=stop_on_sigint,
            )


def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) nursery exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``rdsx-stress`` console script; returns the exit status."""
    args = sys.argv[1:] if argv is None else list(argv)
    from .compare import wants_migration

    if wants_migration(args):
        # --migrate-at / --compare: the live-migration experiments (bench/compare.py).
        from .compare import main as migration_main

        return migration_main(args)
    opts = parse_args(args)
    clock = None
    if opts.virtual_time:
        clock = trio.testing.MockClock(autojump_threshold=0)
    if opts.role == "both":
        run = functools.partial(run_in_process, opts, stop_on_sigint=opts.time == 0)
    else:
        from .twoproc import run_two_process

        run = functools.partial(run_two_process, opts)
    try:
        outcome = trio.run(run, clock=clock)
    except KeyboardInterrupt:
        return 130
    except (RdsError, OSError, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(e, (RdsError, OSError)) for e in leaves):
            raise
        for leaf in leaves:
            print(f"rdsx-stress: {leaf}", file=sys.stderr)
        return 2
    if opts.json_path:
        with open(opts.json_path, "w") as fh:
            json.dump(outcome.report, fh, indent=2)
            fh.write("\n")
    return outcome.exit_status


if __name__ == "__main__":
    sys.exit(main())
