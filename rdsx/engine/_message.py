"""What the engine holds per message, and the rows rds-info shows of it."""

from __future__ import annotations

import attrs

from ._state import ConnState

__all__ = ["CANCELED", "INTERNAL", "ConnectionInfo", "Message", "QueuedMessage", "reports", "row"]

#: Token of engine-internal messages (pongs, congestion updates): no events.
INTERNAL = object()
#: Token of canceled messages: no further events.
CANCELED = object()


class Message:
    """A message the engine holds until it is acked or dropped."""

    __slots__ = ("dport", "ext", "flags", "nbytes", "payload", "rdma", "seq", "sport", "token")

    def __init__(
        self,
        sport: int,
        dport: int,
        payload: bytes | memoryview,
        token: object,
        flags: int,
        ext: bytes,
        rdma: bool,
    ) -> None:
        self.seq = 0  # assigned at first transmission
        self.sport = sport
        self.dport = dport
        self.payload = payload
        self.nbytes = len(payload)
        self.token = token
        self.flags = flags
        self.ext = ext
        self.rdma = rdma


@attrs.frozen(slots=True)
class QueuedMessage:
    """One row of rds-info's send/retransmit queue tables.

    Attributes:
        sport: source port.
        dport: destination port.
        seq: its sequence number (0 = not transmitted yet).
        nbytes: payload length.
    """

    sport: int
    dport: int
    seq: int
    nbytes: int


@attrs.frozen(slots=True, kw_only=True)
class ConnectionInfo:
    """A snapshot of one connection for rds-info's ``-n``, ``-s`` and ``-t`` tables.

    Attributes:
        local: our address.
        remote: the peer's address.
        state: the life-cycle state.
        next_tx_seq: the seq the next new message will get.
        next_rx_seq: one past the highest seq received.
        generation: our incarnation.
        peer_generation: the peer's, as last seen (0 = never connected).
        send_credits: frames we may still send (``None`` without flow control).
        send_queue: messages waiting for (re)transmission, in order.
        retransmit_queue: transmitted messages waiting for an ack, in order.
    """

    local: str
    remote: str
    state: ConnState
    next_tx_seq: int
    next_rx_seq: int
    generation: int
    peer_generation: int
    send_credits: int | None
    send_queue: tuple[QueuedMessage, ...]
    retransmit_queue: tuple[QueuedMessage, ...]


def reports(msg: Message) -> bool:
    """Whether the node hears about this message's fate (not internal, canceled, a tombstone)."""
    return msg.token is not INTERNAL and msg.token is not CANCELED


def row(msg: Message) -> QueuedMessage:
    return QueuedMessage(msg.sport, msg.dport, msg.seq, msg.nbytes)
