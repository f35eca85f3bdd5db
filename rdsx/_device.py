"""The verbs resources a node holds on its current device, and how it lets go of them.

A node opens one context and one PD per device it serves. Every path (QP,
CQ, rings) and every registered user region lives on that PD, so closing the
context releases everything at once: what a graceful removal needs before its
deadline (the seed's problem 1).
"""

from __future__ import annotations

import logging
import math

import trio

from .errors import ResourceExhausted, VerbsError
from .verbs import MR, PD, Access, Context, Device

__all__ = ["DeviceState", "close_quietly"]

log = logging.getLogger("rdsx.device")

_PAGE = 4096
#: Region addresses a cookie can name: they must fit the cookie's 32 high bits.
_LOW_START = 0x1000_0000
_LOW_END = 0xFFFF_F000
#: Rings and per-operation local buffers, never named in a cookie.
_HIGH_START = 1 << 40


def _round_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


class DeviceState:
    """One device a node is serving: its context, PD and removal status.

    Attributes:
        device: the verbs device.
        ctx: its open context.
        pd: the one protection domain every resource of the node uses.
        attr: the device's limits (queue depths a path may ask for).
        deadline: the grace deadline once a graceful removal is announced.
        gone: set when the device announced its removal or turned out removed.
        surprise: True when the removal came without a grace period.
        draining: True from a graceful removal until the context is closed:
            new messages are held back while the ones in flight complete.
    """

    def __init__(self, device: Device, ctx: Context) -> None:
        self.device = device
        self.ctx = ctx
        self.pd: PD = ctx.alloc_pd()
        self.attr = ctx.query_device()
        self.deadline: float | None = None
        self.gone = trio.Event()
        self.surprise = False
        self.draining = False
        self.changed = trio.lowlevel.ParkingLot()
        self._high = _HIGH_START
        self._low: list[tuple[int, int]] = []  # sorted (start, end) of cookie regions

    def removal(self, deadline: float | None) -> None:
        """Record the removal announcement (``None``: surprise, nothing may be drained)."""
        if self.gone.is_set():
            return
        self.deadline = deadline
        self.surprise = deadline is None
        self.draining = not self.surprise
        log.info(
            "device %s removal (%s)",
            self.device.name,
            "surprise" if deadline is None else f"deadline {deadline:.6f}",
        )
        self.gone.set()
        self.changed.unpark_all()

    def time_left(self) -> float:
        """Seconds until the grace deadline (``inf`` without one)."""
        if self.deadline is None:
            return math.inf
        return self.deadline - trio.current_time()

    def reg(self, buffer: bytearray | memoryview, access: Access) -> MR:
        """Register a ring or a local RDMA buffer (at an address no cookie names).

        Raises:
            DeviceRemoved: the device is gone.
            InvalidArgument: an empty or read-only buffer.
        """
        iova = self._high
        self._high += _round_up(len(buffer)) + _PAGE
        return self.pd.reg_mr(buffer, access, iova=iova)

    def reg_cookie_region(self, buffer: bytearray | memoryview, access: Access) -> MR:
        """Register a user region at an address that fits a cookie's 32 bits.

        Raises:
            ResourceExhausted: the 4 GiB cookie address space is full.
            DeviceRemoved: the device is gone.
            InvalidArgument: an empty or read-only buffer.
        """
        size = _round_up(len(buffer)) + _PAGE
        start = _LOW_START
        index = len(self._low)
        for i, (lo, hi) in enumerate(self._low):
            if start + size <= lo:
                index = i
                break
            start = max(start, hi)
        if start + size > _LOW_END:
            raise ResourceExhausted("no room left for another RDMA region")
        mr = self.pd.reg_mr(buffer, access, iova=start)
        self._low.insert(index, (start, start + size))
        return mr

    def release_cookie_region(self, mr: MR) -> None:
        """Deregister a user region and free its address range."""
        self._low = [(lo, hi) for lo, hi in self._low if lo != mr.addr]
        close_quietly(mr)

    def close(self) -> None:
        """Close the context: every QP, CQ, MR and CM id of the node on this device."""
        close_quietly(self.ctx)


def close_quietly(obj: object) -> None:
    """Call ``obj.close()``, ignoring what a zombie or already-closed handle raises."""
    close = getattr(obj, "close", None)
    if close is None:
        return
    try:
        close()
    except VerbsError as exc:
        log.debug("closing %r: %s", obj, exc)
