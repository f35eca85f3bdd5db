"""An RC queue pair over one TCP connection: requester, responder and retry logic.

Theory of operation. Each transmitted request gets the next 24-bit PSN and
stays on ``_outstanding`` (its frame header, and a SEND's payload as a view of
the registered memory, which the contract leaves untouched until the WR
completes, so a resend re-reads it as an HCA would) until the responder
acknowledges it. The responder places a request in
a posted receive (or performs the RDMA) *before* it acknowledges, and its ACKs
are cumulative: one per received batch, for the highest PSN done. A READ's
response acknowledges every earlier PSN too. TCP's own acknowledgements prove
nothing here (reference/rds.md §6): a send completes on the responder's word.

Loss only happens when the link dies or a partition is injected, so recovery is
go-back-N: on a timeout, or after an RNR NAK's timer, everything outstanding is
sent again; the responder drops PSNs ahead of the one it expects and re-acks (or
re-reads) those behind it. ``timeout`` with no progress ``retry_cnt + 1`` times
is RETRY_EXC_ERR; ``rnr_retry`` RNR NAKs in a row (7 = forever) is
RNR_RETRY_EXC_ERR. A link that dies without a BYE is the peer gone: whatever is
outstanding, or is sent next, fails with RETRY_EXC_ERR at once.

Who opens the TCP connection: of the two ends, the one with the smaller
``(locator, qp_num)``; the other waits for it. Both learn the other from ``dest``.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from rdsx.errors import (
    AuthenticationFailed,
    CmError,
    InvalidState,
    QueueFull,
    RemoteProtocolError,
)
from rdsx.verbs import (
    QP,
    WC_OPCODE,
    Access,
    AsyncEventType,
    Opcode,
    QpAttr,
    QpCap,
    QpDest,
    QpState,
    RecvWR,
    SendWR,
    Sge,
    WcOpcode,
    WcStatus,
    WorkCompletion,
    check_modify,
    check_recv_wrs,
    check_send_wrs,
)

from ._build import WC_SETTERS, new
from ._frames import (
    PSN_MASK,
    Ack,
    Bye,
    Frame,
    Nak,
    NakCode,
    ReadReq,
    ReadResp,
    Send,
    Write,
    encode_ack,
    encode_bye,
    encode_nak,
    encode_read_req,
    encode_read_resp,
    encode_send_header,
    encode_write,
)
from ._link import Link
from ._resources import TcpCQ, TcpMR, _Handle

if TYPE_CHECKING:
    from ._resources import TcpPD

__all__ = ["TcpQP"]

log = logging.getLogger("rdsx.tcp.qp")

S = QpState
_HALF = 1 << 23
_PSN = struct.Struct("!I")
#: An RNR timer of 0 would turn "retry forever" into a busy loop over the network.
_MIN_RNR_WAIT = 0.0005
_CONNECT_BACKOFF = (0.01, 0.5)

_NAK_STATUS = {
    NakCode.REM_ACCESS: WcStatus.REM_ACCESS_ERR,
    NakCode.REM_INV_REQ: WcStatus.REM_INV_REQ_ERR,
    NakCode.REM_OP: WcStatus.REM_OP_ERR,
}
# The data path reads enum members from module constants: on Python 3.11 each
# ``QpState.RTS``-style attribute access costs ~80 ns (as much as a small call),
# and a frozenset lookup hashes the member in Python.
_RESET, _INIT, _RTR, _RTS, _SQD, _ERR = S.RESET, S.INIT, S.RTR, S.RTS, S.SQD, S.ERR
_RESPONDING = (S.RTR, S.RTS, S.SQD)
_NO_SENDS = (S.RESET, S.INIT, S.RTR)
_SUCCESS = WcStatus.SUCCESS
_RECV = WcOpcode.RECV
_SEND_OPS = (Opcode.SEND, Opcode.SEND_WITH_IMM)
_OP_SEND = Opcode.SEND
_OP_SEND_IMM = Opcode.SEND_WITH_IMM
_OP_READ = Opcode.RDMA_READ
_WC_SEND = WcOpcode.SEND


@attrs.define(slots=True)
class _Inflight:
    """A transmitted request waiting for its acknowledgement.

    Its frame is ``header + payload``: a SEND's payload is a view of the
    requester's registered memory (which the verbs contract leaves untouched
    until the completion), so it is copied once, by the link's writer, and a
    go-back-N resend re-reads it as an RC HCA would.
    """

    wr: SendWR
    psn: int
    header: bytes
    payload: bytes | memoryview
    length: int


class _LocalError(Exception):
    """A local SGE was bad: carries the completion status."""

    def __init__(self, status: WcStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class TcpQP(_Handle, QP):
    """An RC QP whose wire is one TCP connection (see the module docstring)."""

    def __init__(
        self, pd: TcpPD, send_cq: TcpCQ, recv_cq: TcpCQ, cap: QpCap, sq_sig_all: bool
    ) -> None:
        self._ctx = pd._ctx
        self._closed = False
        self.pd = pd
        self.device = pd._ctx.device
        self.send_cq = send_cq
        self.recv_cq = recv_cq
        self.cap = cap
        self.sq_sig_all = sq_sig_all
        self.qp_num = self.device.register_qp(self)
        self._state = S.RESET
        self._reset_attrs()

    def _reset_attrs(self) -> None:
        self.access_flags = Access.NONE
        self.dest: QpDest | None = None
        self.path_mtu = 4096
        self.min_rnr_timer = 0.0
        self.timeout = 0.0
        self.retry_cnt = 7
        self.rnr_retry = 7
        self.notify_drained = False
        self._epsn = 0
        self._next_psn = 0
        self._pending: deque[SendWR] = deque()
        self._outstanding: deque[_Inflight] = deque()
        self._rq: deque[RecvWR] = deque()
        self._link: Link | None = None
        self._link_dead = False
        self._connecting: trio.CancelScope | None = None
        #: Set by the CM (its passive side opens the stream); None: the address rule.
        self.stream_opener: bool | None = None
        self._retries = 0
        self._rnr_retries = 0
        self._rnr_wait = False
        # Requests at the tail of _outstanding not (re)sent since the last RNR NAK: after
        # one, only the NAKed request is probed, and the rest follow once it is taken.
        self._held = 0
        self.deadline: float | None = None
        self._ack_due = False

    # ------------------------------------------------------------------ verbs API

    @property
    def state(self) -> QpState:
        """The current state."""
        self._check()
        return self._state

    @property
    def sq_draining(self) -> bool:
        """True while in SQD with transmitted sends not yet acknowledged."""
        self._check()
        return self._state is S.SQD and bool(self._outstanding)

    def modify(self, attr: QpAttr) -> None:
        """Move to ``attr.state`` (see :meth:`rdsx.verbs.QP.modify`)."""
        self._check()
        current, target = self._state, attr.state
        check_modify(current, attr)
        if current is S.SQD and target is S.RTS and self._outstanding:
            raise InvalidState("cannot leave SQD for RTS while the send queue is draining")
        self._apply(attr)
        if target is S.RESET:
            self._drop_link()
            self._reset_attrs()
            self._state = S.RESET
        elif target is S.ERR:
            self._enter_error(None)
        else:
            self._state = target
            if target is S.RTR and current is S.INIT:
                self._epsn = attr.rq_psn or 0
                self._start_link()
            elif target is S.SQD and current is S.SQD and attr.dest is not None:
                self._path_change()
            elif target is S.SQD:
                if current is S.RTS:
                    self.notify_drained = bool(attr.en_sqd_async_notify)
                self._maybe_drained()
            elif target is S.RTS:
                self._pump()
        self.device.qp_changed()

    def _apply(self, attr: QpAttr) -> None:
        if attr.access_flags is not None:
            self.access_flags = attr.access_flags
        if attr.dest is not None:
            self.dest = attr.dest
        if attr.path_mtu is not None:
            self.path_mtu = attr.path_mtu
        if attr.min_rnr_timer is not None:
            self.min_rnr_timer = attr.min_rnr_timer
        if attr.timeout is not None:
            self.timeout = attr.timeout
        if attr.retry_cnt is not None:
            self.retry_cnt = attr.retry_cnt
        if attr.rnr_retry is not None:
            self.rnr_retry = attr.rnr_retry
        if attr.sq_psn is not None:
            self._renumber(attr.sq_psn)
        if attr.rq_psn is not None and self._state is not S.INIT:
            self._epsn = attr.rq_psn
        if attr.en_sqd_async_notify is not None:
            self.notify_drained = attr.en_sqd_async_notify

    def _renumber(self, sq_psn: int) -> None:
        """Start the send PSNs at ``sq_psn``; requests still unacknowledged (a path
        change while draining) are renumbered so the new peer sees them in order."""
        psn = sq_psn
        for inflight in self._outstanding:
            inflight.psn = psn
            # Every request frame starts with length (4), type (1), PSN (4).
            inflight.header = inflight.header[:5] + _PSN.pack(psn) + inflight.header[9:]
            psn = (psn + 1) & PSN_MASK
        self._next_psn = psn

    def post_send(self, wrs: SendWR | Sequence[SendWR]) -> None:
        """Post send WRs; never blocks (see :meth:`rdsx.verbs.QP.post_send`)."""
        self._check()
        batch = [wrs] if isinstance(wrs, SendWR) else list(wrs)
        if self._state in _NO_SENDS:
            raise InvalidState(f"post_send in {self._state.name}")
        if len(self._pending) + len(self._outstanding) + len(batch) > self.cap.max_send_wr:
            raise QueueFull(f"more than max_send_wr={self.cap.max_send_wr} outstanding")
        check_send_wrs(batch, self.cap.max_send_sge, self.device.max_msg_sz)
        if self._state is _ERR:
            for wr in batch:
                self._complete_send(wr, WcStatus.WR_FLUSH_ERR, 0, force=True)
            return
        self._pending.extend(batch)
        self._pump()

    def post_recv(self, wrs: RecvWR | Sequence[RecvWR]) -> None:
        """Post receive WRs; never blocks (see :meth:`rdsx.verbs.QP.post_recv`)."""
        self._check()
        batch = [wrs] if isinstance(wrs, RecvWR) else list(wrs)
        if self._state is _RESET:
            raise InvalidState("post_recv in RESET")
        if len(self._rq) + len(batch) > self.cap.max_recv_wr:
            raise QueueFull(f"more than max_recv_wr={self.cap.max_recv_wr} outstanding")
        check_recv_wrs(batch, self.cap.max_recv_sge)
        if self._state is _ERR:
            for wr in batch:
                self._complete_recv(wr, WcStatus.WR_FLUSH_ERR, WcOpcode.RECV)
            return
        self._rq.extend(batch)

    def close(self) -> None:
        """Destroy the QP; outstanding WRs are discarded without completions."""
        if self._closed:
            return
        self._closed = True
        self._drop_link()
        self.deadline = None
        self.device.unregister_qp(self)
        self.pd.qps.discard(self)

    # ------------------------------------------------------------------ completions

    def _complete_send(
        self, wr: SendWR, status: WcStatus, length: int, *, force: bool = False, message: str = ""
    ) -> None:
        if force or wr.signaled or self.sq_sig_all or status is not WcStatus.SUCCESS:
            self.send_cq.push(
                WorkCompletion(
                    wr.wr_id, status, WC_OPCODE[wr.opcode], length, self.qp_num, None, message
                )
            )

    def _complete_recv(
        self,
        wr: RecvWR,
        status: WcStatus,
        opcode: WcOpcode,
        length: int = 0,
        imm: int | None = None,
        message: str = "",
    ) -> None:
        self.recv_cq.push(
            WorkCompletion(wr.wr_id, status, opcode, length, self.qp_num, imm, message)
        )

    def _enter_error(self, fatal: str | None) -> None:
        """Move to ERR and flush every WR (both queues) with WR_FLUSH_ERR."""
        self._state = S.ERR
        self.deadline = None
        self._rnr_wait = False
        self._held = 0
        while self._outstanding:
            inflight = self._outstanding.popleft()
            self._complete_send(inflight.wr, WcStatus.WR_FLUSH_ERR, 0, force=True)
        while self._pending:
            self._complete_send(self._pending.popleft(), WcStatus.WR_FLUSH_ERR, 0, force=True)
        while self._rq:
            self._complete_recv(self._rq.popleft(), WcStatus.WR_FLUSH_ERR, WcOpcode.RECV)
        self._drop_link(flush=True)
        if fatal is not None:
            log.info("QP %#x to ERR: %s", self.qp_num, fatal)
            self._ctx.post_event(AsyncEventType.QP_FATAL, qp_num=self.qp_num, info=fatal)
        self.device.qp_changed()

    def _fail(self, status: WcStatus, message: str) -> None:
        """Complete the oldest send WR with ``status``, then go to ERR."""
        if self._outstanding:
            self._complete_send(self._outstanding.popleft().wr, status, 0, message=message)
        elif self._pending:
            self._complete_send(self._pending.popleft(), status, 0, message=message)
        self._enter_error(f"{status.name}: {message}")

    def _maybe_drained(self) -> None:
        if self._state is _SQD and not self._outstanding and self.notify_drained:
            self.notify_drained = False
            self._ctx.post_event(AsyncEventType.SQ_DRAINED, qp_num=self.qp_num)

    # ------------------------------------------------------------------ requester

    def _gather(self, sges: tuple[Sge, ...]) -> bytes | memoryview:
        mrs = self.device.mrs
        if len(sges) == 1:  # the common case: a view, copied once into the frame
            sge = sges[0]
            mr = mrs.get(sge.lkey)
            start = None if mr is None or mr.pd is not self.pd else mr.offset(sge.addr, sge.length)
            if mr is None or start is None:
                raise _LocalError(WcStatus.LOC_PROT_ERR, f"bad local key {sge.lkey:#x} or range")
            return mr.buffer[start : start + sge.length]
        parts: list[bytes | memoryview] = []
        for sge in sges:
            if sge.length == 0:
                continue
            mr = mrs.get(sge.lkey)
            start = None if mr is None or mr.pd is not self.pd else mr.offset(sge.addr, sge.length)
            if mr is None or start is None:
                raise _LocalError(WcStatus.LOC_PROT_ERR, f"bad local key {sge.lkey:#x} or range")
            parts.append(mr.buffer[start : start + sge.length])
        return b"".join(parts)

    def _encode(self, wr: SendWR, psn: int) -> tuple[bytes, bytes | memoryview, int]:
        """Return ``(header, payload, length)`` of the request frame for ``wr``."""
        opcode = wr.opcode
        if opcode is Opcode.RDMA_READ:
            length = sum(sge.length for sge in wr.sg_list)
            for sge in wr.sg_list:
                mr = self.device.mrs.get(sge.lkey)
                if sge.length and (
                    mr is None
                    or mr.pd is not self.pd
                    or not mr.local_write
                    or mr.offset(sge.addr, sge.length) is None
                ):
                    raise _LocalError(WcStatus.LOC_PROT_ERR, f"bad local key {sge.lkey:#x}")
            return encode_read_req(psn, wr.remote_addr, wr.rkey, length), b"", length
        payload = self._gather(wr.sg_list)
        size = len(payload)
        if opcode is Opcode.SEND or opcode is Opcode.SEND_WITH_IMM:
            return encode_send_header(psn, wr.imm_data, size), payload, size
        imm = wr.imm_data if opcode is Opcode.RDMA_WRITE_WITH_IMM else None
        return encode_write(psn, imm, wr.remote_addr, wr.rkey, payload), b"", size

    def _pump(self) -> None:
        """Transmit pending WRs (RTS only: SQD starts nothing new)."""
        if self._state is not _RTS:
            return
        link = self._link
        send = link is not None and not self._rnr_wait and not self._held
        pending = self._pending
        outstanding = self._outstanding
        mrs = self.device.mrs
        pd = self.pd
        # What this call transmits goes to the link as one list of parts.
        parts: list[bytes | memoryview] = []
        frames = size = 0
        while pending:
            if self._link_dead:
                self._flush_parts(parts, frames, size)
                self._fail(WcStatus.RETRY_EXC_ERR, "the TCP connection to the peer is gone")
                return
            wr = pending.popleft()
            psn = self._next_psn
            opcode = wr.opcode
            sges = wr.sg_list
            # The data path inline: a SEND of one valid SGE (the rest, and every error,
            # through _encode).
            if (opcode is _OP_SEND or opcode is _OP_SEND_IMM) and len(sges) == 1:
                sge = sges[0]
                mr = mrs.get(sge.lkey)
                length = sge.length
                if mr is not None and mr.pd is pd and 0 <= sge.addr - mr.addr <= mr.length - length:
                    start = sge.addr - mr.addr
                    payload: bytes | memoryview = mr.buffer[start : start + length]
                    header = encode_send_header(psn, wr.imm_data, length)
                else:
                    mr = None
            else:
                mr = None
            if mr is None:
                try:
                    header, payload, length = self._encode(wr, psn)
                except _LocalError as exc:
                    self._flush_parts(parts, frames, size)
                    self._complete_send(wr, exc.status, 0, message=str(exc))
                    self._enter_error(f"{exc.status.name}: {exc}")
                    return
            wire = len(header) + len(payload)
            if link is not None and wire - 4 > link.peer_max_frame:
                # Never send what the peer said it would refuse: it would reset the stream.
                self._flush_parts(parts, frames, size)
                message = f"{length} bytes exceed the peer's frame limit"
                self._complete_send(wr, WcStatus.LOC_LEN_ERR, 0, message=message)
                self._enter_error(f"LOC_LEN_ERR: {message}")
                return
            self._next_psn = (psn + 1) & PSN_MASK
            outstanding.append(_Inflight(wr, psn, header, payload, length))
            if send:
                parts.append(header)
                if payload:
                    parts.append(payload)
                frames += 1
                size += wire
            elif link is not None:
                self._held += 1
        self._flush_parts(parts, frames, size)
        if outstanding and self.deadline is None:
            self._arm(self.timeout)

    def _flush_parts(self, parts: list[bytes | memoryview], frames: int, size: int) -> None:
        if frames and self._link is not None:
            self._link.send_parts(parts, frames, size)

    def _resend(self, inflights: Sequence[_Inflight]) -> None:
        """Queue the frames of ``inflights`` again, in order, on the current link."""
        if self._link is None or not inflights:
            return
        parts: list[bytes | memoryview] = []
        size = 0
        for inflight in inflights:
            parts.append(inflight.header)
            if inflight.payload:
                parts.append(inflight.payload)
            size += len(inflight.header) + len(inflight.payload)
        self._link.send_parts(parts, len(inflights), size)

    def _arm(self, delay: float) -> None:
        if delay <= 0 and not self._rnr_wait:
            self.deadline = None  # timeout 0: wait forever, as IB's timeout 0
            return
        self.deadline = trio.current_time() + delay
        self.device.arm(self)

    def _retransmit(self) -> None:
        """Go back N: send everything outstanding again."""
        self._held = 0
        if self._link is not None:
            self._resend(self._outstanding)
            self.device.counters.tcp_retransmits += len(self._outstanding)

    def on_timer(self) -> None:
        """The retry (or RNR) timer fired: resend, or give up."""
        self.deadline = None
        if self._state not in (S.RTS, S.SQD) or not self._outstanding:
            return
        if self._rnr_wait:
            # Probe with the NAKed request alone: a slow receiver is not flooded.
            self._rnr_wait = False
            self._held = len(self._outstanding) - 1
            if self._link is not None:
                self._resend([self._outstanding[0]])
                self.device.counters.tcp_retransmits += 1
            self._arm(self.timeout)
            return
        self._retries += 1
        if self._retries > self.retry_cnt:
            self._fail(
                WcStatus.RETRY_EXC_ERR,
                f"no acknowledgement in {self.retry_cnt + 1} x {self.timeout}s",
            )
            return
        self._retransmit()
        self._arm(self.timeout)

    def _progress(self, upto: int) -> bool:
        """Complete outstanding WRs with PSN <= ``upto`` (stopping at unanswered READs)."""
        done = False
        outstanding = self._outstanding
        all_signaled = self.sq_sig_all
        qp_num = self.qp_num
        wcs: list[WorkCompletion] = []
        append = wcs.append
        set_id, set_status, set_op, set_len, set_qp, set_imm, set_msg = WC_SETTERS
        read = _OP_READ
        # PSN arithmetic mod 2**24: "psn <= upto" is "upto - psn lands in the half behind".
        while outstanding and ((upto - outstanding[0].psn) & PSN_MASK) < _HALF:
            head = outstanding[0]
            wr = head.wr
            opcode = wr.opcode
            if opcode is read:
                break
            outstanding.popleft()
            if wr.signaled or all_signaled:
                # WorkCompletion(wr_id, SUCCESS, opcode, length, qp_num, None, ""), see
                # _build: built slot by slot, once per acknowledged SEND.
                wc = new(WorkCompletion)
                set_id(wc, wr.wr_id)
                set_status(wc, _SUCCESS)
                set_op(wc, _WC_SEND if opcode in _SEND_OPS else WC_OPCODE[opcode])
                set_len(wc, head.length)
                set_qp(wc, qp_num)
                set_imm(wc, None)
                set_msg(wc, "")
                append(wc)
            done = True
        if wcs:
            self.send_cq.push_many(wcs)
        return done

    def _after_progress(self) -> None:
        self._retries = 0
        self._rnr_retries = 0
        if self._held:
            held, self._held = min(self._held, len(self._outstanding)), 0
            if held:
                self._resend(list(self._outstanding)[-held:])
        self.deadline = None
        if self._outstanding:
            self._arm(self.timeout)
        else:
            self._maybe_drained()
        self._pump()

    def _on_ack(self, frame: Ack) -> None:
        if self._progress(frame.psn):
            self._after_progress()

    def _on_read_resp(self, frame: ReadResp) -> None:
        done = self._progress((frame.psn - 1) & PSN_MASK)
        outstanding = self._outstanding
        if outstanding and outstanding[0].psn == frame.psn:
            head = outstanding[0]
            if head.wr.opcode is not Opcode.RDMA_READ or len(frame.payload) != head.length:
                raise RemoteProtocolError(f"READ response for PSN {frame.psn} does not fit")
            outstanding.popleft()
            try:
                self._scatter(head.wr.sg_list, frame.payload, need_write=True)
            except _LocalError as exc:
                self._complete_send(head.wr, exc.status, 0, message=str(exc))
                self._enter_error(f"{exc.status.name}: {exc}")
                return
            self._complete_send(head.wr, WcStatus.SUCCESS, head.length)
            done = True
        if done:
            self._after_progress()

    def _on_nak(self, frame: Nak) -> None:
        if self._progress((frame.psn - 1) & PSN_MASK):
            self._retries = 0
        if not self._outstanding or self._outstanding[0].psn != frame.psn:
            return  # stale: already handled
        if frame.code is NakCode.RNR:
            self.device.counters.tcp_rnr_naks_rx += 1
            self._rnr_retries += 1
            if self.rnr_retry != 7 and self._rnr_retries > self.rnr_retry:
                self._fail(
                    WcStatus.RNR_RETRY_EXC_ERR,
                    f"receiver not ready {self._rnr_retries} times (rnr_retry={self.rnr_retry})",
                )
                return
            self._rnr_wait = True
            self._arm(max(frame.rnr_timer, _MIN_RNR_WAIT))
            return
        status = _NAK_STATUS[frame.code]
        self._fail(status, f"the responder refused PSN {frame.psn}")

    # ------------------------------------------------------------------ responder

    def _scatter(
        self, sges: tuple[Sge, ...], data: bytes | memoryview, *, need_write: bool
    ) -> None:
        size = len(data)
        mrs = self.device.mrs
        if len(sges) == 1:  # the common case
            sge = sges[0]
            if size > sge.length:
                raise _LocalError(WcStatus.LOC_LEN_ERR, f"{size} bytes do not fit the buffer")
            if size == 0:
                return
            mr = mrs.get(sge.lkey)
            start = None if mr is None or mr.pd is not self.pd else mr.offset(sge.addr, sge.length)
            if mr is None or start is None or (need_write and not mr.local_write):
                raise _LocalError(WcStatus.LOC_PROT_ERR, f"bad local key {sge.lkey:#x} or range")
            mr.buffer[start : start + size] = data
            return
        if size > sum(sge.length for sge in sges):
            raise _LocalError(WcStatus.LOC_LEN_ERR, f"{size} bytes do not fit the buffers")
        offset = 0
        for sge in sges:
            if offset >= size:
                break
            mr = mrs.get(sge.lkey)
            start = None if mr is None or mr.pd is not self.pd else mr.offset(sge.addr, sge.length)
            if mr is None or start is None or (need_write and not mr.local_write):
                raise _LocalError(WcStatus.LOC_PROT_ERR, f"bad local key {sge.lkey:#x} or range")
            count = min(sge.length, size - offset)
            mr.buffer[start : start + count] = data[offset : offset + count]
            offset += count

    def _remote_mr(self, rkey: int, addr: int, length: int, write: bool) -> TcpMR | None:
        mr = self.device.mrs.get(rkey)
        if mr is None or mr.pd is not self.pd or mr.offset(addr, length) is None:
            return None
        if write:
            return mr if mr.remote_write and Access.REMOTE_WRITE in self.access_flags else None
        return mr if mr.remote_read and Access.REMOTE_READ in self.access_flags else None

    def _nak(self, link: Link, psn: int, code: NakCode) -> None:
        self._ack_due = False
        if code is NakCode.RNR:
            self.device.counters.tcp_rnr_naks_tx += 1
            link.send(encode_nak(psn, code, self.min_rnr_timer))
        else:
            self.device.counters.tcp_naks_tx += 1
            link.send(encode_nak(psn, code))

    def _respond(self, link: Link, frame: Send | Write | ReadReq) -> None:
        if self._state not in _RESPONDING:
            return
        delta = (frame.psn - self._epsn) & PSN_MASK
        if delta:
            if delta >= _HALF:  # a duplicate from a go-back-N resend
                if isinstance(frame, ReadReq):
                    self._read(link, frame)
                else:
                    self._ack_due = True
            return  # ahead of a gap: the requester will resend in order
        if isinstance(frame, ReadReq):
            if self._read(link, frame):
                self._epsn = (self._epsn + 1) & PSN_MASK
            return
        needs_recv = isinstance(frame, Send) or frame.imm is not None
        if needs_recv and not self._rq:
            self._nak(link, frame.psn, NakCode.RNR)
            return
        if isinstance(frame, Write) and frame.payload:
            mr = self._remote_mr(frame.rkey, frame.remote_addr, len(frame.payload), write=True)
            if mr is None:
                self._nak(link, frame.psn, NakCode.REM_ACCESS)
                self._enter_error(f"remote access error on WRITE rkey {frame.rkey:#x}")
                return
            start = frame.remote_addr - mr.addr
            mr.buffer[start : start + len(frame.payload)] = frame.payload
        if needs_recv:
            wr = self._rq.popleft()
            if isinstance(frame, Write):
                self._complete_recv(
                    wr, WcStatus.SUCCESS, WcOpcode.RECV_RDMA_WITH_IMM, len(frame.payload), frame.imm
                )
            else:
                try:
                    self._scatter(wr.sg_list, frame.payload, need_write=True)
                except _LocalError as exc:
                    self._complete_recv(wr, exc.status, WcOpcode.RECV, message=str(exc))
                    code = (
                        NakCode.REM_INV_REQ
                        if exc.status is WcStatus.LOC_LEN_ERR
                        else NakCode.REM_OP
                    )
                    self._nak(link, frame.psn, code)
                    self._enter_error(f"{exc.status.name}: {exc}")
                    return
                self._complete_recv(
                    wr, WcStatus.SUCCESS, WcOpcode.RECV, len(frame.payload), frame.imm
                )
        self._epsn = (self._epsn + 1) & PSN_MASK
        self._ack_due = True

    def _read(self, link: Link, frame: ReadReq) -> bool:
        if frame.length > self.device.max_msg_sz:
            self._nak(link, frame.psn, NakCode.REM_INV_REQ)
            self._enter_error(f"READ of {frame.length} bytes is longer than max_msg_sz")
            return False
        if frame.length == 0:
            data = b""
        else:
            mr = self._remote_mr(frame.rkey, frame.remote_addr, frame.length, write=False)
            if mr is None:
                self._nak(link, frame.psn, NakCode.REM_ACCESS)
                self._enter_error(f"remote access error on READ rkey {frame.rkey:#x}")
                return False
            start = frame.remote_addr - mr.addr
            data = bytes(mr.buffer[start : start + frame.length])
        link.send(encode_read_resp(frame.psn, data))
        self._ack_due = False
        return True

    # ------------------------------------------------------------------ the link

    def frames_received(self, link: Link, frames: list[Frame]) -> None:
        """Handle one batch from the peer QP; one cumulative ACK at the end.

        The data path is inline: the expected SEND into a posted one-buffer
        receive is copied from the received bytes into that buffer, and its
        completion joins the batch's, pushed once. Anything else (a gap, no
        receive, a bad key, a non-SEND frame) first pushes the completions so
        far, then goes through :meth:`_respond` and the requester's handlers.
        """
        if link is not self._link:
            return
        rq = self._rq
        mrs = self.device.mrs
        pd = self.pd
        qp_num = self.qp_num
        wcs: list[WorkCompletion] = []
        set_id, set_status, set_op, set_len, set_qp, set_imm, set_msg = WC_SETTERS
        responding = self._state in _RESPONDING
        for frame in frames:
            if type(frame) is Send and responding and frame.psn == self._epsn and rq:
                sges = rq[0].sg_list
                if len(sges) == 1:
                    sge = sges[0]
                    payload = frame.payload
                    size = len(payload)
                    mr = mrs.get(sge.lkey)
                    if (
                        mr is not None
                        and mr.pd is pd
                        and mr.local_write
                        and size <= sge.length
                        and 0 <= sge.addr - mr.addr <= mr.length - sge.length
                    ):
                        start = sge.addr - mr.addr
                        mr.buffer[start : start + size] = payload
                        wr = rq.popleft()
                        # WorkCompletion(wr_id, SUCCESS, RECV, size, qp_num, imm, ""), see
                        # _build: built slot by slot, once per received SEND.
                        wc = new(WorkCompletion)
                        set_id(wc, wr.wr_id)
                        set_status(wc, _SUCCESS)
                        set_op(wc, _RECV)
                        set_len(wc, size)
                        set_qp(wc, qp_num)
                        set_imm(wc, frame.imm)
                        set_msg(wc, "")
                        wcs.append(wc)
                        self._epsn = (self._epsn + 1) & PSN_MASK
                        self._ack_due = True
                        continue
            if wcs:
                self.recv_cq.push_many(wcs)
                wcs = []
            if self._state is _ERR or link is not self._link:
                return
            if isinstance(frame, (Send, Write, ReadReq)):
                self._respond(link, frame)
            elif isinstance(frame, Ack):
                self._on_ack(frame)
            elif isinstance(frame, ReadResp):
                self._on_read_resp(frame)
            elif isinstance(frame, Nak):
                self._on_nak(frame)
            elif isinstance(frame, Bye):
                self._enter_error(None)
                return
            else:
                raise RemoteProtocolError(f"{type(frame).__name__} frame on a QP stream")
            responding = self._state in _RESPONDING
        if wcs:
            self.recv_cq.push_many(wcs)
        if self._ack_due and link is self._link:
            self._ack_due = False
            self.device.counters.tcp_acks_tx += 1
            link.send(encode_ack((self._epsn - 1) & PSN_MASK))

    def link_closed(self, link: Link, error: BaseException | None) -> None:
        """The peer's stream died without a BYE: the peer is gone."""
        if link is not self._link:
            return
        self._link = None
        self._link_dead = True
        log.info("QP %#x lost its stream to %s: %s", self.qp_num, link.peer, error or "EOF")
        if self._state in (S.RTS, S.SQD) and self._outstanding:
            self._fail(WcStatus.RETRY_EXC_ERR, "the TCP connection to the peer is gone")

    def send_bye(self) -> None:
        """Tell the peer QP this is a deliberate disconnect (before going to ERR)."""
        if self._link is not None:
            self._link.send(encode_bye())

    def _drop_link(self, *, flush: bool = False) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._link is not None:
            self._link.close(flush=flush)
            self._link = None

    # ------------------------------------------------------------------ linking

    @property
    def initiator(self) -> bool:
        """True if this end opens the TCP connection to the peer QP."""
        assert self.dest is not None
        if self.stream_opener is not None:
            return self.stream_opener
        return (self.device.locator, self.qp_num) < (self.dest.port_address, self.dest.qpn)

    def accepts_stream(self, locator: str, qpn: int) -> bool:
        """True if an incoming stream from ``(locator, qpn)`` is this QP's peer, now."""
        return (
            not self._closed
            and self._state in (S.RTR, S.RTS, S.SQD)
            and self._link is None
            and not self._link_dead
            and self.dest == QpDest(locator, qpn)
        )

    def attach(self, link: Link) -> None:
        """Adopt ``link`` as this QP's stream and resend whatever is outstanding."""
        self._link = link
        if self._rnr_wait:
            self._held = len(self._outstanding)
        else:
            self._held = 0
            self._resend(self._outstanding)
        self._pump()

    def _start_link(self) -> None:
        if self.dest is not None and self.initiator:
            scope = trio.CancelScope()
            self._connecting = scope
            self.device.spawn(self._connect_loop, scope, self.dest)

    def _path_change(self) -> None:
        self.stream_opener = None  # a new peer connected by hand: the address rule decides
        self._drop_link()
        self._link_dead = False
        self._rnr_wait = False
        self._start_link()

    def abandon_stream(self) -> None:
        """The CM exchange failed: close the stream opened for it (if not connected yet)."""
        if self._state in (S.RESET, S.INIT) and not self._closed:
            self._drop_link()
            self.stream_opener = None

    def open_stream_early(self, locator: str) -> None:
        """Open the stream to the device at ``locator`` now, before the peer QP is known.

        The CM's active side calls this once its CM connection is authenticated
        and the REQ is out: the peer device matches the stream by our
        ``(locator, qp_num)`` once its QP is connected to ours, so the stream's
        handshake overlaps REP/RTU instead of following them. If it fails, this
        QP opens the stream the usual way (by the peer's QPN) at RTR.
        """
        self.stream_opener = False
        scope = trio.CancelScope()
        self._connecting = scope
        self.device.spawn(self._early_stream, scope, locator)

    async def _early_stream(self, scope: trio.CancelScope, locator: str) -> None:
        request = {"t": "qp", "qpn": self.qp_num, "loc": self.device.locator}
        link: Link | None = None
        try:
            # Not cut short if the exchange fails meanwhile: a handshake the peer sees
            # broken off counts as a protocol error there. It is closed right after.
            link = await self.device.open_stream(locator, request)
        except (CmError, RemoteProtocolError, OSError) as exc:
            log.debug("QP %#x: early stream failed: %r", self.qp_num, exc)
        with scope:
            try:
                if link is None:
                    raise RemoteProtocolError("no early stream")
                await self.device.expect_reply(link, "ok")
                while self._state not in (S.RTR, S.RTS, S.SQD):
                    await self.device.wait_qp_changed()  # our REP is a moment behind
            except (
                CmError,
                RemoteProtocolError,
                OSError,
                trio.BrokenResourceError,
                trio.ClosedResourceError,
            ) as exc:
                log.debug("QP %#x: early stream failed: %r", self.qp_num, exc)
                if link is not None:
                    link.close()
                link = None
        if self._connecting is scope:
            self._connecting = None
        if scope.cancel_called or self._closed or self._state not in (S.RTR, S.RTS, S.SQD):
            if link is not None:
                link.close()
            if not scope.cancel_called and not self._closed and self._state is not S.ERR:
                self.stream_opener = True  # open it the usual way at RTR
            return
        if link is None or self._link is not None or self.dest is None:
            if link is not None:
                link.close()
            if self._link is None and not self._link_dead:
                self.stream_opener = True
                self._start_link()
            return
        self.attach(link)
        await link.run(self)

    async def _connect_loop(self, scope: trio.CancelScope, dest: QpDest) -> None:
        """Open the stream to the peer QP, retrying (with back-off) while nobody answers."""
        delay = _CONNECT_BACKOFF[0]
        request = {"t": "qp", "dst": dest.qpn, "qpn": self.qp_num, "loc": self.device.locator}
        link: Link | None = None
        with scope:
            while link is None:
                attempt: Link | None = None
                try:
                    attempt = await self.device.open_link(dest.port_address, request)
                    await self.device.expect_reply(attempt, "ok")
                    link, attempt = attempt, None
                except (
                    CmError,
                    RemoteProtocolError,
                    OSError,
                    trio.BrokenResourceError,
                    trio.ClosedResourceError,
                ) as exc:
                    if isinstance(exc, AuthenticationFailed):
                        log.warning("QP %#x: %s", self.qp_num, exc)
                    await trio.sleep(delay)  # back-off between connection attempts
                    delay = min(delay * 2, _CONNECT_BACKOFF[1])
                finally:
                    if attempt is not None:
                        attempt.close()
        if self._connecting is scope:
            self._connecting = None
        if link is None:
            return
        if scope.cancelled_caught or self._closed or self.dest != dest:
            link.close()
            return
        self.attach(link)
        await link.run(self)
