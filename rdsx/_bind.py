"""The bind table of one node (Linux ``net/rds/bind.c``).

Ports 0 (ping) and 1 (the handshake probe) are reserved. Binding port 0 picks
a free port: start at a random port >= 2 and probe linearly, skipping 0 and 1.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Generic, TypeVar

from .errors import AddressInUse, AddressNotAvailable

__all__ = ["FIRST_PORT", "PORT_COUNT", "BindTable"]

PORT_COUNT = 1 << 16
FIRST_PORT = 2

T = TypeVar("T")


class BindTable(Generic[T]):
    """Map port -> bound socket for one address."""

    __slots__ = ("_by_port", "_rng")

    def __init__(self, rng: random.Random) -> None:
        self._by_port: dict[int, T] = {}
        self._rng = rng

    def bind(self, port: int, owner: T) -> int:
        """Bind ``owner`` to ``port`` (0 = any free port >= 2).

        Returns:
            The port bound.

        Raises:
            AddressNotAvailable: port 1, a port outside 0..65535.
            AddressInUse: the port is taken, or (port 0) every port is.
        """
        if not isinstance(port, int) or not 0 <= port < PORT_COUNT:
            raise AddressNotAvailable(f"port {port!r} is not in 0..65535")
        if port == 1:
            raise AddressNotAvailable("port 1 is reserved for the handshake probe")
        if port == 0:
            port = self._free_port()
        elif port in self._by_port:
            raise AddressInUse(f"port {port} is already bound")
        self._by_port[port] = owner
        return port

    def _free_port(self) -> int:
        span = PORT_COUNT - FIRST_PORT
        start = self._rng.randrange(span)
        for i in range(span):
            port = FIRST_PORT + (start + i) % span
            if port not in self._by_port:
                return port
        raise AddressInUse("every port is bound")

    def unbind(self, port: int) -> None:
        """Release ``port`` (no error if it is free)."""
        self._by_port.pop(port, None)

    def lookup(self, port: int) -> T | None:
        """Return the socket bound to ``port``, or ``None``."""
        return self._by_port.get(port)

    def table(self) -> Mapping[int, T]:
        """The live port -> socket mapping (read only; it follows every bind and unbind).

        For per-message lookups that cannot afford a method call each.
        """
        return self._by_port

    def __len__(self) -> int:
        return len(self._by_port)
