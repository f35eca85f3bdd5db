"""One physical device's life under the shim: rebuild, serve, quiesce, release.

A :class:`Session` is everything tied to one physical device. Its tasks (CQ
pollers, event pumps, CM pumps, the control server, reconnects, watchdogs) all
live in one nursery, so releasing the device is: cancel that nursery, then
close every physical handle; nothing of the old device survives that.

Graceful removal (``DEVICE_REMOVAL`` with a deadline), for each virtual QP at
once and within ``drain_share`` of the grace window:

1. hold new posts in the shim;
2. move the physical QP to SQD (problem 3: our sends drain);
3. ask the peer's shim to ``SUSPEND`` (problem 4: it drains its own sends
   towards us and holds, so its QP neither errors nor keeps sending);

then release everything (problem 1) well before the deadline. A surprise
removal skips straight to the release: what was not acknowledged is still in
the virtual QPs and is resequenced on reconnect.

On the next device the session re-creates PD/MR/CQ/QP (problem 2: new
physical handles behind the same virtual ones) and reconnects every virtual QP
that had a peer through the peer's control port with ``RECONNECT``.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ..errors import (
    ConnectionRejected,
    ConnectTimeout,
    DeviceRemoved,
    PeerResumeTimeout,
    RemoteProtocolError,
    Unreachable,
    VerbsError,
)
from ..verbs import (
    CQ,
    PD,
    QP,
    AsyncEvent,
    AsyncEventType,
    CmEventType,
    CmId,
    Context,
    Device,
    WorkCompletion,
)
from .control import ControlPlane
from .protocol import (
    Message,
    Reconnect,
    Refused,
    RefuseReason,
    Resumed,
    decode,
    encode,
)
from .qp import Hold, PeerLink, VirtualQP, _Entry

if TYPE_CHECKING:
    from .core import Core

__all__ = ["Session", "run_session"]

log = logging.getLogger("rdsx.shim")

_FORWARDED = frozenset({AsyncEventType.PORT_ACTIVE, AsyncEventType.PORT_ERR})


class Session:
    """The shim's hold on one physical device."""

    def __init__(self, core: Core, device: Device, inc: int, nursery: trio.Nursery) -> None:
        self.core = core
        self.device = device
        self.inc = inc
        self.nursery = nursery
        self.removal = trio.Event()
        self.deadline: float | None = None
        self.released = False
        self.closed = False
        #: Set once the device is released and the session's tasks are over.
        self.done = trio.Event()
        self.ctrl: Context | None = None
        self.ctrl_pd: PD | None = None
        self.ctrl_cq: CQ | None = None
        self._wr_ids = itertools.count(1)
        self._wrs: dict[int, tuple[VirtualQP, _Entry]] = {}
        self._qps: dict[int, VirtualQP] = {}
        self.control = ControlPlane(self)

    # ------------------------------------------------------------------ bookkeeping

    def register(self, qp: VirtualQP, entry: _Entry) -> int:
        """A physical wr_id for ``entry`` of ``qp``."""
        wr_id = next(self._wr_ids)
        self._wrs[wr_id] = (qp, entry)
        entry.pwr = wr_id
        return wr_id

    def unregister(self, wr_id: int) -> None:
        """Forget a physical wr_id (its post failed)."""
        self._wrs.pop(wr_id, None)

    def forget_entries(self, qp: VirtualQP) -> None:
        """Forget every physical wr_id of ``qp`` (its physical QP is gone)."""
        for wr_id in [w for w, (owner, _) in self._wrs.items() if owner is qp]:
            del self._wrs[wr_id]

    def bind_qp(self, phys: QP, qp: VirtualQP) -> None:
        """Route events of physical QP ``phys`` to ``qp``."""
        self._qps[phys.qp_num] = qp

    def unbind_qp(self, phys: QP) -> None:
        """Stop routing events of ``phys``."""
        self._qps.pop(phys.qp_num, None)

    def dispatch(self, batch: list[WorkCompletion]) -> None:
        """Hand physical completions to the virtual QPs that posted them."""
        for wc in batch:
            found = self._wrs.pop(wc.wr_id, None)
            if found is not None:
                qp, entry = found
                qp.on_completion(entry, wc)

    def report_removal(self, deadline: float | None) -> None:
        """The device is going (``deadline``) or gone (``None``)."""
        if self.removal.is_set():
            if deadline is None:
                self.deadline = None
            return
        self.deadline = deadline
        self.core.recorder.removal(trio.current_time(), deadline)
        self.removal.set()

    # ------------------------------------------------------------------ tasks

    def spawn(
        self,
        fn: Callable[..., Awaitable[object]],
        *args: object,
        nursery: trio.Nursery | None = None,
    ) -> None:
        """Run ``fn(*args)`` in the session's (or the given) nursery, guarded.

        A device that vanishes under a task is a removal, not a crash of the
        shim; any other verbs error ends only that task (and is logged).
        """
        if self.closed:
            return  # the device's tasks are over; a late hold has nothing to watch
        (nursery or self.nursery).start_soon(self._guarded, fn, *args)

    async def _guarded(self, fn: Callable[..., Awaitable[object]], *args: object) -> None:
        try:
            await fn(*args)
        except DeviceRemoved:
            if not self.released:
                self.report_removal(None)
        except (VerbsError, RemoteProtocolError) as exc:
            log.info("shim task %s ended: %r", getattr(fn, "__name__", fn), exc)

    async def poll_cq(self, cq: CQ) -> None:
        """Feed one physical CQ to the dispatcher until the session ends."""
        while True:
            try:
                batch = await cq.wait(256)
            except DeviceRemoved:
                if not self.released:
                    self.report_removal(None)
                return
            except VerbsError:
                return  # the CQ was destroyed by its virtual owner
            self.dispatch(batch)

    def _broadcast(self, event: AsyncEvent) -> None:
        for vctx in self.core.contexts:
            if vctx.session is self:
                vctx.push_event(event)

    async def pump_events(self, ctx: Context) -> None:
        """Read the physical context's async events and act on them."""
        while True:
            try:
                event = await ctx.get_async_event()
            except DeviceRemoved:
                if not self.released:
                    self.report_removal(None)
                return
            kind = event.type
            if kind is AsyncEventType.DEVICE_REMOVAL:
                self.report_removal(event.deadline)
            elif kind is AsyncEventType.DEVICE_FATAL:
                self.report_removal(None)
            elif kind in (AsyncEventType.SQ_DRAINED, AsyncEventType.QP_FATAL):
                qp = self._qps.get(event.qp_num or -1)
                if qp is None:
                    continue
                if kind is AsyncEventType.SQ_DRAINED and qp.on_sq_drained():
                    continue
                if kind is AsyncEventType.QP_FATAL and qp.peer is not None:
                    continue  # the completions say it too, and drive the hold
                qp._ctx.push_event(AsyncEvent(kind, event.deadline, qp.qp_num, event.info))
            elif kind in _FORWARDED and not self.removal.is_set():
                self._broadcast(event)

    def watch_cm(self, qp: VirtualQP, pcm: CmId) -> None:
        """Forward the events of ``qp``'s physical CM id that the layer above should see."""
        self.spawn(self._pump_cm, qp, pcm)

    async def _pump_cm(self, qp: VirtualQP, pcm: CmId) -> None:
        while True:
            try:
                event = await pcm.next_event()
            except VerbsError:
                return
            if qp.physical_cm is not pcm:
                return
            if event.type is CmEventType.MESSAGE:
                self.control.on_message(qp, pcm, event.private_data)
                continue  # shim to shim: never the layer above's
            if event.type in (CmEventType.DEVICE_REMOVAL, CmEventType.ESTABLISHED):
                continue
            if event.type is CmEventType.DISCONNECTED and not qp.on_disconnected():
                return  # absorbed: its TIMEWAIT_EXIT is not the layer above's either
            if qp.cm_id is not None:
                qp.cm_id.push_event(event)

    # ------------------------------------------------------------------ reconnect

    async def reconnect_all(self, qps: list[VirtualQP]) -> None:
        """Reconnect every virtual QP that had a peer; record when all are resumed."""
        async with trio.open_nursery() as nursery:
            for qp in qps:
                self.spawn(self.reconnect, qp, nursery=nursery)
        if self.inc > 1:
            self.core.recorder.update(resumed_at=trio.current_time())

    async def reconnect(self, qp: VirtualQP) -> None:
        """Bind ``qp`` to a new physical QP connected to its peer, or give up in time."""
        config = self.core.config
        deadline = trio.current_time() + config.resume_timeout
        pause = config.retry_interval
        while qp.held is not None and qp.failure is None:
            peer = qp.peer
            ctx = qp._ctx.physical
            if peer is None or ctx is None or qp.failure is not None:
                return
            now = trio.current_time()
            if now >= deadline:
                qp.fail(PeerResumeTimeout(f"QP {qp.qp_num}: could not reconnect to {peer}"))
                return
            # One round trip: our key map rides in the RECONNECT when it fits.
            data = self.control.with_keys(self._reconnect_request(qp, peer))
            if data is None:
                if not await self.control.push_keys(peer.address):
                    with trio.move_on_at(deadline):
                        await trio.sleep(pause)
                    pause = min(pause * 2, config.max_retry_interval)
                    continue
                data = encode(self._reconnect_request(qp, peer))
            phys = qp.new_physical(self)
            preposted = qp.prepost(self, phys)
            answer: Message | None = None
            try:
                pcm = await ctx.cm_connect(
                    phys,
                    peer.address,
                    config.control_port,
                    data,
                    timeout=min(config.connect_timeout, deadline - now),
                )
            except ConnectionRejected as exc:
                phys.close()
                qp.unpost(self, preposted)
                try:
                    answer = decode(exc.private_data)[0]
                except RemoteProtocolError:
                    answer = None
                log.debug("QP %d: reconnect refused: %s", qp.qp_num, answer)
            except (Unreachable, ConnectTimeout) as exc:
                phys.close()
                qp.unpost(self, preposted)
                log.debug("QP %d: reconnect attempt failed: %r", qp.qp_num, exc)
            else:
                resumed, _ = decode(pcm.private_data)
                # Ended (peer gone) while the connect was on the wire: the loop returns.
                if qp.held is None or qp.peer is None or not isinstance(resumed, Resumed):
                    pcm.close()
                    phys.close()
                    qp.unpost(self, preposted)
                    continue
                self.control.learn_keys(peer.address, resumed.inc, resumed.keys)
                qp.bind(self, phys, pcm, resumed.received, resumed.inc)
                self.core.recorder.resumed()
                return
            if isinstance(answer, Refused) and answer.reason is RefuseReason.UNKNOWN:
                qp.fail(PeerResumeTimeout(f"QP {qp.qp_num}: peer {peer} no longer knows it"))
                return
            if isinstance(answer, Refused) and answer.reason is RefuseReason.DUEL:
                if await qp.wait_resumed(deadline):
                    return
                continue
            with trio.move_on_at(deadline):
                await trio.sleep(pause)
            pause = min(pause * 2, config.max_retry_interval)

    def _reconnect_request(self, qp: VirtualQP, peer: PeerLink) -> Reconnect:
        return Reconnect(
            src_vqpn=qp.qp_num,
            dst_vqpn=peer.vqpn,
            received=qp.received,
            inc=self.inc,
            peer_inc=peer.inc,
        )

    # ------------------------------------------------------------------ quiesce / release

    async def quiesce(self, deadline: float) -> None:
        """Suspend peers and drain our sends, within ``drain_share`` of the grace."""
        now = trio.current_time()
        budget_end = now + max(deadline - now, 0.0) * self.core.config.drain_share
        qps = [qp for qp in self.core.all_qps() if qp.failure is None and qp.physical is not None]
        async with trio.open_nursery() as nursery:
            for qp in qps:
                self.spawn(self._quiesce_one, qp, budget_end, nursery=nursery)

    async def _quiesce_one(self, qp: VirtualQP, budget_end: float) -> None:
        qp.quiesce_begin(Hold.LOCAL)
        peer = qp.peer
        if peer is not None:
            with trio.move_on_at(budget_end):
                await self.control.suspend_peer(qp, peer, budget_end)
        await qp.quiesce_wait(budget_end)

    def release(self) -> None:
        """Close every physical handle of this device (it can be detached now)."""
        self.released = True
        for vctx in list(self.core.contexts):
            if vctx.session is self:
                vctx.detach()
        for ctx in [self.ctrl]:
            if ctx is not None:
                with contextlib.suppress(VerbsError):
                    ctx.close()
        self._wrs.clear()
        self._qps.clear()


async def run_session(core: Core, device: Device, inc: int, first: trio.Event) -> None:
    """Use ``device`` until it is removed, then release it.

    Args:
        core: the shim.
        device: the physical device that just arrived.
        inc: its incarnation number (1 for the node's first device).
        first: set once the virtual device exists (after the first device opened).
    """
    recorder = core.recorder
    recorder.devices += 1
    if inc > 1:
        recorder.update(arrival_at=trio.current_time())
    session: Session | None = None
    try:
        async with trio.open_nursery() as nursery:
            session = Session(core, device, inc, nursery)
            await _serve_device(core, session, first)
            nursery.cancel_scope.cancel()
    finally:
        # Also when the shim itself is closing: nothing of the device outlives us.
        if session is not None:
            session.closed = True
            if core.session is session:
                core.detached()
            session.release()
            if session.removal.is_set():
                recorder.update(released_at=trio.current_time())
            session.done.set()


async def _serve_device(core: Core, session: Session, first: trio.Event) -> None:
    device = session.device
    try:
        ctrl = await device.open()
    except VerbsError:
        return
    session.ctrl = ctrl
    session.spawn(session.pump_events, ctrl)
    try:
        if not first.is_set():
            core.set_first_device(device.address, ctrl.query_device(), ctrl.query_port())
            first.set()
        session.ctrl_pd = ctrl.alloc_pd()
        session.ctrl_cq = ctrl.create_cq(16)
        listener = await ctrl.cm_listen(core.config.control_port)
        session.spawn(session.control.serve, listener)
        core.session = session
        for vctx in list(core.contexts):
            await vctx.attach(session)
        core.attached(session)
        waiting = [qp for qp in core.all_qps() if qp.held is Hold.LOCAL and qp.failure is None]
        session.spawn(session.reconnect_all, waiting)
    except VerbsError as exc:
        log.info("device %s failed while being set up: %s", device.name, exc)
        session.report_removal(None)
    await session.removal.wait()
    if session.deadline is not None:
        with trio.move_on_at(session.deadline):
            await session.quiesce(session.deadline)
