"""Virtual CM: listeners, requests and connections that survive device replacement.

The shim puts a small header (:mod:`rdsx.shim.protocol`) in front of the
layer above's private data so each side learns the other's *virtual* QPN and
can later name the connection to the peer's shim. That header costs
:data:`~rdsx.shim.protocol.HEADER_RESERVE` bytes of the CM's 196, as librdmacm
keeps part of the IB REQ for its own: through the shim, ``cm_connect`` and
``accept`` carry at most :data:`~rdsx.shim.protocol.USER_PRIVATE_DATA_MAX`
bytes of the layer above's and refuse more with ``InvalidArgument`` at once
(a connection without the header could not be resumed after a migration).
"""

from __future__ import annotations

import collections
import contextlib
import logging
from typing import TYPE_CHECKING

import trio

from ..errors import (
    AddressInUse,
    ConnectTimeout,
    DeviceRemoved,
    InvalidArgument,
    InvalidHandle,
    InvalidState,
    VerbsError,
)
from ..verbs import (
    CM_QP_STATES,
    QP,
    CmEvent,
    CmEventType,
    CmId,
    CmListener,
    CmRequest,
    QpAttr,
    QpState,
)
from .protocol import (
    CM_PRIVATE_DATA_MAX,
    HEADER_RESERVE,
    USER_PRIVATE_DATA_MAX,
    Accept,
    Close,
    Connect,
    decode,
    encode,
)
from .qp import PeerLink, VirtualQP

if TYPE_CHECKING:
    from .recovery import Session
    from .resources import VirtualContext

__all__ = ["VirtualCmId", "VirtualCmListener", "VirtualCmRequest", "connect", "listen"]

log = logging.getLogger("rdsx.shim")


def check_private_data(private_data: bytes) -> None:
    """Refuse user private data the shim's header leaves no room for.

    Raises:
        InvalidArgument: more than :data:`~rdsx.shim.protocol.USER_PRIVATE_DATA_MAX` bytes.
    """
    if len(private_data) > USER_PRIVATE_DATA_MAX:
        raise InvalidArgument(
            f"private data of {len(private_data)} bytes: through the transparent shim at most "
            f"{USER_PRIVATE_DATA_MAX} (the CM's {CM_PRIVATE_DATA_MAX} less {HEADER_RESERVE} for "
            "the shim's own header, which makes the connection resumable after a migration)"
        )


def _unwrap(data: bytes) -> tuple[Connect | Accept | None, bytes]:
    try:
        header, user = decode(data)
    except VerbsError:
        raise
    except Exception:
        return None, data
    if isinstance(header, Connect | Accept):
        return header, user
    return None, data


class VirtualCmId(CmId):
    """An established connection; its events never include a migration.

    ``next_event`` raises :class:`~rdsx.errors.PeerResumeTimeout` once if the
    peer could not be resumed; the QP is in ERR by then.
    """

    qp: VirtualQP

    def __init__(self, qp: VirtualQP, private_data: bytes, peer_address: str) -> None:
        self.qp = qp
        self.private_data = private_data
        self.peer_address = peer_address
        self._events: collections.deque[CmEvent | Exception] = collections.deque()
        self._lot = trio.lowlevel.ParkingLot()
        self._closed = False

    def push_event(self, event: CmEvent) -> None:
        """Queue an event for the layer above."""
        self._events.append(event)
        self._lot.unpark_all()

    def push_error(self, exc: Exception) -> None:
        """Queue an error that :meth:`next_event` raises."""
        self._events.append(exc)
        self._lot.unpark_all()

    async def next_event(self) -> CmEvent:
        """Wait for DISCONNECTED or TIMEWAIT_EXIT (never DEVICE_REMOVAL).

        Raises:
            PeerResumeTimeout: the peer could not be resumed after a migration.
            InvalidHandle: the CM id was closed.
        """
        while not self._events:
            if self._closed:
                raise InvalidHandle("CM id is closed")
            await self._lot.park()
        item = self._events.popleft()
        if isinstance(item, Exception):
            raise item
        return item

    async def disconnect(self) -> None:
        """Disconnect: both sides see DISCONNECTED and the QP goes to ERR."""
        qp = self.qp
        pcm = qp.physical_cm
        peer, session = qp.peer, qp._ctx.session
        qp.peer = None
        if peer is not None and session is not None and not session.removal.is_set():
            # Tell the peer's shim first, so it passes the DISCONNECTED up
            # instead of waiting for us to come back.
            await session.control.call(
                peer.address,
                Close(src_vqpn=qp.qp_num, dst_vqpn=peer.vqpn),
                timeout=session.core.config.connect_timeout,
            )
        if pcm is not None and qp.held is None:
            try:
                await pcm.disconnect()
                return
            except DeviceRemoved:
                qp._ctx.device_gone()
        # No live physical connection (we are migrating): end it on our side only.
        if qp.state is not QpState.ERR:
            qp.modify(QpAttr(state=QpState.ERR))
        self.push_event(CmEvent(CmEventType.DISCONNECTED, info="disconnected during a migration"))

    def close(self) -> None:
        """Destroy the CM id (not the QP); the peer sees DISCONNECTED. Idempotent."""
        if self._closed:
            return
        self._closed = True
        qp = self.qp
        if qp.cm_id is self:
            qp.cm_id = None
            peer, session, pcm = qp.peer, qp._ctx.session, qp.physical_cm
            if (
                peer is not None
                and pcm is not None
                and session is not None
                and qp.held is None
                and not session.removal.is_set()
            ):
                # The peer's shim must hear it is the end before our DREQ reaches it,
                # or it would hold the connection for a reconnect that never comes.
                qp.peer = None
                qp.release_cm()
                session.spawn(_announce_close, session, qp.qp_num, peer, pcm)
        self._lot.unpark_all()


async def _announce_close(session: Session, vqpn: int, peer: PeerLink, pcm: CmId) -> None:
    """Tell the peer's shim the connection ends, then close the physical id (its DREQ)."""
    try:
        await session.control.call(
            peer.address,
            Close(src_vqpn=vqpn, dst_vqpn=peer.vqpn),
            timeout=session.core.config.connect_timeout,
        )
    finally:
        with contextlib.suppress(VerbsError):
            pcm.close()


class VirtualCmRequest(CmRequest):
    """An incoming connect request, the shim header already taken off."""

    def __init__(
        self,
        ctx: VirtualContext,
        request: CmRequest,
        header: Connect | None,
        private_data: bytes,
    ) -> None:
        self._ctx = ctx
        self._request = request
        self._header = header
        self.private_data = private_data
        self.source = request.source

    async def accept(self, qp: QP, private_data: bytes = b"") -> VirtualCmId:
        """Accept with ``qp`` (a virtual QP of the listening context, in RESET or INIT).

        Raises:
            InvalidState: ``qp`` is in neither RESET nor INIT, or the request was
                already answered.
            ConnectTimeout: the active side went away first.
            InvalidArgument: ``qp`` is not a QP of the listening context, or
                ``private_data`` is over
                :data:`~rdsx.shim.protocol.USER_PRIVATE_DATA_MAX` bytes.
        """
        if not isinstance(qp, VirtualQP) or qp._ctx is not self._ctx:
            raise InvalidArgument("accept needs a QP of the listening (virtual) context")
        check_private_data(private_data)
        if qp.state not in CM_QP_STATES:
            raise InvalidState(f"accept with a QP in {qp.state.name}")
        session = self._ctx.session
        phys = qp.physical
        if session is None or phys is None:
            raise InvalidState("the request died with the device it arrived on")
        # A requester without a shim gets the user's bytes as they are: it could not
        # read our header, and the connection is not resumable anyway.
        header = self._header
        data = private_data
        if header is not None:
            data = encode(Accept(vqpn=qp.qp_num, inc=session.inc), private_data)
        try:
            pcm = await self._request.accept(phys, data)
        except DeviceRemoved:
            self._ctx.device_gone()
            if header is None or not self._request.replied:
                raise ConnectTimeout(
                    "the device went away before the connection was made"
                ) from None
            # Our REP is out and the peer may be sending: resume it on the next device,
            # and only then say it was made (the REP may also have been lost).
            cm_id = VirtualCmId(qp, self.private_data, self.source)
            qp.connected_in_move(PeerLink(self.source, header.vqpn, header.inc), cm_id)
            deadline = trio.current_time() + self._ctx.core.config.resume_timeout
            try:
                resumed = await qp.wait_resumed(deadline)
            finally:
                if not qp.resumed_ok():
                    qp.abandon()
            if not resumed:
                raise ConnectTimeout(
                    "the device went away after our reply, and the peer did not know it"
                ) from None
            return cm_id
        peer = None if header is None else PeerLink(self.source, header.vqpn, header.inc)
        cm_id = VirtualCmId(qp, self.private_data, pcm.peer_address)
        qp.connected(session, pcm, peer, cm_id)
        return cm_id

    async def reject(self, private_data: bytes = b"") -> None:
        """Reject; the active side gets ConnectionRejected with ``private_data``."""
        await self._request.reject(private_data)


class VirtualCmListener(CmListener):
    """A listener that listens again on every new device."""

    def __init__(self, ctx: VirtualContext, port: int, backlog: int) -> None:
        self._ctx = ctx
        self.port = port
        self._backlog = backlog
        self._phys: CmListener | None = None
        self._send, self._recv = trio.open_memory_channel[VirtualCmRequest](backlog)
        self._closed = False

    async def get_request(self) -> VirtualCmRequest:
        """Wait for the next connect request.

        Raises:
            InvalidHandle: the listener was closed.
        """
        if self._closed:
            raise InvalidHandle("listener is closed")
        try:
            return await self._recv.receive()
        except (trio.ClosedResourceError, trio.EndOfChannel):
            raise InvalidHandle("listener is closed") from None

    def close(self) -> None:
        """Stop listening. Idempotent."""
        if self._closed:
            return
        self._closed = True
        phys, self._phys = self._phys, None
        if phys is not None:
            with contextlib.suppress(VerbsError):
                phys.close()
        self._send.close()
        self._recv.close()
        if self in self._ctx.listeners:
            self._ctx.listeners.remove(self)
        self._ctx.core.listen_ports.discard(self.port)

    async def attach(self, session: Session, phys_ctx: object) -> None:
        """Listen on the new device and feed its requests to this listener."""
        from ..verbs import Context

        assert isinstance(phys_ctx, Context)
        listener = await phys_ctx.cm_listen(self.port, backlog=self._backlog)
        self._phys = listener
        session.spawn(self._pump, listener)

    def detach(self) -> None:
        """Forget the physical listener (it dies with its context)."""
        self._phys = None

    async def _pump(self, listener: CmListener) -> None:
        while True:
            try:
                request = await listener.get_request()
            except VerbsError:
                return
            header, user = _unwrap(request.private_data)
            connect_header = header if isinstance(header, Connect) else None
            try:
                self._send.send_nowait(VirtualCmRequest(self._ctx, request, connect_header, user))
            except trio.WouldBlock:
                await request.reject(b"")
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return


async def listen(ctx: VirtualContext, port: int, backlog: int) -> VirtualCmListener:
    """Create a virtual listener on ``port`` (and its physical one, if a device is there).

    Raises:
        AddressInUse: the port is already listened on by this node (or is the
            shim's control port).
    """
    core = ctx.core
    if port in core.listen_ports or port == core.config.control_port:
        raise AddressInUse(f"CM port {port} is already listened on")
    listener = VirtualCmListener(ctx, port, backlog)
    if ctx.session is not None and ctx.physical is not None:
        try:
            await listener.attach(ctx.session, ctx.physical)
        except DeviceRemoved:
            ctx.device_gone()  # it listens on the next device
    core.listen_ports.add(port)
    ctx.listeners.append(listener)
    return listener


async def connect(
    ctx: VirtualContext,
    qp: VirtualQP,
    address: str,
    port: int,
    private_data: bytes,
    timeout: float,
) -> VirtualCmId:
    """The virtual ``cm_connect``: wait for a device if there is none, then connect.

    Raises:
        as :meth:`rdsx.verbs.Context.cm_connect`, and InvalidArgument for more than
        :data:`~rdsx.shim.protocol.USER_PRIVATE_DATA_MAX` bytes of private data.
    """
    if qp.state not in CM_QP_STATES:
        raise InvalidState(f"cm_connect with a QP in {qp.state.name}")
    check_private_data(private_data)
    deadline = trio.current_time() + timeout
    # A peer's shim asking to resume this QP before our connect returned waits (BUSY).
    qp.connecting_to = address
    try:
        while True:
            session = await ctx.core.wait_attached(ctx, deadline)
            phys_ctx, phys_qp = ctx.physical, qp.physical
            if phys_ctx is None or phys_qp is None or session.removal.is_set():
                # This device is on its way out: connect on the next one, in time.
                with trio.move_on_at(deadline):
                    await session.done.wait()
                if trio.current_time() >= deadline:
                    raise ConnectTimeout("no usable device arrived in time")
                continue
            data = encode(Connect(vqpn=qp.qp_num, inc=session.inc), private_data)
            remaining = max(deadline - trio.current_time(), 0.0)
            try:
                pcm = await phys_ctx.cm_connect(phys_qp, address, port, data, timeout=remaining)
            except DeviceRemoved:
                # The device went under the connect: try again on the next one, in time.
                session.report_removal(None)
                with trio.move_on_at(deadline):
                    await session.done.wait()
                continue
            break
    finally:
        qp.connecting_to = None
    accepted, user = _unwrap(pcm.private_data)
    peer = None
    if isinstance(accepted, Accept):
        peer = PeerLink(address, accepted.vqpn, accepted.inc)
    cm_id = VirtualCmId(qp, user, pcm.peer_address)
    qp.connected(session, pcm, peer, cm_id)
    return cm_id
