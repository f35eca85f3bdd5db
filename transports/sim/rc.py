"""RC reliability: the requester and the responder of one queue pair.

This is the part of an HCA that makes a reliable connection out of a lossy
fabric (IBTA ch. 9.7, reduced to what the model needs):

* Requester: every message takes consecutive PSNs, one per MTU of payload (an
  RDMA READ request takes one PSN per response packet). Packets stay
  outstanding until acknowledged; an ACK is cumulative. No progress within
  ``timeout`` → go back to the oldest unacknowledged PSN and resend,
  ``retry_cnt`` times, then ``RETRY_EXC_ERR``. An RNR NAK → wait the
  responder's ``min_rnr_timer``, resend, ``rnr_retry`` times (7 = forever),
  then ``RNR_RETRY_EXC_ERR``. A sequence NAK → resend at once from that PSN.
* At most :data:`WINDOW` packets are unacknowledged (go-back-N resends at most
  a window per loss); a partially answered READ is re-requested from its first
  missing response.
* Responder: accepts only the expected PSN (ePSN). A duplicate is re-ACKed
  (a duplicate READ is re-executed: reads are idempotent), a gap is NAKed
  once per ePSN, and a SEND finding no posted receive is RNR-NAKed. It ACKs the
  last packet of every message and every :data:`ACK_EVERY` th packet.

PSNs are kept as unbounded integers (the 24-bit wrap is not modelled); the CQ
never overruns (``cqe`` is not enforced as a limit).

So a routing policy may drop, duplicate, delay or reorder packets and a message
is still placed exactly once, in order, or the requester gets the right status.
Completions are written in posting order; a send completes only once the
responder has placed it and its ACK came back.

Everything here runs synchronously from the fabric's pump (packet arrivals and
timers) or from a verbs call; nothing awaits.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from rdsx.verbs import (
    WC_OPCODE,
    WITH_IMM,
    Access,
    AsyncEvent,
    AsyncEventType,
    Opcode,
    QpState,
    RecvWR,
    SendWR,
    Sge,
    WcOpcode,
    WcStatus,
    WorkCompletion,
)

from .packet import HEADER_BYTES, Kind, Packet, Syndrome

if TYPE_CHECKING:
    from .fabric import Fabric
    from .hca import Function
    from .verbs import SimContext, SimCQ, SimMR, SimPD

__all__ = ["RcQp"]

S = QpState
# Keyed by id(): Enum.__hash__ is Python code, and these lookups are per packet.
# Keyed by identity: cheaper per WR than hashing the Enum.
_WC_OPCODE = {id(opcode): wc_opcode for opcode, wc_opcode in WC_OPCODE.items()}
_KIND = {
    id(Opcode.SEND): Kind.SEND,
    id(Opcode.SEND_WITH_IMM): Kind.SEND,
    id(Opcode.RDMA_WRITE): Kind.WRITE,
    id(Opcode.RDMA_WRITE_WITH_IMM): Kind.WRITE,
    id(Opcode.RDMA_READ): Kind.READ_REQ,
}
_FATAL_NAK = {
    Syndrome.ACCESS: (WcStatus.REM_ACCESS_ERR, "remote access error (rkey, range or rights)"),
    Syndrome.INVALID: (WcStatus.REM_INV_REQ_ERR, "remote invalid request (receive too small)"),
    Syndrome.REMOTE_OP: (WcStatus.REM_OP_ERR, "remote operation error"),
}
# Enum member access costs ~0.2 µs on Python 3.11 (a descriptor call); the
# per-packet paths use these module constants instead.
_RESET, _RTR, _RTS, _SQD, _ERR = S.RESET, S.RTR, S.RTS, S.SQD, S.ERR
_SUCCESS = WcStatus.SUCCESS
_FLUSH = WcStatus.WR_FLUSH_ERR
_RECV = WcOpcode.RECV
_WITH_IMM = frozenset(map(id, WITH_IMM))
_SEND, _SEND_IMM = Opcode.SEND, Opcode.SEND_WITH_IMM
_WC_SEND = WcOpcode.SEND
_LIVE = (_RTS, _SQD)
#: Due times are quantised by the fabric; progress closer than this to a due time is none.
EPSILON = 1e-9
#: Packets a requester keeps unacknowledged at most (the go-back-N window).
WINDOW = 32
#: A responder ACKs at least every this many packets of a long message.
ACK_EVERY = 8
_RECEIVING = (_RTR, _RTS, _SQD)


class SendWqe:
    """A send WR that has started: its PSN range and its gathered payload."""

    __slots__ = (
        "data",
        "first_psn",
        "kind",
        "last_psn",
        "length",
        "read_next",
        "targets",
        "wr",
    )

    def __init__(self, wr: SendWR, kind: int, first: int, last: int, length: int) -> None:
        self.wr = wr
        self.kind = kind
        self.first_psn = first
        self.last_psn = last
        self.length = length
        self.data: memoryview | bytes = b""
        # ``targets`` and ``read_next`` are set for RDMA READs only (every reader
        # checks ``kind`` first).
        self.targets: list[memoryview]
        self.read_next: int

    @property
    def imm(self) -> int | None:
        """The immediate data the packets carry (``*_WITH_IMM`` only)."""
        wr = self.wr
        return wr.imm_data if id(wr.opcode) in _WITH_IMM else None


class RecvProgress:
    """The receive WR an incoming multi-packet SEND is being placed into."""

    __slots__ = ("capacity", "offset", "targets", "wr")

    def __init__(self, wr: RecvWR, targets: list[memoryview]) -> None:
        self.wr = wr
        self.targets = targets
        self.capacity = sum(len(t) for t in targets)
        self.offset = 0


def scatter(targets: list[memoryview], offset: int, data: memoryview | bytes) -> None:
    """Write ``data`` at byte ``offset`` of the concatenation of ``targets``."""
    if len(targets) == 1:
        targets[0][offset : offset + len(data)] = data
        return
    view = memoryview(data)
    for target in targets:
        size = len(target)
        if offset >= size:
            offset -= size
            continue
        take = min(size - offset, len(view))
        target[offset : offset + take] = view[:take]
        view = view[take:]
        offset = 0
        if not view:
            return


class RcQp:
    """The protocol half of a simulated RC QP (the verbs half is :class:`.verbs.SimQP`)."""

    def __init__(
        self,
        fabric: Fabric,
        ctx: SimContext,
        pd: SimPD,
        send_cq: SimCQ,
        recv_cq: SimCQ,
        function: Function,
        qp_num: int,
        sq_sig_all: bool,
    ) -> None:
        self.fabric = fabric
        self.ctx = ctx
        self.pd = pd
        self.send_cq = send_cq
        self.recv_cq = recv_cq
        self.function = function
        self.qp_num = qp_num
        self.sq_sig_all = sq_sig_all
        #: Where this QP's packets go: the fabric, or an emulated device's backend
        #: (:mod:`.standby`), which delays them and drops them while the VM is paused.
        self.egress: Callable[[Packet], None] = fabric.send_packet
        #: The key table of the QP's resource space (fixed for the QP's life).
        self.mrs = function.space.mrs
        self.retransmits = 0
        self.rnr_naks = 0
        #: SENDs that took the real-clock fast lane (see :meth:`_direct_send`).
        self.fast_sends = 0
        self._state = _RESET
        self._reset_protocol()

    def set_access(self, access: Access) -> None:
        """The remote rights this QP grants (the QP's ``access_flags``)."""
        self.access = access
        self.remote_write = Access.REMOTE_WRITE in access
        self.remote_read = Access.REMOTE_READ in access

    @property
    def sort_key(self) -> tuple[int, int]:
        """A stable order among QPs (LID, QPN), for deterministic transmission."""
        return (self.function.lid, self.qp_num)

    def _reset_protocol(self) -> None:
        self.set_access(Access.NONE)
        self.dest_lid = 0
        self.dest_qpn = 0
        self.mtu = self.fabric.mtu
        self.timeout = 0.0671
        self.retry_cnt = 7
        self.rnr_retry = 7
        self.min_rnr_timer = 0.00064
        self.notify_drain = True
        self.draining = False
        self.drain_quota = 0
        self.sq_pending: deque[SendWR] = deque()
        self.sq: deque[SendWqe] = deque()
        self.next_psn = 0
        self.una = 0
        self.snd_nxt = 0
        self.retry_left = 7
        self.rnr_left = 7
        self.timer_armed = False
        self.progress_at = 0.0
        self.rnr_until = 0.0
        self.rq: deque[RecvWR] = deque()
        self.epsn = 0
        self.nak_psn = -1
        self.rx: RecvProgress | None = None
        self.wx: memoryview | None = None
        self.wx_base = 0
        #: Set while a passive CM side waits for the RTU: the first request from the
        #: peer establishes the connection instead (IB's COMM_EST, see :mod:`.cm`).
        self.comm_est: Callable[[], None] | None = None

    # ------------------------------------------------------------------ local memory

    def _local(self, sges: tuple[Sge, ...], write: bool) -> list[memoryview] | None:
        """The memory ``sges`` name, or None if a key, range or right is wrong."""
        mrs = self.mrs
        out = []
        for sge in sges:
            mr = mrs.get(sge.lkey)
            if (
                mr is None
                or mr.pd is not self.pd
                or sge.addr < mr.addr
                or sge.addr + sge.length > mr.addr + mr.length
                or (write and not mr.local_write)
            ):
                return None
            start = sge.addr - mr.addr
            out.append(mr.buffer[start : start + sge.length])
        return out

    def _remote(self, rkey: int, addr: int, length: int, write: bool) -> SimMR | None:
        """The responder's check of an RETH (write or read rights): the MR, or None to NAK."""
        if not (self.remote_write if write else self.remote_read):
            return None
        mr = self.mrs.get(rkey)
        if (
            mr is None
            or mr.pd is not self.pd
            or not (mr.remote_write if write else mr.remote_read)
            or addr < mr.addr
            or addr + length > mr.addr + mr.length
        ):
            return None
        return mr

    # ------------------------------------------------------------------ requester

    def transmit(self) -> None:
        """Start every pending send WR (called by the fabric, in RTS only)."""
        state = self._state
        if state is _RTS:
            budget = len(self.sq_pending)
        elif state is _SQD:
            budget = self.drain_quota  # posted before SQD: still part of the drain
        else:
            return
        if not budget:
            return
        fabric = self.fabric
        now = fabric._now if fabric._draining else trio.current_time()
        if self.rnr_until > now:
            return
        if self.una == self.next_psn:
            self.progress_at = now
        mtu = self.mtu
        pending = self.sq_pending
        mrs = self.mrs
        send = self.egress
        direct = fabric.fast_lane and state is _RTS
        while pending and budget:
            budget -= 1
            if state is _SQD:
                self.drain_quota -= 1
            wr = pending.popleft()
            if direct and not self.sq and self._direct_send(wr, now):
                continue
            sges = wr.sg_list
            kind = _KIND[id(wr.opcode)]
            psn = self.next_psn
            if len(sges) == 1 and kind != Kind.READ_REQ:
                # The common case, inlined: one SGE, one packet.
                sge = sges[0]
                length = sge.length
                mr = mrs.get(sge.lkey)
                if (
                    length <= mtu
                    and self.snd_nxt == psn
                    and psn - self.una < WINDOW
                    and mr is not None
                    and mr.pd is self.pd
                    and mr.addr <= sge.addr
                    and sge.addr + length <= mr.addr + mr.length
                ):
                    start = sge.addr - mr.addr
                    wqe = SendWqe(wr, kind, psn, psn, length)
                    # No copy: like the HCA's DMA, the packet reads the registered
                    # memory, which the verbs contract forbids touching until the
                    # send completes (a retransmission reads it again).
                    wqe.data = data = mr.buffer[start : start + length]
                    self.next_psn = self.snd_nxt = psn + 1
                    self.sq.append(wqe)
                    packet = Packet(
                        kind,
                        self.function.lid,
                        self.dest_lid,
                        self.qp_num,
                        self.dest_qpn,
                        psn,
                        data,
                    )
                    if wr.imm_data is not None and id(wr.opcode) in _WITH_IMM:
                        packet.imm = wr.imm_data
                    if kind == Kind.WRITE:
                        packet.rkey = wr.rkey
                        packet.raddr = wr.remote_addr
                        packet.length = length
                    send(packet)
                    continue
            length = 0
            for sge in sges:
                length += sge.length
            npkts = max(1, -(-length // mtu))
            wqe = SendWqe(wr, kind, psn, psn + npkts - 1, length)
            memory = self._local(sges, write=kind == Kind.READ_REQ)
            if memory is None:
                self._fail(wqe, WcStatus.LOC_PROT_ERR, "bad lkey, range or access in sg_list")
                return
            if kind == Kind.READ_REQ:
                wqe.targets = memory
                wqe.read_next = psn
            else:
                wqe.data = memory[0] if len(memory) == 1 else memoryview(b"".join(memory))
            self.next_psn = psn + npkts
            self.sq.append(wqe)
        if self.snd_nxt < self.next_psn:
            self._send_window()
        if not self.timer_armed:
            self._arm()

    def _direct_send(self, wr: SendWR, now: float) -> bool:
        """The real-clock fast lane for a SEND of up to a window of packets, nothing outstanding.

        When the packet would be delivered within the same pass anyway and nothing
        could drop, delay or observe it (``fabric.fast_lane``), place it in the
        peer's receive and take the ACK at once, without a packet, a WQE or a queue.
        Returns False (having changed nothing) whenever any condition of the normal
        path might matter: the caller then takes it.
        """
        opcode = wr.opcode
        if (opcode is not _SEND and opcode is not _SEND_IMM) or len(wr.sg_list) != 1:
            return False
        sge = wr.sg_list[0]
        size = sge.length
        # A multi-packet SEND has the same effects as one packet (placed whole, one
        # completion each side), only more PSNs and wire time; beyond a window the
        # packet path would pace it, so it takes that.
        npkts = -(-size // self.mtu) or 1
        mr = self.mrs.get(sge.lkey)
        if (
            npkts > WINDOW
            or mr is None
            or mr.pd is not self.pd
            or sge.addr < mr.addr
            or sge.addr + size > mr.addr + mr.length
        ):
            return False
        fabric = self.fabric
        lid = self.function.lid
        endpoints = fabric._endpoints
        src, dst = endpoints.get(lid), endpoints.get(self.dest_lid)
        if src is None or dst is None or not src.host.reachable or not dst.host.reachable:
            return False
        peer = dst.space.qps.get(self.dest_qpn)
        psn = self.next_psn
        if (
            peer is None
            or peer.dest_lid != lid
            or peer.dest_qpn != self.qp_num
            or peer._state not in _RECEIVING
            or peer.epsn != psn
            or not peer.rq
            or peer.comm_est is not None
        ):
            return False
        rwr = peer.rq[0]
        if len(rwr.sg_list) != 1:
            return False
        rsge = rwr.sg_list[0]
        rmr = peer.mrs.get(rsge.lkey)
        if (
            rmr is None
            or rmr.pd is not peer.pd
            or not rmr.local_write
            or rsge.addr < rmr.addr
            or rsge.addr + size > rmr.addr + rmr.length
            or size > rsge.length
        ):
            return False
        host = src.host
        wire = (HEADER_BYTES * npkts + size) * fabric._seconds_per_byte
        depart = host.tx_free if host.tx_free > now else now
        hops = fabric._two_hops if dst.host.switch == host.switch else 2 * fabric._two_hops
        if depart + wire + hops - now >= fabric._slack:
            return False
        # Committed: the same effects as the packet path, in the same order.
        host.tx_free = depart + wire
        peer.rq.popleft()
        start, rstart = sge.addr - mr.addr, rsge.addr - rmr.addr
        rmr.buffer[rstart : rstart + size] = mr.buffer[start : start + size]
        peer.epsn = psn + npkts
        imm = wr.imm_data if opcode is _SEND_IMM else None
        peer.recv_cq.push(WorkCompletion(rwr.wr_id, _SUCCESS, _RECV, size, peer.qp_num, imm))
        self.fast_sends += 1
        fabric._sent += npkts + 1
        fabric._delivered += npkts + 1
        fabric._bytes += size
        self.next_psn = self.una = self.snd_nxt = psn + npkts
        self.retry_left = self.retry_cnt
        self.rnr_left = self.rnr_retry
        self.progress_at = now
        if wr.signaled or self.sq_sig_all:
            self.send_cq.push(WorkCompletion(wr.wr_id, _SUCCESS, _WC_SEND, size, self.qp_num))
        return True

    def _send_window(self) -> None:
        """Put packets on the wire from ``snd_nxt`` while fewer than WINDOW are unacked."""
        psn = self.snd_nxt
        limit = min(self.next_psn, self.una + WINDOW)
        if psn >= limit or self.rnr_until:
            return
        for wqe in self.sq:
            if wqe.last_psn < psn:
                continue
            if wqe.first_psn >= limit:
                break
            if wqe.kind == Kind.READ_REQ:
                # One request packet stands for the whole response range.
                if wqe.read_next <= wqe.last_psn:
                    self._emit(wqe, wqe.first_psn, wqe.first_psn)
                psn = wqe.last_psn + 1
            else:
                end = min(wqe.last_psn, limit - 1)
                self._emit(wqe, max(psn, wqe.first_psn), end)
                psn = end + 1
            if psn >= limit:
                break
        self.snd_nxt = max(psn, self.snd_nxt)

    def _emit(self, wqe: SendWqe, from_psn: int, to_psn: int) -> None:
        """Send the packets ``from_psn`` .. ``to_psn`` of ``wqe``."""
        send = self.egress
        src, dst, qpn, dqpn = self.function.lid, self.dest_lid, self.qp_num, self.dest_qpn
        wr = wqe.wr
        if wqe.kind == Kind.READ_REQ:
            # Ask for what has not arrived yet, from read_next on (as an HCA re-issues
            # a partially answered READ), so a loss late in a long READ costs little.
            offset = (wqe.read_next - wqe.first_psn) * self.mtu
            packet = Packet(Kind.READ_REQ, src, dst, qpn, dqpn, wqe.read_next)
            packet.rkey = wr.rkey
            packet.raddr = wr.remote_addr + offset
            packet.length = wqe.length - offset
            send(packet)
            return
        first, last, mtu, data, kind = wqe.first_psn, wqe.last_psn, self.mtu, wqe.data, wqe.kind
        imm = wqe.imm
        if first == last:
            packet = Packet(kind, src, dst, qpn, dqpn, first, data)
            packet.imm = imm
            if kind == Kind.WRITE:
                packet.rkey = wr.rkey
                packet.raddr = wr.remote_addr
                packet.length = wqe.length
            send(packet)
            return
        for psn in range(max(from_psn, first), min(to_psn, last) + 1):
            offset = (psn - first) * mtu
            packet = Packet(kind, src, dst, qpn, dqpn, psn, data[offset : offset + mtu])
            packet.first = psn == first
            packet.last = psn == last
            packet.imm = imm
            if kind == Kind.WRITE:
                packet.rkey = wr.rkey
                packet.raddr = wr.remote_addr + offset
                packet.length = wqe.length
            send(packet)

    def _retransmit(self, from_psn: int) -> None:
        """Go back N: resend from ``from_psn`` (as far as the window allows)."""
        self.retransmits += 1
        self.snd_nxt = from_psn
        self._send_window()

    def _arm(self) -> None:
        if not self.timer_armed and self.una < self.next_psn and self.timeout > 0:
            self.timer_armed = True
            due = self.progress_at + self.timeout
            self.fabric.call_at(due, lambda: self._on_ack_timer(due))

    # Both timers judge by the instant they were set for, never by the clock: under the
    # real clock the fabric fires a timer up to REALTIME_SLACK before it is due (with
    # ``now()`` at the pass's start). Judged by the clock, such a timer looked early: the
    # ACK timer re-armed for the same instant, which fired again at once, forever; the
    # RNR timer gave up and left ``rnr_until`` set, so the window never sent again and
    # the QP died of RETRY_EXC_ERR retry_cnt timeouts later (rdsx issue 4: a second RDS
    # reset, ~0.55 s, after a reconnect whose first SEND met an RNR NAK).
    def _on_ack_timer(self, due: float) -> None:
        if (
            self._state in _LIVE
            and self.una < self.next_psn
            and self.progress_at + self.timeout > due + EPSILON
        ):
            self.timer_armed = False
            self._arm()  # progress since it was set: a whole timeout from that
            return
        self._on_timer()

    def _on_timer(self) -> None:
        """No progress for a whole ACK timeout: go back to the oldest unacked PSN, or fail."""
        self.timer_armed = False
        if self._state not in _LIVE or self.una >= self.next_psn:
            return
        now = self.fabric.now()
        self.retry_left -= 1
        if self.retry_left < 0:
            self._fail(self.sq[0], WcStatus.RETRY_EXC_ERR, "no ACK after retry_cnt retries")
            return
        self.progress_at = now
        self._retransmit(self.una)
        self._arm()

    def _on_rnr_timer(self, until: float) -> None:
        if self._state not in _LIVE or self.rnr_until != until:
            return  # stale: the QP was reset, or a later RNR NAK set another wait
        self.rnr_until = 0.0
        self.progress_at = self.fabric.now()
        self._retransmit(self.una)
        self.transmit()
        self._arm()

    def _on_ack(self, packet: Packet) -> None:
        psn = packet.psn
        if self._state not in _LIVE or psn >= self.next_psn:
            return
        syndrome = packet.syndrome
        if syndrome == Syndrome.ACK:
            self._acked(psn)
            return
        self._acked(psn - 1)
        if psn < self.una:
            return
        if syndrome == Syndrome.SEQ:
            if not self.rnr_until:
                self._retransmit(psn)
            return
        if syndrome == Syndrome.RNR:
            self.rnr_naks += 1
            now = self.fabric.now()
            if self.rnr_until > now:
                return
            if self.rnr_retry != 7:
                self.rnr_left -= 1
                if self.rnr_left < 0:
                    self._fail(self._wqe_at(psn), WcStatus.RNR_RETRY_EXC_ERR, "receiver not ready")
                    return
            until = self.rnr_until = self.progress_at = now + packet.rnr_timer
            self.fabric.call_at(until, lambda: self._on_rnr_timer(until))
            return
        status, message = _FATAL_NAK[syndrome]
        self._fail(self._wqe_at(psn), status, message)

    def _on_read_resp(self, packet: Packet) -> None:
        if self._state not in _LIVE:
            return
        wqe = next(
            (w for w in self.sq if w.kind == Kind.READ_REQ and w.read_next <= w.last_psn), None
        )
        if wqe is None or packet.psn != wqe.read_next:
            return
        self._acked(wqe.first_psn - 1)
        scatter(wqe.targets, (packet.psn - wqe.first_psn) * self.mtu, packet.payload)
        wqe.read_next += 1
        if wqe.read_next > wqe.last_psn:
            self._acked(wqe.last_psn)
        else:
            # Each response acknowledges its PSN: progress, the retry budget is whole again.
            self.una = wqe.read_next
            self.retry_left = self.retry_cnt
            self.progress_at = self.fabric.now()

    def _acked(self, psn: int) -> None:
        limit = psn + 1
        if limit <= self.una:
            return
        for wqe in self.sq:
            if wqe.first_psn >= limit:
                break
            if wqe.kind == Kind.READ_REQ and wqe.read_next <= wqe.last_psn:
                limit = min(limit, wqe.read_next)
                break
        if limit <= self.una:
            return
        self.una = limit
        self.retry_left = self.retry_cnt
        self.rnr_left = self.rnr_retry
        fabric = self.fabric
        self.progress_at = fabric._now if fabric._draining else trio.current_time()
        sq = self.sq
        push = self.send_cq.push
        while sq and sq[0].last_psn < limit:
            wqe = sq.popleft()
            if wqe.wr.signaled or self.sq_sig_all:
                wr = wqe.wr
                push(
                    WorkCompletion(
                        wr.wr_id, _SUCCESS, _WC_OPCODE[id(wr.opcode)], wqe.length, self.qp_num
                    )
                )
        if self.snd_nxt < self.next_psn:
            self._send_window()
        if self.draining and not sq and not self.drain_quota:
            self._drained()

    def _drained(self) -> None:
        self.draining = False
        if self.notify_drain:
            self.ctx.post_event(AsyncEvent(AsyncEventType.SQ_DRAINED, qp_num=self.qp_num))
        self.fabric.record("sq_drained", self.name)

    def _wqe_at(self, psn: int) -> SendWqe:
        for wqe in self.sq:
            if wqe.first_psn <= psn <= wqe.last_psn:
                return wqe
        return self.sq[0]

    # ------------------------------------------------------------------ responder

    def on_packet(self, packet: Packet) -> None:
        """Handle a packet the fabric delivered to this QP."""
        kind = packet.kind
        if packet.src_lid != self.dest_lid or packet.src_qpn != self.dest_qpn:
            return  # not from our peer: RC drops it (SLID/QP check)
        if kind == Kind.ACK:
            if packet.syndrome == Syndrome.ACK and self._state in _LIVE:
                if packet.psn < self.next_psn:
                    self._acked(packet.psn)
            else:
                self._on_ack(packet)
        elif kind == Kind.READ_RESP:
            self._on_read_resp(packet)
        elif self._state in _RECEIVING:
            if self.comm_est is not None:
                established, self.comm_est = self.comm_est, None
                established()
            if kind == Kind.SEND and packet.psn == self.epsn and packet.first and packet.last:
                self._rx_send_whole(packet)
            else:
                self._on_request(packet)

    def _reply(self, syndrome: int, psn: int) -> None:
        fabric = self.fabric
        if (
            syndrome == Syndrome.ACK
            and fabric.fast_lane
            and fabric.fast_ack(self.function.lid, self.qp_num, self.dest_lid, self.dest_qpn, psn)
        ):
            return
        packet = Packet(Kind.ACK, self.function.lid, self.dest_lid, self.qp_num, self.dest_qpn, psn)
        packet.syndrome = syndrome
        if syndrome == Syndrome.RNR:
            packet.rnr_timer = self.min_rnr_timer
        self.egress(packet)

    def _on_request(self, packet: Packet) -> None:
        psn, expected = packet.psn, self.epsn
        if psn != expected:
            if psn < expected:
                if packet.kind == Kind.READ_REQ:
                    self._respond_read(packet)
                else:
                    self._reply(Syndrome.ACK, expected - 1)
            elif self.nak_psn != expected:
                self.nak_psn = expected
                self._reply(Syndrome.SEQ, expected)
            return
        kind = packet.kind
        if kind == Kind.SEND:
            self._rx_send(packet)
        elif kind == Kind.WRITE:
            self._rx_write(packet)
        elif self._respond_read(packet):
            self.epsn = psn + max(1, -(-packet.length // self.mtu))

    def _rnr(self, psn: int) -> None:
        self.nak_psn = psn
        self._reply(Syndrome.RNR, psn)

    def _rx_send(self, packet: Packet) -> None:
        rx = self.rx
        if packet.first and packet.last:
            self._rx_send_whole(packet)
            return
        if packet.first:
            if not self.rq:
                self._rnr(packet.psn)
                return
            wr = self.rq.popleft()
            targets = self._local(wr.sg_list, write=True)
            if targets is None:
                self._recv_error(wr, WcStatus.LOC_PROT_ERR, "bad lkey, range or access")
                self._reply(Syndrome.REMOTE_OP, packet.psn)
                return
            rx = self.rx = RecvProgress(wr, targets)
        elif rx is None:
            return
        payload = packet.payload
        if rx.offset + len(payload) > rx.capacity:
            self.rx = None
            self._recv_error(rx.wr, WcStatus.LOC_LEN_ERR, "message longer than the receive")
            self._reply(Syndrome.INVALID, packet.psn)
            return
        if payload:
            scatter(rx.targets, rx.offset, payload)
        rx.offset += len(payload)
        self.epsn = packet.psn + 1
        if packet.last:
            self.rx = None
            self.recv_cq.push(
                WorkCompletion(
                    rx.wr.wr_id,
                    _SUCCESS,
                    _RECV,
                    rx.offset,
                    self.qp_num,
                    packet.imm,
                )
            )
            self._reply(Syndrome.ACK, packet.psn)
        elif packet.psn % ACK_EVERY == 0:
            self._reply(Syndrome.ACK, packet.psn)  # keep a long message's window moving

    def _rx_send_whole(self, packet: Packet) -> None:
        """A SEND that fits one packet: no progress to keep."""
        if not self.rq:
            self._rnr(packet.psn)
            return
        wr = self.rq.popleft()
        payload = packet.payload
        size = len(payload)
        sges = wr.sg_list
        if len(sges) == 1:
            sge = sges[0]
            mr = self.mrs.get(sge.lkey)
            if (
                mr is not None
                and mr.pd is self.pd
                and mr.local_write
                and mr.addr <= sge.addr
                and sge.addr + size <= mr.addr + mr.length
                and size <= sge.length
            ):
                start = sge.addr - mr.addr
                mr.buffer[start : start + size] = payload
                self.epsn = packet.psn + 1
                self.recv_cq.push(
                    WorkCompletion(wr.wr_id, _SUCCESS, _RECV, size, self.qp_num, packet.imm)
                )
                self._reply(Syndrome.ACK, packet.psn)
                return
        targets = self._local(sges, write=True)
        if targets is None:
            self._recv_error(wr, WcStatus.LOC_PROT_ERR, "bad lkey, range or access")
            self._reply(Syndrome.REMOTE_OP, packet.psn)
            return
        if size > sum(len(t) for t in targets):
            self._recv_error(wr, WcStatus.LOC_LEN_ERR, "message longer than the receive")
            self._reply(Syndrome.INVALID, packet.psn)
            return
        elif size:
            scatter(targets, 0, payload)
        self.epsn = packet.psn + 1
        self.recv_cq.push(WorkCompletion(wr.wr_id, _SUCCESS, _RECV, size, self.qp_num, packet.imm))
        self._reply(Syndrome.ACK, packet.psn)

    def _rx_write(self, packet: Packet) -> None:
        if packet.first:
            if packet.imm is not None and not self.rq:
                self._rnr(packet.psn)
                return
            mr = self._remote(packet.rkey, packet.raddr, packet.length, True)
            if mr is None:
                self._reply(Syndrome.ACCESS, packet.psn)
                return
            self.wx = mr.buffer
            self.wx_base = mr.addr
        memory = self.wx
        if memory is None:
            return
        if packet.payload:
            start = packet.raddr - self.wx_base
            memory[start : start + len(packet.payload)] = packet.payload
        self.epsn = packet.psn + 1
        if packet.last:
            self.wx = None
            if packet.imm is not None:
                wr = self.rq.popleft()
                self.recv_cq.push(
                    WorkCompletion(
                        wr.wr_id,
                        _SUCCESS,
                        WcOpcode.RECV_RDMA_WITH_IMM,
                        packet.length,
                        self.qp_num,
                        packet.imm,
                    )
                )
            self._reply(Syndrome.ACK, packet.psn)
        elif packet.psn % ACK_EVERY == 0:
            self._reply(Syndrome.ACK, packet.psn)

    def _respond_read(self, packet: Packet) -> bool:
        mr = self._remote(packet.rkey, packet.raddr, packet.length, False)
        if mr is None:
            self._reply(Syndrome.ACCESS, packet.psn)
            return False
        start = packet.raddr - mr.addr
        data = memoryview(bytes(mr.buffer[start : start + packet.length]))
        mtu = self.mtu
        count = max(1, -(-packet.length // mtu))
        for index in range(count):
            response = Packet(
                Kind.READ_RESP,
                self.function.lid,
                self.dest_lid,
                self.qp_num,
                self.dest_qpn,
                packet.psn + index,
                data[index * mtu : (index + 1) * mtu],
            )
            response.first = index == 0
            response.last = index == count - 1
            self.egress(response)
        return True

    # ------------------------------------------------------------------ errors

    def _recv_error(self, wr: RecvWR, status: WcStatus, message: str) -> None:
        self.recv_cq.push(WorkCompletion(wr.wr_id, status, _RECV, 0, self.qp_num, None, message))
        self._to_err()
        self.ctx.post_event(AsyncEvent(AsyncEventType.QP_FATAL, qp_num=self.qp_num, info=message))

    def _fail(self, failed: SendWqe, status: WcStatus, message: str) -> None:
        """The requester hit a fatal error on ``failed``: complete it, flush the rest, ERR."""
        self._to_err(failed, status, message)
        self.ctx.post_event(AsyncEvent(AsyncEventType.QP_FATAL, qp_num=self.qp_num, info=message))

    def _to_err(
        self,
        failed: SendWqe | None = None,
        status: WcStatus = _FLUSH,
        message: str = "",
    ) -> None:
        """Enter ERR: every outstanding and pending WR completes (flushed, in order)."""
        self._state = _ERR
        self.draining = False
        self.drain_quota = 0
        self.rx = None
        self.wx = None
        self.fabric.record("qp_err", self.name, f"{status.name} {message}".strip())
        push = self.send_cq.push
        qpn = self.qp_num
        for wqe in self.sq:
            wr = wqe.wr
            if wqe is failed:
                push(
                    WorkCompletion(
                        wr.wr_id, status, _WC_OPCODE[id(wr.opcode)], 0, qpn, None, message
                    )
                )
            else:
                self._flush_send(wr)
        if failed is not None and failed not in self.sq:
            wr = failed.wr
            push(WorkCompletion(wr.wr_id, status, _WC_OPCODE[id(wr.opcode)], 0, qpn, None, message))
        self.sq.clear()
        for wr in self.sq_pending:
            self._flush_send(wr)
        self.sq_pending.clear()
        for rwr in self.rq:
            self._flush_recv(rwr)
        self.rq.clear()

    def _flush_send(self, wr: SendWR) -> None:
        self.send_cq.push(
            WorkCompletion(wr.wr_id, _FLUSH, _WC_OPCODE[id(wr.opcode)], 0, self.qp_num)
        )

    def _flush_recv(self, wr: RecvWR) -> None:
        self.recv_cq.push(WorkCompletion(wr.wr_id, _FLUSH, _RECV, 0, self.qp_num))

    @property
    def name(self) -> str:
        """``"<lid>.<qpn>"`` for traces."""
        return f"{self.function.lid}.{self.qp_num}"
