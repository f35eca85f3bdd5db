"""The one thing that crosses the fabric: a packet (LRH + BTH + payload, roughly).

A plain slotted class rather than an attrs value because the fabric makes one
per MTU of traffic; it is treated as immutable once sent (a duplicating route
delivers the same object twice, and receivers only read it).
"""

from __future__ import annotations

from typing import Any

__all__ = ["HEADER_BYTES", "Kind", "Packet", "Syndrome"]

#: LRH + BTH + ICRC/VCRC: what each packet adds on the wire.
HEADER_BYTES = 30


class Kind:
    """Packet kinds (the BTH opcode, reduced to what the model needs)."""

    SEND = 0
    WRITE = 1
    READ_REQ = 2
    READ_RESP = 3
    ACK = 4
    CM = 5
    NAMES = ("send", "write", "read_req", "read_resp", "ack", "cm")


class Syndrome:
    """The AETH syndrome of an ACK-kind packet."""

    ACK = 0
    RNR = 1
    SEQ = 2
    ACCESS = 3
    INVALID = 4
    REMOTE_OP = 5
    NAMES = ("ack", "nak_rnr", "nak_seq", "nak_access", "nak_inv", "nak_op")


class Packet:
    """One packet between two LIDs.

    Attributes:
        kind: a :class:`Kind`.
        src_lid, dst_lid: the LRH addresses.
        src_qpn, dst_qpn: the sending QP and the addressed QP.
        psn: the packet sequence number (ACKs: the PSN acknowledged or NAKed).
        payload: the bytes carried (a slice of the message).
        first, last: where the packet sits in its message.
        imm: immediate data (on the last packet of a ``*_WITH_IMM``).
        rkey, raddr, length: RETH of RDMA requests (``length`` is the whole message).
        syndrome: for ACK kind, a :class:`Syndrome`; ``rnr_timer`` for RNR NAKs.
        dguid: for CM packets, the destination (v)GUID; ``msg`` the CM message.
    """

    __slots__ = (
        "dguid",
        "dst_lid",
        "dst_qpn",
        "first",
        "imm",
        "kind",
        "last",
        "length",
        "msg",
        "payload",
        "psn",
        "raddr",
        "rkey",
        "rnr_timer",
        "src_lid",
        "src_qpn",
        "syndrome",
    )

    def __init__(
        self,
        kind: int,
        src_lid: int,
        dst_lid: int,
        src_qpn: int,
        dst_qpn: int,
        psn: int = 0,
        payload: bytes | memoryview = b"",
    ) -> None:
        self.kind = kind
        self.src_lid = src_lid
        self.dst_lid = dst_lid
        self.src_qpn = src_qpn
        self.dst_qpn = dst_qpn
        self.psn = psn
        self.payload = payload
        self.first = True
        self.last = True
        self.imm: int | None = None
        self.rkey = 0
        self.raddr = 0
        self.length = 0
        self.syndrome = 0
        self.rnr_timer = 0.0
        self.dguid = 0
        self.msg: Any = None

    @property
    def size(self) -> int:
        """Bytes on the wire."""
        return HEADER_BYTES + len(self.payload)

    def describe(self) -> str:
        """A short text for traces and messages."""
        name = Kind.NAMES[self.kind]
        if self.kind == Kind.ACK:
            name = Syndrome.NAMES[self.syndrome]
        elif self.kind == Kind.CM:
            name = f"cm:{type(self.msg).__name__}"
        return f"{name} {self.src_lid}.{self.src_qpn}->{self.dst_lid}.{self.dst_qpn} psn={self.psn}"

    def __repr__(self) -> str:
        return f"<Packet {self.describe()}>"
