"""Strict verification of every rdsx-stress message: a sans-IO ledger per task.

A :class:`TaskLedger` belongs to one task (one bound socket). It numbers what
the task sends and checks what it receives, with no I/O and no clock of its own
(time is a parameter), so it is unit-tested by hand-written message sequences.

Per stream (sending task, receiving task, operation) sequence numbers start at
0 and must arrive in order, each exactly once, as RDS promises per socket pair.
A received sequence ``s`` against the next expected ``e``:

* ``s == e``: in order.
* ``s > e``: a gap. ``e .. s-1`` are *missing*: late (reordered) or lost.
* ``s < e`` and ``s`` missing: a *reordered* message, counted once.
* ``s < e`` otherwise: a *duplicate*.

Whatever is still missing, or was sent and never arrived, when the run has
drained is *lost*: :func:`reconcile` compares every sender's counts with every
receiver's. Any field other than the sequence that differs from what the
receiver expects (addresses, ports, task index, operation, size, the request an
ack answers, the payload with ``-v``) is an *error*. Every anomaly is described
with rds-stress's field-by-field table.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Any, Protocol

import attrs

from .header import HEADER_SIZE, Header, Op, cookie_of, decode, pack, pack_addr, payload

_OPS = {int(op): op for op in Op}

__all__ = [
    "Anomaly",
    "LedgerSnapshot",
    "LedgerView",
    "Received",
    "StreamState",
    "Tally",
    "TaskLedger",
    "format_mismatch",
    "reconcile",
]


class Anomaly(enum.Enum):
    """What can be wrong with one received message."""

    GAP = "gap"
    REORDERED = "reordered"
    DUPLICATE = "duplicate"
    MISADDRESSED = "misaddressed"
    BAD_SIZE = "bad size"
    BAD_PAYLOAD = "bad payload"
    UNKNOWN_ACK = "unknown ack"
    MALFORMED = "malformed"


#: Anomalies that are errors in their own right (the others are sequence
#: events that end up in the duplicated/reordered/lost counts).
ERRORS = frozenset(
    {
        Anomaly.MISADDRESSED,
        Anomaly.BAD_SIZE,
        Anomaly.BAD_PAYLOAD,
        Anomaly.UNKNOWN_ACK,
        Anomaly.MALFORMED,
    }
)


@attrs.define(slots=True)
class StreamState:
    """The receive side of one stream: next expected sequence and the holes before it."""

    expected: int = 0
    missing: set[int] = attrs.Factory(set)
    unique: int = 0
    duplicated: int = 0
    reordered: int = 0

    def receive(self, seq: int) -> Anomaly | None:
        """Account for ``seq``; return the sequence anomaly, None when in order."""
        if seq == self.expected:
            self.expected += 1
            self.unique += 1
            return None
        if seq > self.expected:
            self.missing.update(range(self.expected, seq))
            self.expected = seq + 1
            self.unique += 1
            return Anomaly.GAP
        if seq in self.missing:
            self.missing.discard(seq)
            self.unique += 1
            self.reordered += 1
            return Anomaly.REORDERED
        self.duplicated += 1
        return Anomaly.DUPLICATE

    def received(self, seq: int) -> bool:
        """True if ``seq`` has arrived at least once."""
        return seq < self.expected and seq not in self.missing


@attrs.frozen(slots=True, kw_only=True)
class Received:
    """The verdict on one received message.

    Attributes:
        op: request or ack, None when the message is not usable.
        peer: index of the sending task, None when not usable.
        seq: the message's sequence number.
        ack_of: for an ack, the request it answers.
        cookie: for a request, the RDMA cookie it carries (0: none).
        rtt: for a good ack, seconds since that request was sent.
        anomalies: everything found wrong (empty for a good message).
        report: the text to print for an anomaly, "" for a good message.
        deliver: True when the task should act on it (answer a request,
            complete a request on an ack); False for duplicates and errors.
    """

    op: Op | None
    peer: int | None
    seq: int = 0
    ack_of: int = 0
    cookie: int = 0
    rtt: float | None = None
    anomalies: tuple[Anomaly, ...] = ()
    report: str = ""
    deliver: bool = False


def _ntoa(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def format_mismatch(expected: Header, got: Header) -> str:
    """rds-stress's field-by-field table for a header that was not what we expected.

    The first seven rows are rds-stress's; ``ack_of`` and ``size`` are rdsx-stress's.
    """

    def row(name: str, want: object, have: object, same: bool) -> str:
        return f"{name:>10} {want!s:>15} {' =' if same else '!='} {have!s:>15}\n"

    out = [
        "An incoming message had a header which\n",
        "didn't contain the fields we expected:\n",
        "    member        expected eq             got\n",
    ]
    for name in ("seq", "from_addr", "from_port", "to_addr", "to_port", "index", "op"):
        want, have = getattr(expected, name), getattr(got, name)
        if name.endswith("_addr"):
            out.append(row(name, _ntoa(want), _ntoa(have), want == have))
        else:
            out.append(row(name, int(want), int(have), want == have))
    for name in ("ack_of", "size"):
        want, have = getattr(expected, name), getattr(got, name)
        out.append(row(name, want, have, want == have))
    return "".join(out)


class TaskLedger:
    """Numbers one task's outgoing messages and verifies its incoming ones.

    Args:
        local_addr: this task's node address.
        index: this task's index; it is bound to ``base_port + 1 + index``.
        peer_addr: the address of the node whose tasks it exchanges with.
        base_port: rds-stress's ``-p``.
        tasks: tasks per side ``-t`` (peer indexes run 0 .. tasks-1).
        req_bytes: request size, header included.
        ack_bytes: ack size, header included.
        verify_payload: also compare payload bytes with the pattern (``-v``).
    """

    def __init__(
        self,
        *,
        local_addr: str,
        index: int,
        peer_addr: str,
        base_port: int,
        tasks: int,
        req_bytes: int,
        ack_bytes: int,
        verify_payload: bool = False,
    ) -> None:
        self.local_addr = local_addr
        self.index = index
        self.peer_addr = peer_addr
        self.base_port = base_port
        self.tasks = tasks
        self.req_bytes = req_bytes
        self.ack_bytes = ack_bytes
        self.verify_payload = verify_payload
        self.local_port = base_port + 1 + index
        self._local = pack_addr(local_addr)
        self._peer = pack_addr(peer_addr)
        self._req_pad = payload(req_bytes - HEADER_SIZE)
        self._ack_pad = payload(ack_bytes - HEADER_SIZE)
        #: (op, peer) -> how many messages this task sent on that stream.
        self.sent: dict[tuple[Op, int], int] = {}
        #: (op, peer) -> receive state of the stream from that peer task.
        self.streams: dict[tuple[Op, int], StreamState] = {}
        #: peer -> {request seq: send time}, oldest first.
        self.outstanding: dict[int, dict[int, float]] = {p: {} for p in range(tasks)}
        self.errors = 0

    def peer_port(self, peer: int) -> int:
        """The RDS port peer task ``peer`` is bound to."""
        return self.base_port + 1 + peer

    def _next_seq(self, op: Op, peer: int) -> int:
        seq = self.sent.get((op, peer), 0)
        self.sent[(op, peer)] = seq + 1
        return seq

    def rollback(self, op: Op, peer: int) -> None:
        """Forget the last message numbered for (``op``, ``peer``): its send failed.

        Only the most recent message of a stream can be taken back; the task's
        single writer guarantees nothing else was numbered on it meanwhile.
        """
        seq = self.sent[(op, peer)] - 1
        self.sent[(op, peer)] = seq
        if op is Op.REQUEST:
            self.outstanding[peer].pop(seq, None)

    def make_request(self, peer: int, now: float, cookie: int = 0) -> bytes:
        """Build the next request to task ``peer`` and remember when it left.

        Args:
            peer: the receiving task's index.
            now: the send time (for the RTT).
            cookie: the RDMA cookie of the region the acker should write (``-D``).
        """
        seq = self._next_seq(Op.REQUEST, peer)
        self.outstanding[peer][seq] = now
        hdr = pack(
            Op.REQUEST,
            seq,
            self._local,
            self.local_port,
            self._peer,
            self.peer_port(peer),
            self.index,
            0,
            cookie,
            self.req_bytes,
        )
        return hdr + self._req_pad

    def make_ack(self, peer: int, ack_of: int) -> bytes:
        """Build the next ack to task ``peer``, answering its request ``ack_of``."""
        hdr = pack(
            Op.ACK,
            self._next_seq(Op.ACK, peer),
            self._local,
            self.local_port,
            self._peer,
            self.peer_port(peer),
            self.index,
            ack_of,
            0,
            self.ack_bytes,
        )
        return hdr + self._ack_pad

    def outstanding_count(self) -> int:
        """Requests this task sent that no ack has answered yet."""
        return sum(len(v) for v in self.outstanding.values())

    def receive(self, data: bytes, source: tuple[str, int], now: float) -> Received:
        """Verify one message that arrived from ``source`` (address, port)."""
        good = self._receive_expected(data, source, now)
        return good if good is not None else self._receive_checked(data, source, now)

    def _receive_expected(
        self, data: bytes, source: tuple[str, int], now: float
    ) -> Received | None:
        """The fast path: ``data`` is exactly the next message expected, or None."""
        src_addr, src_port = source
        peer = src_port - self.base_port - 1
        if len(data) < HEADER_SIZE or src_addr != self.peer_addr or not 0 <= peer < self.tasks:
            return None
        op = data[2]
        if op == Op.REQUEST:
            size, ack_of, pad = self.req_bytes, 0, self._req_pad
        elif op == Op.ACK:
            waiting = self.outstanding[peer]
            if not waiting:
                return None
            size, ack_of, pad = self.ack_bytes, next(iter(waiting)), self._ack_pad
        else:
            return None
        key = (_OPS[op], peer)
        stream = self.streams.get(key)
        seq = stream.expected if stream is not None else 0
        cookie = cookie_of(data)
        want = pack(
            op, seq, self._peer, src_port, self._local, self.local_port, peer, ack_of, cookie, size
        )
        if len(data) != size or not data.startswith(want):
            return None
        if self.verify_payload and data[HEADER_SIZE:] != pad:
            return None
        if stream is None:
            stream = self.streams[key] = StreamState()
        stream.receive(seq)
        rtt = now - self.outstanding[peer].pop(ack_of) if op == Op.ACK else None
        return Received(
            op=key[0], peer=peer, seq=seq, ack_of=ack_of, cookie=cookie, rtt=rtt, deliver=True
        )

    def _receive_checked(self, data: bytes, source: tuple[str, int], now: float) -> Received:
        """The slow path: find and report everything that is wrong with ``data``."""
        got = decode(data)
        if got is None:
            self.errors += 1
            return Received(
                op=None,
                peer=None,
                anomalies=(Anomaly.MALFORMED,),
                report=f"An incoming message of {len(data)} bytes from "
                f"{source[0]}:{source[1]} had no rdsx-stress header\n",
            )
        src_addr, src_port = source
        peer = src_port - self.base_port - 1
        op = Op(got.op) if got.op in (Op.REQUEST, Op.ACK) else None
        stream_op = op if op is not None else Op.REQUEST
        stream = self.streams.get((stream_op, peer))
        pad = self._req_pad if stream_op is Op.REQUEST else self._ack_pad
        waiting = self.outstanding.get(peer) if stream_op is Op.ACK else None
        # Acks come back in request order, so the one expected answers the oldest.
        want_ack_of = next(iter(waiting)) if waiting else got.ack_of
        expected = Header(
            op=stream_op,
            seq=stream.expected if stream is not None else 0,
            from_addr=pack_addr(src_addr),
            from_port=src_port,
            to_addr=self._local,
            to_port=self.local_port,
            index=peer,
            ack_of=want_ack_of if stream_op is Op.ACK else 0,
            size=len(pad) + HEADER_SIZE,
        )
        anomalies: list[Anomaly] = []
        if (
            op is None
            or not 0 <= peer < self.tasks
            or src_addr != self.peer_addr
            or got.from_addr != expected.from_addr
            or got.from_port != src_port
            or got.to_addr != self._local
            or got.to_port != self.local_port
            or got.index != peer
        ):
            anomalies.append(Anomaly.MISADDRESSED)
        if got.size != expected.size or len(data) != expected.size:
            anomalies.append(Anomaly.BAD_SIZE)
        if anomalies:
            # Which stream it belongs to is unknown: leave every stream alone.
            self.errors += 1
            return Received(
                op=None,
                peer=None,
                seq=got.seq,
                anomalies=tuple(anomalies),
                report=format_mismatch(expected, got),
            )
        assert op is not None
        if stream is None:
            stream = self.streams[(op, peer)] = StreamState()
        seq_anomaly = stream.receive(got.seq)
        if seq_anomaly is not None:
            anomalies.append(seq_anomaly)
        report = format_mismatch(expected, got) if seq_anomaly is not None else ""
        if self.verify_payload and data[HEADER_SIZE:] != pad:
            anomalies.append(Anomaly.BAD_PAYLOAD)
            report += _payload_report(data[HEADER_SIZE:], pad)
        rtt = None
        if op is Op.ACK and seq_anomaly is not Anomaly.DUPLICATE:
            sent_at = self.outstanding[peer].pop(got.ack_of, None)
            if sent_at is None:
                anomalies.append(Anomaly.UNKNOWN_ACK)
                report += (
                    f"An incoming ack from {src_addr}:{src_port} answers request "
                    f"{got.ack_of}, which is not outstanding\n"
                )
            else:
                rtt = now - sent_at
        if any(a in ERRORS for a in anomalies):
            self.errors += 1
        return Received(
            op=op,
            peer=peer,
            seq=got.seq,
            ack_of=got.ack_of,
            cookie=got.cookie,
            rtt=rtt,
            anomalies=tuple(anomalies),
            report=report,
            deliver=seq_anomaly is not Anomaly.DUPLICATE and Anomaly.UNKNOWN_ACK not in anomalies,
        )


def _payload_report(got: bytes, want: bytes) -> str:
    diffs = [i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b]
    offset = diffs[0] if diffs else 0
    return (
        f"An incoming message has a corrupted payload at offset {offset}; "
        f"{len(diffs)} out of {len(want)} bytes corrupted\n"
    )


@attrs.frozen(slots=True, kw_only=True)
class Tally:
    """Whole-run verification totals over every stream of every task.

    Attributes:
        sent: messages (requests and acks) sent.
        received: distinct messages received.
        lost: sent and never received by the end of the drained run.
        duplicated: received more than once (each extra copy counts).
        reordered: received after a later message of the same stream.
        errors: misaddressed, wrong size or payload, unknown acks, malformed,
            and sequences that were never sent.
        requests_sent: of ``sent``, requests.
        unanswered: requests whose ack never came back.
    """

    sent: int = 0
    received: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    errors: int = 0
    requests_sent: int = 0
    unanswered: int = 0

    @property
    def ok(self) -> bool:
        """True when nothing was lost, duplicated, reordered or wrong."""
        return not (self.lost or self.duplicated or self.reordered or self.errors)


class LedgerView(Protocol):
    """What :func:`reconcile` reads from a ledger (a live one or a remote snapshot)."""

    local_addr: str
    index: int
    peer_addr: str
    errors: int
    sent: dict[tuple[Op, int], int]
    streams: dict[tuple[Op, int], StreamState]

    def outstanding_count(self) -> int:
        """Requests still waiting for their ack."""


@attrs.define(slots=True, kw_only=True)
class LedgerSnapshot:
    """A ledger's counts, as a remote side sends them after a two-process run."""

    local_addr: str
    index: int
    peer_addr: str
    errors: int
    sent: dict[tuple[Op, int], int]
    streams: dict[tuple[Op, int], StreamState]
    outstanding: int

    def outstanding_count(self) -> int:
        """Requests still unanswered when the snapshot was taken."""
        return self.outstanding

    @classmethod
    def of(cls, ledger: TaskLedger) -> LedgerSnapshot:
        """Snapshot a live ledger."""
        return cls(
            local_addr=ledger.local_addr,
            index=ledger.index,
            peer_addr=ledger.peer_addr,
            errors=ledger.errors,
            sent=dict(ledger.sent),
            streams=ledger.streams,
            outstanding=ledger.outstanding_count(),
        )

    def to_wire(self) -> dict[str, Any]:
        """Plain lists and numbers (msgpack- and JSON-friendly)."""
        return {
            "local_addr": self.local_addr,
            "index": self.index,
            "peer_addr": self.peer_addr,
            "errors": self.errors,
            "outstanding": self.outstanding,
            "sent": [[int(op), peer, n] for (op, peer), n in self.sent.items()],
            "streams": [
                [int(op), peer, s.expected, sorted(s.missing), s.unique, s.duplicated, s.reordered]
                for (op, peer), s in self.streams.items()
            ],
        }

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> LedgerSnapshot:
        """Rebuild a snapshot from :meth:`to_wire`'s output.

        Raises:
            ValueError: the data is malformed.
        """
        try:
            streams = {
                (Op(op), int(peer)): StreamState(
                    expected=int(exp),
                    missing={int(m) for m in missing},
                    unique=int(uniq),
                    duplicated=int(dup),
                    reordered=int(reo),
                )
                for op, peer, exp, missing, uniq, dup, reo in data["streams"]
            }
            return cls(
                local_addr=str(data["local_addr"]),
                index=int(data["index"]),
                peer_addr=str(data["peer_addr"]),
                errors=int(data["errors"]),
                outstanding=int(data["outstanding"]),
                sent={(Op(op), int(peer)): int(n) for op, peer, n in data["sent"]},
                streams=streams,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed ledger snapshot: {exc!r}") from None


def reconcile(ledgers: Iterable[LedgerView], extra_errors: int = 0) -> Tally:
    """Compare what every task sent with what every task received.

    Args:
        ledgers: the ledgers of every task on both sides.
        extra_errors: errors seen outside the ledgers (failed sends, ...).
    """
    by_task = {(lg.local_addr, lg.index): lg for lg in ledgers}
    sent = received = lost = dup = reo = errors = req = unanswered = 0
    for lg in by_task.values():
        errors += lg.errors
        unanswered += lg.outstanding_count()
        for (op, peer), count in lg.sent.items():
            sent += count
            if op is Op.REQUEST:
                req += count
            receiver = by_task.get((lg.peer_addr, peer))
            stream = receiver.streams.get((op, lg.index)) if receiver is not None else None
            if stream is None:
                lost += count
                continue
            got = min(stream.expected, count) - sum(1 for s in stream.missing if s < count)
            received += got
            lost += count - got
        for stream in lg.streams.values():
            dup += stream.duplicated
            reo += stream.reordered
    # A sequence the receiver saw that the sender never numbered is an error.
    for lg in by_task.values():
        for (op, peer), stream in lg.streams.items():
            sender = by_task.get((lg.peer_addr, peer))
            count = sender.sent.get((op, lg.index), 0) if sender is not None else 0
            if stream.expected > count:
                errors += 1
    return Tally(
        sent=sent,
        received=received,
        lost=lost,
        duplicated=dup,
        reordered=reo,
        errors=errors + extra_errors,
        requests_sent=req,
        unanswered=unanswered,
    )
