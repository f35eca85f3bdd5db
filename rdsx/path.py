"""A path: one engine :class:`~rdsx.engine.Connection` driven over one verbs RC QP.

The path owns a CQ (shared by both queues), a QP, a send ring and a receive
ring, each one registered MR cut into fixed slots of ``HEADER_SIZE +
frag_size`` bytes. It follows the call sequence of :mod:`rdsx.engine`:

* **send**: a socket's message is queued in the engine and :meth:`Path.kick`
  posts it at once if no SEND is outstanding, else wakes the path's flusher,
  which runs once per scheduler pass for all the messages of that pass.
  :meth:`Path.pump` pulls ``frames_to_send(limit=free slots)``, copies each
  ``(header, payload)`` once into a free slot and posts the batch with one
  ``post_send``, only its last SEND signaled (Linux RDS's
  unsignaled WRs): RC completes in order, so that completion frees every slot
  of the post. A message that carries RDMA is preceded by its
  RDMA WRITE/READ work request on the same QP, so the RC ordering performs the
  RDMA before the message is delivered, and a failed RDMA fails the QP before
  the message's SEND can land.
* **receive**: one reader task waits on the CQ, feeds each receive
  completion to ``receive_frame``, reposts the batch of buffers, frees send
  slots, then dispatches the engine's events and pumps again. The engine's
  timer (the delayed ack) is the deadline of that wait, so there is no
  separate timer task.

A path never retries: any error (a failed completion, a DISCONNECTED CM
event, a malformed frame) ends it through :meth:`Path.fail`, which hands the
connection back DOWN with its queues; the node reconnects with a new path.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import TYPE_CHECKING

import trio

from ._device import DeviceState, close_quietly
from .engine import HEADER_SIZE, ConnState
from .errors import DeviceRemoved, RemoteProtocolError, VerbsError
from .verbs import (
    MR,
    Access,
    CmEventType,
    CmId,
    CmRequest,
    Opcode,
    QpCap,
    RecvWR,
    SendWR,
    Sge,
    WcStatus,
    WorkCompletion,
    cm_init,
)

if TYPE_CHECKING:
    from .node import Node, _Conn

__all__ = ["KIND_RDMA", "KIND_RECV", "KIND_SEND", "RDMA_EXT_TAG", "Path", "PathReplaced"]

log = logging.getLogger("rdsx.path")

#: The low two bits of a wr_id say what it is; the rest is a slot or an RDMA op id.
KIND_SEND = 0
KIND_RECV = 1
KIND_RDMA = 2

_FLAGS_OFFSET = 24
_INDEX_OFFSET = 26
_EXT_OFFSET = 32
_FLAG_EXT = 0x08
#: First ext byte of a message that carries an RDMA op: then a u64 op id, u32 bytes.
RDMA_EXT_TAG = 0x52
_BATCH = 64
#: Frames per ``post_send`` at most. Posting a scheduler pass's frames together saves a
#: post and a completion per message (12 measured 5-10 % cheaper than 8 on sim); a much
#: longer burst outlasts the sim fabric's real-clock slack (20 us: ~16 frames of 4 KiB at
#: 4 GB/s) and drops every later SEND off its fast lane onto millisecond timers.
_POST_MAX = 12


class PathReplaced(Exception):
    """Internal: the connection moved to another transport while this one was being set up."""


class Path:
    """One connection's transport on one device: QP, CQ, rings, reader.

    Args:
        node: the owning node (events are dispatched through it).
        conn: the node's connection record (engine and bookkeeping).
        dev: the device whose PD the resources come from.
        epoch: the connection's transport epoch this path belongs to; a path
            whose epoch is no longer current never touches the engine.

    Raises:
        DeviceRemoved: the device went away while creating the resources.
        VerbsError: the device refused a resource (limits).
    """

    def __init__(self, node: Node, conn: _Conn, dev: DeviceState, epoch: int) -> None:
        cfg = node.config
        self.node = node
        self.conn = conn
        self.dev = dev
        self.epoch = epoch
        self.slot_size = HEADER_SIZE + conn.engine.config.frag_size
        # Ask no more than the device allows (RDMA WRs may double the send queue).
        self.send_slots = max(1, min(cfg.send_slots, dev.attr.max_qp_wr // 2))
        self.recv_slots = max(1, min(cfg.recv_slots, dev.attr.max_qp_wr))
        self.cm_id: CmId | None = None
        self.up = False
        self.failed = False
        self._scope: trio.CancelScope | None = None
        self._wait_scope: trio.CancelScope | None = None
        self._mrs: list[MR] = []
        self.cq = dev.ctx.create_cq(min(2 * self.send_slots + self.recv_slots, dev.attr.max_cqe))
        try:
            # RC completes in order, so RDMA WRs never outnumber the SENDs behind them.
            cap = QpCap(
                max_send_wr=2 * self.send_slots,
                max_recv_wr=self.recv_slots,
                max_send_sge=1,
                max_recv_sge=1,
            )
            self.qp = dev.pd.create_qp(self.cq, self.cq, cap)
            self.send_buf = bytearray(self.send_slots * self.slot_size)
            self.recv_buf = bytearray(self.recv_slots * self.slot_size)
            self.send_mr = dev.reg(self.send_buf, Access.LOCAL_WRITE)
            self._mrs.append(self.send_mr)
            self.recv_mr = dev.reg(self.recv_buf, Access.LOCAL_WRITE)
            self._mrs.append(self.recv_mr)
        except BaseException:
            self.close()
            raise
        self._recv_view = memoryview(self.recv_buf)
        # Slice assignment through a memoryview copies in half a bytearray's time (timeit:
        # 131 against 266 ns for 4 KiB, 95 against 164 for a header), twice per frame.
        self._send_view = memoryview(self.send_buf)
        self.free_send = list(range(self.send_slots - 1, -1, -1))
        # WRs are immutable values: a slot's receive WR is reposted as is, and a send
        # slot's last WR is reused while the frame length repeats (no allocation).
        lkey, base, size = self.recv_mr.lkey, self.recv_mr.addr, self.slot_size
        self._recv_wrs = [
            RecvWR(i << 2 | KIND_RECV, (Sge(base + i * size, size, lkey),))
            for i in range(self.recv_slots)
        ]
        # A slot's cached signaled and unsignaled WR, valid for the frame length beside it
        # (-1: none yet).
        unused = SendWR(0, Opcode.SEND)
        self._send_wrs = [unused] * self.send_slots
        self._send_lens = [-1] * self.send_slots
        self._quiet_wrs = [unused] * self.send_slots
        self._quiet_lens = [-1] * self.send_slots
        #: slot of a post's last (signaled) SEND -> the post's unsignaled slots it retires.
        self._covers: list[list[int] | None] = [None] * self.send_slots
        self._flush_lot = trio.lowlevel.ParkingLot()
        self._flush_wanted = False

    # ------------------------------------------------------------------ establishing

    def _post_receive_ring(self) -> None:
        """INIT, then the whole receive ring posted, before the CM takes the QP.

        The CM keeps receives posted in INIT (as after ``rdma_create_qp``), so
        the peer's first SEND, which may leave the moment its side is
        established, finds a buffer instead of an RNR NAK and a wait of the
        responder's ``min_rnr_timer``.
        """
        cm_init(self.qp)
        self.qp.post_recv(list(self._recv_wrs))

    async def connect(self) -> None:
        """The active side: CM connect with the engine's handshake, then UP.

        The engine must be CONNECTING (``start_connect``). The ring's buffers
        are announced as credits in the handshake and posted before it (the QP
        goes to INIT first), so no early SEND of the peer meets RNR.

        Raises:
            CmError: rejected, unreachable or timed out.
            DeviceRemoved: the device went away.
            RemoteProtocolError: the peer's handshake did not check out.
            PathReplaced: the connection took another transport meanwhile.
        """
        engine = self.conn.engine
        self._post_receive_ring()
        engine.receives_posted(self.recv_slots)
        handshake = engine.handshake()
        self.cm_id = await self.dev.ctx.cm_connect(
            self.qp,
            self.conn.remote,
            self.node.config.cm_port,
            handshake,
            timeout=self.node.config.connect_timeout,
        )
        self._established()

    async def accept(self, request: CmRequest) -> None:
        """The passive side: accept ``request`` with the engine's handshake, then UP.

        The engine must have agreed (``incoming_connect`` returned True). The
        receive ring is posted before the accept, as for :meth:`connect`.

        Raises:
            CmError: the active side went away.
            DeviceRemoved: the device went away.
            RemoteProtocolError: the peer's handshake did not check out.
            PathReplaced: the connection took another transport meanwhile.
        """
        engine = self.conn.engine
        try:
            self._post_receive_ring()
        except VerbsError:
            # Answer at once rather than leave the active side to its timeout.
            with contextlib.suppress(VerbsError):
                await request.reject()
            raise
        engine.receives_posted(self.recv_slots)
        handshake = engine.handshake()
        self.cm_id = await request.accept(self.qp, handshake)
        self._established()

    def _established(self) -> None:
        assert self.cm_id is not None
        if not self.current:
            raise PathReplaced
        self.conn.engine.transport_up(self.cm_id.private_data, trio.current_time())
        self.up = True

    @property
    def current(self) -> bool:
        """Whether this path's epoch is still the connection's."""
        return self.conn.epoch == self.epoch and not self.failed

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Serve the path until it fails, is replaced or its device goes.

        On a failure the engine goes DOWN (queues kept) before this returns;
        the peer is told with a CM disconnect.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                nursery.start_soon(self._reader)
                nursery.start_soon(self._watch_cm)
                nursery.start_soon(self._flusher)
                self.pump()
            if self.failed and not self.dev.gone.is_set() and self.cm_id is not None:
                with trio.move_on_after(self.node.config.connect_timeout):
                    with contextlib.suppress(VerbsError):
                        await self.cm_id.disconnect()
        finally:
            self.close()

    def abort(self) -> None:
        """Stop serving without touching the engine (the path was replaced)."""
        self.failed = True
        if self._scope is not None:
            self._scope.cancel()

    def fail(self, why: str) -> None:
        """End the path: the connection goes DOWN, keeping what it must resend."""
        if self.failed:
            return
        was_current = self.current
        self.failed = True
        self.up = False
        if self._scope is not None:
            self._scope.cancel()
        if not was_current:
            return
        log.info("%s <-> %s: path down: %s", self.node.address, self.conn.remote, why)
        self.node._transport_down(self.conn)

    def close(self) -> None:
        """Release the QP, CQ, rings and CM id (idempotent, never raises)."""
        self.up = False
        self.node._rdma_path_closed(self)
        for obj in (self.cm_id, getattr(self, "qp", None), self.cq, *self._mrs):
            if obj is not None:
                close_quietly(obj)
        self._mrs.clear()

    async def _watch_cm(self) -> None:
        assert self.cm_id is not None
        try:
            while True:
                event = await self.cm_id.next_event()
                if event.type is CmEventType.DISCONNECTED:
                    self.fail("peer disconnected")
                    return
                # DEVICE_REMOVAL is handled once per device by the node.
        except DeviceRemoved:
            self.dev.removal(None)
        except VerbsError as exc:
            self.fail(f"CM id: {exc}")

    async def _reader(self) -> None:
        cq = self.cq
        while True:
            scope = trio.CancelScope(deadline=self._timer_deadline())
            self._wait_scope = scope
            try:
                with scope:
                    completions = await cq.wait(_BATCH)
            except DeviceRemoved:
                self.dev.removal(None)
                return
            except VerbsError as exc:
                self.fail(f"CQ: {exc}")
                return
            finally:
                self._wait_scope = None
            if scope.cancelled_caught:
                polled = self._poll()
                if polled is None:
                    return
                completions = polled
            self._on_completions(completions)
            if self.failed:
                return
            engine = self.conn.engine
            timer = engine.get_timer()
            if timer is not None:
                now = trio.current_time()
                if now >= timer:
                    engine.handle_timer(now)
            self.pump()

    def _poll(self) -> list[WorkCompletion] | None:
        try:
            return self.cq.poll(_BATCH)
        except DeviceRemoved:
            self.dev.removal(None)
            return None
        except VerbsError as exc:
            self.fail(f"CQ: {exc}")
            return None

    def _timer_deadline(self) -> float:
        if not self.up:
            return math.inf
        timer = self.conn.engine.get_timer()
        return math.inf if timer is None else timer

    def _on_completions(self, completions: list[WorkCompletion]) -> None:
        node = self.node
        counters = node._counters
        engine = self.conn.engine
        now = trio.current_time()
        reposts: list[RecvWR] = []
        view = self._recv_view
        size = self.slot_size
        recv_wrs = self._recv_wrs
        free_send = self.free_send
        covers = self._covers
        receive_frame = engine.receive_frame
        success = WcStatus.SUCCESS
        current = self.current
        error: WorkCompletion | None = None
        tx_events = 0
        conn = self.conn
        epoch = self.epoch
        for wc in completions:
            wr_id = wc.wr_id
            kind = wr_id & 3
            if kind == KIND_RECV:
                if wc.status is not success:
                    if error is None:
                        error = wc
                    continue
                if error is not None or not current:
                    continue
                index = wr_id >> 2
                offset = index * size
                try:
                    receive_frame(view[offset : offset + wc.byte_len], now)
                except RemoteProtocolError as exc:
                    counters.inc("ib_rx_cq_event")
                    counters.inc("recv_drop_bad_frame")
                    log.warning("%s <- %s: bad frame: %s", node.address, conn.remote, exc)
                    error = wc
                    self.fail(f"protocol error: {exc}")
                    break
                reposts.append(recv_wrs[index])
                # A frame may end this path (a reset from the peer): the rest is not ours.
                current = conn.epoch == epoch and not self.failed
                continue
            if kind == KIND_SEND:
                index = wr_id >> 2
                free_send.append(index)
                tx_events += 1
                covered = covers[index]
                if covered is not None:
                    covers[index] = None
                    # RC completes in order: the post's unsignaled SENDs are done too
                    # (had one failed, it would have completed, with its error, itself).
                    if wc.status is success:
                        free_send.extend(covered)
            elif kind == KIND_RDMA:
                node._rdma_done(wr_id >> 2, wc.status)
            if wc.status is not success and error is None:
                error = wc
        if tx_events:
            counters.inc("ib_tx_cq_event", tx_events)
        if reposts:
            counters.inc("ib_rx_cq_event", len(reposts))
        if reposts and not self.failed:
            try:
                self.qp.post_recv(reposts)
            except DeviceRemoved:
                self.dev.removal(None)
                return
            except VerbsError as exc:
                self.fail(f"post_recv: {exc}")
                return
            counters.inc("ib_rx_refill_from_cq")
            if engine.state is ConnState.UP:
                engine.receives_posted(len(reposts))
        node._dispatch(self.conn)
        if error is not None and not self.failed:
            what = "RDMA" if error.wr_id & 3 == KIND_RDMA else error.opcode.name
            self.fail(f"{what} completion {error.status.name}: {error.message}")

    # ------------------------------------------------------------------ transmit

    def kick(self) -> None:
        """New work for the engine: post it now if the ring is idle, else from the flusher.

        An idle ring posts at once, in the sender's call, as Linux's
        ``rds_send_xmit`` does (a lone message pays no scheduler pass). While
        SENDs are outstanding, every sender of a scheduler pass only queues its
        message in the engine and the flusher, woken once, posts them all with
        one ``post_send`` instead of one post and one completion per message.
        """
        if self._flush_wanted:
            return
        if len(self.free_send) == self.send_slots:
            self.pump()
            return
        self._flush_wanted = True
        if self._flush_lot:
            self._flush_lot.unpark_all()

    async def _flusher(self) -> None:
        lot = self._flush_lot
        while True:
            if not self._flush_wanted:
                await lot.park()
                continue
            self._flush_wanted = False
            self.pump()
            if self._flush_wanted:
                # More than one post's worth: the rest goes in a later pass, not as a burst.
                await trio.lowlevel.checkpoint()

    def pump(self) -> None:
        """Post what the engine has to send now: one post of up to ``_POST_MAX`` frames.

        Synchronous and never blocking; no task exists per message. When a
        full post's worth went out, the flusher posts the rest in a later pass.
        """
        if not self.up or self.failed:
            return
        free = self.free_send
        if not free:
            self.node._counters.inc("ib_tx_ring_full")
            return
        engine = self.conn.engine
        frames = engine.frames_to_send(trio.current_time(), limit=min(len(free), _POST_MAX))
        if frames:
            self._post_frames(frames)
            if len(frames) == _POST_MAX:
                self.kick()
        scope = self._wait_scope
        if scope is not None and self.up:
            timer = engine.get_timer()
            deadline = math.inf if timer is None else timer
            if deadline != scope.deadline:
                scope.deadline = deadline

    def _post_frames(self, frames: list[tuple[bytes, bytes | memoryview]]) -> None:
        buf = self._send_view
        base, lkey, size = self.send_mr.addr, self.send_mr.lkey, self.slot_size
        free = self.free_send
        send_wrs, send_lens = self._send_wrs, self._send_lens
        quiet_wrs, quiet_lens = self._quiet_wrs, self._quiet_lens
        wrs: list[SendWR] = []
        # Only the post's last SEND asks for a completion (RDS's unsignaled WRs): it
        # retires the others, and the ring is known empty once it is in.
        last = len(frames) - 1
        quiet: list[int] = []
        for i, (header, payload) in enumerate(frames):
            if (
                header[_FLAGS_OFFSET] & _FLAG_EXT
                and header[_EXT_OFFSET + 1] == RDMA_EXT_TAG
                and header[_INDEX_OFFSET] == 0
                and header[_INDEX_OFFSET + 1] == 0
            ):
                op_id = int.from_bytes(header[_EXT_OFFSET + 2 : _EXT_OFFSET + 10], "big")
                rdma_wr = self.node._rdma_work_request(op_id, self)
                if rdma_wr is not None:
                    wrs.append(rdma_wr)
            slot = free.pop()
            offset = slot * size
            hlen = len(header)
            length = hlen + len(payload)
            buf[offset : offset + hlen] = header
            buf[offset + hlen : offset + length] = payload
            if i == last:
                if send_lens[slot] == length:
                    wr = send_wrs[slot]
                else:
                    sge = Sge(base + offset, length, lkey)
                    wr = send_wrs[slot] = SendWR(slot << 2 | KIND_SEND, Opcode.SEND, (sge,))
                    send_lens[slot] = length
                if quiet:
                    self._covers[slot] = quiet
            else:
                quiet.append(slot)
                if quiet_lens[slot] == length:
                    wr = quiet_wrs[slot]
                else:
                    sge = Sge(base + offset, length, lkey)
                    wr = quiet_wrs[slot] = SendWR(
                        slot << 2 | KIND_SEND, Opcode.SEND, (sge,), signaled=False
                    )
                    quiet_lens[slot] = length
            wrs.append(wr)
        try:
            self.qp.post_send(wrs)
        except DeviceRemoved:
            self.dev.removal(None)
        except VerbsError as exc:
            self.fail(f"post_send: {exc}")

    @property
    def sending(self) -> bool:
        """Whether SENDs are outstanding (rds-info's ``s`` flag)."""
        return len(self.free_send) < self.send_slots

    def reg_local(self, buffer: bytearray | memoryview) -> MR:
        """Register an RDMA operation's local buffer on this path's PD.

        Raises:
            DeviceRemoved, VerbsError: as :meth:`rdsx.verbs.PD.reg_mr`.
        """
        return self.dev.reg(buffer, Access.LOCAL_WRITE)
