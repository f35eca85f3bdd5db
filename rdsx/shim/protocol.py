"""The shim's own wire protocol: suspend, resume and resequencing (sans-IO).

Theory of operation
-------------------
Two shims talk only through CM private data, never through the user's QPs, so
no receive buffer of the layer above is ever consumed by shim traffic:

* ``CONNECT``/``ACCEPT`` headers ride in front of the user's private data of
  every CM exchange the layer above makes; they tell each side the other's
  *virtual* QPN, the stable name of the connection across migrations.
* ``SUSPEND`` is a CM message on the connection's own CM id that the peer
  answers with a ``SUSPENDED`` message (or, where the CM carries no messages, a
  connect request to the peer shim's control port answered by a reject carrying
  ``SUSPENDED``): a one-round-trip RPC. The peer stops starting sends and
  drains its send queue (SQD) before it answers, so when the migrating side
  releases its device nothing is in flight towards it and the peer QP has no
  reason to go to ERR (seed problems 3 and 4).
* ``RECONNECT`` is a connect request to the peer shim's control port, with the
  new physical QP of the side whose device was replaced; the peer accepts with
  a fresh physical QP of its own (made when it was told to suspend) and
  ``RESUMED``. Both carry the number of
  messages their side has *received* on the virtual QP, which is all the
  resequencing needs (:func:`plan_resend`). When the sender's remote-key map
  fits, it rides along (``keys``), so a migrated node resumes in one round trip
  instead of pushing a ``KeyMap`` first.
* ``REFUSED`` (in a reject) says why a request could not be served.

This module does no I/O: it turns values into bytes and back, and does the
resequencing arithmetic. Malformed input raises
:class:`~rdsx.errors.RemoteProtocolError`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

import attrs
import msgpack

from ..errors import RemoteProtocolError
from ..verbs import REQ_PRIVATE_DATA

__all__ = [
    "CM_PRIVATE_DATA_MAX",
    "HEADER_RESERVE",
    "KEYMAP_CHUNK",
    "MAGIC",
    "USER_PRIVATE_DATA_MAX",
    "Accept",
    "Ack",
    "Close",
    "Connect",
    "KeyMap",
    "Message",
    "Reconnect",
    "RefuseReason",
    "Refused",
    "Resumed",
    "Suspend",
    "Suspended",
    "decode",
    "encode",
    "plan_resend",
]

#: The IB CM REQ private-data limit every transport enforces.
CM_PRIVATE_DATA_MAX = REQ_PRIVATE_DATA
#: Prefix that marks private data as carrying a shim header.
MAGIC = b"\xd7x"
#: Bytes the shim keeps for its header in the user's CM exchanges.
HEADER_RESERVE = 20
#: What is left for the layer above's private data through the shim.
USER_PRIVATE_DATA_MAX = CM_PRIVATE_DATA_MAX - HEADER_RESERVE

_U24 = (1 << 24) - 1


class _Kind(enum.IntEnum):
    CONNECT = 1
    ACCEPT = 2
    SUSPEND = 3
    SUSPENDED = 4
    RECONNECT = 5
    RESUMED = 6
    REFUSED = 7
    KEYMAP = 8
    ACK = 9
    CLOSE = 10


class RefuseReason(enum.IntEnum):
    """Why a shim refused a control request."""

    #: No such virtual QP, or it belongs to another peer: give up at once.
    UNKNOWN = 1
    #: The peer has no device right now (it is migrating too): retry later.
    BUSY = 2
    #: Both sides reconnect at once and the peer's own attempt wins: wait for it.
    DUEL = 3


def _qpn(value: int) -> int:
    if not 0 <= value <= _U24:
        raise ValueError(f"virtual QPN must fit 24 bits, got {value}")
    return value


def _count(value: int) -> int:
    if value < 0:
        raise ValueError(f"counter must be >= 0, got {value}")
    return value


def _pairs(value: Sequence[int]) -> tuple[int, ...]:
    pairs = tuple(value)
    if len(pairs) % 2 or any(not 0 <= key < 1 << 32 for key in pairs):
        raise ValueError("key map must be (virtual, physical) pairs of 32-bit keys")
    return pairs


@attrs.frozen(slots=True, kw_only=True)
class Connect:
    """Header of a user connect request: the requester's virtual QPN and device incarnation."""

    vqpn: int = attrs.field(converter=_qpn)
    inc: int = attrs.field(converter=_count)


@attrs.frozen(slots=True, kw_only=True)
class Accept:
    """Header of a user accept: the acceptor's virtual QPN and device incarnation."""

    vqpn: int = attrs.field(converter=_qpn)
    inc: int = attrs.field(converter=_count)


@attrs.frozen(slots=True, kw_only=True)
class Suspend:
    """Ask the peer to quiesce its side of ``dst_vqpn`` (ours is ``src_vqpn``).

    Attributes:
        budget: seconds the peer may spend draining before it must answer.
    """

    src_vqpn: int = attrs.field(converter=_qpn)
    dst_vqpn: int = attrs.field(converter=_qpn)
    budget: float = 0.0


@attrs.frozen(slots=True, kw_only=True)
class Suspended:
    """The peer's answer to :class:`Suspend`: whether its send queue drained."""

    drained: bool


@attrs.frozen(slots=True, kw_only=True)
class Reconnect:
    """Bind a new physical QP to the virtual connection ``src_vqpn`` <-> ``dst_vqpn``.

    Attributes:
        received: messages the requester has received on the virtual QP, ever.
        inc: the requester's device incarnation (1 + its migrations).
        peer_inc: the acceptor's incarnation as the requester last saw it; lower
            than the acceptor's own when both sides were replaced (a duel).
        keys: the requester's whole key map for ``inc`` (as :attr:`KeyMap.pairs`),
            when it fits; empty means "sent separately, or nothing moved".
    """

    src_vqpn: int = attrs.field(converter=_qpn)
    dst_vqpn: int = attrs.field(converter=_qpn)
    received: int = attrs.field(converter=_count)
    inc: int = attrs.field(converter=_count)
    peer_inc: int = attrs.field(converter=_count)
    keys: tuple[int, ...] = attrs.field(default=(), converter=_pairs)


@attrs.frozen(slots=True, kw_only=True)
class Resumed:
    """The acceptor's answer to :class:`Reconnect`: what it received, ever; its incarnation.

    ``keys`` is the acceptor's key map for ``inc`` when it migrated too and the
    map fits (as in :class:`Reconnect`).
    """

    received: int = attrs.field(converter=_count)
    inc: int = attrs.field(converter=_count)
    keys: tuple[int, ...] = attrs.field(default=(), converter=_pairs)


@attrs.frozen(slots=True, kw_only=True)
class Refused:
    """A control request the peer would not serve, and why."""

    reason: RefuseReason


@attrs.frozen(slots=True, kw_only=True)
class KeyMap:
    """Part of the sender's remote-key table for its device incarnation ``inc``.

    Only keys whose physical value differs from the virtual one are listed;
    any other key of that incarnation translates to itself.

    Attributes:
        inc: the sender's device incarnation these keys belong to.
        pairs: ``virtual, physical, virtual, physical, ...``.
        first: True on the first chunk (the receiver forgets older maps).
    """

    inc: int = attrs.field(converter=_count)
    pairs: tuple[int, ...] = attrs.field(converter=_pairs)
    first: bool = True


@attrs.frozen(slots=True, kw_only=True)
class Close:
    """The layer above disconnects ``src_vqpn`` <-> ``dst_vqpn``: a DISCONNECTED that
    follows is the end of the connection, not a peer gone missing."""

    src_vqpn: int = attrs.field(converter=_qpn)
    dst_vqpn: int = attrs.field(converter=_qpn)


@attrs.frozen(slots=True)
class Ack:
    """A control request was served."""


#: Key pairs per :class:`KeyMap` chunk, so one fits the CM private data limit.
KEYMAP_CHUNK = 16

Message = (
    Connect | Accept | Suspend | Suspended | Reconnect | Resumed | Refused | KeyMap | Ack | Close
)

_FIELDS: dict[_Kind, tuple[type[Any], tuple[str, ...]]] = {
    _Kind.CONNECT: (Connect, ("vqpn", "inc")),
    _Kind.ACCEPT: (Accept, ("vqpn", "inc")),
    _Kind.SUSPEND: (Suspend, ("src_vqpn", "dst_vqpn", "budget")),
    _Kind.SUSPENDED: (Suspended, ("drained",)),
    _Kind.RECONNECT: (
        Reconnect,
        ("src_vqpn", "dst_vqpn", "received", "inc", "peer_inc", "keys"),
    ),
    _Kind.RESUMED: (Resumed, ("received", "inc", "keys")),
    _Kind.REFUSED: (Refused, ("reason",)),
    _Kind.KEYMAP: (KeyMap, ("inc", "pairs", "first")),
    _Kind.ACK: (Ack, ()),
    _Kind.CLOSE: (Close, ("src_vqpn", "dst_vqpn")),
}
_KIND_OF: dict[type[Any], _Kind] = {cls: kind for kind, (cls, _) in _FIELDS.items()}
#: Kinds whose last field (a key map) is left off the wire when empty.
_OPTIONAL_TAIL = frozenset({_Kind.RECONNECT, _Kind.RESUMED})


def encode(message: Message, user_data: bytes = b"") -> bytes:
    """Serialise ``message`` as CM private data, followed by ``user_data``.

    Raises:
        ValueError: the header would not fit :data:`HEADER_RESERVE` bytes.
    """
    kind = _KIND_OF[type(message)]
    _, names = _FIELDS[kind]
    fields = [getattr(message, name) for name in names]
    if kind is _Kind.REFUSED:
        fields = [int(fields[0])]
    elif kind is _Kind.KEYMAP:
        fields[1] = list(fields[1])
    elif kind in _OPTIONAL_TAIL:
        fields[-1] = list(fields[-1])
        if not fields[-1]:
            fields.pop()  # the common case costs no bytes (and old peers decode it)
    body: bytes = msgpack.packb([int(kind), *fields])
    header = MAGIC + bytes([len(body)]) + body
    limit = HEADER_RESERVE if kind in (_Kind.CONNECT, _Kind.ACCEPT) else CM_PRIVATE_DATA_MAX
    if len(header) > limit or len(body) > 255:
        raise ValueError(f"shim header of {len(header)} bytes exceeds {limit}")
    return header + user_data


def decode(data: bytes) -> tuple[Message | None, bytes]:
    """Split CM private data into the shim header and the user's bytes.

    Returns:
        ``(None, data)`` when ``data`` carries no shim header (a peer without a
        shim), else ``(message, user_data)``.

    Raises:
        RemoteProtocolError: the header is present but malformed.
    """
    if not data.startswith(MAGIC):
        return None, data
    if len(data) < len(MAGIC) + 1:
        raise RemoteProtocolError("truncated shim header")
    size = data[len(MAGIC)]
    start = len(MAGIC) + 1
    if len(data) < start + size:
        raise RemoteProtocolError("truncated shim header body")
    try:
        fields = msgpack.unpackb(data[start : start + size])
    except Exception as exc:  # msgpack raises several unrelated types
        raise RemoteProtocolError(f"undecodable shim header: {exc}") from None
    if not isinstance(fields, list) or not fields or not isinstance(fields[0], int):
        raise RemoteProtocolError("shim header is not a [kind, ...] array")
    try:
        kind = _Kind(fields[0])
    except ValueError:
        raise RemoteProtocolError(f"unknown shim message kind {fields[0]}") from None
    cls, names = _FIELDS[kind]
    values = fields[1:]
    if kind in _OPTIONAL_TAIL and len(values) == len(names) - 1:
        names = names[:-1]
    if len(values) != len(names):
        raise RemoteProtocolError(f"{kind.name} needs {len(names)} fields, got {len(values)}")
    try:
        if kind is _Kind.REFUSED:
            values = [RefuseReason(values[0])]
        message: Message = cls(**dict(zip(names, values, strict=True)))
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"bad {kind.name} header: {exc}") from None
    return message, data[start + size :]


def plan_resend(pending: Sequence[bool], acked: int, peer_received: int) -> int:
    """How many of the oldest unacknowledged sends the peer already has.

    RC executes a QP's work requests in order, so what the peer received is a
    prefix of what we sent. Only sends that consume a receive (SEND,
    SEND_WITH_IMM, RDMA_WRITE_WITH_IMM) are counted by the peer; RDMA READs and
    plain WRITEs between them are done once a later counted message arrived, and
    are idempotent to repeat otherwise.

    Args:
        pending: for each send not yet acknowledged, oldest first, whether it
            consumes a receive at the peer.
        acked: counted sends of ours we have seen complete, ever.
        peer_received: counted messages the peer says it received from us, ever.

    Returns:
        ``n``: the first ``n`` pending sends are done (complete them, do not
        resend: the duplicates the peer would otherwise see); the rest must be
        sent again.

    Raises:
        RemoteProtocolError: the peer claims fewer messages than we saw
            acknowledged, or more than we ever sent.
    """
    already = peer_received - acked
    if already < 0:
        raise RemoteProtocolError(
            f"peer received {peer_received} messages but {acked} were acknowledged to us"
        )
    if already == 0:
        return 0
    seen = 0
    for index, counted in enumerate(pending):
        if counted:
            seen += 1
            if seen == already:
                return index + 1
    raise RemoteProtocolError(
        f"peer received {peer_received} messages, more than the {acked + seen} we sent"
    )
