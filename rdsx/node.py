"""The node: one RDS address, its sockets, its connections and its current device.

:func:`open_node` is the entry point. A :class:`Node` owns

* the **bind table** and the **sockets** (:mod:`rdsx.socket`);
* one engine :class:`~rdsx.engine.Connection` per remote address, created
  lazily by the first send (or the peer's first connect) and never
  collected, as in Linux; a connection outlives every transport under it;
* the **current device** from its :class:`~rdsx.verbs.DeviceSource`: a
  context, one PD, the CM listener, and one :class:`~rdsx.path.Path` per
  connected peer; every task of the device runs in the device's nursery;
* the **loopback** connection to its own address, which moves messages
  between sockets without verbs, as RDS's loop transport does.

Top-down mode (``mode="reconnect"``). When the device announces
``DEVICE_REMOVAL`` with a grace deadline the node stops taking new messages
onto the wire (they wait, subject to SNDBUF), lets what is in flight complete
and be acknowledged until shortly before the deadline, disconnects every path
so peers know at once, and closes the context so the detach succeeds. Each
connection goes DOWN keeping its queues. When the next device arrives the
lower address reconnects (a peer that has messages waiting connects too),
unacknowledged messages are resent with their sequence numbers, and the
receiver drops what it already had. A surprise removal skips the drain.

Who connects: the lower address initiates and keeps reconnecting; the higher
address connects only while it has something to send (otherwise a peer that
never heard of it would never learn it exists). A raced connect is settled by
the engine: the lower address's attempt wins.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import logging
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Literal

import trio

from ._bind import BindTable
from ._device import DeviceState, close_quietly
from ._message import MessageEnd, OutMessage
from ._rdma_book import RdmaBook
from .config import NodeConfig
from .counters import Counters, CounterSet
from .engine import (
    Backoff,
    CongestionMap,
    CongestionUpdated,
    Connection,
    ConnState,
    MessageAcked,
    MessageDropped,
    MessageReceived,
    MessagesAcked,
    PeerRestarted,
    PongReceived,
    should_initiate,
)
from .errors import (
    DeviceRemoved,
    ModeUnavailable,
    RemoteProtocolError,
    SocketClosed,
    VerbsError,
)
from .info import ConnectionInfo, MessageInfo, NodeInfo
from .path import RDMA_EXT_TAG, Path, PathReplaced
from .rdma import RdmaStatus
from .socket import Socket, cong_monitor_mask
from .verbs import (
    AsyncEventType,
    CmListener,
    CmRequest,
    Device,
    DeviceSource,
    SendWR,
    WcStatus,
)

__all__ = ["Node", "open_node"]

log = logging.getLogger("rdsx.node")

Mode = Literal["reconnect", "transparent"]


class _Conn:
    """The node's record of one peer: the engine plus the transport bookkeeping."""

    def __init__(self, node: Node, remote: str) -> None:
        cfg = node.config
        self.remote = remote
        # Received messages go straight to the sockets and acks come one event per ack,
        # not one per message: the per-message events cost more than the delivery.
        self.engine = Connection(
            node.address,
            remote,
            generation=node._generation,
            config=cfg.engine,
            batch_acks=True,
            on_message=node._receiver(remote),
        )
        self.initiator = should_initiate(node.address, remote)
        self.backoff = Backoff()
        #: Bumped whenever the transport changes hands; stale paths check it.
        self.epoch = 0
        self.path: Path | None = None
        self.attempt: trio.CancelScope | None = None
        self.lot = trio.lowlevel.ParkingLot()
        #: Was ever UP, or the peer may think so: worth reconnecting to at once when a
        #: new device arrives (see _handle_request).
        self.was_up = False
        #: Try once on our own although we are the higher address (see _serve_device).
        self.eager = False
        #: Messages sent while the device drains: they join the engine afterwards.
        self.held: deque[tuple[OutMessage, bool, bytes]] = deque()

    def new_epoch(self) -> int:
        self.epoch += 1
        return self.epoch

    def poke(self) -> None:
        self.lot.unpark_all()


class Node:
    """One RDS endpoint address with its sockets, connections and device.

    Create it with :func:`open_node`; everything it runs stops when that
    context exits.

    Attributes:
        address: the RDS address (IP-like string) this node answers on.
        config: its :class:`~rdsx.NodeConfig`.
        mode: ``"reconnect"`` (top-down) or ``"transparent"`` (bottom-up shim).
    """

    def __init__(self, address: str, config: NodeConfig, mode: Mode) -> None:
        self.address = address
        self.config = config
        self.mode = mode
        self._rng = random.Random(config.seed)
        self._generation = self._rng.randrange(1, 1 << 32)
        self._counters = CounterSet()
        self._binds: BindTable[Socket] = BindTable(self._rng)
        self._sockets: dict[Socket, None] = {}
        self._inodes = itertools.count(1)
        self._conns: dict[str, _Conn] = {}
        self._local_cong = CongestionMap()
        self._cong_lot = trio.lowlevel.ParkingLot()
        self._loop_tx_seq = 1
        self._loop_rx_seq = 0
        self._loop_used = False
        self._dev: DeviceState | None = None
        self._dev_nursery: trio.Nursery | None = None
        self._rdma = RdmaBook(address, self._counters)
        #: Sockets a delivery inside ``receive_frame`` may have congested (see _dispatch).
        self._cong_recheck: list[Socket] = []
        self._closed = False
        self._device_lot = trio.lowlevel.ParkingLot()

    def __repr__(self) -> str:
        return f"<rdsx.Node {self.address} {self.mode}>"

    # ------------------------------------------------------------------ public API

    @property
    def device(self) -> Device | None:
        """The device the node is serving now (``None`` between removal and arrival)."""
        dev = self._dev
        return None if dev is None or dev.gone.is_set() else dev.device

    @property
    def closed(self) -> bool:
        """True once the node's context exited."""
        return self._closed

    def socket(
        self,
        *,
        sndbuf: int | None = None,
        rcvbuf: int | None = None,
        cong_monitor: bool = False,
    ) -> Socket:
        """Create an unbound socket.

        Args:
            sndbuf: ``SO_SNDBUF`` in payload bytes (default ``config.sndbuf``).
            rcvbuf: ``SO_RCVBUF`` in payload bytes (default ``config.rcvbuf``).
            cong_monitor: ``RDS_CONG_MONITOR``: report ports that free up.

        Returns:
            The socket; :meth:`~rdsx.Socket.bind` it before use.

        Raises:
            SocketClosed: the node is closed.
            ValueError: a buffer size that is not a positive int.
        """
        if self._closed:
            raise SocketClosed("node is closed")
        sock = Socket(
            self,
            inode=next(self._inodes),
            sndbuf=self.config.sndbuf if sndbuf is None else sndbuf,
            rcvbuf=self.config.rcvbuf if rcvbuf is None else rcvbuf,
            cong_monitor=cong_monitor,
        )
        self._sockets[sock] = None
        return sock

    def statistics(self) -> Counters:
        """Return every counter of the node and its connections, summed, frozen.

        Names are rds-info's (``conn_reset``, ``recv_drop_no_sock``, ...); see
        :mod:`rdsx.counters`.
        """
        parts = [self._counters.snapshot()]
        parts.extend(conn.engine.statistics().as_dict() for conn in self._conns.values())
        return Counters.merge(*parts)

    def connection_state(self, remote: str) -> ConnState:
        """The state of the connection to ``remote`` (DOWN if there is none yet)."""
        if remote == self.address:
            return ConnState.UP
        conn = self._conns.get(remote)
        return ConnState.DOWN if conn is None else conn.engine.state

    def info(self) -> NodeInfo:
        """Return the rds-info tables of this node, frozen."""
        connections: list[ConnectionInfo] = []
        send_rows: list[MessageInfo] = []
        retrans_rows: list[MessageInfo] = []
        if self._loop_used:
            connections.append(
                ConnectionInfo(
                    local_addr=self.address,
                    remote_addr=self.address,
                    next_tx_seq=self._loop_tx_seq,
                    next_rx_seq=self._loop_rx_seq,
                    state="UP",
                    flags="--C-",
                    loopback=True,
                )
            )
        for remote, conn in self._conns.items():
            einfo = conn.engine.info()
            state = einfo.state
            path = conn.path
            flags = (
                ("s" if path is not None and path.sending else "-")
                + ("c" if state in (ConnState.CONNECTING, ConnState.RESETTING) else "-")
                + ("C" if state is ConnState.UP else "-")
                + ("E" if state is ConnState.ERROR else "-")
            )
            connections.append(
                ConnectionInfo(
                    local_addr=self.address,
                    remote_addr=remote,
                    next_tx_seq=einfo.next_tx_seq,
                    next_rx_seq=einfo.next_rx_seq,
                    state=state.name,
                    flags=flags,
                )
            )
            for rows, queue in (
                (send_rows, einfo.send_queue),
                (retrans_rows, einfo.retransmit_queue),
            ):
                rows.extend(
                    MessageInfo(
                        local_addr=self.address,
                        local_port=q.sport,
                        remote_addr=remote,
                        remote_port=q.dport,
                        seq=q.seq,
                        bytes=q.nbytes,
                    )
                    for q in queue
                )
            send_rows.extend(
                MessageInfo(
                    local_addr=self.address,
                    local_port=msg.socket.port or 0,
                    remote_addr=remote,
                    remote_port=msg.dest[1],
                    seq=0,
                    bytes=msg.nbytes,
                )
                for msg, _, _ in conn.held
            )
        recv_rows = [
            MessageInfo(
                local_addr=self.address,
                local_port=port,
                remote_addr=src[0],
                remote_port=src[1],
                seq=seq,
                bytes=nbytes,
            )
            for sock in self._sockets
            for port, src, seq, nbytes in sock._queued_rows()
        ]
        return NodeInfo(
            sockets=tuple(sock.info() for sock in self._sockets),
            connections=tuple(connections),
            recv_queue=tuple(recv_rows),
            send_queue=tuple(send_rows),
            retransmit_queue=tuple(retrans_rows),
        )

    async def wait_device(self) -> Device:
        """Wait until the node serves a device (returns at once if it does).

        Raises:
            SocketClosed: the node closed while waiting.
        """
        while True:
            device = self.device
            if device is not None:
                return device
            if self._closed:
                raise SocketClosed("node is closed")
            await self._device_lot.park()

    # ------------------------------------------------------------------ sockets' side

    def _bind(self, sock: Socket, port: int) -> int:
        return self._binds.bind(port, sock)

    def _unbind(self, port: int) -> None:
        self._binds.unbind(port)

    def _forget(self, sock: Socket) -> None:
        self._sockets.pop(sock, None)

    def _is_congested(self, dest: tuple[str, int]) -> bool:
        addr, port = dest
        if addr == self.address:
            return self._local_cong.test(port)
        conn = self._conns.get(addr)
        return conn is not None and conn.engine.peer_congested(port)

    def _set_congested(self, port: int, congested: bool) -> None:
        if congested:
            self._local_cong.set(port)
        else:
            self._local_cong.clear(port)
        for conn in self._conns.values():
            conn.engine.queue_cong_update(self._local_cong)
            self._kick(conn)
        if not congested:
            # Local senders (loopback) see our own map directly.
            self._cong_lot.unpark_all()
            mask = cong_monitor_mask(port)
            for sock in self._sockets:
                sock._cong_uncongested(mask)

    def _enqueue(self, msg: OutMessage) -> None:
        addr = msg.dest[0]
        if addr == self.address:
            self._loop_send(msg)
            return
        conn = self._conns.get(addr) or self._conn_for(addr)
        sock = msg.socket
        ack_required = sock._snd_bytes >= sock._sndbuf // 2
        ext = b""
        if msg.rdma is not None:
            ext = self._rdma.start(msg)
        dev = self._dev
        if conn.held or (dev is not None and dev.draining):
            conn.held.append((msg, ack_required, ext))
            return
        if ext:
            self._engine_send(conn, msg, ack_required, ext)
        else:
            # The common case, spelled out: it runs once per message.
            conn.engine.send(
                sock._port or 0, msg.dest[1], msg.payload, token=msg, ack_required=ack_required
            )
        path = conn.path
        if path is not None:
            path.kick()
        else:
            conn.poke()

    def _engine_send(self, conn: _Conn, msg: OutMessage, ack_required: bool, ext: bytes) -> None:
        conn.engine.send(
            msg.socket.port or 0,
            msg.dest[1],
            msg.payload,
            token=msg,
            ack_required=ack_required,
            rdma=msg.rdma is not None,
            ext=ext,
        )

    def _release_held(self, conn: _Conn) -> None:
        while conn.held:
            msg, ack_required, ext = conn.held.popleft()
            self._engine_send(conn, msg, ack_required, ext)

    def _kick(self, conn: _Conn) -> None:
        if conn.path is not None:
            conn.path.pump()
        else:
            conn.poke()

    def _cancel(self, sock: Socket, dest: tuple[str, int] | None) -> int:
        """Cancel ``sock``'s messages (to ``dest``, or all); return how many."""
        port = sock.port
        if port is None:
            return 0
        ended: list[object] = []
        for remote, conn in self._conns.items():
            if dest is not None and dest[0] != remote:
                continue
            dport = None if dest is None else dest[1]
            ended.extend(conn.engine.cancel(port, dport))
            kept: deque[tuple[OutMessage, bool, bytes]] = deque()
            for item in conn.held:
                msg = item[0]
                if msg.socket is sock and (dport is None or msg.dest[1] == dport):
                    ended.append(msg)
                else:
                    kept.append(item)
            conn.held = kept
        count = 0
        for token in ended:
            if isinstance(token, OutMessage):
                count += 1
                self._end(token, MessageEnd.CANCELED)
        return count

    def _conn_for(self, remote: str) -> _Conn:
        conn = self._conns.get(remote)
        if conn is None:
            conn = self._conns[remote] = _Conn(self, remote)
            dev, nursery = self._dev, self._dev_nursery
            if dev is not None and nursery is not None and not dev.gone.is_set():
                nursery.start_soon(self._supervise, conn, dev)
        return conn

    # ------------------------------------------------------------------ loopback

    def _loop_send(self, msg: OutMessage) -> None:
        """RDS's loop transport: deliver at once, ack at once, no verbs."""
        counters = self._counters
        self._loop_used = True
        seq = self._loop_tx_seq
        self._loop_tx_seq += 1
        counters.inc("send_queued")
        if msg.rdma is not None:
            status = self._rdma.loop_rdma(msg)
            if status is not RdmaStatus.SUCCESS:
                msg.rdma_status = status
                counters.inc("rdma_remote_error")
                self._end(msg, MessageEnd.REMOTE_ERROR)
                return
        self._loop_rx_seq = seq + 1
        sport = msg.socket.port or 0
        dport = msg.dest[1]
        if dport == 0:
            if sport and self.config.engine.ping_enable:
                counters.inc("recv_ping")
                counters.inc("send_pong")
                self._deliver(sport, (self.address, 0), b"", seq)
        else:
            self._deliver(dport, (self.address, sport), msg.payload, seq)
        counters.inc("send_drop_acked")
        self._end(msg, MessageEnd.ACKED)

    # ------------------------------------------------------------------ events

    def _deliver(self, port: int, source: tuple[str, int], data: bytes, seq: int) -> None:
        sock = self._binds.lookup(port)
        values = self._counters.values
        if sock is None or sock._closed:
            values["recv_drop_no_sock"] += 1
            return
        values["recv_delivered"] += 1
        values["recv_queued"] += 1
        sock._deliver(data, source, seq)

    def _receiver(self, remote: str) -> Callable[[int, int, bytes, bytes, int], None]:
        """The engine's ``on_message`` for the connection to ``remote``: deliver at once.

        It runs inside ``receive_frame``, so it never calls into the engine: a
        congestion change waits in ``_cong_recheck`` for the dispatch that follows.
        A pong comes as ``(0, port, b"", b"", seq)``: from ``(remote, 0)``, as RDS has it.
        """
        ports = self._binds.table()
        values = self._counters.values

        def on_message(sport: int, dport: int, data: bytes, ext: bytes, seq: int) -> None:
            if ext and len(ext) >= 13 and ext[0] == RDMA_EXT_TAG:
                values["recv_rdma_bytes"] += int.from_bytes(ext[9:13], "big")
            sock = ports.get(dport)
            if sock is None or sock._closed:
                values["recv_drop_no_sock"] += 1
                return
            values["recv_delivered"] += 1
            values["recv_queued"] += 1
            sock._deliver_received(data, (remote, sport), seq)

        return on_message

    def _dispatch(self, conn: _Conn) -> None:
        """Drain the engine's events into sockets (called after every engine input)."""
        engine = conn.engine
        remote = conn.remote
        next_event = engine.next_event
        deliver = self._deliver
        acked = MessageEnd.ACKED
        # Exact type tests first: the two per-message events take no isinstance chain.
        while (event := next_event()) is not None:
            if type(event) is MessageReceived:
                ext = event.ext
                if ext and len(ext) >= 13 and ext[0] == RDMA_EXT_TAG:
                    self._counters.inc("recv_rdma_bytes", int.from_bytes(ext[9:13], "big"))
                deliver(event.dport, (remote, event.sport), event.data, event.seq)
            elif type(event) is MessagesAcked:
                for token in event.tokens:
                    if type(token) is OutMessage:
                        if token.handle is None:
                            token.socket._message_ended(token, acked)
                        else:
                            self._end(token, acked)
            elif type(event) is MessageAcked:
                token = event.token
                if type(token) is OutMessage:
                    if token.handle is None:
                        token.socket._message_ended(token, acked)
                    else:
                        self._end(token, acked)
            elif isinstance(event, MessageDropped):
                if isinstance(event.token, OutMessage):
                    self._end(event.token, MessageEnd.DROPPED)
            elif isinstance(event, CongestionUpdated):
                if event.newly_uncongested:
                    self._cong_lot.unpark_all()
                    mask = event.monitor_mask
                    for sock in self._sockets:
                        sock._cong_uncongested(mask)
            elif isinstance(event, PongReceived):
                self._deliver(event.port, (remote, 0), b"", event.seq)
            elif isinstance(event, PeerRestarted):
                log.warning(
                    "%s: peer %s restarted (generation %#x -> %#x)",
                    self.address,
                    remote,
                    event.old_generation,
                    event.new_generation,
                )
        if self._cong_recheck:
            recheck, self._cong_recheck = self._cong_recheck, []
            for sock in recheck:
                sock._update_congestion()
        dev = self._dev
        if dev is not None and dev.draining:
            dev.changed.unpark_all()

    def _end(self, msg: OutMessage, how: MessageEnd) -> None:
        if self._rdma.finish(msg, how):  # else once the RDMA's own completion is in
            msg.socket._message_ended(msg, how)

    # ------------------------------------------------------------------ RDMA on paths

    def _rdma_work_request(self, op_id: int, path: Path) -> SendWR | None:
        """The RDMA WR to post ahead of the first fragment of op ``op_id``'s message."""
        return self._rdma.work_request(op_id, path)

    def _rdma_done(self, op_id: int, status: WcStatus) -> None:
        """The RDMA WR of op ``op_id`` completed (or its path is gone: WR_FLUSH_ERR)."""
        self._rdma.done(op_id, status)

    def _rdma_path_closed(self, path: Path) -> None:
        """A path's QP is destroyed: its RDMA WRs will never complete."""
        self._rdma.path_closed(path)

    def _register_mr(self, buffer: bytearray | memoryview, *, readwrite: bool) -> int:
        return self._rdma.register(self._dev, buffer, readwrite=readwrite)

    def _free_mr(self, cookie: int) -> None:
        self._rdma.free(cookie)

    # ------------------------------------------------------------------ devices

    async def _run(
        self,
        devices: DeviceSource,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        started = False

        def ready() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        try:
            while True:
                try:
                    device = await devices.next_device()
                except trio.EndOfChannel:
                    log.info("%s: device source closed", self.address)
                    return
                self._counters.inc("device_arrival")
                await self._serve_device(device, ready)
                ready()
        finally:
            ready()

    async def _serve_device(self, device: Device, ready: Callable[[], None]) -> None:
        try:
            ctx = await device.open()
        except VerbsError as exc:
            log.warning("%s: cannot open %s: %s", self.address, device.name, exc)
            return
        try:
            dev = DeviceState(device, ctx)
        except VerbsError as exc:
            log.warning("%s: cannot use %s: %s", self.address, device.name, exc)
            close_quietly(ctx)
            return
        log.info("%s: serving device %s", self.address, device.name)
        try:
            try:
                listener = await ctx.cm_listen(self.config.cm_port)
            except DeviceRemoved:
                raise
            except VerbsError as exc:
                log.error("%s: cannot listen on %s: %s", self.address, device.name, exc)
                return
            async with trio.open_nursery() as nursery:
                self._dev, self._dev_nursery = dev, nursery
                nursery.start_soon(self._watch_device, dev)
                nursery.start_soon(self._accept_loop, dev, listener, nursery)
                for conn in self._conns.values():
                    # A node that just got a new device tries its old peers at once, even
                    # as the higher address: the lower one may be deep in its back-off.
                    conn.eager = conn.was_up
                    nursery.start_soon(self._supervise, conn, dev)
                self._device_lot.unpark_all()
                ready()
                await dev.gone.wait()
                self._counters.inc("device_removal")
                if not dev.surprise:
                    await self._drain(dev)
                nursery.cancel_scope.cancel()
        except DeviceRemoved:
            dev.removal(None)
        finally:
            self._teardown(dev)

    async def _watch_device(self, dev: DeviceState) -> None:
        try:
            while True:
                event = await dev.ctx.get_async_event()
                if event.type is AsyncEventType.DEVICE_REMOVAL:
                    dev.removal(event.deadline)
                    return
                if event.type is AsyncEventType.DEVICE_FATAL:
                    dev.removal(None)
                    return
                if event.type is AsyncEventType.QP_FATAL:
                    for conn in self._conns.values():
                        path = conn.path
                        if path is not None and path.qp.qp_num == event.qp_num:
                            path.fail(f"QP fatal: {event.info}")
                            self._dispatch(conn)
        except VerbsError as exc:
            # DeviceRemoved, or the context became unusable: either way the device is lost.
            log.info("%s: device events ended: %s", self.address, exc)
            dev.removal(None)

    async def _drain(self, dev: DeviceState) -> None:
        """Let in-flight messages complete and be acked, then say goodbye, before the deadline."""
        assert dev.deadline is not None
        for conn in self._conns.values():
            if conn.attempt is not None:
                conn.attempt.cancel()
        cutoff = dev.deadline - self.config.drain_margin
        with trio.move_on_at(cutoff) as scope:
            while not self._drained():
                await dev.changed.park()
        if scope.cancelled_caught:
            self._counters.inc("drain_timeout")
            log.warning("%s: drain cut short by the removal deadline", self.address)
        with trio.move_on_at(dev.deadline - self.config.drain_margin / 2):
            for conn in list(self._conns.values()):
                path = conn.path
                if path is not None and path.cm_id is not None:
                    with contextlib.suppress(VerbsError):
                        await path.cm_id.disconnect()

    def _drained(self) -> bool:
        for conn in self._conns.values():
            path = conn.path
            if path is None or not path.up:
                continue
            if path.sending:
                return False
            einfo = conn.engine.info()
            if einfo.retransmit_queue or einfo.send_queue:
                return False
        return True

    def _teardown(self, dev: DeviceState) -> None:
        """The device is gone or going: every connection DOWN, every resource released."""
        for conn in self._conns.values():
            path = conn.path
            conn.path = None
            if path is not None:
                path.abort()
                path.close()
            if conn.engine.state is not ConnState.DOWN:
                self._transport_down(conn)
        self._rdma.forget_device(dev)
        dev.close()
        if self._dev is dev:
            self._dev = None
            self._dev_nursery = None
        dev.draining = False
        for conn in self._conns.values():
            self._release_held(conn)
            self._dispatch(conn)
        log.info("%s: released device %s", self.address, dev.device.name)

    # ------------------------------------------------------------------ connections

    def _transport_down(self, conn: _Conn) -> None:
        """The connection's transport is gone: engine DOWN (queues kept), wake its supervisor."""
        conn.new_epoch()
        conn.path = None
        if conn.engine.state is not ConnState.DOWN:
            conn.engine.transport_down(trio.current_time())
        self._dispatch(conn)
        conn.poke()

    def _wants_connect(self, conn: _Conn, dev: DeviceState) -> bool:
        if dev.gone.is_set() or self._closed or conn.engine.state is not ConnState.DOWN:
            return False
        return conn.initiator or conn.eager or conn.engine.has_pending()

    async def _supervise(self, conn: _Conn, dev: DeviceState) -> None:
        while True:
            while not self._wants_connect(conn, dev):
                await conn.lot.park()
            delay = conn.backoff.next_delay(self._rng)
            if delay > 0:
                await trio.sleep(delay)  # reconnect back-off, not a race fix
                if not self._wants_connect(conn, dev):
                    continue
            await self._attempt(conn, dev)

    async def _attempt(self, conn: _Conn, dev: DeviceState) -> None:
        self._counters.inc("conn_connect_attempt")
        conn.eager = False
        epoch = conn.new_epoch()
        conn.engine.start_connect(trio.current_time())
        try:
            path = Path(self, conn, dev, epoch)
        except VerbsError as exc:
            if isinstance(exc, DeviceRemoved):
                dev.removal(None)
            log.warning("%s -> %s: no path resources: %s", self.address, conn.remote, exc)
            self._transport_down(conn)
            return
        try:
            established = False
            with trio.CancelScope() as scope:
                conn.attempt = scope
                try:
                    await path.connect()
                    established = True
                except PathReplaced:
                    pass
                except DeviceRemoved:
                    dev.removal(None)
                except VerbsError as exc:
                    log.debug("%s -> %s: connect failed: %r", self.address, conn.remote, exc)
                except RemoteProtocolError as exc:
                    self._counters.inc("recv_drop_bad_frame")
                    log.warning("%s -> %s: bad handshake: %s", self.address, conn.remote, exc)
            if conn.attempt is scope:
                conn.attempt = None
            if not established or conn.epoch != epoch:
                self._counters.inc("conn_connect_failed")
                if conn.epoch == epoch:
                    self._transport_down(conn)
                return
            conn.path = path
            conn.was_up = True
            conn.backoff.reset()
            self._dispatch(conn)
            await path.run()
        finally:
            if conn.path is path:
                conn.path = None
            path.close()

    async def _accept_loop(
        self, dev: DeviceState, listener: CmListener, nursery: trio.Nursery
    ) -> None:
        try:
            while True:
                request = await listener.get_request()
                nursery.start_soon(self._handle_request, dev, request)
        except DeviceRemoved:
            dev.removal(None)
        except VerbsError as exc:
            log.error("%s: listener failed: %s", self.address, exc)
        finally:
            close_quietly(listener)

    async def _handle_request(self, dev: DeviceState, request: CmRequest) -> None:
        remote = request.source
        if remote == self.address or dev.gone.is_set() or self._closed:
            await self._reject(request)
            return
        conn = self._conn_for(remote)
        engine = conn.engine
        if engine.state is ConnState.ERROR:
            self._transport_down(conn)
        if not engine.incoming_connect(trio.current_time()):
            await self._reject(request)
            return
        epoch = conn.new_epoch()
        old, conn.path = conn.path, None
        if old is not None:
            old.abort()
        if conn.attempt is not None:
            conn.attempt.cancel()
        self._dispatch(conn)
        try:
            path = Path(self, conn, dev, epoch)
        except VerbsError as exc:
            if isinstance(exc, DeviceRemoved):
                dev.removal(None)
            self._transport_down(conn)
            await self._reject(request)
            return
        try:
            established = False
            # Once our REP is out the peer may be established and sending, and our QP
            # acknowledges its SENDs before we read them; if this device goes before the
            # RTU, the peer holds those messages unacknowledged with nothing to tell it
            # our QP is gone. Reconnecting on the next device resends them.
            conn.was_up = True
            with trio.CancelScope() as scope:
                conn.attempt = scope
                try:
                    await path.accept(request)
                    established = True
                except PathReplaced:
                    pass
                except DeviceRemoved:
                    dev.removal(None)
                except VerbsError as exc:
                    log.debug("%s <- %s: accept failed: %r", self.address, remote, exc)
                except RemoteProtocolError as exc:
                    self._counters.inc("recv_drop_bad_frame")
                    log.warning("%s <- %s: bad handshake: %s", self.address, remote, exc)
            if conn.attempt is scope:
                conn.attempt = None
            if not established or conn.epoch != epoch:
                if conn.epoch == epoch:
                    self._transport_down(conn)
                return
            conn.path = path
            conn.was_up = True
            conn.backoff.reset()
            self._dispatch(conn)
            await path.run()
        finally:
            if conn.path is path:
                conn.path = None
            path.close()

    async def _reject(self, request: CmRequest) -> None:
        with contextlib.suppress(VerbsError):
            await request.reject()

    async def _goodbye(self) -> None:
        """On close: tell every connected peer at once instead of letting its QP time out."""
        for conn in list(self._conns.values()):
            path = conn.path
            if path is not None and path.cm_id is not None:
                with contextlib.suppress(VerbsError):
                    await path.cm_id.disconnect()

    def _close(self) -> None:
        for sock in list(self._sockets):
            sock.close()
        self._closed = True
        self._cong_lot.unpark_all()
        self._device_lot.unpark_all()


@asynccontextmanager
async def open_node(
    address: str,
    devices: DeviceSource,
    *,
    mode: Mode = "reconnect",
    config: NodeConfig | None = None,
) -> AsyncIterator[Node]:
    """Run an RDS node at ``address`` on the devices ``devices`` yields.

    Returns once the first device is served (its CM listener is up) or the
    source turned out empty; the node then follows the source: each
    ``DEVICE_REMOVAL`` is handled as the mode says, each new device is taken
    up. Leaving the context closes every socket and stops every task.

    Args:
        address: the node's RDS address (``"127.0.0.1"``-style).
        devices: the transport's device source for this node.
        mode: ``"reconnect"`` (top-down: RDS reconnects and resends) or
            ``"transparent"`` (bottom-up: the verbs shim hides the removal).
        config: settings; :class:`~rdsx.NodeConfig` defaults otherwise.

    Returns:
        An async context manager yielding the :class:`Node`.

    Raises:
        ModeUnavailable: ``mode="transparent"`` but ``rdsx.shim`` is not installed.
        ValueError: an unknown mode.
    """
    if mode not in ("reconnect", "transparent"):
        raise ValueError(f"mode must be 'reconnect' or 'transparent', not {mode!r}")
    cfg = config if config is not None else NodeConfig()
    if mode == "transparent":
        try:
            shim = importlib.import_module("rdsx.shim")
        except ImportError as exc:
            raise ModeUnavailable(
                "mode='transparent' needs the bottom-up verbs shim (rdsx.shim), "
                "which is not available in this build"
            ) from exc
        source_type = getattr(shim, "TransparentDeviceSource", None)
        if source_type is None:
            raise ModeUnavailable("rdsx.shim has no TransparentDeviceSource")
        async with (
            source_type(devices) as wrapped,
            _run_node(address, wrapped, cfg, mode) as node,
        ):
            yield node
        return
    async with _run_node(address, devices, cfg, mode) as node:
        yield node


@asynccontextmanager
async def _run_node(
    address: str, devices: DeviceSource, config: NodeConfig, mode: Mode
) -> AsyncIterator[Node]:
    node = Node(address, config, mode)
    async with trio.open_nursery() as nursery:
        if config.admin_socket is not None:
            from .admin import serve_admin

            await nursery.start(serve_admin, node, config.admin_socket)
        await nursery.start(node._run, devices)
        try:
            yield node
        finally:
            node._close()
            with trio.move_on_after(config.drain_margin) as scope:
                scope.shield = True
                await node._goodbye()
            nursery.cancel_scope.cancel()
