"""rdsx-stress: rds-stress's traffic, rows and verification over rdsx sockets.

Model (rds-stress's): each side runs ``-t`` tasks; task i binds RDS port
p+1+i and keeps ``-d`` requests of ``-q`` bytes outstanding to *every* peer
task; every request is answered by an ack of ``-a`` bytes. Both sides send.
With ``--rate N`` the loop is open instead: each task sends N requests per
second round-robin over the peer tasks, whatever is outstanding (virtual-time
runs need this, since a closed loop in virtual time never lets time pass).

Each task has one reader (never blocks on sends, so a full peer cannot
deadlock it) and one writer (acks first, then requests). Every message is
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

import collections
import functools
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TextIO

import attrs
import trio
import trio.testing

from rdsx.errors import RdsError, WouldBlock

from .header import Op, payload
from .options import Options, parse_args
from .report import (
    HEADER,
    Counters,
    Row,
    RttHistogram,
    build_json,
    cpu_percent,
    format_histogram,
    format_row,
    format_summary,
    make_row,
)
from .verify import LedgerSnapshot, LedgerView, Tally, TaskLedger, reconcile

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

Address = tuple[str, int]


class StressSocket(Protocol):
    """The part of :class:`rdsx.socket.Socket` rdsx-stress uses."""

    def bind(self, port: int = 0) -> int: ...

    async def sendto(self, data: bytes, dest: Address, *, rdma: Any = None) -> int: ...

    def sendto_nowait(self, data: bytes, dest: Address, *, rdma: Any = None) -> int: ...

    async def recvfrom(self) -> tuple[bytes, Address]: ...

    def close(self) -> None: ...

    def get_mr(self, buffer: bytearray, *, readwrite: bool = True) -> int: ...

    def free_mr(self, cookie: int) -> None: ...

    async def recv_notification(self) -> Any: ...


class StressNode(Protocol):
    """The part of a rdsx node rdsx-stress uses."""

    def socket(self, *, sndbuf: int, rcvbuf: int) -> Any: ...


#: An optional experiment run beside the traffic (e.g. a device removal); it
#: gets the run's start time and returns what it wants recorded in the JSON.
Experiment = Callable[[float], Awaitable[dict[str, Any]]]


class _Printer:
    """Where rows and mismatch tables go; caps the number of tables."""

    def __init__(self, out: TextIO, max_reports: int) -> None:
        self.out = out
        self.max_reports = max_reports
        self.reports = 0

    def line(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def report(self, text: str) -> None:
        self.reports += 1
        if self.reports <= self.max_reports:
            self.out.write(text)
        elif self.reports == self.max_reports + 1:
            self.out.write("(further mismatch reports suppressed)\n")
        self.out.flush()


class _Quiet:
    """Wakes the drain waiter whenever some task's outstanding count drops."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def poke(self) -> None:
        self.event.set()


class _Task:
    """One rds-stress task: a bound socket, a reader and a writer."""

    def __init__(
        self,
        sock: StressSocket,
        ledger: TaskLedger,
        opts: Options,
        printer: _Printer,
        quiet: _Quiet,
        peer_addr: str,
    ) -> None:
        self.sock = sock
        self.ledger = ledger
        self.opts = opts
        self.printer = printer
        self.quiet = quiet
        self.peer_addr = peer_addr
        self.counters = Counters()
        self.histogram = RttHistogram()
        self.rtts: list[float] = []
        self.send_errors = 0
        self.sending = True
        self.credits = [opts.depth] * opts.tasks
        self.acks: collections.deque[tuple[int, int, int]] = collections.deque()
        #: -D: (peer, request seq) -> (the region the acker writes, its cookie).
        self.regions: dict[tuple[int, int], tuple[bytearray, int]] = {}
        self.wake = trio.Event()
        self.next_peer = 0
        self.last_rx: float | None = None
        self.max_gap = 0.0
        self.measure_gaps = True

    def stop_sending(self) -> None:
        self.sending = False
        self.measure_gaps = False
        self.wake.set()

    async def _send(self, op: Op, peer: int, data: bytes, rdma: Any = None) -> bool:
        dest = (self.peer_addr, self.ledger.peer_port(peer))
        extra = {} if rdma is None else {"rdma": rdma}
        t0 = time.perf_counter()
        try:
            try:
                self.sock.sendto_nowait(data, dest, **extra)
            except WouldBlock:
                await self.sock.sendto(data, dest, **extra)
        except RdsError as exc:
            self.ledger.rollback(op, peer)
            self.send_errors += 1
            self.printer.report(f"send to {dest[0]}:{dest[1]} failed: {exc!r}\n")
            return False
        c = self.counters
        c.send_calls += 1
        c.send_usecs += (time.perf_counter() - t0) * 1e6
        if op is Op.REQUEST:
            c.req_tx += 1
            c.req_tx_bytes += len(data)
        else:
            c.ack_tx += 1
            c.ack_tx_bytes += len(data)
            if rdma is not None:
                c.rdma_out_bytes += len(rdma.local)
        return True

    async def _request(self, peer: int, now: float) -> bool:
        """Send the next request to ``peer``; with -D, with a fresh region for its RDMA."""
        if not self.opts.rdma_bytes:
            return await self._send(Op.REQUEST, peer, self.ledger.make_request(peer, now))
        region = bytearray(self.opts.rdma_bytes)
        cookie = self.sock.get_mr(region, readwrite=True)
        data = self.ledger.make_request(peer, now, cookie)
        seq = self.ledger.sent[(Op.REQUEST, peer)] - 1
        if not await self._send(Op.REQUEST, peer, data):
            self.sock.free_mr(cookie)
            return False
        self.regions[(peer, seq)] = (region, cookie)
        return True

    async def _ack(self, peer: int, ack_of: int, cookie: int) -> None:
        """Ack request ``ack_of``; with a cookie, RDMA-write the stamped pattern first."""
        data = self.ledger.make_ack(peer, ack_of)
        if not cookie:
            await self._send(Op.ACK, peer, data)
            return
        from rdsx import RdmaArgs

        local = bytearray(_rdma_pattern(ack_of, self.opts.rdma_bytes))
        await self._send(Op.ACK, peer, data, RdmaArgs(cookie=cookie, local=local, write=True))

    def _rdma_done(self, peer: int, ack_of: int) -> None:
        """The ack of request ``ack_of`` arrived: its region must hold the stamped pattern."""
        region = self.regions.pop((peer, ack_of), None)
        if region is None:
            return
        buf, cookie = region
        self.sock.free_mr(cookie)
        if bytes(buf) != _rdma_pattern(ack_of, len(buf)):
            self.ledger.errors += 1
            self.printer.report(
                f"RDMA data for request {ack_of} to task {peer} did not arrive before its ack\n"
            )
            return
        self.counters.rdma_in_bytes += len(buf)

    async def notifications(self) -> None:
        """-D: count every failed RDMA operation (failures are always notified)."""
        from rdsx import RdmaStatus

        while True:
            note = await self.sock.recv_notification()
            if note.status != RdmaStatus.SUCCESS:
                self.ledger.errors += 1
                self.printer.report(f"RDMA operation failed: {note.status.name}\n")

    def _pick_peer(self) -> int | None:
        """Round-robin over the peers that still have credit (closed loop)."""
        n = self.opts.tasks
        for k in range(n):
            peer = (self.next_peer + k) % n
            if self.credits[peer] > 0:
                self.next_peer = (peer + 1) % n
                return peer
        return None

    async def writer(self, start: float) -> None:
        rate = self.opts.rate
        interval = 1.0 / rate if rate else 0.0
        # Stagger the open-loop tasks so they do not all send at the same instant.
        due = start + interval * self.ledger.index / self.opts.tasks
        while True:
            if self.acks:
                await self._ack(*self.acks.popleft())
                continue
            now = trio.current_time()
            if self.sending and rate is None:
                target = self._pick_peer()
                if target is not None:
                    self.credits[target] -= 1
                    if not await self._request(target, now):
                        self.credits[target] += 1
                    continue
            elif self.sending and now >= due:
                peer = self.next_peer
                self.next_peer = (peer + 1) % self.opts.tasks
                await self._request(peer, now)
                # Falling behind (a blocked send) skips ticks rather than bursting.
                due = max(due + interval, trio.current_time())
                continue
            self.wake = trio.Event()
            if self.sending and rate:
                with trio.move_on_at(due):
                    await self.wake.wait()
            else:
                await self.wake.wait()

    async def reader(self) -> None:
        c = self.counters
        while True:
            data, source = await self.sock.recvfrom()
            now = trio.current_time()
            if self.measure_gaps and self.last_rx is not None:
                self.max_gap = max(self.max_gap, now - self.last_rx)
            self.last_rx = now
            verdict = self.ledger.receive(data, source, now)
            if verdict.report:
                self.printer.report(verdict.report)
            if not verdict.deliver or verdict.peer is None:
                continue
            if verdict.op is Op.REQUEST:
                c.req_rx += 1
                c.req_rx_bytes += len(data)
                self.acks.append((verdict.peer, verdict.seq, verdict.cookie))
            else:
                c.ack_rx += 1
                c.ack_rx_bytes += len(data)
                if self.regions:
                    self._rdma_done(verdict.peer, verdict.ack_of)
                if verdict.rtt is not None:
                    us = verdict.rtt * 1e6
                    c.rtt_count += 1
                    c.rtt_usecs += us
                    self.rtts.append(us)
                    self.histogram.add(us)
                if self.opts.rate is None:
                    self.credits[verdict.peer] += 1
                self.quiet.poke()
            self.wake.set()


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


def _make_tasks(
    node: StressNode,
    local: str,
    peer: str,
    opts: Options,
    printer: _Printer,
    quiet: _Quiet,
) -> list[_Task]:
    tasks = []
    for i in range(opts.tasks):
        sock = node.socket(sndbuf=opts.sockbuf, rcvbuf=opts.sockbuf)
        sock.bind(opts.port + 1 + i)
        ledger = TaskLedger(
            local_addr=local,
            index=i,
            peer_addr=peer,
            base_port=opts.port,
            tasks=opts.tasks,
            req_bytes=opts.req_bytes,
            ack_bytes=opts.ack_bytes,
            verify_payload=opts.verify_payload,
        )
        tasks.append(_Task(sock, ledger, opts, printer, quiet, peer))
    return tasks


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
    printer = _Printer(out, opts.max_reports)
    quiet = _Quiet()
    per_side = [_make_tasks(node, local, peer, opts, printer, quiet) for node, local, peer in sides]
    mine, theirs = per_side[0], [t for side in per_side[1:] for t in side]
    everyone = mine + theirs
    rows: list[tuple[float, Row]] = []
    extra: dict[str, Any] = {}
    try:
        if remote is not None:
            await remote.start()
        printer.line("Starting up....")
        if not opts.summary_only:
            printer.line(HEADER)
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
                await _report_seconds(opts, mine, theirs, printer, rows, start, marks)
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


def _rdma_pattern(seq: int, length: int) -> bytes:
    """What the acker writes into a request's region: its sequence, then the pattern."""
    return (seq.to_bytes(8, "big") + payload(max(length - 8, 0)))[:length]


_Stamp = tuple[float, Counters, float, float, Counters]


def _stamp(tasks: Sequence[_Task], others: Sequence[_Task]) -> _Stamp:
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


async def _report_seconds(
    opts: Options,
    tasks: Sequence[_Task],
    others: Sequence[_Task],
    printer: _Printer,
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
        if not opts.summary_only:
            printer.line(format_row(row))
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
            if not opts.summary_only:
                printer.line(format_row(row))
            marks.append(now)


def _summary_row(opts: Options, first: _Stamp, last: _Stamp, shown: bool = True) -> Row:
    # Only what happened in the reported seconds counts, as in rds-stress.
    elapsed = last[0] - first[0]
    if elapsed <= 0:
        return make_row(Counters(), 1.0, opts.tasks, -1.0)
    delta = last[1] - first[1] if shown else last[4] - first[4]
    return make_row(delta, elapsed, opts.tasks, _cpu(opts, first, last))


async def _drain(tasks: Sequence[_Task], quiet: _Quiet, timeout: float) -> bool:
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
        dev_a = await net.add_node(opts.recv_addr)
        dev_p = await net.add_node(opts.send_addr)
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
