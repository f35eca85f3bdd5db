"""Reconnect decisions as pure functions: who initiates, and how long to wait."""

from __future__ import annotations

import ipaddress
import random

__all__ = ["Backoff", "should_initiate"]


def _key(address: str) -> tuple[int, int, str]:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return (1, 0, address)
    return (0, int(ip), address)


def should_initiate(local: str, remote: str) -> bool:
    """Whether ``local`` connects to ``remote`` (the lower address initiates).

    Only one side initiates, "to avoid duels" (rds.md §1.9, §7). Addresses that
    parse as IP addresses compare numerically; anything else compares as text
    after all IP addresses.

    Raises:
        ValueError: ``local == remote`` (a loopback pair has no duel to avoid).
    """
    if local == remote:
        raise ValueError("a node does not connect to itself")
    return _key(local) < _key(remote)


class Backoff:
    """Random exponential reconnect back-off (Linux ``rds_queue_reconnect``).

    The first attempt is immediate; later ones wait ``random() * cur`` with
    ``cur`` doubling from ``min_delay`` to ``max_delay``; :meth:`reset` on a
    successful connect starts over.

    Args:
        min_delay: ``reconnect_min_delay_ms`` in seconds (1 ms).
        max_delay: ``reconnect_max_delay_ms`` in seconds (1 s).
    """

    __slots__ = ("_cur", "max_delay", "min_delay")

    def __init__(self, min_delay: float = 0.001, max_delay: float = 1.0) -> None:
        if not 0 < min_delay <= max_delay:
            raise ValueError("need 0 < min_delay <= max_delay")
        self.min_delay = min_delay
        self.max_delay = max_delay
        self._cur = 0.0

    def next_delay(self, rng: random.Random) -> float:
        """The delay before the next connect attempt, in seconds."""
        if self._cur == 0.0:
            self._cur = self.min_delay
            return 0.0
        delay = rng.random() * self._cur
        self._cur = min(self._cur * 2, self.max_delay)
        return delay

    def reset(self) -> None:
        """A connect succeeded: the next failure retries immediately."""
        self._cur = 0.0
