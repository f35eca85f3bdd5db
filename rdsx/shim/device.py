"""The public face of the shim: a device source yielding one device for life."""

from __future__ import annotations

import logging
import weakref
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import ClassVar

import trio

from ..errors import DeviceRemoved, LocalProtocolError
from ..verbs import Device, DeviceSource
from .core import Core, ShimConfig
from .recovery import run_session
from .resources import VirtualContext
from .stats import ShimStatistics

__all__ = ["TransparentDeviceSource", "VirtualDevice"]

log = logging.getLogger("rdsx.shim")


class VirtualDevice(Device):
    """The one stable device the shim yields; every handle opened on it is virtual.

    Attributes:
        name: ``"shim:"`` + the first physical device's name.
        address: the node's out-of-band address (the first device's).
    """

    def __init__(self, core: Core, name: str, address: str) -> None:
        self._core = core
        self.name = name
        self.address = address
        self._removed = False

    @property
    def removed(self) -> bool:
        """False for the node's lifetime: the shim hides every removal."""
        return self._removed

    async def open(self) -> VirtualContext:
        """Open a virtual context (attached to the current device if there is one).

        Raises:
            DeviceRemoved: the shim itself was closed.
        """
        if self._removed:
            raise DeviceRemoved("the transparent device source is closed")
        ctx = VirtualContext(self._core, self)
        self._core.contexts.append(ctx)
        session = self._core.session
        if session is not None and not session.removal.is_set():
            await ctx.attach(session)
        return ctx


class TransparentDeviceSource(DeviceSource):
    """Bottom-up live migration: the verbs contract on top of the verbs contract.

    Wraps ``underlying`` (any transport's device source) and yields exactly one
    :class:`VirtualDevice`. Its contexts, PDs, MRs, CQs, QPs and CM ids survive
    every device replacement underneath: removals are absorbed (peers suspended,
    sends drained, physical resources released in time), and on the next device
    everything is re-created and every peer resumed, with per-node virtual QPNs
    and keys. The layer above sees a pause, never an error, unless a peer does
    not come back within ``config.resume_timeout`` (then
    :class:`~rdsx.errors.PeerResumeTimeout`).

    What the virtual device does not do as a physical one would:

    * **CM private data**: ``cm_connect`` and ``accept`` carry at most
      :data:`~rdsx.shim.PRIVATE_DATA_MAX` (176) bytes of the caller's, not the
      CM's 196: the shim keeps 20 for the header that makes the connection
      resumable. More raises :class:`~rdsx.errors.InvalidArgument` at once.
    * **QPs it cannot resume**: one connected by hand (``modify`` with a
      ``QpDest``, no CM), or through the CM to a peer without a shim, ends when
      our device is replaced: it flushes, goes to ERR, the context reports
      ``QP_FATAL`` (its CM id, if any, ``DISCONNECTED``). Reset it and connect it
      through the CM; from then on it survives replacements like any other. (A
      hand-made connection names ``query_port().address``, the first device's
      locator, and ``qp_num``, a virtual number: it holds only while neither
      end was replaced.)

    Use it as an async context manager; its tasks live in its nursery::

        async with TransparentDeviceSource(net_devices) as devices:
            device = await devices.next_device()

    Args:
        underlying: the physical device source.
        config: shim settings (:class:`ShimConfig`).
    """

    #: underlying source -> the shim over it, so tools can find a shim a node made.
    _by_source: ClassVar[weakref.WeakKeyDictionary[DeviceSource, TransparentDeviceSource]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, underlying: DeviceSource, config: ShimConfig | None = None) -> None:
        self._core = Core(underlying, config if config is not None else ShimConfig())
        TransparentDeviceSource._by_source[underlying] = self
        self._device: VirtualDevice | None = None
        self._first = trio.Event()
        self._closed = trio.Event()
        self._nursery_manager: trio.Nursery | None = None
        self._cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._given = False

    @classmethod
    def over(cls, underlying: DeviceSource) -> TransparentDeviceSource | None:
        """The shim most recently made over ``underlying`` (e.g. by ``open_node``), if any.

        Lets a benchmark read :meth:`statistics` of the shim a node created
        for itself in ``mode="transparent"``.
        """
        return cls._by_source.get(underlying)

    @property
    def config(self) -> ShimConfig:
        """The shim's settings."""
        return self._core.config

    async def __aenter__(self) -> TransparentDeviceSource:
        cm = trio.open_nursery()
        self._cm = cm
        self._nursery_manager = await cm.__aenter__()
        self._nursery_manager.start_soon(self._run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        await self.aclose()
        cm = self._cm
        assert cm is not None
        return await cm.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Stop the shim: close every virtual context and release the device."""
        self._closed.set()
        if self._device is not None:
            self._device._removed = True
        for ctx in list(self._core.contexts):
            ctx.close()
        if self._nursery_manager is not None:
            self._nursery_manager.cancel_scope.cancel()

    async def _run(self) -> None:
        inc = 0
        while True:
            try:
                device = await self._core.underlying.next_device()
            except trio.EndOfChannel:
                self._closed.set()
                return
            inc += 1
            await run_session(self._core, device, inc, self._first)

    async def next_device(self) -> VirtualDevice:
        """The virtual device (first call), then wait until the shim closes.

        Raises:
            trio.EndOfChannel: the shim (or its underlying source) is closed.
            LocalProtocolError: the shim was not entered with ``async with``.
        """
        if self._nursery_manager is None:
            raise LocalProtocolError("use `async with TransparentDeviceSource(...)` first")
        if not self._given:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def closed() -> None:
                        await self._closed.wait()
                        scope.cancel()

                    nursery.start_soon(closed)
                    await self._first.wait()
                    nursery.cancel_scope.cancel()
            if self._first.is_set():
                if self._device is None:
                    core = self._core
                    self._device = VirtualDevice(core, f"shim:{core.address}", core.address)
                self._given = True
                return self._device
            raise trio.EndOfChannel
        await self._closed.wait()
        raise trio.EndOfChannel

    def statistics(self) -> ShimStatistics:
        """Per-migration figures and totals, as a frozen value."""
        return self._core.recorder.snapshot()
