"""What a :class:`~rdsx.engine.Connection` tells its driver (``next_event()``)."""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "CongestionUpdated",
    "DropReason",
    "Event",
    "MessageAcked",
    "MessageDropped",
    "MessageReceived",
    "MessagesAcked",
    "PeerRestarted",
    "PongReceived",
]


class DropReason(enum.Enum):
    """Why a sent message left the engine without being acknowledged."""

    #: it carried an RDMA op and the connection reset: RDMA is never resent
    #: (the node reports ``RDS_RDMA_DROPPED`` to the socket).
    RDMA_DROPPED = 3
    #: the peer restarted (new generation): its unacked messages are flushed.
    PEER_RESTARTED = 4


@attrs.frozen(slots=True)
class MessageReceived:
    """A complete message arrived, in order and exactly once.

    Attributes:
        sport: the sender's RDS port.
        dport: our RDS port it is addressed to (deliver, or drop and count
            ``recv_drop_no_sock`` if nothing is bound there).
        data: the payload (a private copy; the receive buffer may be reposted).
        ext: the sender's extension bytes (``b""`` when none; e.g. an RDMA cookie).
        seq: the message's sequence number.
    """

    sport: int
    dport: int
    data: bytes
    ext: bytes
    seq: int


@attrs.frozen(slots=True)
class MessageAcked:
    """The peer acknowledged a message: release its send-buffer bytes.

    Attributes:
        token: what the node passed to ``send``.
        sport: source port.
        dport: destination port.
        nbytes: payload length.
        seq: its sequence number.
    """

    token: object
    sport: int
    dport: int
    nbytes: int
    seq: int


@attrs.frozen(slots=True)
class MessagesAcked:
    """One ack retired messages: release their send-buffer bytes.

    Emitted instead of one :class:`MessageAcked` per message by connections created
    with ``batch_acks=True``: one event per ack that retired at least one message
    the node hears about (internal and canceled messages are left out, as they are
    from :class:`MessageAcked`).

    Attributes:
        tokens: what the node passed to ``send`` for each retired message, in send order.
        count: ``len(tokens)``.
        nbytes: their payload bytes, together.
        up_to: the cumulative ack that retired them (every seq up to it is acked).
    """

    tokens: tuple[object, ...]
    count: int
    nbytes: int
    up_to: int


@attrs.frozen(slots=True)
class MessageDropped:
    """A transmitted message will never be acknowledged (see :class:`DropReason`).

    Attributes:
        token: what the node passed to ``send``.
        sport: source port.
        dport: destination port.
        nbytes: payload length.
        reason: why.
    """

    token: object
    sport: int
    dport: int
    nbytes: int
    reason: DropReason


@attrs.frozen(slots=True)
class CongestionUpdated:
    """The peer's congestion map changed.

    Attributes:
        newly_congested: peer ports that became congested.
        newly_uncongested: peer ports that became uncongested (wake blocked senders).
    """

    newly_congested: frozenset[int]
    newly_uncongested: frozenset[int]

    @property
    def monitor_mask(self) -> int:
        """The ``RDS_CMSG_CONG_UPDATE`` mask: bit ``port % 64`` of each uncongested port."""
        mask = 0
        for port in self.newly_uncongested:
            mask |= 1 << (port % 64)
        return mask


@attrs.frozen(slots=True)
class PongReceived:
    """A pong (0-byte message from the peer's port 0) for our port ``port``.

    Attributes:
        port: the local port that pinged.
        seq: the pong's sequence number.
    """

    port: int
    seq: int


@attrs.frozen(slots=True)
class PeerRestarted:
    """The peer came back with a new generation: sequence state was reset.

    Our unacked messages were flushed (one :class:`MessageDropped` each, reason
    ``PEER_RESTARTED``) and both sequence counters restarted.

    Attributes:
        old_generation: the generation we knew.
        new_generation: the one the peer now announces.
    """

    old_generation: int
    new_generation: int


#: Every event type :meth:`Connection.next_event` returns.
Event = (
    MessageReceived
    | MessageAcked
    | MessagesAcked
    | MessageDropped
    | CongestionUpdated
    | PongReceived
    | PeerRestarted
)
