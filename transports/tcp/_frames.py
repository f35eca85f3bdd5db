"""The tcp transport's wire format: length-prefixed frames, sans-IO.

Every frame is ``!I`` length (of what follows) + ``!B`` type + a fixed header
for its type + an optional payload. Control frames (handshake, CM) carry a
msgpack map; data frames (the RC work requests, acks and NAKs of one QP) carry
fixed binary headers so the hot path never touches msgpack.

The decoder is the only place that reads a peer's bytes. It refuses a length
above its maximum *before* buffering the body, so a peer's word never makes us
allocate more than the negotiated maximum, and it turns anything malformed into
:class:`~rdsx.errors.RemoteProtocolError` (h11's fuzz invariant: parse, or that
error, never anything else).
"""

from __future__ import annotations

import enum
import math
import struct
from typing import Any

import attrs
import msgpack

from rdsx.errors import RemoteProtocolError

from ._build import new, slot_setters

__all__ = [
    "PSN_MASK",
    "SEND_HEADER_SIZE",
    "Ack",
    "Bye",
    "Control",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "Nak",
    "NakCode",
    "ReadReq",
    "ReadResp",
    "Send",
    "Write",
    "encode_ack",
    "encode_bye",
    "encode_control",
    "encode_nak",
    "encode_read_req",
    "encode_read_resp",
    "encode_send",
    "encode_send_header",
    "encode_write",
]

PSN_MASK = (1 << 24) - 1
#: The longest an ``rnr_timer`` in a NAK may say, so a peer cannot park us for hours.
MAX_RNR_TIMER = 60.0

_LEN = struct.Struct("!I")
_HEAD = struct.Struct("!IB")
_SEND = struct.Struct("!IBI")
# Length, type and SEND header in one pack: the hot path's only struct call.
_SEND_FRAME = struct.Struct("!IBIBI")
_ACK_FRAME = struct.Struct("!IBI")
_WRITE = struct.Struct("!IBIQI")
_READ_REQ = struct.Struct("!IQII")
_PSN = struct.Struct("!I")
_NAK = struct.Struct("!IBd")

_FLAG_IMM = 0x01
#: Length, type and SEND header: what precedes a SEND's payload on the wire.
SEND_HEADER_SIZE = _SEND_FRAME.size


class FrameType(enum.IntEnum):
    """The one-byte type that follows every frame's length."""

    CONTROL = 1
    SEND = 16
    WRITE = 17
    READ_REQ = 18
    READ_RESP = 19
    ACK = 20
    NAK = 21
    BYE = 22


class NakCode(enum.IntEnum):
    """Why a responder refused a request (the AETH NAK codes of IB, by meaning)."""

    RNR = 1
    REM_ACCESS = 2
    REM_INV_REQ = 3
    REM_OP = 4


@attrs.frozen(slots=True)
class Control:
    """A handshake or CM frame: ``kind`` names it, ``fields`` are its msgpack map."""

    kind: str
    fields: dict[str, Any]


@attrs.frozen(slots=True)
class Send:
    """A SEND or SEND_WITH_IMM request (``imm`` is None for plain SEND).

    A decoded ``payload`` is a read-only view of the received bytes (no copy:
    the responder copies it once, into the posted receive's buffer).
    """

    psn: int
    imm: int | None
    payload: bytes | memoryview


@attrs.frozen(slots=True)
class Write:
    """An RDMA WRITE (``imm`` set for WRITE_WITH_IMM) of ``payload`` at ``remote_addr``."""

    psn: int
    imm: int | None
    remote_addr: int
    rkey: int
    payload: bytes


@attrs.frozen(slots=True)
class ReadReq:
    """An RDMA READ request of ``length`` bytes at ``remote_addr``."""

    psn: int
    remote_addr: int
    rkey: int
    length: int


@attrs.frozen(slots=True)
class ReadResp:
    """The data of the READ with ``psn``; also acknowledges every earlier PSN."""

    psn: int
    payload: bytes


@attrs.frozen(slots=True)
class Ack:
    """Cumulative acknowledgement: every request up to and including ``psn`` is done."""

    psn: int


@attrs.frozen(slots=True)
class Nak:
    """The request ``psn`` was refused; every earlier one is acknowledged.

    ``rnr_timer`` is the responder's ``min_rnr_timer`` (RNR NAKs only).
    """

    psn: int
    code: NakCode
    rnr_timer: float = 0.0


@attrs.frozen(slots=True)
class Bye:
    """The peer QP is being disconnected on purpose (CM DREQ): flush, do not retry."""


Frame = Control | Send | Write | ReadReq | ReadResp | Ack | Nak | Bye


# --------------------------------------------------------------------------- encoders


def _frame(kind: FrameType, header: bytes, payload: bytes | memoryview = b"") -> bytes:
    return _HEAD.pack(1 + len(header) + len(payload), kind) + header + payload


def encode_control(kind: str, **fields: Any) -> bytes:
    """Encode a control frame (``fields`` must be msgpack-serialisable)."""
    body: bytes = msgpack.packb({"k": kind, **fields}, use_bin_type=True)
    return _frame(FrameType.CONTROL, b"", body)


def encode_send(psn: int, imm: int | None, payload: bytes | memoryview) -> bytes:
    """Encode a SEND (with immediate data when ``imm`` is not None)."""
    return encode_send_header(psn, imm, len(payload)) + payload


def encode_send_header(psn: int, imm: int | None, length: int) -> bytes:
    """Encode the first :data:`SEND_HEADER_SIZE` bytes of a SEND of ``length`` bytes.

    The payload follows as its own buffer, so the kernel's copy in the link's
    scatter-gather ``sendmsg`` is the only one on the way out.
    """
    flags = 0 if imm is None else _FLAG_IMM
    return _SEND_FRAME.pack(1 + _SEND.size + length, 16, psn, flags, imm or 0)


def encode_write(
    psn: int, imm: int | None, remote_addr: int, rkey: int, payload: bytes | memoryview
) -> bytes:
    """Encode an RDMA WRITE (WRITE_WITH_IMM when ``imm`` is not None)."""
    header = _WRITE.pack(psn, 0 if imm is None else _FLAG_IMM, imm or 0, remote_addr, rkey)
    return _frame(FrameType.WRITE, header, payload)


def encode_read_req(psn: int, remote_addr: int, rkey: int, length: int) -> bytes:
    """Encode an RDMA READ request."""
    return _frame(FrameType.READ_REQ, _READ_REQ.pack(psn, remote_addr, rkey, length))


def encode_read_resp(psn: int, payload: bytes | memoryview) -> bytes:
    """Encode the response to the READ ``psn``."""
    return _frame(FrameType.READ_RESP, _PSN.pack(psn), payload)


def encode_ack(psn: int) -> bytes:
    """Encode a cumulative ACK up to ``psn``."""
    return _ACK_FRAME.pack(5, FrameType.ACK, psn)


def encode_nak(psn: int, code: NakCode, rnr_timer: float = 0.0) -> bytes:
    """Encode a NAK of ``psn``."""
    return _frame(FrameType.NAK, _NAK.pack(psn, code, rnr_timer))


def encode_bye() -> bytes:
    """Encode a BYE."""
    return _frame(FrameType.BYE, b"")


# --------------------------------------------------------------------------- decoder


def _psn(value: int) -> int:
    if value > PSN_MASK:
        raise RemoteProtocolError(f"PSN {value:#x} does not fit 24 bits")
    return value


def _flags_imm(flags: int, imm: int) -> int | None:
    if flags & ~_FLAG_IMM:
        raise RemoteProtocolError(f"unknown flags {flags:#x}")
    return imm if flags & _FLAG_IMM else None


def _decode_control(body: bytes) -> Control:
    try:
        fields = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise RemoteProtocolError(f"control frame is not msgpack: {exc}") from None
    if not isinstance(fields, dict) or not all(isinstance(k, str) for k in fields):
        raise RemoteProtocolError("control frame is not a map with text keys")
    kind = fields.pop("k", None)
    if not isinstance(kind, str):
        raise RemoteProtocolError("control frame without a kind")
    return Control(kind, fields)


Buffer = bytes | bytearray | memoryview


def _size(size: int, minimum: int, what: str, *, exact: bool = False) -> None:
    if size < minimum or (exact and size != minimum):
        raise RemoteProtocolError(f"{what} frame body is {size} bytes, needs {minimum}")


def decode_body(kind: int, buf: Buffer, start: int, end: int) -> Frame:
    """Decode the frame body in ``buf[start:end]`` (after length and type).

    Raises:
        RemoteProtocolError: an unknown type, a wrong size, an invalid field.
    """
    size = end - start
    if kind == 16:  # FrameType.SEND, the hot path first
        _size(size, 9, "SEND")
        psn, flags, imm = _SEND.unpack_from(buf, start)
        return Send(_psn(psn), _flags_imm(flags, imm), bytes(buf[start + 9 : end]))
    if kind == 20:  # FrameType.ACK
        _size(size, 4, "ACK", exact=True)
        return Ack(_psn(_PSN.unpack_from(buf, start)[0]))
    if kind == FrameType.WRITE:
        _size(size, _WRITE.size, "WRITE")
        psn, flags, imm, addr, rkey = _WRITE.unpack_from(buf, start)
        payload = bytes(buf[start + _WRITE.size : end])
        return Write(_psn(psn), _flags_imm(flags, imm), addr, rkey, payload)
    if kind == FrameType.READ_REQ:
        _size(size, _READ_REQ.size, "READ_REQ", exact=True)
        psn, addr, rkey, length = _READ_REQ.unpack_from(buf, start)
        return ReadReq(_psn(psn), addr, rkey, length)
    if kind == FrameType.READ_RESP:
        _size(size, 4, "READ_RESP")
        return ReadResp(_psn(_PSN.unpack_from(buf, start)[0]), bytes(buf[start + 4 : end]))
    if kind == FrameType.NAK:
        _size(size, _NAK.size, "NAK", exact=True)
        psn, code, timer = _NAK.unpack_from(buf, start)
        if code not in NakCode._value2member_map_:
            raise RemoteProtocolError(f"unknown NAK code {code}")
        if not (math.isfinite(timer) and 0.0 <= timer <= MAX_RNR_TIMER):
            raise RemoteProtocolError(f"NAK rnr_timer {timer!r} out of range")
        return Nak(_psn(psn), NakCode(code), timer)
    if kind == FrameType.BYE:
        _size(size, 0, "BYE", exact=True)
        return Bye()
    if kind == FrameType.CONTROL:
        return _decode_control(bytes(buf[start:end]))
    raise RemoteProtocolError(f"unknown frame type {kind}")


# The decoder builds SEND frames slot by slot (see _build): a third of a decoded SEND's cost.
_SEND_SETTERS = slot_setters(Send, "psn", "imm", "payload")


class FrameDecoder:
    """Incremental decoder: feed received bytes, get whole frames back in batches.

    Args:
        max_frame: the largest frame (type byte included) accepted; a longer
            length field is an error before any body is buffered.
    """

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        #: READ requests decoded since the owner last reset this to 0 (the link hands a
        #: batch over whole while it is 0).
        self.read_requests = 0

    @property
    def partial(self) -> bool:
        """True while part of a frame is buffered (the peer owes us the rest)."""
        return bool(self._buf)

    def feed(self, data: Buffer) -> list[Frame]:
        """Add ``data`` and return every frame it completed, in order.

        Whole frames are decoded straight from ``data`` (a SEND's payload is a
        view of it); only a frame split across two calls is copied, once.

        Raises:
            RemoteProtocolError: the stream is malformed; the decoder is then
                unusable (the caller resets the connection).
        """
        frames: list[Frame] = []
        src = memoryview(data).toreadonly()
        pos = 0
        end = len(src)
        if self._buf:
            pos = self._complete(src, frames)
            if self._buf:  # still partial: data ended inside the frame
                return frames
        pos = self._parse(src, pos, end, frames)
        if pos < end:
            self._buf = bytearray(src[pos:])
        return frames

    def _complete(self, src: memoryview, frames: list[Frame]) -> int:
        """Finish the buffered partial frame from the head of ``src``; return the bytes used."""
        buf = self._buf
        used = 0
        if len(buf) < 4:
            used = min(4 - len(buf), len(src))
            buf += src[:used]
            if len(buf) < 4:
                return used
        length: int = _LEN.unpack_from(buf, 0)[0]
        if length < 1 or length > self.max_frame:
            raise RemoteProtocolError(f"frame length {length} outside 1..{self.max_frame}")
        take = min(4 + length - len(buf), len(src) - used)
        buf += src[used : used + take]
        used += take
        if len(buf) == 4 + length:
            whole = memoryview(bytes(buf)).toreadonly()
            self._buf = bytearray()
            self._parse(whole, 0, len(whole), frames)
        return used

    def _parse(self, src: memoryview, pos: int, end: int, frames: list[Frame]) -> int:
        """Decode the whole frames of ``src[pos:end]``; return where the first partial starts."""
        limit = self.max_frame
        unpack_length = _LEN.unpack_from
        # Length, type and a SEND's header in one unpack (the hot path: SENDs in a row).
        unpack_send_frame = _SEND_FRAME.unpack_from
        head = _SEND_FRAME.size
        append = frames.append
        set_psn, set_imm, set_payload = _SEND_SETTERS
        while end - pos >= 4:
            if end - pos >= head:
                length, kind, psn, flags, imm = unpack_send_frame(src, pos)
            else:
                (length,) = unpack_length(src, pos)
                kind = -1
            if length < 1 or length > limit:
                raise RemoteProtocolError(f"frame length {length} outside 1..{limit}")
            stop = pos + 4 + length
            if stop > end:
                break
            if kind == 16 and length >= 10 and psn <= PSN_MASK and (flags == 0 or flags == 1):
                frame = new(Send)  # a well-formed SEND, inline
                set_psn(frame, psn)
                set_imm(frame, imm if flags else None)
                set_payload(frame, src[pos + head : stop])
                append(frame)
            else:  # anything else, or the error
                other = decode_body(src[pos + 4], src, pos + 5, stop)
                if type(other) is ReadReq:
                    self.read_requests += 1
                append(other)
            pos = stop
        return pos
