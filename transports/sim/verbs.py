"""The verbs objects of a simulated VF: device, context, PD, MR, CQ and QP.

They implement :mod:`rdsx.verbs` on top of the fabric. Every handle knows its
context; once the device is removed every call raises
:class:`~rdsx.errors.DeviceRemoved` (rdma-core's zombie objects), except
``close()``, which always succeeds so that cleanup paths never fail.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from rdsx.errors import (
    DeviceRemoved,
    InvalidArgument,
    InvalidHandle,
    InvalidState,
    QueueFull,
    ResourceExhausted,
)
from rdsx.verbs import (
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
    Device,
    DeviceAttr,
    PortAttr,
    PortState,
    QpAttr,
    QpCap,
    QpState,
    RecvWR,
    SendWR,
    WcOpcode,
    WcStatus,
    WorkCompletion,
    check_cqe,
    check_iova,
    check_modify,
    check_mr_buffer,
    check_qp_cap,
    check_recv_wrs,
    check_send_wrs,
)

from .fabric import QP_CREATE_SHARE
from .mailbox import Mailbox
from .rc import _ERR, _RESET, _RTR, _RTS, RcQp

_INIT = QpState.INIT

if TYPE_CHECKING:
    from .cm import CmAgent
    from .fabric import Fabric
    from .hca import Function
    from .packet import Packet
    from .vm import Vm

__all__ = ["SimCQ", "SimContext", "SimDevice", "SimMR", "SimPD", "SimQP"]

MAX_MSG = 1 << 31
LIMITS = DeviceAttr(
    node_guid=0,
    vendor="rdsx-sim",
    max_qp=1 << 17,
    max_qp_wr=16384,
    max_sge=32,
    max_cq=1 << 16,
    max_cqe=(1 << 22) - 1,
    max_mr=1 << 17,
    max_mr_size=1 << 40,
    max_pd=1 << 15,
)
IOVA_BASE = 0x7F00_0000_0000
PAGE = 4096
S = QpState


class SimDevice(Device):
    """One VF as its VM sees it.

    Attributes:
        name: ``"<host>/vf<n>"``.
        address: the VM's (node's) out-of-band address.
        function: the VF behind it.
        vm: the VM holding it.
        cm: its connection-manager agent.
    """

    def __init__(self, fabric: Fabric, function: Function, vm: Vm) -> None:
        from .cm import CmAgent

        self.fabric = fabric
        self.function = function
        self.vm = vm
        self.name = function.name
        self.address = vm.address
        self.contexts: dict[SimContext, None] = {}
        self.cm: CmAgent = CmAgent(self)
        #: Where its QPs' packets go: the fabric (an emulated device: its backend).
        self.egress: Callable[[Packet], None] = fabric.send_packet
        self._removed = False
        self._removal_pending = False
        self._released: trio.Event | None = None

    @property
    def removed(self) -> bool:
        """True once the device is gone (every handle is a zombie)."""
        return self._removed

    @property
    def removal_pending(self) -> bool:
        """True between a graceful removal notice and the removal (or its failure)."""
        return self._removal_pending

    @property
    def lid(self) -> int:
        """The LID the VF answers on (0 after removal)."""
        return 0 if self._removed else self.function.lid

    @property
    def guid(self) -> int:
        """The VF's vGUID."""
        return self.function.vguid

    @property
    def qp_setup_time(self) -> float:
        """Seconds one QP's setup takes on this device (``Fabric.qp_setup_time`` for a VF)."""
        return self.fabric.qp_setup_time

    @property
    def frozen(self) -> bool:
        """True while nothing can reach the device (an emulated device of a paused VM)."""
        return False

    def qp_type(self) -> type[SimQP]:
        """The class of the QPs ``create_qp`` makes here (a device kind may use its own)."""
        return SimQP

    async def open(self) -> SimContext:
        """Open a context (``ibv_open_device``).

        Raises:
            DeviceRemoved: the device is gone, or its removal is pending (as
                ``ib_unregister_device`` hides a device from new opens first).
        """
        await trio.lowlevel.checkpoint()
        if self._removed:
            raise DeviceRemoved(f"{self.name} was removed")
        if self._removal_pending:
            raise DeviceRemoved(f"{self.name} is being removed")
        ctx = SimContext(self)
        self.contexts[ctx] = None
        return ctx

    def announce_removal(self, deadline: float | None) -> trio.Event:
        """Tell every context and CM id the device is going; return the released event.

        From now until :meth:`removal_failed`, :meth:`open` refuses new contexts.
        """
        self._removal_pending = True
        self._released = trio.Event()
        for ctx in list(self.contexts):
            ctx.post_event(AsyncEvent(AsyncEventType.DEVICE_REMOVAL, deadline=deadline))
        self.cm.announce_removal()
        if not self.contexts:
            self._released.set()
        return self._released

    def removal_failed(self) -> None:
        """The removal ended in DeviceBusy: the device stays and opens again."""
        self._removal_pending = False

    def context_closed(self, ctx: SimContext) -> None:
        """Bookkeeping when a context closes."""
        self.contexts.pop(ctx, None)
        if not self.contexts and self._released is not None:
            self._released.set()

    def remove(self) -> None:
        """The device is gone: turn every handle into a zombie and wake every waiter."""
        if self._removed:
            return
        self._removed = True
        self.cm.removed()
        for ctx in list(self.contexts):
            ctx.zombify()

    def __repr__(self) -> str:
        return f"<SimDevice {self.name} of {self.address}>"


class _Handle:
    """Common checks: the device must be present, the object not closed."""

    _ctx: SimContext
    _closed: bool

    def _check(self) -> None:
        if self._ctx.device._removed:
            raise DeviceRemoved(f"{self._ctx.device.name} was removed")
        if self._closed:
            raise InvalidHandle(f"{type(self).__name__} is closed")


class SimContext(_Handle, Context):
    """An open context on a :class:`SimDevice`."""

    device: SimDevice

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.fabric = device.fabric
        self._ctx = self
        self._closed = False
        self._events: Mailbox[AsyncEvent] = Mailbox()
        self.pds: list[SimPD] = []
        self.cqs: list[SimCQ] = []
        self.listeners: list[CmListener] = []
        self.cm_ids: list[CmId] = []

    def query_device(self) -> DeviceAttr:
        """The device's limits; ``node_guid`` is the VF's vGUID."""
        self._check()
        return attrs.evolve(LIMITS, node_guid=self.device.guid)

    def query_port(self) -> PortAttr:
        """The port: its LID (``address`` is the LID as text), vGUID, MTU, link state."""
        self._check()
        host = self.device.function.host
        lid = self.device.function.lid
        return PortAttr(
            state=PortState.ACTIVE if host.link_is_up and not host.crashed else PortState.DOWN,
            lid=lid,
            address=str(lid),
            port_guid=self.device.guid,
            active_mtu=self.fabric.mtu,
            max_msg_sz=MAX_MSG,
        )

    def post_event(self, event: AsyncEvent) -> None:
        """Queue an async event for :meth:`get_async_event`."""
        if not self._closed:
            self._events.push(event)

    async def get_async_event(self) -> AsyncEvent:
        """Wait for the next async event.

        Raises:
            DeviceRemoved: the device is gone and every event was read.
            InvalidHandle: the context is closed.
        """
        return await self._events.get(self._check)

    def alloc_pd(self) -> SimPD:
        """Allocate a protection domain."""
        self._check()
        if len(self.pds) >= LIMITS.max_pd:
            raise ResourceExhausted("max_pd reached")
        pd = SimPD(self)
        self.pds.append(pd)
        return pd

    def create_cq(self, cqe: int = 4096) -> SimCQ:
        """Create a completion queue.

        Raises:
            InvalidArgument: ``cqe`` outside 1..max_cqe.
        """
        self._check()
        check_cqe(cqe, LIMITS.max_cqe)
        cq = SimCQ(self, cqe)
        self.cqs.append(cq)
        return cq

    async def cm_listen(self, port: int, *, backlog: int = 64) -> CmListener:
        """Listen on ``(device.address, port)`` (see :meth:`rdsx.verbs.Context.cm_listen`)."""
        await trio.lowlevel.checkpoint()
        self._check()
        listener = self.device.cm.listen(self, port, backlog)
        self.listeners.append(listener)
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
        """Connect ``qp`` to a listener (see :meth:`rdsx.verbs.Context.cm_connect`)."""
        self._check()
        if not isinstance(qp, SimQP) or qp._ctx is not self:
            raise InvalidArgument("the QP belongs to another context")
        return await self.device.cm.connect(self, qp, address, port, private_data, timeout)

    def close(self) -> None:
        """Release the context and everything created through it. Idempotent."""
        if self._closed:
            return
        for pd in list(self.pds):
            pd.close()
        for cq in list(self.cqs):
            cq.close()
        for cm_id in list(self.cm_ids):
            cm_id.close()
        for listener in list(self.listeners):
            listener.close()
        self._closed = True
        self._events.wake()
        self.device.context_closed(self)

    def zombify(self) -> None:
        """The device went away: free the fabric resources, wake every waiter."""
        for pd in self.pds:
            pd.zombify()
        for cq in self.cqs:
            cq.wake()
        self._events.wake()


class SimPD(_Handle, PD):
    """A protection domain."""

    def __init__(self, ctx: SimContext) -> None:
        self._ctx = ctx
        self._closed = False
        self.mrs: list[SimMR] = []
        self.qps: list[SimQP] = []
        self._next_iova = IOVA_BASE

    def reg_mr(
        self, buffer: bytearray | memoryview, access: Access, *, iova: int | None = None
    ) -> SimMR:
        """Register ``buffer`` (see :meth:`rdsx.verbs.PD.reg_mr`)."""
        self._check()
        view = check_mr_buffer(buffer, access)
        if len(self.mrs) >= LIMITS.max_mr:
            raise ResourceExhausted("max_mr reached")
        length = len(view)
        if iova is None:
            iova = self._next_iova
        else:
            check_iova(iova, length, self.mrs)
        self._next_iova = max(self._next_iova, -(-(iova + length) // PAGE) * PAGE + PAGE)
        space = self._ctx.device.function.space
        key = space.alloc_key()
        mr = SimMR(self, iova, view, access, key)
        space.mrs[key] = mr
        self.mrs.append(mr)
        return mr

    def create_qp(
        self, send_cq: CQ, recv_cq: CQ, cap: QpCap | None = None, *, sq_sig_all: bool = False
    ) -> SimQP:
        """Create an RC QP in RESET (see :meth:`rdsx.verbs.PD.create_qp`)."""
        self._check()
        cap = cap or QpCap()
        for cq in (send_cq, recv_cq):
            if not isinstance(cq, SimCQ) or cq._ctx is not self._ctx:
                raise InvalidArgument("the CQ belongs to another context")
            cq._check()
        check_qp_cap(cap, LIMITS.max_qp_wr, LIMITS.max_sge)
        function = self._ctx.device.function
        qp_num = function.space.alloc_qpn()
        assert isinstance(send_cq, SimCQ) and isinstance(recv_cq, SimCQ)
        device = self._ctx.device
        qp = device.qp_type()(self, send_cq, recv_cq, cap, qp_num, sq_sig_all)
        # The HCA's firmware works on it from now on; the CM waits for it when it
        # connects or accepts with this QP, so one made ahead costs nothing then.
        qp.ready_at = trio.current_time() + device.qp_setup_time * QP_CREATE_SHARE
        function.space.qps[qp_num] = qp
        self.qps.append(qp)
        return qp

    def close(self) -> None:
        """Deallocate the PD with its MRs and QPs. Idempotent."""
        if self._closed:
            return
        for qp in list(self.qps):
            qp.close()
        for mr in list(self.mrs):
            if not mr._closed:
                mr.close()
        self._closed = True
        if self in self._ctx.pds:
            self._ctx.pds.remove(self)

    def zombify(self) -> None:
        """Free the PD's QPNs and keys on the fabric (the device is gone)."""
        for qp in self.qps:
            qp.detach_from_fabric()
        space = self._ctx.device.function.space
        for mr in self.mrs:
            space.mrs.pop(mr.lkey, None)


class SimMR(_Handle, MR):
    """A registered memory region; ``lkey == rkey`` as on mlx4."""

    def __init__(self, pd: SimPD, addr: int, buffer: memoryview, access: Access, key: int) -> None:
        self._ctx = pd._ctx
        self._closed = False
        self.pd = pd
        self.addr = addr
        self.length = len(buffer)
        self.buffer = buffer
        self.access = access
        self.local_write = Access.LOCAL_WRITE in access
        self.remote_write = Access.REMOTE_WRITE in access
        self.remote_read = Access.REMOTE_READ in access
        self.lkey = key
        self.rkey = key

    def close(self) -> None:
        """Deregister; the keys stop working at once.

        Raises:
            InvalidHandle: deregistered twice (while the device is present).
        """
        if self._closed:
            if self._ctx.device._removed:
                return
            raise InvalidHandle("MR deregistered twice")
        self._closed = True
        space = self._ctx.device.function.space
        if space.mrs.get(self.lkey) is self:
            del space.mrs[self.lkey]
        if self in self.pd.mrs:
            self.pd.mrs.remove(self)


class SimCQ(_Handle, CQ):
    """A completion queue: QPs append, waiters park on one ParkingLot."""

    def __init__(self, ctx: SimContext, cqe: int) -> None:
        self._ctx = ctx
        self._closed = False
        self.cqe = cqe
        #: ``cqe``, or 0 once overrun (every later completion is lost).
        self._limit = cqe
        self._entries: deque[WorkCompletion] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._waiters = 0

    def push(self, wc: WorkCompletion) -> None:
        """Append a completion and wake the waiters."""
        if len(self._entries) >= self._limit:
            self._overrun(wc)
            return
        self._entries.append(wc)
        # A woken waiter counts until it runs: the lot's own length says if anyone parks.
        if self._waiters and self._lot:
            self._lot.unpark_all()

    def _overrun(self, wc: WorkCompletion) -> None:
        """A CQ overrun (see :meth:`rdsx.verbs.Context.create_cq`): ``wc`` is lost."""
        ctx = self._ctx
        if self._limit:
            self._limit = 0
            ctx.post_event(
                AsyncEvent(AsyncEventType.CQ_ERR, info=f"CQ of {self.cqe} entries overrun")
            )
        qp = ctx.device.function.space.qps.get(wc.qp_num)
        if isinstance(qp, SimQP) and qp._ctx is ctx and qp._state is not _ERR:
            # Not from inside the QP's own processing that produced ``wc``.
            ctx.fabric.call_at(ctx.fabric.now(), lambda: _fail_overrun(qp))

    def wake(self) -> None:
        """Wake waiters so they notice removal or closing."""
        self._lot.unpark_all()

    def poll(self, max_entries: int = 64) -> list[WorkCompletion]:
        """Up to ``max_entries`` completions, without waiting."""
        self._check()
        entries = self._entries
        if len(entries) <= max_entries:
            out = list(entries)
            entries.clear()
            return out
        return [entries.popleft() for _ in range(max_entries)]

    async def wait(self, max_entries: int = 64) -> list[WorkCompletion]:
        """Wait for at least one completion, then return up to ``max_entries``.

        Raises:
            DeviceRemoved: the device went away while waiting.
        """
        if self._entries:
            await trio.lowlevel.checkpoint()
        while not self._entries:
            self._check()
            self._waiters += 1
            try:
                await self._lot.park()
            finally:
                self._waiters -= 1
        return self.poll(max_entries)

    def close(self) -> None:
        """Destroy the CQ. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.wake()
        if self in self._ctx.cqs:
            self._ctx.cqs.remove(self)


class SimQP(_Handle, RcQp, QP):
    """An RC queue pair: the verbs surface over :class:`~.rc.RcQp`."""

    def __init__(
        self,
        pd: SimPD,
        send_cq: SimCQ,
        recv_cq: SimCQ,
        cap: QpCap,
        qp_num: int,
        sq_sig_all: bool,
    ) -> None:
        ctx = pd._ctx
        self._ctx = ctx
        self._closed = False
        self.cap = cap
        #: When its creation (and INIT) is done, in trio time (``Fabric.qp_setup_time``).
        self.ready_at = 0.0
        RcQp.__init__(
            self, ctx.fabric, ctx, pd, send_cq, recv_cq, ctx.device.function, qp_num, sq_sig_all
        )
        self.egress = ctx.device.egress

    @property
    def state(self) -> QpState:
        """The current state."""
        self._check()
        return self._state

    @property
    def sq_draining(self) -> bool:
        """True while in SQD with sends outstanding."""
        self._check()
        return self.draining

    def modify(self, attr: QpAttr) -> None:
        """Move to ``attr.state`` (see :meth:`rdsx.verbs.QP.modify`).

        SQD -> RTS and a path change (SQD -> SQD with ``dest``) are refused
        while the send queue is still draining. ``SQ_DRAINED`` is raised unless
        ``en_sqd_async_notify=False`` was given.
        """
        self._check()
        current = self._state
        check_modify(current, attr)
        target = attr.state
        if current is S.SQD and self.draining and (target is S.RTS or attr.dest is not None):
            raise InvalidState("the send queue is still draining")
        if target is S.RESET:
            self._reset_protocol()
            self._state = S.RESET
            self.fabric.record("qp", self.name, f"{current.name}->RESET")
            return
        if attr.access_flags is not None:
            self.set_access(attr.access_flags)
        if attr.dest is not None:
            try:
                self.dest_lid = int(attr.dest.port_address)
            except ValueError:
                raise InvalidArgument(
                    f"not a sim port address: {attr.dest.port_address!r}"
                ) from None
            self.dest_qpn = attr.dest.qpn
        if attr.path_mtu is not None:
            self.mtu = min(attr.path_mtu, self.fabric.mtu)
        if attr.rq_psn is not None:
            self.epsn = attr.rq_psn
        if attr.sq_psn is not None:
            self.next_psn = self.una = self.snd_nxt = attr.sq_psn
        if attr.min_rnr_timer is not None:
            self.min_rnr_timer = attr.min_rnr_timer
        if attr.timeout is not None:
            self.timeout = attr.timeout
        if attr.retry_cnt is not None:
            self.retry_cnt = self.retry_left = attr.retry_cnt
        if attr.rnr_retry is not None:
            self.rnr_retry = self.rnr_left = attr.rnr_retry
        if attr.en_sqd_async_notify is not None:
            self.notify_drain = attr.en_sqd_async_notify
        if current is not target:
            self.fabric.record("qp", self.name, f"{current.name}->{target.name}")
        if target is S.ERR:
            if current is not S.ERR:
                self._to_err()
            return
        self._state = target
        if target is S.SQD and current is S.RTS:
            # WRs posted before the transition belong to the drain even if the
            # pump has not started them yet (under the real clock it would have).
            self.drain_quota = len(self.sq_pending)
            if self.sq or self.drain_quota:
                self.draining = True
                if self.drain_quota:
                    self.fabric.ready(self)
            else:
                self._drained()
        elif target is S.RTS and self.sq_pending:
            self.fabric.ready(self)

    def post_send(self, wrs: SendWR | Sequence[SendWR]) -> None:
        """Post send WRs (see :meth:`rdsx.verbs.QP.post_send`)."""
        self._check()
        if isinstance(wrs, SendWR):
            wrs = (wrs,)
        state = self._state
        if state is _RESET or state is _INIT or state is _RTR:
            raise InvalidState(f"post_send in {state.name}")
        cap = self.cap
        check_send_wrs(wrs, cap.max_send_sge, MAX_MSG)
        if len(self.sq) + len(self.sq_pending) + len(wrs) > cap.max_send_wr:
            raise QueueFull(f"more than max_send_wr={cap.max_send_wr} outstanding")
        if state is _ERR:
            for wr in wrs:
                self._flush_send(wr)
            return
        self.sq_pending.extend(wrs)
        if state is _RTS:
            self.fabric.ready(self)

    def post_recv(self, wrs: RecvWR | Sequence[RecvWR]) -> None:
        """Post receive WRs (see :meth:`rdsx.verbs.QP.post_recv`)."""
        self._check()
        if isinstance(wrs, RecvWR):
            wrs = (wrs,)
        if self._state is _RESET:
            raise InvalidState("post_recv in RESET")
        cap = self.cap
        check_recv_wrs(wrs, cap.max_recv_sge)
        if len(self.rq) + len(wrs) > cap.max_recv_wr:
            raise QueueFull(f"more than max_recv_wr={cap.max_recv_wr} outstanding")
        if self._state is _ERR:
            for wr in wrs:
                self.recv_cq.push(
                    WorkCompletion(wr.wr_id, WcStatus.WR_FLUSH_ERR, WcOpcode.RECV, 0, self.qp_num)
                )
            return
        self.rq.extend(wrs)

    def detach_from_fabric(self) -> None:
        """Stop answering on the fabric (the QPN is free again); no completions."""
        space = self.function.space
        if space.qps.get(self.qp_num) is self:
            del space.qps[self.qp_num]
        self._state = S.RESET
        self.sq.clear()
        self.sq_pending.clear()
        self.rq.clear()

    def close(self) -> None:
        """Destroy the QP; outstanding WRs are discarded without completions."""
        if self._closed:
            return
        self.detach_from_fabric()
        self._closed = True
        if self in self.pd.qps:
            self.pd.qps.remove(self)


def _fail_overrun(qp: SimQP) -> None:
    """Move ``qp`` to ERR for a completion its CQ lost (QP_FATAL)."""
    if qp._closed or qp._state is _ERR or qp._ctx.device.removed:
        return
    message = "CQ overrun: a completion was lost"
    qp._to_err(message=message)
    qp._ctx.post_event(AsyncEvent(AsyncEventType.QP_FATAL, qp_num=qp.qp_num, info=message))
