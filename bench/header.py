"""The small header every rdsx-stress request and ack starts with.

Like rds-stress's ``struct header`` it names the sender and the receiver
(address and port), the sending task's index, the operation and a sequence
number, so a receiver can tell a lost, duplicated, reordered or misaddressed
message from a good one. Two fields are rdsx-stress's own: ``ack_of`` (the
request sequence an ack answers, so request loss and ack loss are told apart)
and ``size`` (the whole message length, header included).

With ``-D`` a request also carries the cookie of the memory region the
acker writes into (``cookie``).

Sequence numbers count per stream: (sending task, receiving task, operation),
starting at 0. Layout, big-endian, 48 bytes::

    magic "RX" | op u8 | flags u8 | seq u64 | from_addr 4 | from_port u16 |
    to_addr 4 | to_port u16 | index u16 | reserved u16 | ack_of u64 |
    cookie u64 | size u32
"""

from __future__ import annotations

import enum
import functools
import hashlib
import ipaddress
import struct

import attrs

__all__ = [
    "HEADER_SIZE",
    "Header",
    "Op",
    "cookie_of",
    "decode",
    "encode",
    "pack",
    "pack_addr",
    "payload",
]

_FORMAT = struct.Struct(">2sBBQ4sH4sHHHQQI")
_MAGIC = b"RX"
HEADER_SIZE = _FORMAT.size
_COOKIE_AT = HEADER_SIZE - 12

_PATTERN = bytes(range(256)) * 4


class Op(enum.IntEnum):
    """What a message is; the values are what goes on the wire."""

    REQUEST = 1
    ACK = 2


@functools.lru_cache(maxsize=256)
def pack_addr(address: str) -> bytes:
    """Four bytes naming an RDS address: the IPv4 address, or a hash of any other name."""
    try:
        return ipaddress.IPv4Address(address).packed
    except ValueError:
        return hashlib.blake2b(address.encode(), digest_size=4).digest()


@attrs.frozen(slots=True, kw_only=True)
class Header:
    """One decoded header.

    Attributes:
        op: request or ack (an unknown value stays an int so it can be shown).
        seq: sequence number in the stream (from task, to task, op).
        from_addr: four bytes of the sender's address (see :func:`pack_addr`).
        from_port: the sender's RDS port.
        to_addr: four bytes of the receiver's address.
        to_port: the receiver's RDS port.
        index: the sending task's index.
        ack_of: for an ack, the sequence of the request it answers; 0 otherwise.
        cookie: for a request with ``-D``, the RDMA cookie of its region; else 0.
        size: the whole message length, header included.
    """

    op: int
    seq: int
    from_addr: bytes
    from_port: int
    to_addr: bytes
    to_port: int
    index: int
    ack_of: int = 0
    cookie: int = 0
    size: int


def pack(
    op: int,
    seq: int,
    from_addr: bytes,
    from_port: int,
    to_addr: bytes,
    to_port: int,
    index: int,
    ack_of: int,
    cookie: int,
    size: int,
) -> bytes:
    """The header bytes for these fields (the per-message fast path of :func:`encode`)."""
    return _FORMAT.pack(
        _MAGIC, op, 0, seq, from_addr, from_port, to_addr, to_port, index, 0, ack_of, cookie, size
    )


def encode(header: Header) -> bytes:
    """Return the header bytes of ``header``."""
    return pack(
        header.op,
        header.seq,
        header.from_addr,
        header.from_port,
        header.to_addr,
        header.to_port,
        header.index,
        header.ack_of,
        header.cookie,
        header.size,
    )


def cookie_of(data: bytes) -> int:
    """The ``cookie`` field of the header at the start of ``data`` (long enough)."""
    return int.from_bytes(data[_COOKIE_AT : _COOKIE_AT + 8], "big")


def decode(data: bytes) -> Header | None:
    """Decode the header at the start of ``data``; None if it is too short or not ours."""
    if len(data) < HEADER_SIZE:
        return None
    magic, op, _flags, seq, fa, fp, ta, tp, index, _res, ack_of, cookie, size = _FORMAT.unpack_from(
        data
    )
    if magic != _MAGIC:
        return None
    return Header(
        op=op,
        seq=seq,
        from_addr=fa,
        from_port=fp,
        to_addr=ta,
        to_port=tp,
        index=index,
        ack_of=ack_of,
        cookie=cookie,
        size=size,
    )


def payload(length: int) -> bytes:
    """The fixed pattern that fills a message after its header (checked with ``-v``)."""
    reps = length // len(_PATTERN) + 1
    return (_PATTERN * reps)[:length]
