"""What the conformance suite needs from a transport to exercise it."""

from __future__ import annotations

import abc
from contextlib import AbstractAsyncContextManager, AbstractContextManager

from ..verbs import REQ_PRIVATE_DATA, Device

__all__ = ["Harness"]


class Harness(abc.ABC):
    """A transport's test fixture: two reachable devices and the faults to inject.

    Attributes:
        name: the transport's name, for messages.
        virtual_time: True when every wait of the transport runs on trio's clock,
            so the suite may run under ``MockClock(autojump_threshold=0)``.
        cm_private_data: the most private data ``cm_connect`` and ``accept``
            carry: the contract's :data:`~rdsx.verbs.REQ_PRIVATE_DATA` unless a
            layer keeps some for itself (as librdmacm does on IB, or the
            transparent shim for its header); the suite sends no more, and
            requires one byte more to raise ``InvalidArgument``.
    """

    name: str
    virtual_time: bool
    cm_private_data: int = REQ_PRIVATE_DATA

    @abc.abstractmethod
    def open_pair(self) -> AbstractAsyncContextManager[tuple[Device, Device]]:
        """Two devices on two different nodes that can reach each other.

        Everything the pair needed is torn down when the context exits.
        """

    @abc.abstractmethod
    async def remove(self, device: Device, grace: float | None) -> None:
        """Hot-unplug ``device``.

        With ``grace`` seconds, deliver ``DEVICE_REMOVAL`` with a deadline of now
        + grace and wait until every context of the device is closed (success)
        or the deadline passes. ``grace=None`` is a surprise removal: the device
        is gone at once.

        Raises:
            DeviceBusy: resources were still held at the deadline; the device stays.
        """

    @abc.abstractmethod
    def partition(self, a: Device, b: Device) -> AbstractContextManager[None]:
        """While the context is open, every packet between ``a`` and ``b`` is lost."""
