"""The per-address congestion bitmap: 65536 bits, one per RDS port (rds.md §1.4)."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["CONG_MAP_BITS", "CongestionMap"]

#: Bits in a map: one per 16-bit port (``RDS_CONG_MAP_BYTES`` = 8192 bytes).
CONG_MAP_BITS = 1 << 16


class CongestionMap:
    """A set of congested ports, stored as a 65536-bit little-endian bitmap.

    The node owns one for its local address and sets a port's bit when the
    socket's receive queue exceeds ``rcvbuf``; every connection holds the
    peer's copy, which :meth:`Connection.peer_congested` consults.

    Args:
        ports: initially congested ports.
    """

    __slots__ = ("_bits",)

    def __init__(self, ports: Iterable[int] = ()) -> None:
        self._bits = bytearray(CONG_MAP_BITS // 8)
        for port in ports:
            self.set(port)

    @staticmethod
    def _check(port: int) -> None:
        if not 0 <= port < CONG_MAP_BITS:
            raise ValueError(f"port {port} out of range 0..65535")

    def set(self, port: int) -> None:
        """Mark ``port`` congested."""
        self._check(port)
        self._bits[port >> 3] |= 1 << (port & 7)

    def clear(self, port: int) -> None:
        """Mark ``port`` uncongested."""
        self._check(port)
        self._bits[port >> 3] &= ~(1 << (port & 7)) & 0xFF

    def test(self, port: int) -> bool:
        """Whether ``port`` is congested."""
        self._check(port)
        return bool(self._bits[port >> 3] & (1 << (port & 7)))

    def ports(self) -> list[int]:
        """The congested ports, ascending."""
        found: list[int] = []
        for index, byte in enumerate(self._bits):
            if byte:
                found.extend(index * 8 + bit for bit in range(8) if byte & (1 << bit))
        return found

    def to_bytes(self) -> bytes:
        """The 8192-byte wire bitmap."""
        return bytes(self._bits)

    def copy(self) -> CongestionMap:
        """An independent copy."""
        other = CongestionMap()
        other._bits[:] = self._bits
        return other

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CongestionMap) and self._bits == other._bits

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"CongestionMap({self.ports()!r})"
