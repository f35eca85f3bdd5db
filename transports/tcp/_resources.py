"""Protection domains, memory regions and completion queues of the tcp transport."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from rdsx.errors import DeviceRemoved, InvalidArgument, InvalidHandle, ResourceExhausted
from rdsx.verbs import (
    CQ,
    MR,
    PD,
    QP,
    Access,
    AsyncEventType,
    QpCap,
    QpState,
    WorkCompletion,
    check_iova,
    check_mr_buffer,
    check_qp_cap,
)

if TYPE_CHECKING:
    from ._context import TcpContext
    from ._qp import TcpQP

__all__ = ["TcpCQ", "TcpMR", "TcpPD"]


class _Handle:
    """What every handle shares: a context, a closed flag, and the zombie check."""

    _ctx: TcpContext
    _closed: bool

    def _check(self) -> None:
        if self._ctx.device._removed:  # the attribute, not the property: once per verb call
            raise DeviceRemoved(f"{self._ctx.device.name} was removed")
        if self._closed:
            raise InvalidHandle(f"{type(self).__name__} is closed")


class TcpMR(_Handle, MR):
    """A registered region: ``lkey == rkey``, random per device so stale keys miss."""

    def __init__(self, pd: TcpPD, buffer: memoryview, access: Access, addr: int, key: int) -> None:
        self._ctx = pd._ctx
        self._closed = False
        self.pd = pd
        self.buffer = buffer
        self.access = access
        # Flag membership tests are slow; the data path reads these instead.
        self.local_write = Access.LOCAL_WRITE in access
        self.remote_write = Access.REMOTE_WRITE in access
        self.remote_read = Access.REMOTE_READ in access
        self.addr = addr
        self.length = len(buffer)
        self.lkey = self.rkey = key

    def offset(self, addr: int, length: int) -> int | None:
        """Return where ``[addr, addr+length)`` starts in the buffer, or None if outside."""
        start = addr - self.addr
        if start < 0 or length < 0 or start + length > self.length:
            return None
        return start

    def close(self) -> None:
        """Deregister; the keys stop working at once.

        Raises:
            InvalidHandle: deregistered twice.
        """
        self._check()
        self._release()

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            self._ctx.device.mrs.pop(self.lkey, None)
            self.pd.mrs.discard(self)


class TcpPD(_Handle, PD):
    """A protection domain: MRs and QPs reference each other only within one PD."""

    def __init__(self, ctx: TcpContext) -> None:
        self._ctx = ctx
        self._closed = False
        self.mrs: set[TcpMR] = set()
        self.qps: set[QP] = set()

    def reg_mr(
        self, buffer: bytearray | memoryview, access: Access, *, iova: int | None = None
    ) -> MR:
        """Register ``buffer`` (see :meth:`rdsx.verbs.PD.reg_mr`)."""
        self._check()
        view = check_mr_buffer(buffer, access)
        device = self._ctx.device
        if len(device.mrs) >= device.limits.max_mr:
            raise ResourceExhausted("max_mr reached")
        if iova is None:
            iova = device.allocate_iova(len(view))
        else:
            check_iova(iova, len(view), self.mrs)
        mr = TcpMR(self, view, access, iova, device.allocate_key())
        device.mrs[mr.lkey] = mr
        self.mrs.add(mr)
        return mr

    def create_qp(
        self, send_cq: CQ, recv_cq: CQ, cap: QpCap | None = None, *, sq_sig_all: bool = False
    ) -> QP:
        """Create an RC QP in RESET (see :meth:`rdsx.verbs.PD.create_qp`)."""
        from ._qp import TcpQP

        self._check()
        cap = cap or QpCap()
        for cq in (send_cq, recv_cq):
            if not isinstance(cq, TcpCQ) or cq._ctx is not self._ctx:
                raise InvalidArgument("the CQ belongs to another context")
            cq._check()
        limits = self._ctx.device.limits
        check_qp_cap(cap, limits.max_qp_wr, limits.max_sge)
        assert isinstance(send_cq, TcpCQ) and isinstance(recv_cq, TcpCQ)
        qp = TcpQP(self, send_cq, recv_cq, cap, sq_sig_all)
        self.qps.add(qp)
        return qp

    def close(self) -> None:
        """Deallocate the PD with every MR and QP in it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        for qp in list(self.qps):
            qp.close()
        for mr in list(self.mrs):
            mr._release()
        self._ctx.pds.discard(self)


class TcpCQ(_Handle, CQ):
    """A completion queue: a deque and a parking lot for waiters."""

    def __init__(self, ctx: TcpContext, cqe: int) -> None:
        self._ctx = ctx
        self._closed = False
        self.cqe = cqe
        #: ``cqe``, or 0 once overrun (every later completion is lost).
        self._limit = cqe
        self._entries: deque[WorkCompletion] = deque()
        self._lot = trio.lowlevel.ParkingLot()

    def push(self, wc: WorkCompletion) -> None:
        """Add a completion (transport side) and wake a waiter."""
        if not self._closed:
            if len(self._entries) >= self._limit:
                self._overrun(wc)
                return
            self._entries.append(wc)
            if self._lot:
                self._lot.unpark_all()

    def push_many(self, wcs: list[WorkCompletion]) -> None:
        """Add a batch of completions in order and wake a waiter once."""
        if not self._closed:
            entries = self._entries
            if len(entries) + len(wcs) > self._limit:
                for wc in wcs:
                    self.push(wc)
                return
            entries += wcs
            if self._lot:
                self._lot.unpark_all()

    def _overrun(self, wc: WorkCompletion) -> None:
        """A CQ overrun (see :meth:`rdsx.verbs.Context.create_cq`): ``wc`` is lost."""
        ctx = self._ctx
        if self._limit:
            self._limit = 0
            ctx.post_event(AsyncEventType.CQ_ERR, info=f"CQ of {self.cqe} entries overrun")
        qp = ctx.device.qps.get(wc.qp_num)
        if qp is not None and qp._ctx is ctx and qp._state is not QpState.ERR:
            ctx.device.spawn(_fail_overrun, qp)

    def wake(self) -> None:
        """Wake every waiter so it rechecks the device (removal)."""
        self._lot.unpark_all()

    def poll(self, max_entries: int = 64) -> list[WorkCompletion]:
        """Return up to ``max_entries`` completions without waiting."""
        self._check()
        entries = self._entries
        count = min(max_entries, len(entries))
        return [entries.popleft() for _ in range(count)]

    async def wait(self, max_entries: int = 64) -> list[WorkCompletion]:
        """Wait for at least one completion (see :meth:`rdsx.verbs.CQ.wait`)."""
        self._check()
        while not self._entries:
            await self._lot.park()
            self._check()
        return self.poll(max_entries)

    def close(self) -> None:
        """Destroy the CQ. Idempotent."""
        if not self._closed:
            self._closed = True
            self._entries.clear()
            self._lot.unpark_all()
            self._ctx.cqs.discard(self)


async def _fail_overrun(qp: TcpQP) -> None:
    """Move ``qp`` to ERR for a lost completion, outside the push that lost it."""
    await trio.lowlevel.checkpoint()
    if not qp._closed and qp._state is not QpState.ERR:
        qp._enter_error("CQ overrun: a completion was lost")
