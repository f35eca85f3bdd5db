"""The sans-IO RDS connection engine: one :class:`Connection` per node pair.

No trio, socket or time import anywhere in this package: time is the caller's
``now`` argument, bytes go in through :meth:`Connection.receive_frame` and come
out of :meth:`Connection.frames_to_send`. What it guarantees, per connection:
every message :meth:`~Connection.send` accepted is delivered to the peer
exactly once and in order (per connection, hence per socket pair) across any
number of transport resets, unless it carried an RDMA op (dropped on reset,
:class:`MessageDropped`), was canceled, or the peer restarted
(:class:`PeerRestarted`).

How a path drives a Connection
------------------------------
1. **Create** one per peer address: ``conn = Connection(local, remote,
   generation=node_gen, config=EngineConfig())``. ``send()`` may be called in
   any state; messages wait in the send queue.
2. **Connect.** If ``should_initiate(local, remote)``: wait
   ``backoff.next_delay(rng)`` (0 the first time), ``conn.start_connect(now)``,
   create the QP, post the receive ring and call ``conn.receives_posted(n)``,
   then ``cm_connect(..., private_data=conn.handshake())``. The passive side,
   on a ``CmRequest``: ``if conn.incoming_connect(now):`` post the ring,
   ``receives_posted(n)``, ``accept(qp, private_data=conn.handshake())``, else
   ``reject()``. Either side, once established:
   ``conn.transport_up(cm_id.private_data, now)`` and ``backoff.reset()``.
   A failed attempt: ``conn.transport_down(now)`` and back off again.
3. **Send.** After *every* input (a ``send``, a received frame, a repost, a
   timer, ``transport_up``), call ``conn.frames_to_send(now, limit=free_slots)``
   and post each ``(header, payload)`` pair, in order, as one SEND: copy both
   back to back into one registered send buffer (``HEADER_SIZE + len(payload)``
   bytes). The engine never concatenates them, so the payload is copied once.
4. **Receive.** For each receive completion, ``conn.receive_frame(buf[:byte_len],
   now)``, then repost the buffer and ``conn.receives_posted(1)`` (the engine
   has copied what it keeps; reposts on a transport that is already gone are
   not reported: the next handshake advertises the new ring). Drain
   ``conn.next_event()`` until ``None``:
   :class:`MessageReceived` (deliver to the socket bound at ``dport``, or drop
   and count ``recv_drop_no_sock``), :class:`MessageAcked` (release send-buffer
   bytes, RDMA SUCCESS), :class:`MessageDropped`, :class:`CongestionUpdated`
   (wake blocked senders), :class:`PongReceived`, :class:`PeerRestarted`.
   A :class:`~rdsx.errors.RemoteProtocolError` from ``receive_frame`` leaves the
   connection in ERROR: tear the transport down (step 6) and count it.
   Cheaper, opt-in (the node uses both): ``Connection(..., on_message=cb)``
   calls ``cb(sport, dport, data, ext, seq)`` inside ``receive_frame`` instead of
   queueing :class:`MessageReceived` (and ``cb(0, port, b"", b"", seq)`` for a
   pong); ``batch_acks=True`` gives one :class:`MessagesAcked` per ack instead
   of a :class:`MessageAcked` per message.
5. **Timers.** Sleep until ``conn.get_timer()`` (``None`` = no timer); then
   ``conn.handle_timer(now)`` and ``frames_to_send`` (the delayed ack).
6. **Transport down** (CM DISCONNECTED, DEVICE_REMOVAL, QP error, a protocol
   error): ``conn.transport_down(now)``. Unacked messages are requeued in
   front, to be resent with their original seqs and RETRANSMITTED once the next
   ``transport_up`` has purged what the peer's handshake says it already has.
   Completions of the old QP are not fed to the engine any more (nor after
   ``incoming_connect`` returned True while UP: that replaced the old
   transport). Reconnect as in step 2.

The common case is short: an in-order single-fragment data frame (or an ack)
takes one inline pass through ``receive_frame``, and a run of new
single-fragment messages one loop in ``frames_to_send``; anything else takes
the general code, which ``tests/test_engine_fastpath.py`` checks them against.

Acks: every frame carries the cumulative ack; an explicit ack-only frame is
built when ``frames_to_send`` is called and something new must be said (a
message asked for an ack, the delayed-ack timer fired, or credits must be
granted), so there is at most one per call and it always carries the newest
ack. That is Linux IB's "one ack in flight" without a send-completion callback.

Frames must be posted in the order ``frames_to_send`` returns them, on one
reliable connected QP: the receiver treats a gap, a duplicate that is not a
retransmission or a fragment out of place as a protocol error.

Congestion: the node owns a :class:`CongestionMap` for its address; after
changing a bit, call ``conn.queue_cong_update(local_map)`` on every
connection. Before sending, check ``conn.peer_congested(dport)``. Sockets with
a half-full send buffer pass ``ack_required=True`` to ``send``. Pings are
``conn.send(sport, 0, b"")``; pongs are answered inside the engine.
"""

from ._backoff import Backoff as Backoff
from ._backoff import should_initiate as should_initiate
from ._config import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from ._config import EngineConfig as EngineConfig
from ._cong import CONG_MAP_BITS as CONG_MAP_BITS
from ._cong import CongestionMap as CongestionMap
from ._connection import Connection as Connection
from ._connection import Frame as Frame
from ._counters import COUNTER_NAMES as COUNTER_NAMES
from ._counters import EngineCounters as EngineCounters
from ._events import CongestionUpdated as CongestionUpdated
from ._events import DropReason as DropReason
from ._events import Event as Event
from ._events import MessageAcked as MessageAcked
from ._events import MessageDropped as MessageDropped
from ._events import MessageReceived as MessageReceived
from ._events import MessagesAcked as MessagesAcked
from ._events import PeerRestarted as PeerRestarted
from ._events import PongReceived as PongReceived
from ._message import ConnectionInfo as ConnectionInfo
from ._message import QueuedMessage as QueuedMessage
from ._state import LEGAL_TRANSITIONS as LEGAL_TRANSITIONS
from ._state import ConnState as ConnState
from ._wire import HEADER_SIZE as HEADER_SIZE
from ._wire import MAX_EXT as MAX_EXT
from ._wire import Handshake as Handshake
from ._wire import decode_handshake as decode_handshake
from ._wire import parse_header as parse_header
