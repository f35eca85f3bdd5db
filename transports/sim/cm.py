"""The connection manager (librdmacm in trio terms) of one simulated VF.

The active side resolves the peer's address (the fabric's address table plays
IPoIB ARP) and asks the SA for a path (counted in ``sm.sa_queries``); then
REQ, REP and RTU travel over the fabric as CM packets (so drops, partitions
and removals affect them) and are resent every :data:`CM_RETRY` seconds until
the caller's timeout. REJ carries private data; a REJ for "nobody listens"
becomes :class:`~rdsx.errors.Unreachable`. DREQ/DREP tear down: both sides see
``DISCONNECTED`` then ``TIMEWAIT_EXIT`` and their QPs go to ERR. Closing a
connected id (or its context) while the device works sends a DREQ too, as
``rdma_destroy_id`` does: the peer sees ``DISCONNECTED``. A DREQ is resent
every :data:`CM_RETRY` seconds until its DREP, at most :data:`DREQ_TRIES`
times. A removed device or a crashed host sends nothing. An established id
carries messages both ways (:meth:`SimCmId.send_message`, a MAD to the peer's
comm id like a LAP; sent once, lost with the packet).

Time (``Fabric.qp_setup_time``, ``sa_query_time``): a QP's creation takes its
share from ``create_qp`` on; the active side's SA query (when the path is not
cached) runs meanwhile, and the REQ leaves once both are done. Each side spends
the rest of the setup (INIT -> RTR -> RTS) once it knows the other's QPN: the
passive side before its REP, the active side after it, before the RTU.

QPs are moved (RESET →) INIT → RTR → RTS, keeping receives posted in INIT,
with librdmacm's defaults: retry_cnt 7, rnr_retry 7 (forever), local ACK
timeout 67 ms (IB timeout 14), min RNR timer 0.64 ms (IB value 12), path MTU
the fabric's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from rdsx.errors import (
    AddressInUse,
    ConnectionRejected,
    ConnectTimeout,
    DeviceRemoved,
    InvalidArgument,
    InvalidHandle,
    InvalidState,
    Unreachable,
)
from rdsx.verbs import (
    CM_QP_STATES,
    MSG_PRIVATE_DATA,
    QP,
    REJ_PRIVATE_DATA,
    REP_PRIVATE_DATA,
    REQ_PRIVATE_DATA,
    CmEvent,
    CmEventType,
    CmId,
    CmListener,
    CmRequest,
    QpAttr,
    QpDest,
    QpState,
    cm_init,
    cm_to_rts,
)

from .fabric import QP_CREATE_SHARE
from .mailbox import Mailbox
from .packet import Kind, Packet

if TYPE_CHECKING:
    from .sm import PathRecord
    from .verbs import SimContext, SimDevice, SimQP

__all__ = ["CM_RETRY", "DREQ_TRIES", "CmAgent", "SimCmId", "SimCmListener", "SimCmRequest"]

#: Seconds between resends of an unanswered REQ or REP.
CM_RETRY = 0.25
#: How long a passive side waits for the RTU after its REP.
ACCEPT_TIMEOUT = 5.0
#: How often an unanswered DREQ is sent before the CM gives up on the DREP.
DREQ_TRIES = 8
ACK_TIMEOUT = 0.0671
MIN_RNR_TIMER = 0.00064
#: A MAD is 256 bytes on the wire.
MAD = bytes(256)


@attrs.frozen(slots=True)
class Req:
    """Connect request."""

    comm_id: int
    src_lid: int
    src_guid: int
    src_qpn: int
    start_psn: int
    port: int
    source: str
    private_data: bytes


@attrs.frozen(slots=True)
class Rep:
    """Connect reply (accept)."""

    comm_id: int
    remote_comm_id: int
    src_lid: int
    src_guid: int
    src_qpn: int
    start_psn: int
    private_data: bytes


@attrs.frozen(slots=True)
class Rej:
    """Connect reject; ``no_listener`` when nothing listens on the port."""

    comm_id: int
    no_listener: bool
    private_data: bytes


@attrs.frozen(slots=True)
class Rtu:
    """Ready to use: the active side is established."""

    comm_id: int


@attrs.frozen(slots=True)
class Msg:
    """A message on an established connection, to the receiver's comm id (no QP)."""

    comm_id: int
    private_data: bytes


@attrs.frozen(slots=True)
class Dreq:
    """Disconnect request."""

    comm_id: int
    src_lid: int
    src_guid: int
    src_qpn: int


@attrs.frozen(slots=True)
class Drep:
    """Disconnect reply."""

    comm_id: int


class _Waiter:
    """One pending exchange: the event and what answered it."""

    __slots__ = ("answer", "event")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.answer: object = None

    def set(self, answer: object) -> None:
        if not self.event.is_set():
            self.answer = answer
            self.event.set()


class CmAgent:
    """The CM of one device: listeners, pending exchanges, established ids."""

    def __init__(self, device: SimDevice) -> None:
        self.device = device
        self.fabric = device.fabric
        self.listeners: dict[int, SimCmListener] = {}
        self.ids: dict[int, SimCmId] = {}
        self._waiting: dict[int, _Waiter] = {}
        self._requests: dict[tuple[int, int], SimCmRequest] = {}
        self._next_port = 20000
        self._attempts: dict[int, int] = {}
        #: DREQs awaiting their DREP, by the comm id they name.
        self._dreqs: dict[int, tuple[int, int, Dreq, int, int]] = {}

    # ------------------------------------------------------------------ wire

    def send(self, dlid: int, dguid: int, msg: object, qpn: int = 1, dqpn: int = 1) -> None:
        """Send one CM message to the device with vGUID ``dguid`` at ``dlid``.

        ``qpn``/``dqpn`` name the QPs the exchange is about (the packet still goes
        to the GSI agent); they label the packet in traces and order it.
        """
        if self.device.removed:
            return
        packet = Packet(Kind.CM, self.device.function.lid, dlid, qpn, dqpn, 0, MAD)
        packet.dguid = dguid
        packet.msg = msg
        if self.device.frozen:
            # An emulated device of a paused VM: its MADs are lost as its packets are
            # (the CM resends on its own timer).
            self.fabric.drop_packet(packet, f"{self.device.name} frozen (VM paused)")
            return
        self.fabric.send_packet(packet)

    def on_packet(self, packet: Packet) -> None:
        """Dispatch an arriving CM message."""
        if self.device.frozen:
            self.fabric.drop_packet(packet, f"{self.device.name} frozen (VM paused)")
            return
        msg = packet.msg
        if isinstance(msg, Req):
            self._on_req(msg)
        elif isinstance(msg, Rep):
            cm_id = self.ids.get(msg.remote_comm_id)
            if cm_id is not None:
                # Our RTU was lost and the passive side resent its REP.
                self.send(msg.src_lid, msg.src_guid, Rtu(msg.comm_id), cm_id.qp.qp_num, msg.src_qpn)
            elif (waiter := self._waiting.get(msg.remote_comm_id)) is not None:
                waiter.set(msg)
        elif isinstance(msg, Rej | Rtu):
            if (waiter := self._waiting.get(msg.comm_id)) is not None:
                waiter.set(msg)
        elif isinstance(msg, Drep):
            self._dreqs.pop(msg.comm_id, None)
        elif isinstance(msg, Msg):
            cm_id = self.ids.get(msg.comm_id)
            if cm_id is not None and cm_id.connected:
                cm_id.push(CmEvent(CmEventType.MESSAGE, msg.private_data))
        elif isinstance(msg, Dreq):
            cm_id = self.ids.get(msg.comm_id)
            qpn = cm_id.qp.qp_num if cm_id is not None else 1
            self.send(msg.src_lid, msg.src_guid, Drep(msg.comm_id), qpn, msg.src_qpn)
            if cm_id is not None:
                cm_id.disconnected()

    def send_dreq(self, cm_id: SimCmId) -> None:
        """Send a DREQ for ``cm_id``'s connection, resent until the DREP comes back."""
        qp = cm_id.qp
        dreq = Dreq(cm_id.remote_comm_id, self.device.function.lid, self.device.guid, qp.qp_num)
        self._dreqs[dreq.comm_id] = (cm_id.peer_lid, cm_id.peer_guid, dreq, qp.qp_num, qp.dest_qpn)
        self._resend_dreq(dreq.comm_id, DREQ_TRIES)

    def _resend_dreq(self, comm_id: int, tries: int) -> None:
        pending = self._dreqs.get(comm_id)
        if pending is None or self.device.removed:
            return
        if tries == 0:
            del self._dreqs[comm_id]  # the peer is gone: it learns through RC, if ever
            return
        dlid, dguid, dreq, qpn, dqpn = pending
        self.send(dlid, dguid, dreq, qpn, dqpn)
        when = self.fabric.now() + CM_RETRY
        self.fabric.call_at(when, lambda: self._resend_dreq(comm_id, tries - 1))

    def _on_req(self, req: Req) -> None:
        key = (req.src_guid, req.comm_id)
        request = self._requests.get(key)
        if request is not None:
            if request.reply is not None:
                self.send(req.src_lid, req.src_guid, request.reply, request.qpn, req.src_qpn)
            return
        listener = self.listeners.get(req.port)
        if listener is None or len(listener.queue) >= listener.backlog:
            self.send(
                req.src_lid, req.src_guid, Rej(req.comm_id, listener is None, b""), 1, req.src_qpn
            )
            return
        request = SimCmRequest(self, listener.ctx, req)
        self._requests[key] = request
        listener.push(request)

    # ------------------------------------------------------------------ API

    def listen(self, ctx: SimContext, port: int, backlog: int) -> SimCmListener:
        """Create a listener (port 0 picks a free one)."""
        if port == 0:
            while self._next_port in self.listeners:
                self._next_port += 1
            port = self._next_port
        if not 0 < port < 1 << 16:
            raise InvalidArgument(f"port {port} out of range")
        if port in self.listeners:
            raise AddressInUse(f"{self.device.address}:{port} is already listening")
        listener = SimCmListener(self, ctx, port, backlog)
        self.listeners[port] = listener
        return listener

    def _path(self, target: SimDevice) -> tuple[PathRecord, bool]:
        """The path to ``target`` and whether the SA was asked (see ``Fabric.path_cache``)."""
        host = self.device.function.host
        cache = self.fabric.path_cache
        if cache is None:
            return self.fabric.path_to(host, target.lid, target.guid), True
        key = (self.device.address, self.device.function.lid, target.lid, target.guid)
        path = cache.get(key)
        if path is not None:
            return path, False
        path = cache[key] = self.fabric.path_to(host, target.lid, target.guid)
        return path, True

    async def connect(
        self,
        ctx: SimContext,
        qp: SimQP,
        address: str,
        port: int,
        private_data: bytes,
        timeout: float,
    ) -> SimCmId:
        """The active side of a connection (see :meth:`rdsx.verbs.Context.cm_connect`)."""
        await trio.lowlevel.checkpoint()
        if len(private_data) > REQ_PRIVATE_DATA:
            raise InvalidArgument(f"private data is limited to {REQ_PRIVATE_DATA} bytes")
        if qp.state not in CM_QP_STATES:
            raise InvalidState(f"cm_connect needs a QP in RESET or INIT, not {qp.state.name}")
        vm = self.fabric.vm_at(address)
        target = vm.answering_device if vm is not None else None
        if target is None or target.removed:
            raise Unreachable(f"no device answers for {address}")
        path, asked = self._path(target)
        # The SA query and the QP's creation overlap: the REQ waits for the later.
        sa_done = trio.current_time() + (self.fabric.sa_query_time if asked else 0.0)
        await _charge_until(max(sa_done, qp.ready_at))
        cm_init(qp)
        comm_id, start_psn = self.new_exchange(qp.qp_num)
        req = Req(
            comm_id,
            self.device.function.lid,
            self.device.guid,
            qp.qp_num,
            start_psn,
            port,
            self.device.address,
            bytes(private_data),
        )
        answer = await self._exchange(comm_id, path.dlid, path.dguid, req, timeout, qp.qp_num, 1)
        if isinstance(answer, Rej):
            if answer.no_listener:
                raise Unreachable(f"nothing listens on {address}:{port}")
            raise ConnectionRejected(f"{address}:{port} rejected", answer.private_data)
        assert isinstance(answer, Rep)
        await _charge(_connect_time(self.device))
        _to_rts(qp, answer.src_lid, answer.src_qpn, answer.start_psn, start_psn)
        self.send(answer.src_lid, answer.src_guid, Rtu(answer.comm_id), qp.qp_num, answer.src_qpn)
        cm_id = SimCmId(
            self,
            ctx,
            qp,
            comm_id,
            answer.comm_id,
            answer.src_lid,
            answer.src_guid,
            answer.private_data,
            address,
        )
        return cm_id

    def new_exchange(self, qpn: int) -> tuple[int, int]:
        """A comm id and a start PSN for a new exchange about QP ``qpn``.

        Both derive from (seed, LID, QPN, attempt) rather than a shared counter or
        RNG, so they do not depend on the order trio runs concurrent connects in.
        """
        attempt = self._attempts.get(qpn, 0) + 1
        self._attempts[qpn] = attempt
        lid = self.device.function.lid
        comm_id = (lid << 32) | (qpn << 8) | (attempt & 0xFF)
        mix = self.fabric.seed * 0x9E3779B1 + lid * 0x85EBCA6B + qpn * 0xC2B2AE35 + attempt
        return comm_id, (mix ^ (mix >> 15)) & 0xFFFFFF

    async def _exchange(
        self,
        comm_id: int,
        dlid: int,
        dguid: int,
        msg: object,
        timeout: float,
        qpn: int,
        dqpn: int,
        on_sent: Callable[[], None] | None = None,
    ) -> object:
        waiter = self._waiting[comm_id] = _Waiter()
        deadline = trio.current_time() + timeout
        try:
            while True:
                self.send(dlid, dguid, msg, qpn, dqpn)
                if on_sent is not None and not (self.device.removed or self.device.frozen):
                    on_sent()
                with trio.move_on_at(min(deadline, trio.current_time() + CM_RETRY)):
                    await waiter.event.wait()
                if isinstance(waiter.answer, DeviceRemoved):
                    raise DeviceRemoved(f"{self.device.name} was removed")
                if waiter.event.is_set():
                    return waiter.answer
                if trio.current_time() >= deadline:
                    raise ConnectTimeout(f"no answer within {timeout} s")
        finally:
            del self._waiting[comm_id]

    def established(self, comm_id: int) -> None:
        """The passive side's QP got its first packet: as good as the RTU (COMM_EST)."""
        if (waiter := self._waiting.get(comm_id)) is not None:
            waiter.set(Rtu(comm_id))

    def announce_removal(self) -> None:
        """Give every CM id a ``DEVICE_REMOVAL`` event."""
        for cm_id in list(self.ids.values()):
            cm_id.push(CmEvent(CmEventType.DEVICE_REMOVAL, info="device removal"))

    def removed(self) -> None:
        """The device is gone: wake everything waiting here."""
        for waiter in self._waiting.values():
            waiter.set(DeviceRemoved("removed"))
        for listener in self.listeners.values():
            listener.wake()
        for cm_id in self.ids.values():
            cm_id.wake()


async def _charge(seconds: float) -> None:
    """Spend the modelled time of an SA query or a QP setup (nothing if free)."""
    if seconds > 0:
        await trio.sleep(seconds)


async def _charge_until(when: float) -> None:
    """Wait until ``when`` (a QP's creation done, an SA answer back); nothing if past."""
    if when > trio.current_time():
        await trio.sleep_until(when)


def _connect_time(device: SimDevice) -> float:
    """What one side spends moving its QP INIT -> RTR -> RTS on ``device``."""
    return device.qp_setup_time * (1.0 - QP_CREATE_SHARE)


def _to_rts(qp: SimQP, dlid: int, dqpn: int, rq_psn: int, sq_psn: int) -> None:
    cm_to_rts(
        qp,
        QpDest(str(dlid), dqpn),
        path_mtu=qp.fabric.mtu,
        rq_psn=rq_psn,
        sq_psn=sq_psn,
        timeout=ACK_TIMEOUT,
        min_rnr_timer=MIN_RNR_TIMER,
    )


class SimCmListener(CmListener):
    """A listening CM id on ``(device.address, port)``."""

    def __init__(self, agent: CmAgent, ctx: SimContext, port: int, backlog: int) -> None:
        self.agent = agent
        self.ctx = ctx
        self.port = port
        self.backlog = backlog
        self._requests: Mailbox[SimCmRequest] = Mailbox()
        #: Queued requests (the backlog counts them).
        self.queue = self._requests.items
        self._closed = False

    def push(self, request: SimCmRequest) -> None:
        """Queue an incoming request."""
        self._requests.push(request)

    def wake(self) -> None:
        """Wake the waiter (a request, removal or close)."""
        self._requests.wake()

    async def get_request(self) -> SimCmRequest:
        """Wait for the next connect request.

        Raises:
            DeviceRemoved: the device is gone.
            InvalidHandle: the listener is closed.
        """
        return await self._requests.get(self._check, check_first=True)

    def _check(self) -> None:
        if self.agent.device.removed:
            raise DeviceRemoved(f"{self.agent.device.name} was removed")
        if self._closed:
            raise InvalidHandle("listener is closed")

    def close(self) -> None:
        """Stop listening. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.agent.listeners.get(self.port) is self:
            del self.agent.listeners[self.port]
        if self in self.ctx.listeners:
            self.ctx.listeners.remove(self)
        self.wake()


class SimCmRequest(CmRequest):
    """An incoming connect request."""

    def __init__(self, agent: CmAgent, ctx: SimContext, req: Req) -> None:
        self.agent = agent
        self.ctx = ctx
        self.req = req
        self.private_data = req.private_data
        self.source = req.source
        self.reply: Rep | Rej | None = None
        #: The accepting QP's number (1 until accepted).
        self.qpn = 1
        self.replied = False

    def _replied(self) -> None:
        self.replied = True

    async def accept(self, qp: QP, private_data: bytes = b"") -> SimCmId:
        """Accept with ``qp``; returns once the active side's RTU arrived.

        Raises:
            InvalidState: ``qp`` in neither RESET nor INIT, or the request was already
                answered.
            ConnectTimeout: no RTU within 5 s.
        """
        from .verbs import SimQP

        await trio.lowlevel.checkpoint()
        self.ctx._check()
        if self.reply is not None:
            raise InvalidState("the request was already answered")
        if not isinstance(qp, SimQP) or qp._ctx is not self.ctx:
            raise InvalidArgument("the QP belongs to another context")
        if qp.state not in CM_QP_STATES:
            raise InvalidState(f"accept needs a QP in RESET or INIT, not {qp.state.name}")
        if len(private_data) > REP_PRIVATE_DATA:
            raise InvalidArgument(f"private data is limited to {REP_PRIVATE_DATA} bytes")
        agent, req = self.agent, self.req
        # A QP made ahead (the shim's pre-setup) is already created: only RTR/RTS remain.
        await _charge_until(max(trio.current_time(), qp.ready_at) + _connect_time(agent.device))
        if self.reply is not None:
            raise InvalidState("the request was already answered")
        comm_id, start_psn = agent.new_exchange(qp.qp_num)
        cm_init(qp)
        _to_rts(qp, req.src_lid, req.src_qpn, req.start_psn, start_psn)
        self.qpn = qp.qp_num
        self.reply = Rep(
            comm_id,
            req.comm_id,
            agent.device.function.lid,
            agent.device.guid,
            qp.qp_num,
            start_psn,
            bytes(private_data),
        )
        cm_id = SimCmId(
            agent,
            self.ctx,
            qp,
            comm_id,
            req.comm_id,
            req.src_lid,
            req.src_guid,
            req.private_data,
            req.source,
        )
        # The RTU may be lost while the active side, connected at the REP, already sends:
        # its first packet establishes the connection (IB's COMM_EST event, which the
        # kernel CM treats as the RTU). Otherwise a removal before the REP's resend
        # would end a connection the peer has been using since.
        qp.comm_est = lambda: agent.established(comm_id)
        try:
            await agent._exchange(
                comm_id,
                req.src_lid,
                req.src_guid,
                self.reply,
                ACCEPT_TIMEOUT,
                qp.qp_num,
                req.src_qpn,
                on_sent=self._replied,
            )
        except BaseException:
            cm_id.close()
            raise
        finally:
            qp.comm_est = None
        return cm_id

    async def reject(self, private_data: bytes = b"") -> None:
        """Reject; the active side gets ConnectionRejected with ``private_data``.

        Raises:
            InvalidState: the request was already answered.
            InvalidArgument: private data longer than 148 bytes (IB REJ limit).
        """
        await trio.lowlevel.checkpoint()
        self.ctx._check()
        if self.reply is not None:
            raise InvalidState("the request was already answered")
        if len(private_data) > REJ_PRIVATE_DATA:
            raise InvalidArgument(f"private data is limited to {REJ_PRIVATE_DATA} bytes")
        self.reply = Rej(self.req.comm_id, False, bytes(private_data))
        self.agent.send(self.req.src_lid, self.req.src_guid, self.reply, 1, self.req.src_qpn)


class SimCmId(CmId):
    """An established connection around one QP."""

    qp: SimQP

    def __init__(
        self,
        agent: CmAgent,
        ctx: SimContext,
        qp: SimQP,
        comm_id: int,
        remote_comm_id: int,
        peer_lid: int,
        peer_guid: int,
        private_data: bytes,
        peer_address: str,
    ) -> None:
        self.agent = agent
        self.ctx = ctx
        self.qp = qp
        self.comm_id = comm_id
        self.remote_comm_id = remote_comm_id
        self.peer_lid = peer_lid
        self.peer_guid = peer_guid
        self.private_data = private_data
        self.peer_address = peer_address
        self.connected = True
        self._events: Mailbox[CmEvent] = Mailbox()
        self._closed = False
        agent.ids[comm_id] = self
        ctx.cm_ids.append(self)

    def push(self, event: CmEvent) -> None:
        """Queue an event for :meth:`next_event`."""
        self._events.push(event)

    def wake(self) -> None:
        """Wake the waiter."""
        self._events.wake()

    def disconnected(self) -> None:
        """The connection is over (DREQ sent or received): QP to ERR, two events."""
        if not self.connected:
            return
        self.connected = False
        qp = self.qp
        if not qp._closed and not self.agent.device.removed and qp._state is not QpState.ERR:
            qp.modify(QpAttr(state=QpState.ERR))
        self.push(CmEvent(CmEventType.DISCONNECTED))
        self.push(CmEvent(CmEventType.TIMEWAIT_EXIT))

    async def next_event(self) -> CmEvent:
        """Wait for DISCONNECTED, DEVICE_REMOVAL or TIMEWAIT_EXIT.

        Raises:
            DeviceRemoved: the device is gone and every event was read.
            InvalidHandle: the id is closed.
        """
        return await self._events.get(self._check)

    def _check(self) -> None:
        if self.agent.device.removed:
            raise DeviceRemoved(f"{self.agent.device.name} was removed")
        if self._closed:
            raise InvalidHandle("CM id is closed")

    async def send_message(self, private_data: bytes) -> None:
        """Send ``private_data`` to the peer's id as one CM MAD (:meth:`CmId.send_message`).

        Raises:
            DeviceRemoved: the device is gone.
            InvalidHandle: the id is closed.
            InvalidState: the connection is over.
            InvalidArgument: more than ``MSG_PRIVATE_DATA`` bytes.
        """
        await trio.lowlevel.checkpoint()
        self._check()
        if not self.connected:
            raise InvalidState("the connection is not established")
        if len(private_data) > MSG_PRIVATE_DATA:
            raise InvalidArgument(f"private data is limited to {MSG_PRIVATE_DATA} bytes")
        message = Msg(self.remote_comm_id, bytes(private_data))
        self.agent.send(self.peer_lid, self.peer_guid, message, self.qp.qp_num, self.qp.dest_qpn)

    async def disconnect(self) -> None:
        """Send a DREQ; both sides see DISCONNECTED and TIMEWAIT_EXIT, QPs go to ERR."""
        await trio.lowlevel.checkpoint()
        if self.agent.device.removed:
            raise DeviceRemoved(f"{self.agent.device.name} was removed")
        if self._closed:
            raise InvalidHandle("CM id is closed")
        if self.connected:
            self.agent.send_dreq(self)
        self.disconnected()

    def close(self) -> None:
        """Destroy the CM id (not the QP); a connected id sends DREQ first. Idempotent.

        The peer's id then sees ``DISCONNECTED`` and its QP goes to ERR; this id
        gets no more events. A removed device sends nothing.
        """
        if self._closed:
            return
        self._closed = True
        if self.connected and not self.agent.device.removed:
            self.connected = False
            self.agent.send_dreq(self)
        if self.agent.ids.get(self.comm_id) is self:
            del self.agent.ids[self.comm_id]
        if self in self.ctx.cm_ids:
            self.ctx.cm_ids.remove(self)
        self.wake()
