"""One rdsx-stress task: a bound socket, its ledger, a reader and a writer.

Each task has one reader, which never blocks on sends (so a full peer cannot
deadlock it), and one writer, which sends acks first, then requests: closed
loop (``-d`` outstanding per peer task) or open loop (``--rate``). With
``-D`` every request carries the cookie of a fresh memory region, the acker
RDMA-writes a stamped pattern into it along with its ack, and the requester
checks the region when the ack arrives.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Protocol, TextIO

import trio

from rdsx.errors import NotConnected, RdsError, WouldBlock

from .header import Op, payload
from .options import Options
from .report import Counters, RttHistogram
from .verify import TaskLedger

__all__ = ["Printer", "Quiet", "StressNode", "StressSocket", "Task", "make_tasks", "rdma_pattern"]

Address = tuple[str, int]


class StressSocket(Protocol):
    """The part of :class:`rdsx.socket.Socket` rdsx-stress uses."""

    def bind(self, port: int = 0) -> int:
        """Bind to ``port`` on the node; return it."""

    async def sendto(self, data: bytes, dest: Address, *, rdma: Any = None) -> int:
        """Send, waiting for buffer space or congestion to clear."""

    def sendto_nowait(self, data: bytes, dest: Address, *, rdma: Any = None) -> int:
        """Send now or raise ``WouldBlock``/``Congested``."""

    async def recvfrom(self) -> tuple[bytes, Address]:
        """The next message and its (address, port) source."""

    def close(self) -> None:
        """Close the socket."""

    def get_mr(self, buffer: bytearray, *, readwrite: bool = True) -> int:
        """Register ``buffer`` for the peer's RDMA (``-D``); return its cookie."""

    def free_mr(self, cookie: int) -> None:
        """Deregister the region of ``cookie``."""

    async def recv_notification(self) -> Any:
        """The next RDMA notification."""


class StressNode(Protocol):
    """The part of a rdsx node rdsx-stress uses."""

    def socket(self, *, sndbuf: int, rcvbuf: int) -> Any:
        """A new unbound socket with these buffer sizes."""


class Printer:
    """Where rows and mismatch tables go; caps the number of tables."""

    def __init__(self, out: TextIO, max_reports: int) -> None:
        self.out = out
        self.max_reports = max_reports
        self.reports = 0

    def line(self, text: str) -> None:
        """Write one line (a row, a log line)."""
        self.out.write(text + "\n")
        self.out.flush()

    def report(self, text: str) -> None:
        """Write a mismatch report, unless ``max_reports`` were written already."""
        self.reports += 1
        if self.reports <= self.max_reports:
            self.out.write(text)
        elif self.reports == self.max_reports + 1:
            self.out.write("(further mismatch reports suppressed)\n")
        self.out.flush()


class Quiet:
    """Wakes the drain waiter whenever some task's outstanding count drops."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def poke(self) -> None:
        """Wake the drain waiter so it re-checks."""
        self.event.set()


class Task:
    """One rds-stress task: a bound socket, its ledger, a reader and a writer.

    Attributes:
        counters: what this task did (summed into the rows).
        histogram: RTTs of this task's requests.
        rtts: every RTT sample in µs (for the JSON percentiles).
        send_errors: sends that raised (each also reported).
        max_gap: longest time without receiving anything while traffic ran.
    """

    def __init__(
        self,
        sock: StressSocket,
        ledger: TaskLedger,
        opts: Options,
        printer: Printer,
        quiet: Quiet,
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
        #: -D: requests postponed because no device could register a region.
        self.mr_waits = 0
        self.wake = trio.Event()
        self.next_peer = 0
        self.last_rx: float | None = None
        self.max_gap = 0.0
        self.measure_gaps = True

    def stop_sending(self) -> None:
        """Start no more requests (``-T`` is over); keep acking the peer's."""
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
        try:
            cookie = self.sock.get_mr(region, readwrite=True)
        except NotConnected:
            # Between a device removal and the next arrival nothing can be registered
            # (documented by Socket.get_mr); no event says when one arrives, so retry
            # after a millisecond. The request was never numbered: nothing is lost.
            self.mr_waits += 1
            await trio.sleep(0.001)
            return False
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

        local = bytearray(rdma_pattern(ack_of, self.opts.rdma_bytes))
        await self._send(Op.ACK, peer, data, RdmaArgs(cookie=cookie, local=local, write=True))

    def _rdma_done(self, peer: int, ack_of: int) -> None:
        """The ack of request ``ack_of`` arrived: its region must hold the stamped pattern."""
        region = self.regions.pop((peer, ack_of), None)
        if region is None:
            return
        buf, cookie = region
        self.sock.free_mr(cookie)
        if bytes(buf) != rdma_pattern(ack_of, len(buf)):
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
        """Send acks first, then requests (closed loop, or paced from ``start``); forever."""
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
        """Receive, verify and act on every message; never blocks on a send; forever."""
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
                self.quiet.poke()
                if self.opts.rate is not None:
                    # Open loop: an ack gives the writer nothing to do (no credit);
                    # waking it would only cost a scheduler pass and a cancel scope.
                    continue
                self.credits[verdict.peer] += 1
            self.wake.set()


def make_tasks(
    node: StressNode,
    local: str,
    peer: str,
    opts: Options,
    printer: Printer,
    quiet: Quiet,
    requests: bool = True,
) -> list[Task]:
    """Create and bind ``-t`` tasks on ``node`` (ports p+1..p+t) exchanging with ``peer``.

    With ``requests=False`` (the passive side of ``-o``) the tasks only ack.
    """
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
        task = Task(sock, ledger, opts, printer, quiet, peer)
        task.sending = requests
        tasks.append(task)
    return tasks


def rdma_pattern(seq: int, length: int) -> bytes:
    """What the acker writes into a request's region: its sequence, then the pattern."""
    return (seq.to_bytes(8, "big") + payload(max(length - 8, 0)))[:length]
