"""The connection manager over TCP: REQ / REP / REJ / RTU / DREQ with private data.

A CM exchange is its own authenticated TCP connection to the peer device's
listener (the CM "port" is a service number inside the request, as an IB
service ID is, not a TCP port). It carries the two QPs' locators, numbers and
start PSNs; each side moves its QP through INIT, RTR and RTS. The active side
opens the QP's stream as soon as its REQ is out (the passive device matches it
to the accepted QP by the active QP's locator and number), so the stream's
handshake runs during the exchange rather than after it. The CM connection then
stays open as the CM id's channel: DREQ (a disconnect, or closing the id)
travels on it, and its loss is reported as DISCONNECTED.

Timeline::

    active                                     passive
    cm_connect: REQ {port, qpn, loc, psn, pd} ->  get_request() -> CmRequest
                                   <- REP {qpn, loc, psn, pd}   accept(qp)  (or REJ {pd})
    RTU ->                                     accept returns
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any

import trio

from rdsx.errors import (
    ConnectTimeout,
    DeviceRemoved,
    InvalidArgument,
    InvalidHandle,
    InvalidState,
    RemoteProtocolError,
)
from rdsx.verbs import (
    CM_QP_STATES,
    QP,
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

from ._auth import expect_control
from ._frames import PSN_MASK, Control, Frame, encode_control
from ._link import Link
from ._qp import TcpQP

if TYPE_CHECKING:
    from ._context import TcpContext

__all__ = ["TcpCmId", "TcpCmListener", "TcpCmRequest", "cm_connect"]

log = logging.getLogger("rdsx.tcp.cm")

#: The IB CM REQ private-data limit (applied to every message here).
MAX_PRIVATE_DATA = REQ_PRIVATE_DATA


def _own_qp(ctx: TcpContext, qp: QP) -> TcpQP:
    if not isinstance(qp, TcpQP) or qp._ctx is not ctx:
        raise InvalidArgument("the QP belongs to another context or transport")
    qp._check()
    if qp.state not in CM_QP_STATES:
        raise InvalidState(f"the QP must be in RESET or INIT, not {qp.state.name}")
    return qp


def _check_private_data(data: bytes) -> bytes:
    if len(data) > MAX_PRIVATE_DATA:
        raise InvalidArgument(f"private data of {len(data)} bytes > {MAX_PRIVATE_DATA}")
    return bytes(data)


def _bring_up(qp: TcpQP, peer_loc: str, peer_qpn: int, rq_psn: int, sq_psn: int) -> None:
    """(RESET ->) INIT -> RTR -> RTS as librdmacm does, with the network's timers."""
    net = qp.device.network
    cm_init(qp)
    cm_to_rts(
        qp,
        QpDest(peer_loc, peer_qpn),
        path_mtu=4096,
        rq_psn=rq_psn,
        sq_psn=sq_psn,
        timeout=net.qp_timeout,
        min_rnr_timer=net.min_rnr_timer,
    )


def _peer_fields(frame: Control) -> tuple[int, str, int, bytes]:
    f = frame.fields
    qpn, loc, psn, data = f.get("qpn"), f.get("loc"), f.get("psn"), f.get("pd", b"")
    if not (
        isinstance(qpn, int)
        and 0 < qpn <= PSN_MASK
        and isinstance(loc, str)
        and isinstance(psn, int)
        and 0 <= psn <= PSN_MASK
        and isinstance(data, bytes)
        and len(data) <= MAX_PRIVATE_DATA
    ):
        raise RemoteProtocolError(f"malformed CM {frame.kind}")
    return qpn, loc, psn, data


async def cm_connect(
    ctx: TcpContext, qp: QP, address: str, port: int, private_data: bytes, timeout: float
) -> CmId:
    """The active side of a CM exchange (see :meth:`rdsx.verbs.Context.cm_connect`)."""
    tqp = _own_qp(ctx, qp)
    private_data = _check_private_data(private_data)
    device = ctx.device
    psn = secrets.randbelow(PSN_MASK + 1)
    request = {
        "t": "cm",
        "port": port,
        "qpn": tqp.qp_num,
        "loc": device.locator,
        "psn": psn,
        "pd": private_data,
        "src": device.address,
    }
    locator = device.network.resolve(address)
    link: Link | None = None
    try:
        with trio.fail_after(timeout):
            link = await device.open_link(locator, request)
            # The listener proved it knows the secret and has our REQ: open the QP's
            # stream now, so its handshake overlaps the REP instead of following it.
            tqp.open_stream_early(locator)
            reply = await device.expect_reply(link, "rep")
            peer_qpn, peer_loc, peer_psn, peer_data = _peer_fields(reply)
            _bring_up(tqp, peer_loc, peer_qpn, peer_psn, psn)
            link.send(encode_control("rtu"))
            await link.flush()
    except trio.TooSlowError:
        tqp.abandon_stream()
        if link is not None:
            link.close()
        raise ConnectTimeout(f"no CM answer from {address}:{port} in {timeout}s") from None
    except BaseException:
        tqp.abandon_stream()
        if link is not None:
            link.close()
        raise
    cm_id = TcpCmId(ctx, tqp, peer_data, address, link)
    device.spawn(cm_id.serve)
    return cm_id


class TcpCmListener(CmListener):
    """A listening CM port on one device."""

    def __init__(self, ctx: TcpContext, port: int, backlog: int) -> None:
        self._ctx = ctx
        self.port = port
        self.backlog = max(1, backlog)
        self._queue: deque[TcpCmRequest] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    def offer(self, request: TcpCmRequest) -> bool:
        """Queue an incoming request; False if the backlog is full."""
        if self._closed or len(self._queue) >= self.backlog:
            return False
        self._queue.append(request)
        self._lot.unpark_all()
        return True

    def wake(self) -> None:
        """Wake waiters so they see the device is gone."""
        self._lot.unpark_all()

    async def get_request(self) -> CmRequest:
        """Wait for the next connect request."""
        while True:
            if self._ctx.device.removed:
                raise DeviceRemoved(f"{self._ctx.device.name} was removed")
            if self._closed:
                raise InvalidHandle("listener is closed")
            if self._queue:
                return self._queue.popleft()
            await self._lot.park()

    def close(self) -> None:
        """Stop listening; queued requests are rejected. Idempotent."""
        if self._closed:
            return
        self._closed = True
        device = self._ctx.device
        if device.cm_listeners.get(self.port) is self:
            del device.cm_listeners[self.port]
        self._ctx.cm_listeners.discard(self)
        while self._queue:
            self._queue.popleft().abandon()
        self._lot.unpark_all()


class TcpCmRequest(CmRequest):
    """An incoming connect request; owns the CM connection until answered."""

    def __init__(
        self,
        listener: TcpCmListener,
        link: Link,
        source: str,
        peer_qpn: int,
        peer_loc: str,
        peer_psn: int,
        private_data: bytes,
    ) -> None:
        self._listener = listener
        self._link = link
        self.source = source
        self.private_data = private_data
        self._peer = (peer_qpn, peer_loc, peer_psn)
        self._answered = False

    @classmethod
    def from_wire(
        cls, listener: TcpCmListener, link: Link, request: dict[str, Any]
    ) -> TcpCmRequest:
        """Build a request from an authenticated REQ.

        Raises:
            RemoteProtocolError: a field is missing or malformed.
        """
        qpn, loc, psn, data = _peer_fields(Control("req", request))
        source = request.get("src")
        if not isinstance(source, str):
            raise RemoteProtocolError("CM REQ without a source address")
        return cls(listener, link, source, qpn, loc, psn, data)

    def _answer(self) -> TcpContext:
        ctx = self._listener._ctx
        if ctx.device.removed:
            raise DeviceRemoved(f"{ctx.device.name} was removed")
        if self._answered:
            raise InvalidState("the request was already answered")
        return ctx

    async def accept(self, qp: QP, private_data: bytes = b"") -> CmId:
        """Accept with ``qp`` (see :meth:`rdsx.verbs.CmRequest.accept`)."""
        ctx = self._answer()
        tqp = _own_qp(ctx, qp)
        private_data = _check_private_data(private_data)
        self._answered = True
        peer_qpn, peer_loc, peer_psn = self._peer
        psn = secrets.randbelow(PSN_MASK + 1)
        link = self._link
        tqp.stream_opener = False  # the active side opened it already (or will)
        ctx.device.expected_streams[(peer_loc, peer_qpn)] = tqp
        _bring_up(tqp, peer_loc, peer_qpn, peer_psn, psn)
        link.send(
            encode_control("rep", qpn=tqp.qp_num, loc=ctx.device.locator, psn=psn, pd=private_data)
        )
        try:
            with trio.fail_after(ctx.device.network.handshake_timeout):
                await link.flush()
                await expect_control(link, "rtu")
        except (
            trio.TooSlowError,
            trio.BrokenResourceError,
            trio.ClosedResourceError,
            OSError,
            RemoteProtocolError,
        ):
            link.close()
            raise ConnectTimeout(f"{self.source} went away before the connection was up") from None
        except BaseException:  # cancelled: the connection dies with the attempt
            link.close()
            raise
        cm_id = TcpCmId(ctx, tqp, self.private_data, self.source, link)
        ctx.device.spawn(cm_id.serve)
        return cm_id

    async def reject(self, private_data: bytes = b"") -> None:
        """Reject; the active side gets ConnectionRejected with ``private_data``."""
        self._answer()
        private_data = _check_private_data(private_data)
        self._answered = True
        self._link.send(encode_control("rej", why="rejected", pd=private_data))
        with contextlib.suppress(trio.BrokenResourceError, OSError):
            await self._link.flush()
        self._link.close()

    def abandon(self) -> None:
        """The listener closed before answering: the active side sees Unreachable."""
        if not self._answered:
            self._answered = True
            self._link.close()


class TcpCmId(CmId):
    """An established CM connection; its TCP connection carries DREQ."""

    qp: TcpQP

    def __init__(
        self, ctx: TcpContext, qp: TcpQP, private_data: bytes, peer_address: str, link: Link
    ) -> None:
        self._ctx = ctx
        self.qp = qp
        self.private_data = private_data
        self.peer_address = peer_address
        self._link = link
        self._events: deque[CmEvent] = deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False
        self._disconnected = False
        ctx.cm_ids.add(self)

    def post(self, kind: CmEventType, private_data: bytes = b"", info: str = "") -> None:
        """Queue an event for :meth:`next_event`."""
        self._events.append(CmEvent(kind, private_data, info))
        self._lot.unpark_all()

    def wake(self) -> None:
        """Wake waiters so they see the device is gone."""
        self._lot.unpark_all()

    async def serve(self) -> None:
        """Read the CM connection until it closes (the device's task)."""
        await self._link.run(self, lossy=False)

    def frames_received(self, link: Link, frames: list[Frame]) -> None:
        """DREQ: the peer disconnects; our QP goes to ERR."""
        for frame in frames:
            if isinstance(frame, Control) and frame.kind == "dreq":
                self._peer_disconnected("the peer disconnected")
                link.close()
                return
            raise RemoteProtocolError(f"unexpected {type(frame).__name__} on a CM connection")

    def link_closed(self, link: Link, error: BaseException | None) -> None:
        """The CM connection died: report DISCONNECTED once."""
        if not self._disconnected:
            self._disconnected = True
            self.post(CmEventType.DISCONNECTED, info=f"CM connection lost: {error or 'EOF'}")
            self.post(CmEventType.TIMEWAIT_EXIT)

    def _peer_disconnected(self, info: str) -> None:
        if self._disconnected:
            return
        self._disconnected = True
        qp = self.qp
        if not qp._closed and qp._state not in (QpState.RESET, QpState.ERR):
            qp.modify(QpAttr(QpState.ERR))
        self.post(CmEventType.DISCONNECTED, info=info)
        # No time-wait to sit out: TCP's own TIME_WAIT keeps stale segments away.
        self.post(CmEventType.TIMEWAIT_EXIT)

    async def next_event(self) -> CmEvent:
        """Wait for the next event: DISCONNECTED or DEVICE_REMOVAL."""
        while not self._events:
            if self._ctx.device.removed:
                raise DeviceRemoved(f"{self._ctx.device.name} was removed")
            if self._closed:
                raise InvalidHandle("CM id is closed")
            await self._lot.park()
        return self._events.popleft()

    async def disconnect(self) -> None:
        """Send DREQ: both sides see DISCONNECTED and both QPs go to ERR (flushed)."""
        if self._ctx.device.removed:
            raise DeviceRemoved(f"{self._ctx.device.name} was removed")
        if self._closed:
            raise InvalidHandle("CM id is closed")
        if self._disconnected:
            return
        if not self.qp._closed:
            self.qp.send_bye()
        self._link.send(encode_control("dreq"))
        self._link.close(flush=True)
        self._peer_disconnected("disconnected locally")

    def close(self) -> None:
        """Destroy the CM id (not the QP); a connected id sends DREQ first. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if not self._disconnected and not self._ctx.device.removed:
            self._disconnected = True
            self._link.send(encode_control("dreq"))
            self._link.close(flush=True)
        else:
            self._link.close()
        self._ctx.cm_ids.discard(self)
        self._lot.unpark_all()
