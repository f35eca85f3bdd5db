"""The wire: the fixed 48-byte data header and the msgpack control messages.

Every frame is one header followed by at most one fragment of payload. The
header is modelled on ``struct rds_header`` (rds.md §2.1), big-endian, with
the 4 unused padding bytes holding the fragment index and count::

    off size field       meaning
      0  8   seq         message sequence number; 0 for unsequenced control frames
      8  8   ack         piggybacked cumulative ack: highest seq received
     16  4   len         payload bytes of the whole message (not of this fragment)
     20  2   sport       source RDS port
     22  2   dport       destination RDS port
     24  1   flags       see the ``FLAG_*`` constants
     25  1   credit      receive credits granted (at most 255 per header)
     26  2   frag_index  this fragment's index
     28  2   frag_count  fragments in the message (at least 1)
     30  2   csum        0 = not checksummed (we never checksum)
     32 16   ext         with FLAG_EXT: [length u8][up to 15 opaque bytes]

Why ``struct`` and not msgpack for the header: ``bench/engine_codec.py``
measures both for a 4 KiB message (bench/RESULTS.md, "protocol engine").
Control messages (the connect handshake, congestion updates) are rare and
msgpack keeps them extensible.

Every decoder here turns any input into a value or :class:`RemoteProtocolError`
and never another exception.
"""

from __future__ import annotations

import struct
from typing import Any

import attrs
import msgpack

from ..errors import RemoteProtocolError

__all__ = [
    "FLAG_ACK_REQUIRED",
    "FLAG_CONG_BITMAP",
    "FLAG_EXT",
    "FLAG_RETRANSMITTED",
    "FLAG_TOMBSTONE",
    "HEADER_SIZE",
    "MAX_EXT",
    "Handshake",
    "decode_cong_update",
    "decode_handshake",
    "encode_cong_update",
    "encode_handshake",
    "parse_fragment",
    "parse_header",
]

#: The congestion map is the payload (rds.md §2.1).
FLAG_CONG_BITMAP = 0x01
#: The receiver must send an ack soon (rds.md §1.8).
FLAG_ACK_REQUIRED = 0x02
#: This is a resend after a reset; an old seq is a duplicate, not an error.
FLAG_RETRANSMITTED = 0x04
#: The ext area holds opaque bytes for the receiving node.
FLAG_EXT = 0x08
#: A resent seq whose message was canceled or was an RDMA op: it consumes the
#: sequence number and is not delivered (our addition; keeps seqs gap-free).
FLAG_TOMBSTONE = 0x10
_KNOWN_FLAGS = 0x1F

HEADER_SIZE = 48
#: Largest ``ext`` a message may carry.
MAX_EXT = 15

#: Packs a whole header; the trailing ``16s`` zero-pads the ext area.
HEADER = struct.Struct(">QQIHHBBHHH16s")
#: Unpacks the fixed part only, so the hot path never allocates the ext bytes.
HEADER_FIXED = struct.Struct(">QQIHHBBHHH")
assert HEADER.size == HEADER_SIZE

_U32 = 0xFFFFFFFF
_U64 = (1 << 64) - 1


def parse_header(frame: bytes | bytearray | memoryview) -> tuple[int, ...]:
    """Unpack and check a frame's header on its own (no connection context).

    Returns:
        ``(seq, ack, len, sport, dport, flags, credit, frag_index, frag_count, csum)``.

    Raises:
        RemoteProtocolError: the frame is shorter than a header, sets unknown
            flags or a checksum, or its fragment fields are inconsistent.
    """
    if len(frame) < HEADER_SIZE:
        raise RemoteProtocolError(f"frame of {len(frame)} bytes is shorter than a header")
    fields = HEADER_FIXED.unpack_from(frame)
    flags, index, count, csum = fields[5], fields[7], fields[8], fields[9]
    if flags & ~_KNOWN_FLAGS:
        raise RemoteProtocolError(f"unknown header flags {flags:#x}")
    if csum:
        raise RemoteProtocolError("checksummed headers are not supported")
    if count == 0 or index >= count:
        raise RemoteProtocolError(f"fragment index {index} out of range for count {count}")
    return fields


def parse_fragment(
    frame: bytes | bytearray | memoryview, frag_size: int, max_message_size: int
) -> tuple[int, int, int, int, int, int, int, int, int, bytes]:
    """Parse a frame and check everything its header alone can tell.

    Args:
        frame: header and payload, as received.
        frag_size: the payload bytes per fragment agreed for this connection.
        max_message_size: the largest message we accept.

    Returns:
        ``(seq, ack, len, sport, dport, flags, credit, frag_index, frag_count, ext)``.

    Raises:
        RemoteProtocolError: as :func:`parse_header`, or the fragment count or
            payload size does not fit the message length, a control frame
            (seq 0) carries ports or data it may not, a tombstone is not an
            empty resend, or the ext area is malformed.
    """
    seq, ack, length, sport, dport, flags, credit, index, count, _ = parse_header(frame)
    if length > max_message_size:
        raise RemoteProtocolError(f"message length {length} over the maximum")
    if count != (-(-length // frag_size) or 1):
        raise RemoteProtocolError(f"{count} fragments for {length} bytes")
    expected = min(frag_size, length - index * frag_size) if length else 0
    if len(frame) - HEADER_SIZE != expected:
        raise RemoteProtocolError(f"fragment {index} has the wrong size (expected {expected})")
    if seq == 0:
        if flags & ~FLAG_CONG_BITMAP or sport or dport or (not flags and length):
            raise RemoteProtocolError("malformed control frame")
    elif flags & FLAG_TOMBSTONE and (length or not flags & FLAG_RETRANSMITTED):
        raise RemoteProtocolError("malformed tombstone")
    elif flags & FLAG_CONG_BITMAP:
        raise RemoteProtocolError("sequenced congestion update")
    ext = b""
    if flags & FLAG_EXT:
        ext_len = frame[32]
        if not 0 < ext_len <= MAX_EXT:
            raise RemoteProtocolError(f"ext length {ext_len}")
        ext = bytes(frame[33 : 33 + ext_len])
    return seq, ack, length, sport, dport, flags, credit, index, count, ext


@attrs.frozen(slots=True, kw_only=True)
class Handshake:
    """The connect private data each side sends (IB's ``rds_ib_connect_private``).

    Attributes:
        src: the sender's RDS address.
        dst: the address it believes it connects to.
        generation: the sender's incarnation (0 = none).
        peer_generation: the receiver's incarnation as the sender knows it;
            ``ack`` only means something if this is the receiver's current one.
        ack: ``dp_ack_seq``: highest seq the sender received from the receiver.
        credits: receive buffers the sender has posted (0 = no flow control).
        frag_size: largest fragment payload the sender's buffers hold.
    """

    src: str
    dst: str
    generation: int
    peer_generation: int
    ack: int
    credits: int
    frag_size: int


_HS_KEYS = ("v", "src", "dst", "gen", "pgen", "ack", "cr", "frag")


def encode_handshake(hs: Handshake) -> bytes:
    """Encode ``hs`` as msgpack (well under the 196-byte CM private-data limit)."""
    packed: bytes = msgpack.packb(
        [1, hs.src, hs.dst, hs.generation, hs.peer_generation, hs.ack, hs.credits, hs.frag_size]
    )
    return packed


def _unpack(data: bytes | bytearray | memoryview, what: str) -> Any:
    try:
        return msgpack.unpackb(bytes(data), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise RemoteProtocolError(f"malformed {what}: {exc!r}") from None


def _int_in(value: object, low: int, high: int, name: str) -> int:
    if type(value) is not int or not low <= value <= high:
        raise RemoteProtocolError(f"handshake field {name} invalid: {value!r}")
    return value


def decode_handshake(data: bytes | bytearray | memoryview) -> Handshake:
    """Decode a peer's handshake.

    Raises:
        RemoteProtocolError: not msgpack, wrong shape, unknown version, or a
            field out of range.
    """
    obj = _unpack(data, "handshake")
    if not isinstance(obj, list) or len(obj) != len(_HS_KEYS):
        raise RemoteProtocolError("handshake is not an 8-element array")
    version, src, dst, gen, pgen, ack, credits, frag = obj
    if version != 1 or type(version) is not int:
        raise RemoteProtocolError(f"unsupported handshake version {version!r}")
    if not isinstance(src, str) or not isinstance(dst, str):
        raise RemoteProtocolError("handshake addresses must be strings")
    return Handshake(
        src=src,
        dst=dst,
        generation=_int_in(gen, 0, _U32, "gen"),
        peer_generation=_int_in(pgen, 0, _U32, "pgen"),
        ack=_int_in(ack, 0, _U64, "ack"),
        credits=_int_in(credits, 0, _U32, "credits"),
        frag_size=_int_in(frag, 1, 1 << 20, "frag"),
    )


def encode_cong_update(ports: list[int]) -> bytes:
    """Encode the congested ports (ascending) as a msgpack array.

    A sparse list is tiny in the usual case (few congested ports) where the
    kernel's raw bitmap always costs 8 KiB, i.e. two fragments.
    """
    packed: bytes = msgpack.packb(ports)
    return packed


def decode_cong_update(data: bytes | bytearray | memoryview) -> frozenset[int]:
    """Decode a congestion update into the set of congested ports.

    Raises:
        RemoteProtocolError: not a strictly ascending array of ports 0..65535.
    """
    obj = _unpack(data, "congestion update")
    if not isinstance(obj, list):
        raise RemoteProtocolError("congestion update is not an array")
    last = -1
    for port in obj:
        if type(port) is not int or not last < port <= 0xFFFF:
            raise RemoteProtocolError(f"bad port {port!r} in congestion update")
        last = port
    return frozenset(obj)
