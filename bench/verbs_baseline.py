"""The ``verbs`` baseline: rdsx-stress's traffic over bare RC SENDs on the sim fabric.

The fair denominator for "the RDS layer costs at most 1.5x the bare verbs
exchange it rides on": the same tool, the same traffic and the same fabric as
``rdsx-stress --transport sim`` (the sim transport's network, one host and VF
per node, the fabric's default links and 4 KiB MTU), with rdsx taken out.

Per node pair, as RDS shares one connection, there is one RC QP, connected
through the CM and used only through the public verbs contract
(:mod:`rdsx.verbs`):

* a send ring and a receive ring, each one registered MR cut into slots of
  ``4 + max_message`` bytes (256 of each, RDS/IB's and rdsx's defaults); the
  receive ring is posted before the CM connects and each slot is reposted as
  soon as its message is copied out;
* each message is one signaled RC SEND of ``src port u16 | dst port u16 |
  message``, posted at once when a send slot is free (a ``sendto`` never
  waits for a task), else kept in order in a backlog that the reader posts as
  send completions free slots;
* or, with ``post_max`` (the ``verbs-batch`` kind), posted as rdsx's path
  posts since 18c3056: at once while no SEND is outstanding, otherwise by a
  flusher task once per scheduler pass, up to ``post_max`` SENDs per
  ``post_send`` with only the last one signaled (its completion retires the
  post's slots: RC completes in order). That is a verbs-usage choice, not
  part of the RDS protocol, so the ratio is reported against both;
* one reader task per node waits on the CQ (shared by both queues), hands each
  received message to the :class:`~bench.baselines.BaselineSocket` bound on
  its destination port and reposts the batch's buffers with one ``post_recv``.

No sequence numbers, acks, retransmission, credits or congestion map: RC is
all the reliability there is. A receive ring that runs dry costs an RNR NAK
and a retry (``rnr_retry`` 7 retries forever), never a message.
"""

from __future__ import annotations

import collections
import struct
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

from rdsx.errors import InvalidArgument, MessageTooLarge, VerbsError
from rdsx.registry import load_transport
from rdsx.verbs import (
    Access,
    CmId,
    Context,
    Opcode,
    QpCap,
    RecvWR,
    SendWR,
    Sge,
    WcStatus,
    WorkCompletion,
    cm_init,
)

from .baselines import BaselineNode

__all__ = ["CM_PORT", "DEMUX", "POST_MAX", "VerbsNode", "open_verbs_pair"]

#: The demultiplexing header in front of every message: source and destination port.
DEMUX = struct.Struct(">HH")
#: The CM port the passive node listens on for the one connection.
CM_PORT = 18515
_SLOTS = 256
#: SENDs per post in the ``verbs-batch`` kind: the ``_POST_MAX`` of rdsx/path.py (12 since 5315ce7).
POST_MAX = 12
_BATCH = 64
_RECV = 1


class VerbsNode(BaselineNode):
    """A baseline node whose messages travel as RC SENDs on one QP.

    Args:
        address: this node's address.
        peer_address: the other node's address.
        ctx: an open context on this node's device.
        max_message: the largest message a socket may send (ring slots are sized for it).
        slots: send-ring and receive-ring slots.
        post_max: None: every message its own signaled SEND, posted at once if a
            slot is free. A number: batched posting (see the module docstring);
            then :meth:`flusher` must run.

    Raises:
        InvalidArgument: ``post_max`` below 1.
        VerbsError: the device refused a resource.
    """

    def __init__(
        self,
        address: str,
        peer_address: str,
        ctx: Context,
        max_message: int,
        slots: int = _SLOTS,
        post_max: int | None = None,
    ) -> None:
        if post_max is not None and post_max < 1:
            raise InvalidArgument(f"post_max must be at least 1, got {post_max}")
        super().__init__(address, peer_address)
        self.max_message = max_message
        self.slot_size = DEMUX.size + max_message
        self.slots = slots
        pd = ctx.alloc_pd()
        self.cq = ctx.create_cq(2 * slots)
        cap = QpCap(max_send_wr=slots, max_recv_wr=slots, max_send_sge=1, max_recv_sge=1)
        self.qp = pd.create_qp(self.cq, self.cq, cap)
        self.send_buf = bytearray(slots * self.slot_size)
        self.recv_buf = bytearray(slots * self.slot_size)
        self.send_mr = pd.reg_mr(self.send_buf, Access.LOCAL_WRITE)
        self.recv_mr = pd.reg_mr(self.recv_buf, Access.LOCAL_WRITE)
        size, lkey, base = self.slot_size, self.recv_mr.lkey, self.recv_mr.addr
        # WRs are immutable values: a receive slot's WR is reposted as it is.
        self._recv_wrs = [
            RecvWR(i << 1 | _RECV, (Sge(base + i * size, size, lkey),)) for i in range(slots)
        ]
        # As rdsx's path does: a send slot's last WR is reused while the length repeats.
        self._send_wrs: list[SendWR | None] = [None] * slots
        self._quiet_wrs: list[SendWR | None] = [None] * slots
        #: slot of a post's signaled SEND -> the post's unsignaled slots it retires.
        self._covers: list[list[int] | None] = [None] * slots
        self.post_max = post_max
        self._flush_lot = trio.lowlevel.ParkingLot()
        self._flush_wanted = False
        self._free = list(range(slots - 1, -1, -1))
        self._backlog: collections.deque[tuple[int, int, bytes]] = collections.deque()
        self._view = memoryview(self.recv_buf)
        #: Messages that waited in the backlog for a free send slot.
        self.backlogged = 0
        #: The established CM id (kept so the connection lives as long as the node).
        self.cm_id: CmId | None = None

    def post_receive_ring(self) -> None:
        """INIT and the whole receive ring posted, before the CM takes the QP."""
        cm_init(self.qp)
        self.qp.post_recv(self._recv_wrs)

    def queue_frame(self, src_port: int, dst_port: int, data: bytes) -> None:
        """Post ``data`` as one SEND now, or keep it in order until a send slot frees.

        Raises:
            MessageTooLarge: ``data`` does not fit a ring slot.
            VerbsError: the QP refused the post.
        """
        if len(data) > self.max_message:
            raise MessageTooLarge(f"{len(data)} bytes > the rings' {self.max_message}")
        batched = self.post_max is not None
        free = self._free
        if self._backlog or not free or (batched and len(free) < self.slots):
            self._backlog.append((src_port, dst_port, data))
            self.backlogged += 1
            if batched:
                self._kick()
            return
        self.qp.post_send(self._fill(free.pop(), src_port, dst_port, data, True))

    def _fill(self, slot: int, src_port: int, dst_port: int, data: bytes, signaled: bool) -> SendWR:
        """Copy the frame into ``slot`` of the send ring; return its SEND."""
        offset = slot * self.slot_size
        length = DEMUX.size + len(data)
        DEMUX.pack_into(self.send_buf, offset, src_port, dst_port)
        self.send_buf[offset + DEMUX.size : offset + length] = data
        cache = self._send_wrs if signaled else self._quiet_wrs
        wr = cache[slot]
        if wr is None or wr.sg_list[0].length != length:
            sge = Sge(self.send_mr.addr + offset, length, self.send_mr.lkey)
            wr = cache[slot] = SendWR(slot << 1, Opcode.SEND, (sge,), signaled=signaled)
        return wr

    def _flush_backlog(self) -> None:
        """Post the backlog as far as the ring allows (batched: one post of ``post_max``)."""
        free, backlog, post_max = self._free, self._backlog, self.post_max
        count = min(len(free), len(backlog))
        if post_max is not None:
            count = min(count, post_max)
        if not count:
            return
        wrs = []
        quiet: list[int] = []
        for i in range(count):
            slot = free.pop()
            signaled = post_max is None or i == count - 1
            wrs.append(self._fill(slot, *backlog.popleft(), signaled))
            if not signaled:
                quiet.append(slot)
        if quiet:
            self._covers[wrs[-1].wr_id >> 1] = quiet
        self.qp.post_send(wrs)
        if post_max is not None and backlog and free:
            self._kick()

    def _kick(self) -> None:
        if not self._flush_wanted:
            self._flush_wanted = True
            if self._flush_lot:
                self._flush_lot.unpark_all()

    async def flusher(self) -> None:
        """Batched posting: post the backlog once per scheduler pass it is wanted; forever."""
        lot = self._flush_lot
        while True:
            if not self._flush_wanted:
                await lot.park()
                continue
            self._flush_wanted = False
            self._flush_backlog()
            if self._flush_wanted:
                # More than one post's worth: the rest goes in a later pass, as rdsx does.
                await trio.lowlevel.checkpoint()

    async def reader(self) -> None:
        """Wait on the CQ, deliver every received message, repost, refill the send ring; forever.

        Raises:
            VerbsError: a work request failed (bare RC has no recovery).
        """
        while True:
            self._on_completions(await self.cq.wait(_BATCH))

    def _on_completions(self, completions: list[WorkCompletion]) -> None:
        view, size, recv_wrs, free = self._view, self.slot_size, self._recv_wrs, self._free
        covers = self._covers
        unpack, head = DEMUX.unpack_from, DEMUX.size
        reposts = []
        for wc in completions:
            if wc.status is not WcStatus.SUCCESS:
                raise VerbsError(f"{wc.opcode.name} completion {wc.status.name}: {wc.message}")
            slot = wc.wr_id >> 1
            if not wc.wr_id & _RECV:
                free.append(slot)
                covered = covers[slot]
                if covered is not None:
                    covers[slot] = None
                    free.extend(covered)
                continue
            offset = slot * size
            src, dst = unpack(view, offset)
            self.dispatch(src, dst, bytes(view[offset + head : offset + wc.byte_len]))
            reposts.append(recv_wrs[slot])
        if reposts:
            self.qp.post_recv(reposts)
        if self._backlog:
            self._flush_backlog()


@asynccontextmanager
async def open_verbs_pair(
    a: str,
    b: str,
    *,
    max_message: int = 4096,
    slots: int = _SLOTS,
    post_max: int | None = None,
    seed: int = 0,
    port_model: str = "vswitch",
) -> AsyncIterator[tuple[VerbsNode, VerbsNode]]:
    """Two baseline nodes on a sim network joined by one CM-connected RC QP pair.

    The network is opened as ``rdsx-stress --transport sim`` opens it (the
    ``sim`` transport, ``seed`` and ``port_model``), one node per address.

    Args:
        a: the active node's address (it connects).
        b: the passive node's address (it accepts).
        max_message: the largest message either side sends.
        slots: send-ring and receive-ring slots per node.
        post_max: batched posting with up to this many SENDs per post (see
            :class:`VerbsNode`); None: every SEND signaled and posted at once.
        seed: the fabric's seed.
        port_model: ``vswitch`` or ``shared``.

    Raises:
        InvalidArgument: ``post_max`` below 1.
        VerbsError: the fabric refused a resource or the connection.
    """
    if post_max is not None and post_max < 1:
        # Before the fabric opens, so the caller gets it bare, not in an exception group.
        raise InvalidArgument(f"post_max must be at least 1, got {post_max}")
    transport = load_transport("sim")
    async with (
        transport.open_network(seed=seed, port_model=port_model) as net,
        AsyncExitStack() as stack,
    ):
        contexts = []
        for address in (a, b):
            device = await (await net.add_node(address)).next_device()
            contexts.append(await stack.enter_async_context(await device.open()))
        node_a = VerbsNode(a, b, contexts[0], max_message, slots, post_max)
        node_b = VerbsNode(b, a, contexts[1], max_message, slots, post_max)
        node_a.post_receive_ring()
        node_b.post_receive_ring()
        listener = await contexts[1].cm_listen(CM_PORT)
        async with trio.open_nursery() as connecting:

            async def accept() -> None:
                request = await listener.get_request()
                node_b.cm_id = await request.accept(node_b.qp)

            connecting.start_soon(accept)
            node_a.cm_id = await contexts[0].cm_connect(node_a.qp, b, CM_PORT)
        listener.close()
        async with trio.open_nursery() as nursery:
            for node in (node_a, node_b):
                nursery.start_soon(node.reader)
                if post_max is not None:
                    nursery.start_soon(node.flusher)
            try:
                yield node_a, node_b
            finally:
                nursery.cancel_scope.cancel()
