"""Virtual context, PD, MR and CQ: handles that outlive the physical ones under them.

Each virtual object holds its current physical twin (``None`` while the node
has no device) and knows how to make a new one on the next device:
:meth:`VirtualContext.attach` re-creates, in dependency order, the context, its
PDs and MRs (at the same iova, so addresses in SGEs and RDMA stay valid), its
CQs (each with a poller task that feeds the session's dispatcher) and the QPs
that have no peer to reconnect to. :meth:`VirtualContext.detach` lets go of all
of them at once, which is what lets a graceful removal succeed (problem 1).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import TYPE_CHECKING

import trio

from ..errors import DeviceRemoved, InvalidArgument, InvalidHandle, VerbsError
from ..verbs import (
    CQ,
    MR,
    PD,
    QP,
    Access,
    AsyncEvent,
    AsyncEventType,
    CmId,
    CmListener,
    Context,
    DeviceAttr,
    PortAttr,
    QpAttr,
    QpCap,
    QpState,
    WorkCompletion,
    check_cqe,
    check_iova,
    check_mr_buffer,
    check_qp_cap,
)
from .qp import VirtualQP

if TYPE_CHECKING:
    from .cm import VirtualCmListener
    from .core import Core
    from .device import VirtualDevice
    from .recovery import Session

__all__ = ["VirtualCQ", "VirtualContext", "VirtualMR", "VirtualPD"]

log = logging.getLogger("rdsx.shim")

#: Where the shim places MRs registered while the node has no device.
_IOVA_ALIGN = 4096


def _close_quietly(resource: Context | PD | MR | CQ | QP | CmId | CmListener | None) -> None:
    if resource is None:
        return
    with contextlib.suppress(VerbsError):
        resource.close()


class VirtualContext(Context):
    """A context on the virtual device; see :class:`rdsx.verbs.Context`.

    Its ``get_async_event`` never reports ``DEVICE_REMOVAL``: the shim handles
    removals. It reports ``QP_FATAL`` (with the virtual QPN and the reason) when
    a peer could not be resumed.
    """

    def __init__(self, core: Core, device: VirtualDevice) -> None:
        self.core = core
        self.device = device
        self.session: Session | None = None
        self._phys: Context | None = None
        self._pds: list[VirtualPD] = []
        self._cqs: list[VirtualCQ] = []
        self._qps: list[VirtualQP] = []
        self.listeners: list[VirtualCmListener] = []
        self._events: collections.deque[AsyncEvent] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    @property
    def port_attr(self) -> PortAttr:
        """The virtual port: the first device's locator, always ACTIVE."""
        return self.core.port_attr

    @property
    def physical(self) -> Context | None:
        """The physical context currently under this one."""
        return self._phys

    def mrs(self) -> list[VirtualMR]:
        """Every live virtual MR of this context."""
        return [mr for pd in self._pds for mr in pd.mrs]

    @property
    def qps(self) -> list[VirtualQP]:
        """The live virtual QPs of this context."""
        return list(self._qps)

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidHandle("context is closed")

    def query_device(self) -> DeviceAttr:
        """The first device's attributes (stable for the node's lifetime)."""
        self._check_open()
        return self.core.device_attr

    def query_port(self) -> PortAttr:
        """The virtual port (see :attr:`port_attr`)."""
        self._check_open()
        return self.port_attr

    async def get_async_event(self) -> AsyncEvent:
        """Wait for the next event the layer above should see.

        Raises:
            InvalidHandle: the context was closed.
        """
        while not self._events:
            self._check_open()
            await self._lot.park()
        return self._events.popleft()

    def push_event(self, event: AsyncEvent) -> None:
        """Queue ``event`` for :meth:`get_async_event`."""
        self._events.append(event)
        self._lot.unpark_all()

    def alloc_pd(self) -> VirtualPD:
        """Allocate a virtual PD (and its physical twin if a device is present)."""
        self._check_open()
        pd = VirtualPD(self)
        self._pds.append(pd)
        return pd

    def create_cq(self, cqe: int = 4096) -> VirtualCQ:
        """Create a virtual CQ.

        Raises:
            InvalidArgument: ``cqe`` < 1 or above ``max_cqe``.
        """
        self._check_open()
        check_cqe(cqe, self.core.device_attr.max_cqe)
        cq = VirtualCQ(self, cqe)
        self._cqs.append(cq)
        return cq

    async def cm_listen(self, port: int, *, backlog: int = 64) -> VirtualCmListener:
        """Listen on ``(device.address, port)``, on this and every later device.

        Raises:
            AddressInUse: another listener holds that port on this node.
        """
        from .cm import listen

        self._check_open()
        return await listen(self, port, backlog)

    async def cm_connect(
        self,
        qp: QP,
        address: str,
        port: int,
        private_data: bytes = b"",
        *,
        timeout: float = 5.0,
    ) -> CmId:
        """Connect ``qp`` through the CM; the connection survives migrations.

        Raises:
            ConnectionRejected, Unreachable, ConnectTimeout, InvalidState:
                as :meth:`rdsx.verbs.Context.cm_connect`.
            InvalidArgument: as there, but the limit is
                :data:`~rdsx.shim.PRIVATE_DATA_MAX` (176) bytes of private data:
                the shim keeps 20 of the CM's 196 for its own header.
        """
        from .cm import connect

        self._check_open()
        if not isinstance(qp, VirtualQP) or qp._ctx is not self:
            raise InvalidArgument("cm_connect needs a QP of this (virtual) context")
        return await connect(self, qp, address, port, private_data, timeout)

    def close(self) -> None:
        """Close the context and everything in it. Idempotent."""
        if self._closed:
            return
        for qp in list(self._qps):
            if qp.cm_id is not None:
                qp.cm_id.close()  # first, so the peer hears of the end (its DISCONNECTED)
            qp.close()
        for listener in list(self.listeners):
            listener.close()
        for pd in list(self._pds):
            pd.close()
        for cq in list(self._cqs):
            cq.close()
        self._closed = True
        self._phys = None
        self.session = None
        self.core.forget_context(self)
        self._lot.unpark_all()

    # ------------------------------------------------------------------ shim side

    def device_gone(self) -> None:
        """A call on the physical device found it gone: a surprise removal."""
        if self.session is not None:
            self.session.report_removal(None)

    def forget_qp(self, qp: VirtualQP) -> None:
        """``qp`` was destroyed."""
        if qp in self._qps:
            self._qps.remove(qp)
        for pd in self._pds:
            if qp in pd.qps:
                pd.qps.remove(qp)

    def add_qp(self, qp: VirtualQP) -> None:
        """Track a new virtual QP."""
        self._qps.append(qp)

    async def attach(self, session: Session) -> None:
        """Re-create every physical object of this context on ``session``'s device."""
        if self.session is session or self._closed:
            return
        # One physical context per device for the whole node: the control
        # listener accepts reconnects with QPs of any virtual context.
        phys = session.ctrl
        assert phys is not None
        self._phys = phys
        for pd in self._pds:
            pd.attach(phys)
        for cq in self._cqs:
            cq.attach(session, phys)
        self.session = session
        for listener in list(self.listeners):
            await listener.attach(session, phys)
        for qp in self._qps:
            if qp.peer is None:
                qp.attach_unconnected(session)

    def detach(self) -> None:
        """Let go of every physical object (the device is going or gone)."""
        for qp in self._qps:
            qp.detach()
        for listener in self.listeners:
            listener.detach()
        for cq in self._cqs:
            cq.detach()
        for pd in self._pds:
            pd.detach()
        self._phys = None
        self.session = None


class VirtualPD(PD):
    """A virtual protection domain; see :class:`rdsx.verbs.PD`."""

    def __init__(self, ctx: VirtualContext) -> None:
        self.ctx = ctx
        self.physical: PD | None = None
        self.mrs: list[VirtualMR] = []
        self.qps: list[VirtualQP] = []
        self._closed = False
        if ctx.physical is not None:
            try:
                self.physical = ctx.physical.alloc_pd()
            except DeviceRemoved:
                ctx.device_gone()  # made on the next device, like everything else

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidHandle("PD is deallocated")

    def reg_mr(
        self, buffer: bytearray | memoryview, access: Access, *, iova: int | None = None
    ) -> VirtualMR:
        """Register ``buffer``; its virtual keys and iova stay valid across migrations.

        Raises:
            InvalidArgument, ResourceExhausted: as :meth:`rdsx.verbs.PD.reg_mr`.
        """
        self._check_open()
        mr = VirtualMR(self, buffer, access, iova)
        self.mrs.append(mr)
        return mr

    def create_qp(
        self, send_cq: CQ, recv_cq: CQ, cap: QpCap | None = None, *, sq_sig_all: bool = False
    ) -> VirtualQP:
        """Create a virtual RC QP in RESET.

        Raises:
            InvalidArgument: a capacity outside the device limits, a CQ of another context.
        """
        self._check_open()
        for cq in (send_cq, recv_cq):
            if not isinstance(cq, VirtualCQ) or cq.ctx is not self.ctx:
                raise InvalidArgument("the CQs must belong to this (virtual) context")
            cq.check_open()
        assert isinstance(send_cq, VirtualCQ) and isinstance(recv_cq, VirtualCQ)
        cap = cap if cap is not None else QpCap()
        limits = self.ctx.core.device_attr
        check_qp_cap(cap, limits.max_qp_wr, limits.max_sge)
        qp = VirtualQP(self.ctx, self, send_cq, recv_cq, cap, sq_sig_all)
        self.qps.append(qp)
        self.ctx.add_qp(qp)
        return qp

    def close(self) -> None:
        """Deallocate the PD and every MR and QP in it. Idempotent."""
        if self._closed:
            return
        for qp in list(self.qps):
            qp.close()
        for mr in list(self.mrs):
            mr.close()
        self._closed = True
        _close_quietly(self.physical)
        self.physical = None
        if self in self.ctx._pds:
            self.ctx._pds.remove(self)

    def next_iova(self, length: int) -> int:
        """An iova past every MR of this PD, for an MR registered with no device."""
        end = max((mr.addr + mr.length for mr in self.mrs), default=1 << 20)
        return (end + _IOVA_ALIGN - 1) // _IOVA_ALIGN * _IOVA_ALIGN + _IOVA_ALIGN

    def attach(self, phys_ctx: Context) -> None:
        """Allocate the physical PD and re-register every MR at its old iova."""
        self.physical = phys_ctx.alloc_pd()
        for mr in self.mrs:
            mr.attach(self.physical)

    def detach(self) -> None:
        """Forget the physical PD and MRs."""
        for mr in self.mrs:
            mr.physical = None
        self.physical = None


class VirtualMR(MR):
    """A virtual memory region: stable ``lkey``/``rkey``/``addr``; see :class:`rdsx.verbs.MR`."""

    def __init__(
        self, pd: VirtualPD, buffer: bytearray | memoryview, access: Access, iova: int | None
    ) -> None:
        self.pd = pd
        # Checked here too: with no device under the shim there is no physical reg_mr to refuse.
        self.buffer = check_mr_buffer(buffer, access)
        self.length = len(self.buffer)
        self.access = access
        self.physical: MR | None = None
        self._closed = False
        core = pd.ctx.core
        if pd.physical is not None:
            try:
                self.physical = pd.physical.reg_mr(buffer, access, iova=iova)
            except DeviceRemoved:
                pd.ctx.device_gone()
        if self.physical is not None:
            self.addr = self.physical.addr
            prefer_l: int | None = self.physical.lkey
            prefer_r: int | None = self.physical.rkey
        else:
            if iova is None:
                iova = pd.next_iova(self.length)
            else:
                check_iova(iova, self.length, pd.mrs)
            self.addr = iova
            prefer_l = prefer_r = None
        self.lkey = core.lkeys.allocate(self, prefer_l)
        self.rkey = core.rkeys.allocate(self, prefer_r)
        if self.physical is not None and self.rkey != self.physical.rkey:
            core.rkey_moved(self.rkey, self.physical.rkey)

    def attach(self, phys_pd: PD) -> None:
        """Register the same buffer on the new device at the same iova."""
        self.physical = phys_pd.reg_mr(self.buffer, self.access, iova=self.addr)

    def close(self) -> None:
        """Deregister.

        Raises:
            InvalidHandle: deregistered twice.
        """
        if self._closed:
            raise InvalidHandle("MR deregistered twice")
        self._closed = True
        core = self.pd.ctx.core
        core.lkeys.release(self.lkey)
        core.rkeys.release(self.rkey)
        _close_quietly(self.physical)
        self.physical = None
        if self in self.pd.mrs:
            self.pd.mrs.remove(self)


class VirtualCQ(CQ):
    """A virtual completion queue fed by the shim, never by the device directly."""

    def __init__(self, ctx: VirtualContext, cqe: int) -> None:
        self.ctx = ctx
        self.cqe = cqe
        #: ``cqe``, or 0 once overrun (every later completion is lost).
        self._limit = cqe
        self._ready: collections.deque[WorkCompletion] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._phys: CQ | None = None
        self._session: Session | None = None
        self._closed = False
        if ctx.session is not None and ctx.physical is not None:
            try:
                self.attach(ctx.session, ctx.physical)
            except DeviceRemoved:
                self._phys = None
                ctx.device_gone()

    def check_open(self) -> None:
        """Raise InvalidHandle if destroyed."""
        if self._closed:
            raise InvalidHandle("CQ is destroyed")

    @property
    def has_physical(self) -> bool:
        """Whether a physical CQ is under this one right now."""
        return self._phys is not None

    def physical_cq(self) -> CQ:
        """The physical CQ under this one (the node must have a device)."""
        assert self._phys is not None
        return self._phys

    def poll(self, max_entries: int = 64) -> list[WorkCompletion]:
        """Return up to ``max_entries`` completions without waiting."""
        self.check_open()
        self.drain_now()
        out: list[WorkCompletion] = []
        while self._ready and len(out) < max_entries:
            out.append(self._ready.popleft())
        return out

    async def wait(self, max_entries: int = 64) -> list[WorkCompletion]:
        """Wait for at least one completion; a migration is only a longer wait.

        Raises:
            InvalidHandle: the CQ was destroyed.
        """
        if self._ready:
            # A checkpoint like every trio wait: a reader looping over a backlog (the
            # held messages after a migration) lets the tasks it feeds run between
            # batches, so the first message is delivered before the last is read.
            await trio.lowlevel.checkpoint()
        while not self._ready:
            self.check_open()
            await self._lot.park()
        return self.poll(max_entries)

    def close(self) -> None:
        """Destroy the CQ. Idempotent."""
        if self._closed:
            return
        self._closed = True
        _close_quietly(self._phys)
        self._phys = None
        if self in self.ctx._cqs:
            self.ctx._cqs.remove(self)
        self._lot.unpark_all()

    # ------------------------------------------------------------------ shim side

    def push(self, wc: WorkCompletion) -> None:
        """Deliver one virtual completion upward (lost if it overruns the CQ)."""
        if len(self._ready) >= self._limit:
            self._overrun(wc)
            return
        self._ready.append(wc)
        self._lot.unpark_all()

    def _overrun(self, wc: WorkCompletion) -> None:
        """A CQ overrun, as the verbs contract has it: CQ_ERR, and the QP goes to ERR."""
        ctx = self.ctx
        if self._limit:
            self._limit = 0
            ctx.push_event(
                AsyncEvent(AsyncEventType.CQ_ERR, info=f"CQ of {self.cqe} entries overrun")
            )
        session = ctx.session
        qp = next((qp for qp in ctx.qps if qp.qp_num == wc.qp_num), None)
        if qp is not None and session is not None and qp.state is not QpState.ERR:
            session.spawn(_fail_overrun, qp)

    def drain_now(self) -> None:
        """Dispatch every completion already in the physical CQ, without waiting."""
        phys, session = self._phys, self._session
        if phys is None or session is None:
            return
        while True:
            try:
                batch = phys.poll(256)
            except VerbsError:
                return
            if not batch:
                return
            session.dispatch(batch)

    def attach(self, session: Session, phys_ctx: Context) -> None:
        """Create the physical CQ on the new device and start its poller."""
        # Roomier than the virtual CQ: the poller moves completions up, and the virtual CQ
        # enforces ``cqe``; a burst between two polls must not overrun the physical one.
        room = min(phys_ctx.query_device().max_cqe, max(2 * self.cqe, 4096))
        self._phys = phys_ctx.create_cq(room)
        self._session = session
        session.spawn(session.poll_cq, self._phys)

    def detach(self) -> None:
        """Forget the physical CQ."""
        self._phys = None
        self._session = None


async def _fail_overrun(qp: VirtualQP) -> None:
    """Move ``qp`` to ERR for a completion its CQ lost (QP_FATAL), outside the dispatch."""
    await trio.lowlevel.checkpoint()
    with contextlib.suppress(VerbsError):
        if qp.state is not QpState.ERR:
            qp.modify(QpAttr(state=QpState.ERR))
            qp._ctx.push_event(
                AsyncEvent(AsyncEventType.QP_FATAL, qp_num=qp.qp_num, info="CQ overrun")
            )
