"""The one wait-for-the-next-item queue the sim's contexts, CM ids and listeners share."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

import trio

__all__ = ["Mailbox"]

T = TypeVar("T")


class Mailbox(Generic[T]):
    """A FIFO one task at a time waits on (async events, CM events, connect requests).

    Attributes:
        items: what was pushed and not yet taken, oldest first.
    """

    __slots__ = ("_ready", "items")

    def __init__(self) -> None:
        self.items: deque[T] = deque()
        self._ready: trio.Event | None = None

    def push(self, item: T) -> None:
        """Queue ``item`` and wake the waiter."""
        self.items.append(item)
        self.wake()

    def wake(self) -> None:
        """Wake the waiter so it looks again (an item, or its owner closed or removed)."""
        if self._ready is not None:
            self._ready.set()
            self._ready = None

    async def get(self, check: Callable[[], None], *, check_first: bool = False) -> T:
        """Wait for the oldest item and take it.

        ``check`` raises once the owner is gone or closed: it is called whenever
        the mailbox is empty, and with ``check_first`` before every look, so that
        a closed owner refuses even what is queued. Taking an item is shielded
        from cancellation, so none is lost to a cancelled wait.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            if check_first:
                check()
            if self.items:
                item = self.items.popleft()
                await trio.lowlevel.cancel_shielded_checkpoint()
                return item
            check()
            if self._ready is None:
                self._ready = trio.Event()
            await self._ready.wait()
