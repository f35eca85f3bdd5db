"""Per-node translation tables: stable virtual handles over changing physical ones.

One :class:`HandleSpace` per kind of handle (QPN, LKEY, RKEY) per node, never
shared between nodes. That is the seed's answer to problem 2: a QPN that the
destination host already uses for someone else cannot collide with ours,
because ours is only a name in this node's table.

A virtual handle is the first physical handle it stood for when that number is
free in the node's space, so until the first migration translation is the
identity and a peer without a shim, or a peer that learned a key through the
application's own messages, sees the real numbers.
"""

from __future__ import annotations

from typing import Generic, TypeVar

__all__ = ["HandleSpace"]

T = TypeVar("T")


class HandleSpace(Generic[T]):
    """Virtual numbers of one kind (``bits`` wide) mapped to the objects they name.

    Args:
        bits: width of the numbers (24 for QPNs, 32 for keys).
        first: the lowest number handed out when no physical one can be kept.
    """

    def __init__(self, bits: int, first: int = 1) -> None:
        self._limit = 1 << bits
        self._next = first
        self._first = first
        self._owners: dict[int, T] = {}

    def __len__(self) -> int:
        return len(self._owners)

    def __contains__(self, handle: object) -> bool:
        return handle in self._owners

    def allocate(self, owner: T, prefer: int | None = None) -> int:
        """Name ``owner`` with ``prefer`` if that number is free, else with a fresh one.

        Raises:
            OverflowError: every number of the space is taken.
        """
        if prefer is not None and 0 <= prefer < self._limit and prefer not in self._owners:
            self._owners[prefer] = owner
            return prefer
        for _ in range(self._limit):
            candidate = self._next
            self._next = self._next + 1 if self._next + 1 < self._limit else self._first
            if candidate not in self._owners:
                self._owners[candidate] = owner
                return candidate
        raise OverflowError("virtual handle space exhausted")

    def lookup(self, handle: int) -> T | None:
        """The owner of ``handle``, or ``None`` if it names nothing."""
        return self._owners.get(handle)

    def release(self, handle: int) -> None:
        """Forget ``handle`` (idempotent)."""
        self._owners.pop(handle, None)
