"""One RDS connection (one node pair, one path) as a sans-IO state machine.

Follow one message: :meth:`Connection.send` appends it to the send queue
without a sequence number. :meth:`Connection.frames_to_send` takes it from the
head, gives it ``seq = next_tx_seq`` (at first transmission, so canceled or
restarted-away messages never leave gaps), moves it to the tail of the
retransmit queue and cuts it into fragments. The peer reassembles it, checks
the sequence number against ``next_rx_seq`` and acks it, piggybacked on its
next frame or in an explicit ack frame. :meth:`_drop_acked` frees every
message at the head of the retransmit queue with ``seq <= ack``, and the node
sees :class:`MessageAcked`. If the transport goes down first,
:meth:`_reset_queues` splices the retransmit queue back in front of the send
queue, and the message goes out again with its original seq and the
RETRANSMITTED flag; the peer drops it if it already had it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

from ..errors import AddressNotAvailable, LocalProtocolError, MessageTooLarge, RemoteProtocolError
from ._backoff import should_initiate
from ._config import EngineConfig
from ._cong import CongestionMap
from ._counters import EngineCounters, MutableCounters
from ._events import (
    CongestionUpdated,
    DropReason,
    Event,
    MessageAcked,
    MessageDropped,
    MessageReceived,
    MessagesAcked,
    PeerRestarted,
    PongReceived,
)
from ._message import (
    CANCELED,
    INTERNAL,
    ConnectionInfo,
    Message,
    QueuedMessage,
    reports,
    row,
)
from ._state import ConnState, transition
from ._wire import (
    FLAG_ACK_REQUIRED,
    FLAG_CONG_BITMAP,
    FLAG_EXT,
    FLAG_RETRANSMITTED,
    FLAG_TOMBSTONE,
    HEADER,
    HEADER_FIXED,
    HEADER_SIZE,
    MAX_EXT,
    Handshake,
    decode_cong_update,
    decode_handshake,
    encode_cong_update,
    encode_handshake,
    parse_fragment,
)

__all__ = ["Connection", "ConnectionInfo", "Frame", "MessageCallback", "QueuedMessage"]

_S = ConnState
_UP = ConnState.UP
_EMPTY = b""
_RESEND_FLAGS = FLAG_RETRANSMITTED | FLAG_ACK_REQUIRED
_TOMBSTONE_FLAGS = FLAG_TOMBSTONE | _RESEND_FLAGS
#: Flags a data frame may carry and still take the receive fast path.
_FAST_RX_FLAGS = FLAG_ACK_REQUIRED | FLAG_RETRANSMITTED
_pack_header = HEADER.pack
_unpack_fixed = HEADER_FIXED.unpack_from

#: ``on_message(sport, dport, data, ext, seq)``: a received message, delivered at once.
MessageCallback = Callable[[int, int, bytes, bytes, int], None]

#: One frame to post: the 48-byte header and this fragment's payload. The node
#: copies both, back to back, into one registered send buffer (one copy of the
#: payload, no ``header + payload`` concatenation here).
Frame = tuple[bytes, bytes | memoryview]


class Connection:
    """The RDS protocol between this node and one peer, without any I/O.

    Inputs are API calls (:meth:`send`, :meth:`cancel`,
    :meth:`queue_cong_update`, :meth:`receives_posted`), transport changes
    (:meth:`start_connect`, :meth:`incoming_connect`, :meth:`transport_up`,
    :meth:`transport_down`), :meth:`receive_frame` and :meth:`handle_timer`.
    Outputs are :meth:`frames_to_send`, :meth:`get_timer` and
    :meth:`next_event`. Time is always the caller's ``now`` (seconds, any
    monotonic clock). The module docstring of :mod:`rdsx.engine` gives the
    call sequence.

    Args:
        local: our RDS address.
        remote: the peer's RDS address.
        generation: this node incarnation's number, a random non-zero u32
            chosen once per node start (0 disables restart detection).
        config: protocol parameters.
        batch_acks: report acknowledged messages as one :class:`MessagesAcked` per
            ack instead of one :class:`MessageAcked` per message.
        on_message: if given, called as ``on_message(sport, dport, data, ext, seq)``
            for each received message in place of a :class:`MessageReceived` event,
            and as ``on_message(0, port, b"", b"", seq)`` for each pong in place of
            :class:`PongReceived` (so both keep their arrival order). It runs inside
            :meth:`receive_frame`: it must not raise or call into this connection.
    """

    def __init__(
        self,
        local: str,
        remote: str,
        *,
        generation: int = 0,
        config: EngineConfig | None = None,
        batch_acks: bool = False,
        on_message: MessageCallback | None = None,
    ) -> None:
        if not 0 <= generation <= 0xFFFFFFFF:
            raise ValueError("generation must be a u32")
        self.local = local
        self.remote = remote
        self.generation = generation
        self.config = config if config is not None else EngineConfig()
        self.peer_generation = 0
        self._state = ConnState.DOWN
        self._counters = MutableCounters()
        self._events: collections.deque[Event] = collections.deque()
        self._batch_acks = batch_acks
        self._max_message_size = self.config.max_message_size
        self._ack_delay = self.config.ack_delay
        self._on_message = on_message
        # --- send side
        self._next_tx_seq = 1
        self._send_queue: collections.deque[Message] = collections.deque()
        self._retrans: collections.deque[Message] = collections.deque()
        self._cur: Message | None = None  # the message being cut into fragments
        self._cur_view: memoryview | None = None
        self._cur_index = 0
        self._cur_count = 0
        self._highest_sent = 0  # highest seq whose every fragment was emitted
        self._unacked_packets = 0  # Linux's ACK_REQUIRED countdowns
        self._unacked_bytes = 0
        self._local_cong: CongestionMap | None = None
        self._cong_pending = False
        self._peer_cong: frozenset[int] = frozenset()
        # --- receive side
        self._next_rx_seq = 0
        self._rx_active = False  # a multi-fragment message is being reassembled
        self._rx_key: tuple[int, int, int, int, int, int, bytes] = (0, 0, 0, 0, 0, 0, b"")
        self._rx_next = 0
        self._rx_buf = bytearray()
        self._rx_discard = False
        # --- per transport (reset by _reset_transport)
        self._frag = self.config.frag_size
        # the largest payload a single-fragment frame may carry (fast receive path)
        self._rx_fast_max = min(self._frag, self.config.max_message_size)
        self._flow = False
        self._send_credits = 0
        self._grant_pending = 0  # receives posted but not yet advertised
        self._peer_credits = 0  # what the peer may still send us
        self._handshake: bytes | None = None
        self._hs_credits = 0
        self._ack_needed = False
        self._ack_deadline: float | None = None
        self._last_ack_sent = 0
        self._throttled = False

    def _transition(self, new: ConnState) -> None:
        """The one place ``_state`` changes, checked against the table in ``_state.py``."""
        self._state = transition(self._state, new)

    # ------------------------------------------------------------------ inspection

    @property
    def state(self) -> ConnState:
        """The life-cycle state (see :mod:`rdsx.engine._state`)."""
        return self._state

    @property
    def next_tx_seq(self) -> int:
        """The sequence number the next newly transmitted message gets (starts at 1)."""
        return self._next_tx_seq

    @property
    def next_rx_seq(self) -> int:
        """One past the highest sequence number received (starts at 0, kept across resets)."""
        return self._next_rx_seq

    def has_pending(self) -> bool:
        """Whether :meth:`frames_to_send` has anything to emit once UP and credited."""
        return bool(
            self._cur is not None or self._send_queue or self._cong_pending or self._ack_needed
        )

    def peer_congested(self, port: int) -> bool:
        """Whether the peer's congestion map marks ``port`` (check before ``send``)."""
        return port in self._peer_cong

    def statistics(self) -> EngineCounters:
        """A frozen snapshot of this connection's counters."""
        return self._counters.snapshot()

    def info(self) -> ConnectionInfo:
        """A frozen snapshot of the state and queues (for rds-info)."""
        return ConnectionInfo(
            local=self.local,
            remote=self.remote,
            state=self._state,
            next_tx_seq=self._next_tx_seq,
            next_rx_seq=self._next_rx_seq,
            generation=self.generation,
            peer_generation=self.peer_generation,
            send_credits=self._send_credits if self._flow else None,
            send_queue=tuple(row(m) for m in self._send_queue),
            retransmit_queue=tuple(row(m) for m in self._retrans),
        )

    def next_event(self) -> Event | None:
        """Pop the oldest pending event, or ``None``."""
        events = self._events
        return events.popleft() if events else None

    def get_timer(self) -> float | None:
        """The time at which :meth:`handle_timer` must be called, or ``None``."""
        return self._ack_deadline

    def handle_timer(self, now: float) -> None:
        """Fire expired timers (the delayed ack); then call :meth:`frames_to_send`."""
        deadline = self._ack_deadline
        if deadline is not None and now >= deadline:
            self._ack_deadline = None
            self._ack_needed = True

    # ------------------------------------------------------------------ API calls

    def send(
        self,
        sport: int,
        dport: int,
        payload: bytes | memoryview,
        *,
        token: object = None,
        ack_required: bool = False,
        rdma: bool = False,
        ext: bytes = b"",
    ) -> None:
        """Queue a message; legal in every state (it waits for the transport).

        The engine keeps a reference to ``payload`` until the message is acked
        or dropped: pass ``bytes`` or a buffer nobody mutates.

        Args:
            sport: our source port.
            dport: the peer's destination port (0 = ping).
            payload: the message, 0 to ``max_message_size`` bytes.
            token: returned in :class:`MessageAcked` / :class:`MessageDropped`.
            ack_required: ask for an ack now (the node sets it when the
                sender's send buffer is at least half full).
            rdma: the message carries an RDMA op: never resent after a reset.
            ext: up to 15 opaque bytes delivered with the message.

        Raises:
            MessageTooLarge: payload over ``max_message_size`` or ext over 15 bytes.
            AddressNotAvailable: a port outside 0..65535.
        """
        if not (0 <= sport <= 0xFFFF and 0 <= dport <= 0xFFFF):
            raise AddressNotAvailable(f"port out of range: {sport} -> {dport}")
        if type(payload) is memoryview and (payload.format != "B" or payload.ndim != 1):
            payload = payload.cast("B")
        if len(payload) > self._max_message_size:
            raise MessageTooLarge(
                f"{len(payload)} bytes exceed the {self.config.max_message_size}-byte maximum"
            )
        if len(ext) > MAX_EXT:
            raise MessageTooLarge(f"ext of {len(ext)} bytes exceeds {MAX_EXT}")
        flags = FLAG_ACK_REQUIRED if ack_required else 0
        if ext:
            flags |= FLAG_EXT
            ext = bytes((len(ext),)) + ext
        self._send_queue.append(Message(sport, dport, payload, token, flags, ext, rdma))
        self._counters.send_queued += 1

    def cancel(self, sport: int, dport: int | None = None) -> list[object]:
        """Cancel queued and unacked messages from ``sport`` (to ``dport``, if given).

        A canceled message that was already transmitted may still be delivered
        (the peer may have it); it is never resent, and produces no further
        event. Its sequence number is resent as a tombstone after a reset.

        Returns:
            The tokens of the canceled messages, in send order.
        """
        tokens: list[object] = []

        def hit(msg: Message) -> bool:
            return (
                msg.sport == sport
                and (dport is None or msg.dport == dport)
                and msg.token is not INTERNAL
                and msg.token is not CANCELED
            )

        for msg in self._retrans:
            if hit(msg):
                tokens.append(msg.token)
                msg.token = CANCELED
        kept: collections.deque[Message] = collections.deque()
        for msg in self._send_queue:
            if hit(msg):
                tokens.append(msg.token)
                msg.token = CANCELED
                if msg.seq == 0:
                    continue  # never transmitted: no sequence number to account for
                self._tombstone(msg)
            kept.append(msg)
        self._send_queue = kept
        return tokens

    def queue_cong_update(self, local_map: CongestionMap) -> None:
        """Send our congestion map ahead of queued data (and again on every UP).

        The engine keeps a reference and reads the map when the update is
        transmitted, so several changes before that coalesce into one update.
        """
        self._local_cong = local_map
        if not self._cong_pending:
            self._cong_pending = True
            self._counters.cong_update_queued += 1

    def receives_posted(self, count: int = 1) -> None:
        """The node posted ``count`` more receive buffers on the current transport.

        Call it after :meth:`start_connect` / :meth:`incoming_connect` for the
        initial ring (those become the handshake's credits) and then for every
        repost. Each buffer must hold ``HEADER_SIZE + config.frag_size`` bytes.

        Raises:
            LocalProtocolError: in DOWN (there is no transport to post on).
        """
        if count < 0:
            raise LocalProtocolError("count must be >= 0")
        if self._state is ConnState.DOWN:
            raise LocalProtocolError("receives posted while DOWN: call start_connect first")
        self._grant_pending += count

    # ------------------------------------------------------------------ life cycle

    def start_connect(self, now: float) -> None:
        """We begin to establish a transport (DOWN -> CONNECTING).

        Raises:
            LocalProtocolError: not DOWN.
        """
        self._transition(_S.CONNECTING)
        self._reset_transport()

    def incoming_connect(self, now: float) -> bool:
        """The peer is establishing a transport to us: accept it?

        From DOWN: yes (-> CONNECTING). While UP: yes, it replaces a stale
        transport, as after a peer reboot (UP -> RESETTING, counted
        ``ib_listen_closed_stale`` and ``conn_reset``; unacked messages are
        requeued for resend). While CONNECTING or RESETTING it is a raced
        connect (counted ``ib_connect_raced``): we accept only if the peer is
        the side that should initiate (:func:`should_initiate`), in which case
        the node abandons its own attempt; otherwise the node rejects it.

        Returns:
            Whether to accept; if so, call :meth:`receives_posted` for the new
            transport's ring, :meth:`handshake` for the accept's private data,
            then :meth:`transport_up`.

        Raises:
            LocalProtocolError: in ERROR (call :meth:`transport_down` first).
        """
        state = self._state
        if state is ConnState.DOWN:
            self._transition(_S.CONNECTING)
        elif state in (ConnState.CONNECTING, ConnState.RESETTING):
            self._counters.ib_connect_raced += 1
            if self.local != self.remote and should_initiate(self.local, self.remote):
                return False
        elif state is _UP:
            self._transition(_S.RESETTING)
            self._counters.ib_listen_closed_stale += 1
            self._counters.conn_reset += 1
            self._reset_queues()
        else:
            raise LocalProtocolError(f"incoming connect in {state.name}")
        self._reset_transport()
        return True

    def handshake(self) -> bytes:
        """Our connect private data (msgpack, under 196 bytes), for this attempt.

        Advertises every receive posted so far as initial credits and the
        highest seq we received (``dp_ack_seq``). Repeated calls within one
        attempt return the same bytes.

        Raises:
            LocalProtocolError: not CONNECTING or RESETTING.
        """
        if self._state not in (ConnState.CONNECTING, ConnState.RESETTING):
            raise LocalProtocolError(f"handshake in {self._state.name}")
        if self._handshake is None:
            credits = self._grant_pending if self.config.flow_control else 0
            self._grant_pending -= credits
            self._hs_credits = credits
            ack = self._ack_value()
            self._last_ack_sent = ack
            self._handshake = encode_handshake(
                Handshake(
                    src=self.local,
                    dst=self.remote,
                    generation=self.generation,
                    peer_generation=self.peer_generation,
                    ack=ack,
                    credits=credits,
                    frag_size=self.config.frag_size,
                )
            )
        return self._handshake

    def transport_up(self, peer_handshake: bytes, now: float) -> None:
        """The transport is established and the peer's handshake is in hand (-> UP).

        Applies the peer's generation (a restart flushes our unacked messages
        and restarts both seq counters), treats its ``dp_ack_seq`` as an ack
        *before* anything is resent, sets up credits, and queues our
        congestion map. Call :meth:`handshake` first (the node needs it for the
        exchange anyway).

        Raises:
            LocalProtocolError: not CONNECTING/RESETTING, or no handshake() yet.
            RemoteProtocolError: the handshake is malformed, names the wrong
                addresses, or acks a seq never sent; the connection is then in
                ERROR and the node must call :meth:`transport_down`.
        """
        if self._state not in (ConnState.CONNECTING, ConnState.RESETTING):
            raise LocalProtocolError(f"transport_up in {self._state.name}")
        if self._handshake is None:
            raise LocalProtocolError("transport_up before handshake()")
        try:
            hs = decode_handshake(peer_handshake)
            if hs.src != self.remote or hs.dst != self.local:
                raise RemoteProtocolError(
                    f"handshake from {hs.src} to {hs.dst} on {self.local}<->{self.remote}"
                )
            self._apply_generation(hs.generation)
            if hs.peer_generation == self.generation and hs.ack:
                self._purge_resends(hs.ack)
        except RemoteProtocolError:
            self._counters.recv_protocol_error += 1
            self._transition(_S.ERROR)
            raise
        self._transition(_UP)
        self._frag = min(self.config.frag_size, hs.frag_size)
        self._rx_fast_max = min(self._frag, self.config.max_message_size)
        self._flow = self._hs_credits > 0 and hs.credits > 0
        self._send_credits = hs.credits
        self._peer_credits = self._hs_credits
        if self._local_cong is not None and not self._cong_pending:
            self._cong_pending = True
            self._counters.cong_update_queued += 1

    def transport_down(self, now: float) -> None:
        """The transport is gone (or must be torn down after an error) (-> DOWN).

        Discards any partial reassembly, splices the retransmit queue in front
        of the send queue for an in-order resend with original seqs, drops
        RDMA messages (:class:`MessageDropped`, ``RDMA_DROPPED``) and counts
        ``conn_reset`` if we were UP. A no-op in DOWN.
        """
        state = self._state
        if state is ConnState.DOWN:
            return
        self._transition(_S.DISCONNECTING)
        if state in (_UP, ConnState.ERROR):
            self._counters.conn_reset += 1
        self._reset_queues()
        self._reset_transport()
        self._transition(_S.DOWN)

    # ------------------------------------------------------------------ transmit

    def frames_to_send(self, now: float, limit: int | None = None) -> list[Frame]:
        """The frames to post now, in order (empty unless UP).

        Emits congestion updates first, then fragments of queued messages as
        credits allow, each carrying the current ack and up to 255 credits,
        then at most one explicit ack/credit-update frame if still needed.

        Args:
            now: the current time.
            limit: at most this many frames (the free slots of the send ring).
        """
        if self._state is not _UP:
            return []
        budget = limit if limit is not None else 1 << 62
        queue = self._send_queue
        if self._cur is not None or self._cong_pending:
            out: list[Frame] = []
        elif not queue:
            # the common case on the receiving end: at most an ack to send (nothing is due
            # unless an ack was asked for or receives were posted: skip the call then)
            if (
                budget > 0
                and (self._ack_needed or self._grant_pending)
                and self._explicit_ack_due()
            ):
                ack_frame = self._ack_frame()
                if ack_frame is not None:
                    return [ack_frame]
            return []
        else:
            out = self._new_frames(budget)
            if not queue and self._cur is None:
                # What the general loop would do next: find nothing to send, then the ack.
                # The frames just built carry the ack and every pending grant up to 255, so
                # only more than that can still be due.
                if self._grant_pending and len(out) < budget and self._explicit_ack_due():
                    ack_frame = self._ack_frame()
                    if ack_frame is not None:
                        out.append(ack_frame)
                return out
        self._fill(out, budget)
        return out

    def _frames_to_send_general(self, now: float, limit: int | None = None) -> list[Frame]:
        """:meth:`frames_to_send` without its fast path (the reference the tests compare to)."""
        if self._state is not _UP:
            return []
        budget = limit if limit is not None else 1 << 62
        if self._cur is None and not self._send_queue and not self._cong_pending:
            if budget > 0 and self._explicit_ack_due():
                ack_frame = self._ack_frame()
                if ack_frame is not None:
                    return [ack_frame]
            return []
        out: list[Frame] = []
        self._fill(out, budget)
        return out

    def _new_frames(self, budget: int) -> list[Frame]:
        """The fast path: frames for the run of new (never transmitted) messages at the queue head.

        Exactly what :meth:`_fill` emits for them (same seqs, flags, ack policy, credits,
        fragments, counters), with the per-message state kept in locals. It stops, leaving
        the rest to :meth:`_fill`, at a resend, the budget, or the last credit (which
        :meth:`_fill` accounts for as a throttle); a message stopped in the middle is left
        in ``_cur`` as :meth:`_fill` would leave it.
        """
        out: list[Frame] = []
        queue = self._send_queue
        retrans = self._retrans
        counters = self._counters
        frag = self._frag
        flow = self._flow
        credits = self._send_credits
        grant_pending = self._grant_pending
        packets = self._unacked_packets
        unacked_bytes = self._unacked_bytes
        config = self.config
        seq = self._next_tx_seq
        ack = self._next_rx_seq - 1 if self._next_rx_seq else 0
        highest = self._highest_sent
        count = 0
        while count < budget and queue:
            msg = queue[0]
            nbytes = msg.nbytes
            if msg.seq:
                break
            grant = 0
            if flow:
                if credits < 1 or (credits == 1 and not grant_pending):
                    break
                credits -= 1
                if grant_pending:
                    grant = grant_pending if grant_pending <= 255 else 255
                    grant_pending -= grant
                    self._peer_credits += grant
                    counters.ib_tx_credit_updates += 1
            queue.popleft()
            msg.seq = seq
            flags = msg.flags
            # Linux rds_send_xmit's ACK_REQUIRED every N packets or M bytes (_apply_ack_policy)
            if flags & FLAG_ACK_REQUIRED:
                counters.send_ack_required += 1
            elif packets <= 0 or unacked_bytes < nbytes:
                flags |= FLAG_ACK_REQUIRED
                msg.flags = flags
                packets = config.max_unacked_packets - 1
                unacked_bytes = config.max_unacked_bytes - nbytes
                counters.send_ack_required += 1
            else:
                packets -= 1
                unacked_bytes -= nbytes
            retrans.append(msg)
            if nbytes <= frag:
                out.append(
                    (
                        _pack_header(
                            seq, ack, nbytes, msg.sport, msg.dport, flags, grant, 0, 1, 0, msg.ext
                        ),
                        msg.payload,
                    )
                )
                count += 1
            else:
                # the fragments of one message: one header each, slices of one view
                nfrags = -(-nbytes // frag)
                view = memoryview(msg.payload)
                sport, dport, ext = msg.sport, msg.dport, msg.ext
                index = 0
                while True:
                    start = index * frag
                    out.append(
                        (
                            _pack_header(
                                seq, ack, nbytes, sport, dport, flags, grant, index, nfrags, 0, ext
                            ),
                            view[start : start + frag],
                        )
                    )
                    count += 1
                    index += 1
                    if index == nfrags or count >= budget:
                        break
                    grant = 0
                    if flow:
                        if credits < 1 or (credits == 1 and not grant_pending):
                            break
                        credits -= 1
                        if grant_pending:
                            grant = grant_pending if grant_pending <= 255 else 255
                            grant_pending -= grant
                            self._peer_credits += grant
                            counters.ib_tx_credit_updates += 1
                if index < nfrags:
                    # out of budget or credits mid-message: _fill goes on from here
                    self._cur = msg
                    self._cur_view = view
                    self._cur_index = index
                    self._cur_count = nfrags
                    seq += 1
                    break
            highest = seq
            seq += 1
        if count:
            if ack != self._last_ack_sent:
                self._last_ack_sent = ack
                counters.ib_ack_send_piggybacked += 1
            self._next_tx_seq = seq
            self._highest_sent = highest
            self._send_credits = credits
            self._grant_pending = grant_pending
            self._unacked_packets = packets
            self._unacked_bytes = unacked_bytes
            self._ack_needed = False
            self._ack_deadline = None
            self._throttled = False
        return out

    def _fill(self, out: list[Frame], budget: int) -> None:
        """The general transmit loop: append frames to ``out``, then the explicit ack if due."""
        flow = self._flow
        while len(out) < budget:
            if flow:
                credits = self._send_credits
                if credits < 1 or (credits == 1 and not self._grant_pending):
                    if not self._throttled and self.has_pending():
                        self._throttled = True
                        self._counters.ib_tx_throttle += 1
                    break
            msg = self._cur
            if msg is None:
                msg = self._start_next_message()
                if msg is None:
                    break
            index = self._cur_index
            count = self._cur_count
            if count == 1:
                payload: bytes | memoryview = msg.payload
            else:
                view = self._cur_view
                assert view is not None
                frag = self._frag
                payload = view[index * frag : index * frag + frag]
            out.append((self._header(msg, index, count), payload))
            if index + 1 == count:
                self._cur = None
                self._cur_view = None
                if msg.seq:
                    self._highest_sent = msg.seq
            else:
                self._cur_index = index + 1
        if len(out) < budget and self._explicit_ack_due():
            ack_frame = self._ack_frame()
            if ack_frame is not None:
                out.append(ack_frame)

    def _start_next_message(self) -> Message | None:
        if self._cong_pending:
            self._cong_pending = False
            local = self._local_cong
            ports = local.ports() if local is not None else []
            msg = Message(0, 0, encode_cong_update(ports), INTERNAL, FLAG_CONG_BITMAP, b"", False)
        elif self._send_queue:
            msg = self._send_queue.popleft()
            if msg.seq == 0:
                msg.seq = self._next_tx_seq
                self._next_tx_seq += 1
                self._apply_ack_policy(msg)
            else:
                self._counters.send_retransmitted += 1
            if msg.flags & FLAG_ACK_REQUIRED:
                self._counters.send_ack_required += 1
            self._retrans.append(msg)
        else:
            return None
        nbytes = len(msg.payload)
        count = -(-nbytes // self._frag) or 1
        self._cur = msg
        self._cur_index = 0
        self._cur_count = count
        self._cur_view = memoryview(msg.payload) if count > 1 else None
        return msg

    def _apply_ack_policy(self, msg: Message) -> None:
        """Linux ``rds_send_xmit``: ACK_REQUIRED every N packets or M bytes."""
        nbytes = msg.nbytes
        if msg.flags & FLAG_ACK_REQUIRED:
            pass
        elif self._unacked_packets <= 0 or self._unacked_bytes < nbytes:
            msg.flags |= FLAG_ACK_REQUIRED
            # this message opens a window of max_unacked_packets messages / bytes
            self._unacked_packets = self.config.max_unacked_packets - 1
            self._unacked_bytes = self.config.max_unacked_bytes - nbytes
        else:
            self._unacked_packets -= 1
            self._unacked_bytes -= nbytes

    def _header(self, msg: Message, index: int, count: int) -> bytes:
        ack = self._next_rx_seq - 1 if self._next_rx_seq else 0
        grant = 0
        if self._flow:
            self._send_credits -= 1
            grant = self._grant_pending
            if grant:
                if grant > 255:
                    grant = 255
                self._grant_pending -= grant
                self._peer_credits += grant
                self._counters.ib_tx_credit_updates += 1
        if ack != self._last_ack_sent:
            self._last_ack_sent = ack
            self._counters.ib_ack_send_piggybacked += 1
        self._ack_needed = False
        self._ack_deadline = None
        self._throttled = False
        return HEADER.pack(
            msg.seq,
            ack,
            len(msg.payload),
            msg.sport,
            msg.dport,
            msg.flags,
            grant,
            index,
            count,
            0,
            msg.ext,
        )

    def _explicit_ack_due(self) -> bool:
        if self._ack_needed and self._ack_value() != self._last_ack_sent:
            return True
        self._ack_needed = False
        grant = self._grant_pending
        return bool(
            self._flow
            and grant
            and (grant >= self.config.credit_update_threshold or self._peer_credits <= grant)
        )

    def _ack_frame(self) -> Frame | None:
        """An ack-only frame (seq 0, no ports, no payload), credits permitting.

        Ack frames are built when pulled, so there is at most one per call to
        :meth:`frames_to_send` and it always carries the newest ack: the pull
        model gives Linux's "one ack in flight" without a completion round trip.
        """
        if self._flow:
            credits = self._send_credits
            if credits < 1 or (credits == 1 and not self._grant_pending):
                self._counters.ib_ack_send_delayed += 1
                return None
        was_needed = self._ack_needed
        ack = self._ack_value()
        grant = 0
        if self._flow:
            self._send_credits -= 1
            grant = min(self._grant_pending, 255)
            if grant:
                self._grant_pending -= grant
                self._peer_credits += grant
                self._counters.ib_tx_credit_updates += 1
        if was_needed or ack != self._last_ack_sent:
            self._counters.ib_ack_sent += 1
        self._last_ack_sent = ack
        self._ack_needed = False
        self._ack_deadline = None
        return (HEADER.pack(0, ack, 0, 0, 0, 0, grant, 0, 1, 0, _EMPTY), _EMPTY)

    def _ack_value(self) -> int:
        return self._next_rx_seq - 1 if self._next_rx_seq else 0

    # ------------------------------------------------------------------ receive

    def receive_frame(self, frame: bytes | bytearray | memoryview, now: float) -> None:
        """Process one received frame (one receive completion's bytes).

        The engine copies what it keeps, so the buffer may be reposted as soon
        as this returns. Events become available through :meth:`next_event`.

        Raises:
            RemoteProtocolError: the frame is malformed, truncated or lies
                (bad length, fragment out of range or not matching the message
                being reassembled, a seq from the future, an ack of a seq never
                sent, more frames than credits granted). The connection is then
                in ERROR; the node must call :meth:`transport_down` (and count
                the reset: ``recv_protocol_error`` is already counted here).
            LocalProtocolError: not UP.
        """
        if self._state is not _UP:
            raise LocalProtocolError(f"receive_frame in {self._state.name}")
        # The fast path: a well-formed single-fragment frame that is the next in-order data
        # message (ports non-zero, no ext) or an explicit ack, outside any reassembly, within
        # credits. Every condition below is one the general path checks too, and the effects
        # are the general path's for exactly these frames (tests/test_engine_fastpath.py
        # compares the two on random frames); anything else takes the general path.
        size = len(frame)
        if size >= HEADER_SIZE and self._rx_active:
            if self._continue_fragment(frame, size, now):
                return
        elif size >= HEADER_SIZE:
            seq, ack, length, sport, dport, flags, credit, index, count, csum = _unpack_fixed(frame)
            if (
                count == 1
                and not index
                and not csum
                and ack <= self._highest_sent
                and (self._peer_credits > 0 or not self._flow)
            ):
                if seq:
                    fast = (
                        seq == (self._next_rx_seq or 1)
                        and not flags & ~_FAST_RX_FLAGS
                        and length == size - HEADER_SIZE
                        and length <= self._rx_fast_max
                        and sport
                        and dport
                    )
                else:
                    fast = not (flags or length or sport or dport) and size == HEADER_SIZE
                if fast:
                    counters = self._counters
                    if self._flow:
                        self._peer_credits -= 1
                        if credit:
                            self._send_credits += credit
                            counters.ib_rx_credit_updates += 1
                            self._throttled = False
                    if ack:
                        retrans = self._retrans
                        if retrans and retrans[0].seq <= ack:
                            self._drop_acked(ack)
                    if not seq:
                        counters.ib_ack_received += 1
                        return
                    if flags & FLAG_ACK_REQUIRED:
                        counters.recv_ack_required += 1
                        self._ack_needed = True
                    self._next_rx_seq = seq + 1
                    if self._ack_deadline is None:
                        self._ack_deadline = now + self._ack_delay
                    data = bytes(frame[HEADER_SIZE:]) if length else _EMPTY
                    on_message = self._on_message
                    if on_message is None:
                        self._events.append(MessageReceived(sport, dport, data, _EMPTY, seq))
                    else:
                        on_message(sport, dport, data, _EMPTY, seq)
                    return
        try:
            self._receive(frame, now)
        except RemoteProtocolError:
            self._counters.recv_protocol_error += 1
            self._transition(_S.ERROR)
            raise

    def _continue_fragment(
        self, frame: bytes | bytearray | memoryview, size: int, now: float
    ) -> bool:
        """The fast path for the next fragment of the sequenced message being reassembled.

        Takes a frame only if the general path would accept it (the message's header
        again, the next index, the right size, a known ack, within credits; a message with
        ext bytes never matches the ``b""`` compared here, a congestion update is seq 0) and
        then has the general path's effects; returns False, doing nothing, for any other.
        """
        seq, ack, length, sport, dport, flags, credit, index, count, csum = _unpack_fixed(frame)
        frag = self._frag
        expected = length - index * frag
        if expected > frag:
            expected = frag
        if not (
            index == self._rx_next
            and seq
            and not csum
            and size - HEADER_SIZE == expected
            and ack <= self._highest_sent
            and (self._peer_credits > 0 or not self._flow)
            and (seq, length, sport, dport, flags, count, _EMPTY) == self._rx_key
        ):
            return False
        if self._flow:
            self._peer_credits -= 1
            if credit:
                self._send_credits += credit
                self._counters.ib_rx_credit_updates += 1
                self._throttled = False
        if ack:
            retrans = self._retrans
            if retrans and retrans[0].seq <= ack:
                self._drop_acked(ack)
        discard = self._rx_discard
        if not discard:
            start = index * frag
            self._rx_buf[start : start + expected] = frame[HEADER_SIZE:]
        if index + 1 < count:
            self._rx_next = index + 1
            return True
        self._rx_active = False
        data = _EMPTY if discard else bytes(self._rx_buf)
        self._rx_buf = bytearray()
        self._receive_message(seq, sport, dport, flags, data, _EMPTY, discard, now)
        return True

    def _receive_general(self, frame: bytes | bytearray | memoryview, now: float) -> None:
        """:meth:`receive_frame` without its fast path (the reference the tests compare to)."""
        if self._state is not _UP:
            raise LocalProtocolError(f"receive_frame in {self._state.name}")
        try:
            self._receive(frame, now)
        except RemoteProtocolError:
            self._counters.recv_protocol_error += 1
            self._transition(_S.ERROR)
            raise

    def _receive(self, frame: bytes | bytearray | memoryview, now: float) -> None:
        seq, ack, length, sport, dport, flags, credit, index, count, ext = parse_fragment(
            frame, self._frag, self.config.max_message_size
        )
        plen = len(frame) - HEADER_SIZE
        frag = self._frag
        if self._rx_active:
            if (seq, length, sport, dport, flags, count, ext) != self._rx_key or (
                index != self._rx_next
            ):
                raise RemoteProtocolError(f"fragment {index} of seq {seq} does not continue")
        elif index:
            raise RemoteProtocolError(f"fragment {index} of seq {seq} without its start")
        elif seq:
            rx_expected = self._next_rx_seq or 1
            if seq > rx_expected:
                raise RemoteProtocolError(f"seq {seq} from the future (expected {rx_expected})")
            if seq < rx_expected and not flags & FLAG_RETRANSMITTED:
                raise RemoteProtocolError(f"old seq {seq} not marked retransmitted")
        if ack > self._highest_sent:
            raise RemoteProtocolError(f"ack {ack} of a seq never sent ({self._highest_sent})")
        # The frame is well formed: account for it.
        if self._flow:
            self._peer_credits -= 1
            if self._peer_credits < 0:
                raise RemoteProtocolError("peer sent beyond its credits")
            if credit:
                self._send_credits += credit
                self._counters.ib_rx_credit_updates += 1
                self._throttled = False
        if ack:
            self._drop_acked(ack)
        if seq == 0 and not flags:
            self._counters.ib_ack_received += 1
            return
        if count == 1:
            data = bytes(frame[HEADER_SIZE:]) if plen else _EMPTY
            discard = bool(seq) and seq < (self._next_rx_seq or 1)
        else:
            if index == 0:
                self._rx_active = True
                self._rx_key = (seq, length, sport, dport, flags, count, ext)
                self._rx_discard = bool(seq) and seq < (self._next_rx_seq or 1)
                self._rx_buf = bytearray(0 if self._rx_discard else length)
            if not self._rx_discard:
                start = index * frag
                self._rx_buf[start : start + plen] = frame[HEADER_SIZE:]
            if index + 1 < count:
                self._rx_next = index + 1
                return
            self._rx_active = False
            discard = self._rx_discard
            data = _EMPTY if discard else bytes(self._rx_buf)
            self._rx_buf = bytearray()
        if seq == 0:
            self._receive_cong_update(data)
        else:
            self._receive_message(seq, sport, dport, flags, data, ext, discard, now)

    def _receive_message(
        self,
        seq: int,
        sport: int,
        dport: int,
        flags: int,
        data: bytes,
        ext: bytes,
        discard: bool,
        now: float,
    ) -> None:
        counters = self._counters
        if flags & FLAG_ACK_REQUIRED:
            counters.recv_ack_required += 1
            self._ack_needed = True
        if discard:
            counters.recv_drop_old_seq += 1
            return
        self._next_rx_seq = seq + 1
        if self._ack_deadline is None:
            self._ack_deadline = now + self.config.ack_delay
        if flags & FLAG_TOMBSTONE:
            return
        if dport == 0:
            if sport and self.config.ping_enable:
                counters.recv_ping += 1
                self._send_queue.append(Message(0, sport, _EMPTY, INTERNAL, 0, _EMPTY, False))
                counters.send_pong += 1
            return
        on_message = self._on_message
        if on_message is not None:
            if sport == 0:
                on_message(0, dport, _EMPTY, _EMPTY, seq)
            else:
                on_message(sport, dport, data, ext, seq)
        elif sport == 0:
            self._events.append(PongReceived(dport, seq))
        else:
            self._events.append(MessageReceived(sport, dport, data, ext, seq))

    def _receive_cong_update(self, data: bytes) -> None:
        ports = decode_cong_update(data)
        old = self._peer_cong
        self._peer_cong = ports
        self._counters.cong_update_received += 1
        self._events.append(CongestionUpdated(ports - old, old - ports))

    # ------------------------------------------------------------------ acks and resets

    def _drop_acked(self, ack: int) -> None:
        """Free every retransmit-queue message with ``seq <= ack`` (``rds_send_drop_acked``)."""
        retrans = self._retrans
        cur = self._cur
        retired = 0
        if self._batch_acks:
            tokens: list[object] = []
            nbytes = 0
            while retrans:
                msg = retrans[0]
                if msg.seq > ack or msg is cur:
                    break
                retrans.popleft()
                retired += 1
                token = msg.token
                if token is not INTERNAL and token is not CANCELED:
                    tokens.append(token)
                    nbytes += msg.nbytes
            if tokens:
                self._events.append(MessagesAcked(tuple(tokens), len(tokens), nbytes, ack))
        else:
            events = self._events
            while retrans:
                msg = retrans[0]
                if msg.seq > ack or msg is cur:
                    break
                retrans.popleft()
                retired += 1
                if reports(msg):
                    events.append(
                        MessageAcked(msg.token, msg.sport, msg.dport, msg.nbytes, msg.seq)
                    )
        self._counters.send_drop_acked += retired

    def _purge_resends(self, ack: int) -> None:
        """The handshake's ``dp_ack_seq``: drop what the peer has before resending."""
        if ack > self._highest_sent:
            raise RemoteProtocolError(f"handshake acks seq {ack}, never sent")
        queue = self._send_queue
        acked: list[Message] = []
        while queue and queue[0].seq and queue[0].seq <= ack:
            msg = queue.popleft()
            self._counters.send_drop_acked += 1
            if reports(msg):
                acked.append(msg)
        if not acked:
            return
        if self._batch_acks:
            tokens = tuple(msg.token for msg in acked)
            nbytes = sum(msg.nbytes for msg in acked)
            self._events.append(MessagesAcked(tokens, len(tokens), nbytes, ack))
        else:
            for msg in acked:
                self._events.append(
                    MessageAcked(msg.token, msg.sport, msg.dport, msg.nbytes, msg.seq)
                )

    def _apply_generation(self, generation: int) -> None:
        old = self.peer_generation
        if generation and old and generation != old:
            self._events.append(PeerRestarted(old, generation))
            self._next_tx_seq = 1
            self._next_rx_seq = 0
            self._highest_sent = 0
            self._last_ack_sent = 0
            kept: collections.deque[Message] = collections.deque()
            for msg in self._send_queue:
                if msg.seq == 0:
                    kept.append(msg)
                    continue
                self._counters.send_flushed += 1
                if reports(msg):
                    self._events.append(
                        MessageDropped(
                            msg.token, msg.sport, msg.dport, msg.nbytes, DropReason.PEER_RESTARTED
                        )
                    )
            self._send_queue = kept
        if generation:
            self.peer_generation = generation

    def _tombstone(self, msg: Message) -> None:
        msg.payload = _EMPTY
        msg.ext = _EMPTY
        msg.flags = _TOMBSTONE_FLAGS
        msg.token = CANCELED

    def _reset_queues(self) -> None:
        """``rds_send_path_reset``: requeue unacked messages in front, in order."""
        self._rx_active = False
        self._rx_buf = bytearray()
        self._cur = None
        self._cur_view = None
        resend = self._retrans
        self._retrans = collections.deque()
        for msg in resend:
            if msg.flags & FLAG_TOMBSTONE:
                continue
            msg.flags |= _RESEND_FLAGS
            if msg.rdma:
                self._counters.send_rdma_dropped += 1
                if reports(msg):
                    self._events.append(
                        MessageDropped(
                            msg.token, msg.sport, msg.dport, msg.nbytes, DropReason.RDMA_DROPPED
                        )
                    )
                self._tombstone(msg)
            elif msg.token is CANCELED:
                self._tombstone(msg)
        resend.extend(self._send_queue)
        self._send_queue = resend

    def _reset_transport(self) -> None:
        self._frag = self.config.frag_size
        self._rx_fast_max = min(self._frag, self.config.max_message_size)
        self._flow = False
        self._send_credits = 0
        self._grant_pending = 0
        self._peer_credits = 0
        self._handshake = None
        self._hs_credits = 0
        self._ack_needed = False
        self._ack_deadline = None
        self._throttled = False
        self._unacked_packets = 0
        self._unacked_bytes = 0
