"""An open context of a tcp device: PDs, CQs, CM ids, listeners and the async event queue."""

from __future__ import annotations

import itertools
from collections import deque
from typing import TYPE_CHECKING

import trio

from rdsx.errors import (
    AddressInUse,
    DeviceRemoved,
    InvalidArgument,
    InvalidHandle,
    ResourceExhausted,
)
from rdsx.verbs import (
    CQ,
    PD,
    QP,
    AsyncEvent,
    AsyncEventType,
    CmId,
    CmListener,
    Context,
    DeviceAttr,
    PortAttr,
    PortState,
    check_cqe,
)

from ._resources import TcpCQ, TcpPD

if TYPE_CHECKING:
    from ._cm import TcpCmId, TcpCmListener
    from ._device import TcpDevice

__all__ = ["TcpContext"]


class TcpContext(Context):
    """An open context: owns PDs, CQs, CM ids and listeners; has the async event queue."""

    device: TcpDevice

    def __init__(self, device: TcpDevice) -> None:
        self.device = device
        self._closed = False
        self.pds: set[TcpPD] = set()
        self.cqs: set[TcpCQ] = set()
        self.cm_ids: set[TcpCmId] = set()
        self.cm_listeners: set[TcpCmListener] = set()
        self._events: deque[AsyncEvent] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    def _check(self) -> None:
        if self.device.removed:
            raise DeviceRemoved(f"{self.device.name} was removed")
        if self._closed:
            raise InvalidHandle("context is closed")

    def post_event(
        self,
        kind: AsyncEventType,
        *,
        deadline: float | None = None,
        qp_num: int | None = None,
        info: str = "",
    ) -> None:
        """Queue an async event for :meth:`get_async_event`."""
        if not self._closed:
            self._events.append(AsyncEvent(kind, deadline, qp_num, info))
            self._lot.unpark_all()

    def wake_all(self) -> None:
        """Wake every waiter on this context (the device is gone)."""
        self._lot.unpark_all()
        for cq in list(self.cqs):
            cq.wake()
        for cm_id in list(self.cm_ids):
            cm_id.wake()
        for listener in list(self.cm_listeners):
            listener.wake()

    def query_device(self) -> DeviceAttr:
        """Return the device's attributes and limits."""
        self._check()
        limits = self.device.limits
        return DeviceAttr(
            node_guid=self.device.guid,
            vendor="rdsx-tcp",
            max_qp=limits.max_qp,
            max_qp_wr=limits.max_qp_wr,
            max_sge=limits.max_sge,
            max_cq=limits.max_cq,
            max_cqe=limits.max_cqe,
            max_mr=limits.max_mr,
            max_mr_size=limits.max_mr_size,
            max_pd=limits.max_pd,
        )

    def query_port(self) -> PortAttr:
        """Return the port: ACTIVE, LID 0, ``address`` = the device's ``host:port``."""
        self._check()
        return PortAttr(
            state=PortState.ACTIVE,
            lid=0,
            address=self.device.locator,
            port_guid=self.device.guid ^ 1,
            active_mtu=4096,
            max_msg_sz=self.device.max_msg_sz,
        )

    async def get_async_event(self) -> AsyncEvent:
        """Wait for the next async event (see :meth:`rdsx.verbs.Context.get_async_event`)."""
        if self._closed:
            raise InvalidHandle("context is closed")
        while not self._events:
            if self.device.removed:
                raise DeviceRemoved(f"{self.device.name} was removed")
            await self._lot.park()
            if self._closed:
                raise InvalidHandle("context is closed")
        return self._events.popleft()

    def alloc_pd(self) -> PD:
        """Allocate a protection domain."""
        self._check()
        if len(self.pds) >= self.device.limits.max_pd:
            raise ResourceExhausted("max_pd reached")
        pd = TcpPD(self)
        self.pds.add(pd)
        return pd

    def create_cq(self, cqe: int = 4096) -> CQ:
        """Create a completion queue."""
        self._check()
        check_cqe(cqe, self.device.limits.max_cqe)
        cq = TcpCQ(self, cqe)
        self.cqs.add(cq)
        return cq

    async def cm_listen(self, port: int, *, backlog: int = 64) -> CmListener:
        """Listen for CM requests on CM port ``port`` of this device (0 picks one)."""
        from ._cm import TcpCmListener

        self._check()
        device = self.device
        if not 0 <= port < 65536:
            raise InvalidArgument(f"CM port {port} outside 0..65535")
        if port == 0:
            port = next(p for p in itertools.count(49152) if p not in device.cm_listeners)
        if port in device.cm_listeners:
            raise AddressInUse(f"CM port {port} is already listened on at {device.address}")
        listener = TcpCmListener(self, port, backlog)
        device.cm_listeners[port] = listener
        self.cm_listeners.add(listener)
        return listener

    async def cm_connect(
        self,
        qp: QP,
        address: str,
        port: int,
        private_data: bytes = b"",
        *,
        timeout: float = 5.0,
    ) -> CmId:
        """Connect ``qp`` to the CM listener at ``(address, port)``."""
        from ._cm import cm_connect

        self._check()
        return await cm_connect(self, qp, address, port, private_data, timeout)

    def close(self) -> None:
        """Release the context and everything created through it. Idempotent."""
        if self._closed:
            return
        for cm_id in list(self.cm_ids):
            cm_id.close()
        for listener in list(self.cm_listeners):
            listener.close()
        for pd in list(self.pds):
            pd.close()
        for cq in list(self.cqs):
            cq.close()
        self._closed = True
        self._lot.unpark_all()
        self.device.context_closed(self)
