"""The RDS socket (reference/rds.md §1): bind, sendto, recvfrom, buffers, congestion.

A :class:`Socket` belongs to one :class:`~rdsx.Node` and is created with
:meth:`rdsx.Node.socket`. It never touches a device: it queues messages on the
node's connection to the destination and reads what the node delivered to it.
Everything here is synchronous bookkeeping plus parking for the blocking
forms, so the ``*_nowait`` twins and the blocking calls share one code path.
"""

from __future__ import annotations

from collections import deque
from types import TracebackType
from typing import TYPE_CHECKING

import attrs
import trio

from ._message import MessageEnd, OutMessage
from .config import MAX_MESSAGE_SIZE
from .errors import (
    AddressNotAvailable,
    Congested,
    MessageTooLarge,
    NotBound,
    NotConnected,
    SocketClosed,
    WouldBlock,
)
from .info import SocketInfo
from .rdma import RdmaArgs, RdmaNotification, RdmaStatus

if TYPE_CHECKING:
    from .node import Node

__all__ = ["CongestionUpdate", "Datagram", "Socket", "cong_monitor_mask"]

Address = tuple[str, int]
BytesLike = bytes | bytearray | memoryview


def cong_monitor_mask(port: int) -> int:
    """The bit a port has in a congestion-update mask (``RDS_CONG_MONITOR_MASK``)."""
    return 1 << (port % 64)


@attrs.frozen(slots=True)
class Datagram:
    """A received message, as :meth:`Socket.recvmsg` returns it.

    Attributes:
        payload: the message bytes (may be empty).
        source: ``(address, port)`` of the sending socket.
    """

    payload: bytes
    source: Address


@attrs.frozen(slots=True)
class CongestionUpdate:
    """Ports that became uncongested (``RDS_CMSG_CONG_UPDATE``).

    Attributes:
        mask: bit ``port % 64`` set for every port this socket had found
            congested (with ``cong_monitor``) and that is now free.
    """

    mask: int


_ENDED_STATUS = {
    MessageEnd.CANCELED: RdmaStatus.CANCELED,
    MessageEnd.DROPPED: RdmaStatus.DROPPED,
    MessageEnd.REMOTE_ERROR: RdmaStatus.REMOTE_ERROR,
}


def _check_dest(dest: object) -> Address:
    if type(dest) is tuple and len(dest) == 2:
        # The common case, exact types: the tuple itself is the answer.
        addr, port = dest
        if type(addr) is str and type(port) is int and addr and 0 <= port < 1 << 16:
            return dest
    if (
        not isinstance(dest, tuple)
        or len(dest) != 2
        or not isinstance(dest[0], str)
        or not isinstance(dest[1], int)
    ):
        raise AddressNotAvailable(f"destination must be (address: str, port: int), got {dest!r}")
    if not dest[0] or not 0 <= dest[1] < 1 << 16:
        raise AddressNotAvailable(f"bad destination {dest!r}")
    return (dest[0], dest[1])


class Socket:
    """A reliable datagram socket bound to (node address, port).

    Messages from one socket to one destination arrive in order and exactly
    once while the destination socket stays open, across connection resets
    and device removals. Use as ``async with node.socket() as sock:`` or call
    :meth:`close`.
    """

    def __init__(
        self, node: Node, *, inode: int, sndbuf: int, rcvbuf: int, cong_monitor: bool
    ) -> None:
        self._node = node
        self._inode = inode
        self._sndbuf = self._check_buf("sndbuf", sndbuf)
        self._rcvbuf = self._check_buf("rcvbuf", rcvbuf)
        self._cong_monitor = cong_monitor
        self._port: int | None = None
        self._peer: Address | None = None
        self._closed = False
        self._snd_bytes = 0
        self._rcv_bytes = 0
        self._congested = False
        self._recv_queue: deque[tuple[bytes, Address, int]] = deque()
        self._notifications: deque[RdmaNotification] = deque()
        self._cong_interest = 0
        self._cong_pending = 0
        self._recv_lot = trio.lowlevel.ParkingLot()
        self._send_lot = trio.lowlevel.ParkingLot()
        self._cookies: set[int] = set()

    @staticmethod
    def _check_buf(name: str, value: int) -> int:
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
        return value

    # ------------------------------------------------------------------ properties

    @property
    def node(self) -> Node:
        """The node this socket belongs to."""
        return self._node

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called (or the node closed)."""
        return self._closed

    @property
    def port(self) -> int | None:
        """The bound port, or ``None`` before :meth:`bind`."""
        return self._port

    @property
    def sndbuf(self) -> int:
        """``SO_SNDBUF``: payload bytes that may be unacknowledged at once."""
        return self._sndbuf

    @sndbuf.setter
    def sndbuf(self, value: int) -> None:
        self._sndbuf = self._check_buf("sndbuf", value)
        self._send_lot.unpark_all()

    @property
    def rcvbuf(self) -> int:
        """``SO_RCVBUF``: above it this socket's port is marked congested."""
        return self._rcvbuf

    @rcvbuf.setter
    def rcvbuf(self, value: int) -> None:
        self._rcvbuf = self._check_buf("rcvbuf", value)
        self._update_congestion()

    @property
    def cong_monitor(self) -> bool:
        """``RDS_CONG_MONITOR``: report ports that become uncongested (see :meth:`recvmsg`)."""
        return self._cong_monitor

    @cong_monitor.setter
    def cong_monitor(self, value: bool) -> None:
        self._cong_monitor = bool(value)
        if not value:
            self._cong_interest = 0

    @property
    def snd_bytes(self) -> int:
        """Payload bytes sent and not yet acknowledged, cancelled or dropped."""
        return self._snd_bytes

    @property
    def rcv_bytes(self) -> int:
        """Payload bytes waiting to be received."""
        return self._rcv_bytes

    def getsockname(self) -> Address:
        """Return ``(address, port)`` this socket is bound to.

        Raises:
            NotBound: :meth:`bind` was not called.
        """
        if self._port is None:
            raise NotBound("socket is not bound")
        return (self._node.address, self._port)

    def getpeername(self) -> Address:
        """Return the default destination set by :meth:`connect`.

        Raises:
            NotConnected: :meth:`connect` was not called.
        """
        if self._peer is None:
            raise NotConnected("socket has no default destination")
        return self._peer

    # ------------------------------------------------------------------ bind / connect

    def bind(self, port: int = 0) -> int:
        """Bind to ``(node address, port)``.

        Args:
            port: 2..65535, or 0 for a free port chosen at random.

        Returns:
            The port bound.

        Raises:
            SocketClosed: the socket is closed.
            AddressNotAvailable: port 1 (reserved), outside 0..65535, or the
                socket is already bound (RDS forbids rebinding: EINVAL).
            AddressInUse: another socket holds the port.
        """
        self._check_open()
        if self._port is not None:
            raise AddressNotAvailable(f"socket is already bound to port {self._port}")
        self._port = self._node._bind(self, port)
        return self._port

    def connect(self, dest: Address) -> None:
        """Set the default destination of :meth:`send`; nothing goes on the wire.

        Raises:
            SocketClosed: the socket is closed.
            AddressNotAvailable: ``dest`` is not an ``(address, port)`` pair.
        """
        self._check_open()
        self._peer = _check_dest(dest)

    # ------------------------------------------------------------------ send

    async def sendto(self, data: BytesLike, dest: Address, *, rdma: RdmaArgs | None = None) -> int:
        """Send one message to ``dest``, waiting for congestion and send-buffer space.

        Args:
            data: the payload (0 bytes to 1 MiB, and no more than ``sndbuf``).
            dest: ``(address, port)``; port 0 is a ping.
            rdma: an RDMA operation to perform on the peer's memory before the
                message is delivered.

        Returns:
            The payload length.

        Raises:
            NotBound: the socket is not bound.
            MessageTooLarge: payload or RDMA > 1 MiB, or payload > ``sndbuf``.
            AddressNotAvailable: a malformed destination.
            SocketClosed: the socket or node closed, also while waiting.
        """
        while True:
            result = self._try_send(data, dest, rdma, blocking=True)
            if isinstance(result, int):
                return result
            await result.park()

    def sendto_nowait(self, data: BytesLike, dest: Address, *, rdma: RdmaArgs | None = None) -> int:
        """Like :meth:`sendto` but never waits.

        Raises:
            Congested: ``dest``'s port is congested (ENOBUFS); with ``cong_monitor``
                the port is remembered and reported when it frees up.
            WouldBlock: the send buffer is full (EAGAIN).
            NotBound, MessageTooLarge, AddressNotAvailable, SocketClosed: as :meth:`sendto`.
        """
        result = self._try_send(data, dest, rdma, blocking=False)
        assert isinstance(result, int)
        return result

    async def send(self, data: BytesLike, *, rdma: RdmaArgs | None = None) -> int:
        """:meth:`sendto` the destination set by :meth:`connect`.

        Raises:
            NotConnected: no default destination.
            Others as :meth:`sendto`.
        """
        return await self.sendto(data, self.getpeername(), rdma=rdma)

    def send_nowait(self, data: BytesLike, *, rdma: RdmaArgs | None = None) -> int:
        """:meth:`sendto_nowait` the destination set by :meth:`connect`.

        Raises:
            NotConnected: no default destination.
            Others as :meth:`sendto_nowait`.
        """
        return self.sendto_nowait(data, self.getpeername(), rdma=rdma)

    def _try_send(
        self, data: BytesLike, dest: Address, rdma: RdmaArgs | None, *, blocking: bool
    ) -> int | trio.lowlevel.ParkingLot:
        # Runs once per message: locals, and no call that the common case can skip.
        node = self._node
        if self._closed or node._closed:
            self._check_open()
        if self._port is None:
            raise NotBound("bind the socket before sending")
        dest = _check_dest(dest)
        payload = data if type(data) is bytes else bytes(data)
        size = nbytes = len(payload)
        if rdma is not None:
            rdma.validate()
            size = max(nbytes, rdma.nbytes)
        if size > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(f"{size} bytes exceeds the {MAX_MESSAGE_SIZE}-byte maximum")
        sndbuf = self._sndbuf
        if nbytes > sndbuf:
            raise MessageTooLarge(f"{nbytes} bytes exceeds sndbuf {sndbuf}")
        # Node._is_congested, inline: one call less per message.
        addr = dest[0]
        if addr == node.address:
            congested = node._local_cong.test(dest[1])
        else:
            conn = node._conns.get(addr)
            congested = conn is not None and conn.engine.peer_congested(dest[1])
        if congested:
            counters = node._counters
            if not blocking:
                counters.inc("cong_send_error")
                if self._cong_monitor:
                    self._cong_interest |= cong_monitor_mask(dest[1])
                raise Congested(f"port {dest[1]} of {dest[0]} is congested", destination=dest)
            counters.inc("cong_send_blocked")
            return node._cong_lot
        # RDS accepts while snd_bytes < sndbuf *before* adding, so the last one may overshoot.
        if self._snd_bytes >= sndbuf:
            node._counters.inc("send_queue_full")
            if not blocking:
                raise WouldBlock(f"send buffer full ({self._snd_bytes}/{sndbuf} bytes)")
            return self._send_lot
        self._snd_bytes += nbytes
        node._enqueue(OutMessage(self, dest, payload, rdma))
        return nbytes

    def cancel_sent_to(self, dest: Address) -> int:
        """Drop this socket's queued and unacknowledged messages to ``dest``.

        Messages carrying RDMA get a ``CANCELED`` notification. A message the
        peer already received may still be delivered there.

        Returns:
            How many messages were cancelled.

        Raises:
            SocketClosed: the socket is closed.
            AddressNotAvailable: a malformed destination.
        """
        self._check_open()
        dest = _check_dest(dest)
        return self._node._cancel(self, dest)

    def _message_ended(self, msg: OutMessage, how: MessageEnd) -> None:
        """Called by the node exactly once per message when it leaves the send accounting."""
        if msg.ended is not None:
            return
        msg.ended = how
        self._snd_bytes -= msg.nbytes
        if self._send_lot:  # usually nobody waits: skip the unpark machinery
            self._send_lot.unpark_all()
        if msg.rdma is None or self._closed:
            return
        if how is MessageEnd.ACKED:
            if msg.rdma_status is None and msg.rdma.notify:
                self._notify(RdmaNotification(token=msg.rdma.token, status=RdmaStatus.SUCCESS))
            elif msg.rdma_status is not None:
                self._notify(RdmaNotification(token=msg.rdma.token, status=msg.rdma_status))
        else:
            status = msg.rdma_status or _ENDED_STATUS[how]
            self._notify(RdmaNotification(token=msg.rdma.token, status=status))

    def _notify(self, note: RdmaNotification) -> None:
        self._notifications.append(note)
        self._recv_lot.unpark_all()

    # ------------------------------------------------------------------ receive

    def _deliver(self, payload: bytes, source: Address, seq: int) -> None:
        """Called by the node: queue a received message (the receive side is a soft limit)."""
        self._recv_queue.append((payload, source, seq))
        nbytes = len(payload)
        self._rcv_bytes += nbytes
        self._node._counters.values["recv_bytes_added_to_sock"] += nbytes
        if self._congested or self._rcv_bytes > self._rcvbuf:  # else nothing can change
            self._update_congestion()
        if self._recv_lot:
            self._recv_lot.unpark_all()

    def _deliver_received(self, payload: bytes, source: Address, seq: int) -> None:
        """As :meth:`_deliver`, from inside the engine's ``receive_frame``.

        That must not call back into the engine, so a congestion change it
        causes is left to the node's next dispatch (``Node._cong_recheck``).
        """
        self._recv_queue.append((payload, source, seq))
        nbytes = len(payload)
        self._rcv_bytes += nbytes
        node = self._node
        node._counters.values["recv_bytes_added_to_sock"] += nbytes
        # A delivery can only congest the port (freeing needs a receive).
        if self._rcv_bytes > self._rcvbuf and not self._congested:
            node._cong_recheck.append(self)
        if self._recv_lot:
            self._recv_lot.unpark_all()

    def _update_congestion(self) -> None:
        # Hysteresis as recv.c: congested above rcvbuf, free only below half of it.
        if self._port is None or self._closed:
            return
        if not self._congested and self._rcv_bytes > self._rcvbuf:
            self._congested = True
            self._node._set_congested(self._port, True)
        elif self._congested and self._rcv_bytes < self._rcvbuf // 2:
            self._congested = False
            self._node._set_congested(self._port, False)

    def _cong_uncongested(self, mask: int) -> None:
        """Called by the node when ports in ``mask`` became uncongested at some peer."""
        hit = mask & self._cong_interest
        if hit and self._cong_monitor:
            self._cong_interest &= ~hit
            self._cong_pending |= hit
            self._recv_lot.unpark_all()

    def recvmsg_nowait(self) -> Datagram | RdmaNotification | CongestionUpdate:
        """Return the next item without waiting, in RDS's order.

        RDMA notifications come first, then a congestion update, then data.

        Raises:
            WouldBlock: nothing is waiting.
            NotBound: the socket is not bound.
            SocketClosed: the socket is closed.
        """
        self._check_recv()
        if self._notifications:
            return self._notifications.popleft()
        if self._cong_pending:
            mask, self._cong_pending = self._cong_pending, 0
            return CongestionUpdate(mask)
        payload, source = self._pop_data()
        return Datagram(payload, source)

    async def recvmsg(self) -> Datagram | RdmaNotification | CongestionUpdate:
        """Wait for the next notification, congestion update or message.

        Raises:
            NotBound, SocketClosed: as :meth:`recvmsg_nowait`.
        """
        while True:
            try:
                return self.recvmsg_nowait()
            except WouldBlock:
                await self._recv_lot.park()

    def recvfrom_nowait(self) -> tuple[bytes, Address]:
        """Return the next message and its source ``(address, port)`` without waiting.

        Raises:
            WouldBlock: no message is waiting.
            NotBound: the socket is not bound.
            SocketClosed: the socket is closed.
        """
        if self._closed or self._port is None or self._node._closed:
            self._check_recv()
        return self._pop_data()

    async def recvfrom(self) -> tuple[bytes, Address]:
        """Wait for the next message; return it and its source ``(address, port)``.

        Raises:
            NotBound, SocketClosed: as :meth:`recvfrom_nowait`.
        """
        while True:
            if self._recv_queue and not self._closed and not self._node._closed:
                return self._pop_data()  # the common case, without the checks' calls
            try:
                return self.recvfrom_nowait()
            except WouldBlock:
                await self._recv_lot.park()

    def recv_nowait(self) -> bytes:
        """Return the next message's payload without waiting.

        Raises:
            WouldBlock, NotBound, SocketClosed: as :meth:`recvfrom_nowait`.
        """
        return self.recvfrom_nowait()[0]

    async def recv(self) -> bytes:
        """Wait for the next message and return its payload.

        Raises:
            NotBound, SocketClosed: as :meth:`recvfrom`.
        """
        return (await self.recvfrom())[0]

    def recv_notification_nowait(self) -> RdmaNotification:
        """Return the next RDMA notification without waiting.

        Raises:
            WouldBlock: none is waiting.
            SocketClosed: the socket is closed.
        """
        self._check_open()
        if not self._notifications:
            raise WouldBlock("no RDMA notification")
        return self._notifications.popleft()

    async def recv_notification(self) -> RdmaNotification:
        """Wait for the next RDMA notification.

        Raises:
            SocketClosed: the socket is closed.
        """
        while True:
            try:
                return self.recv_notification_nowait()
            except WouldBlock:
                await self._recv_lot.park()

    def recv_cong_update_nowait(self) -> int:
        """Return the pending congestion-update mask (see :class:`CongestionUpdate`) at once.

        Raises:
            WouldBlock: no update is pending.
            SocketClosed: the socket is closed.
        """
        self._check_open()
        if not self._cong_pending:
            raise WouldBlock("no congestion update")
        mask, self._cong_pending = self._cong_pending, 0
        return mask

    async def recv_cong_update(self) -> int:
        """Wait for ports this socket found congested to become free; return their mask.

        Raises:
            SocketClosed: the socket is closed.
        """
        while True:
            try:
                return self.recv_cong_update_nowait()
            except WouldBlock:
                await self._recv_lot.park()

    def _pop_data(self) -> tuple[bytes, Address]:
        if not self._recv_queue:
            raise WouldBlock("no message waiting")
        payload, source, _seq = self._recv_queue.popleft()
        nbytes = len(payload)
        self._rcv_bytes -= nbytes
        values = self._node._counters.values
        values["recv_bytes_freed_fromsock"] += nbytes
        values["copy_to_user"] += 1
        if self._congested or self._rcv_bytes > self._rcvbuf:
            self._update_congestion()
        return payload, source

    # ------------------------------------------------------------------ RDMA memory

    def get_mr(
        self, buffer: bytearray | memoryview, *, readwrite: bool = True, use_once: bool = False
    ) -> int:
        """Register ``buffer`` for the peers' RDMA and return its cookie (``RDS_GET_MR``).

        Args:
            buffer: writable memory; peers read or write it in place.
            readwrite: allow peers to write (and read); False allows reads only.
            use_once: accepted for RDS compatibility; the region stays registered
                until :meth:`free_mr` or close.

        Returns:
            The cookie (R_Key | address << 32) to hand to a peer.

        Raises:
            SocketClosed: the socket is closed.
            NotConnected: the node has no device right now (between a removal
                and the next arrival); retry after it arrives.
            ValueError: an empty or read-only buffer.
        """
        self._check_open()
        cookie = self._node._register_mr(buffer, readwrite=readwrite)
        self._cookies.add(cookie)
        return cookie

    def free_mr(self, cookie: int) -> None:
        """Deregister the region of ``cookie`` (``RDS_FREE_MR``); later access is REMOTE_ERROR.

        Raises:
            SocketClosed: the socket is closed.
            ValueError: the cookie is not one of this socket's.
        """
        self._check_open()
        if cookie not in self._cookies:
            raise ValueError(f"cookie {cookie:#x} was not registered by this socket")
        self._cookies.discard(cookie)
        self._node._free_mr(cookie)

    # ------------------------------------------------------------------ close

    def close(self) -> None:
        """Close: cancel what is queued, free the receive queue, unbind. Idempotent.

        Queued and unacknowledged messages are cancelled (RDMA ones with a
        ``CANCELED`` status nobody will read); the port's congestion bit is
        cleared; registered memory is deregistered.
        """
        if self._closed:
            return
        self._node._cancel(self, None)
        if self._congested and self._port is not None:
            self._congested = False
            self._node._set_congested(self._port, False)
        self._closed = True
        for cookie in self._cookies:
            self._node._free_mr(cookie)
        self._cookies.clear()
        self._recv_queue.clear()
        self._rcv_bytes = 0
        self._notifications.clear()
        if self._port is not None:
            self._node._unbind(self._port)
        self._node._forget(self)
        self._recv_lot.unpark_all()
        self._send_lot.unpark_all()

    async def aclose(self) -> None:
        """Async spelling of :meth:`close`."""
        self.close()

    async def __aenter__(self) -> Socket:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise SocketClosed("socket is closed")
        if self._node._closed:
            raise SocketClosed("node is closed")

    def _check_recv(self) -> None:
        self._check_open()
        if self._port is None:
            raise NotBound("bind the socket before receiving")

    def info(self) -> SocketInfo:
        """Return this socket's row of the rds-info sockets table."""
        peer = self._peer or ("", 0)
        return SocketInfo(
            bound_addr=self._node.address if self._port is not None else "",
            bound_port=self._port or 0,
            conn_addr=peer[0],
            conn_port=peer[1],
            sndbuf=self._sndbuf,
            rcvbuf=self._rcvbuf,
            snd_bytes=self._snd_bytes,
            rcv_bytes=self._rcv_bytes,
            inode=self._inode,
        )

    def _queued_rows(self) -> list[tuple[int, Address, int, int]]:
        """(local port, source, seq, bytes) of every message waiting to be received."""
        port = self._port or 0
        return [(port, src, seq, len(p)) for p, src, seq in self._recv_queue]

    def __repr__(self) -> str:
        where = f"{self._node.address}:{self._port}" if self._port is not None else "unbound"
        return f"<rdsx.Socket {where}{' closed' if self._closed else ''}>"
