"""The virtual RC queue pair: a stable QPN over a succession of physical QPs.

Every work request the layer above posts is kept (as an entry) until its
completion has been delivered upward, exactly once. While the QP is *active*
entries are posted to the current physical QP as they come; while it is *held*
(our device is going or gone, the peer asked us to suspend, or the link was
lost) they queue here and the caller never sees an error. When a new physical
QP is bound, receives are posted again, the sends the peer already has are
completed without resending (:func:`~rdsx.shim.protocol.plan_resend`), and the
rest are posted again followed by the held ones, in their original order.

Physical completions come back through the session's dispatcher by the
physical ``wr_id`` the shim gave each post; transport failures (retry
exhaustion, flushes) on a connection the shim can resume are swallowed and turn
into a hold, everything else (a protection error, a user's disconnect) is the
layer above's business and passes through.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import attrs
import trio

from ..errors import (
    DeviceRemoved,
    InvalidHandle,
    InvalidState,
    PeerResumeTimeout,
    QueueFull,
    VerbsError,
)
from ..verbs import (
    QP,
    WC_OPCODE,
    AsyncEvent,
    AsyncEventType,
    CmEvent,
    CmEventType,
    Opcode,
    QpAttr,
    QpCap,
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
    cm_init,
)
from ..verbs import CmId as PhysCmId
from .protocol import plan_resend

if TYPE_CHECKING:
    from .cm import VirtualCmId
    from .recovery import Session
    from .resources import VirtualContext, VirtualCQ, VirtualPD

__all__ = ["Hold", "PeerLink", "VirtualQP"]

log = logging.getLogger("rdsx.shim")

_WR = TypeVar("_WR", SendWR, RecvWR)

S = QpState
#: Sends that consume a receive at the peer, hence are counted by it.
COUNTED = frozenset({Opcode.SEND, Opcode.SEND_WITH_IMM, Opcode.RDMA_WRITE_WITH_IMM})
#: Statuses that mean "the path broke", not "the layer above did something wrong".
TRANSPORT_FAILURES = frozenset({WcStatus.RETRY_EXC_ERR, WcStatus.WR_FLUSH_ERR})


class Hold(enum.Enum):
    """Why a virtual QP is not posting to a physical QP right now."""

    #: Our own device is going or gone; we reconnect when the next one comes.
    LOCAL = "local"
    #: The peer told us it is migrating; it reconnects to us.
    SUSPENDED = "suspended"
    #: The physical QP failed on its own (the peer vanished); we wait for it.
    LOST = "lost"


@attrs.frozen(slots=True)
class PeerLink:
    """What the shim remembers of the other end of a CM connection.

    Attributes:
        address: the peer node's out-of-band address (stable across migrations).
        vqpn: the peer's virtual QPN.
        inc: the peer's device incarnation as last seen.
    """

    address: str
    vqpn: int
    inc: int


class _Entry:
    __slots__ = ("counted", "posted", "pwr", "seq", "tries", "wr")

    def __init__(self, seq: int, wr: SendWR | RecvWR) -> None:
        self.seq = seq
        self.wr = wr
        self.counted = isinstance(wr, SendWR) and wr.opcode in COUNTED
        self.posted = False
        self.pwr = 0
        self.tries = 0


class VirtualQP(QP):
    """An RC QP whose number, keys and peer survive device replacements.

    Obtained from :meth:`VirtualPD.create_qp`; the contract is that of
    :class:`rdsx.verbs.QP`, except that ``post_send``/``post_recv`` never raise
    :class:`~rdsx.errors.DeviceRemoved`: during a migration they queue.
    """

    def __init__(
        self,
        ctx: VirtualContext,
        pd: VirtualPD,
        send_cq: VirtualCQ,
        recv_cq: VirtualCQ,
        cap: QpCap,
        sq_sig_all: bool,
    ) -> None:
        self._ctx = ctx
        self._pd = pd
        self._send_cq = send_cq
        self._recv_cq = recv_cq
        self._cap = cap
        self._sq_sig_all = sq_sig_all
        self._phys: QP | None = None
        self._pcm: PhysCmId | None = None
        self._session: Session | None = None
        self._vstate = S.RESET
        self._replay: list[QpAttr] = []
        self._seq = itertools.count()
        self._sends: dict[int, _Entry] = {}
        self._recvs: dict[int, _Entry] = {}
        self._hold: Hold | None = None
        self._resumed = trio.Event()
        self._resume_deadline = float("inf")
        self._drained = trio.Event()
        self._quiescing = False
        self._user_sqd = False
        self.peer: PeerLink | None = None
        #: The address our ``cm_connect`` is connecting to right now, if any.
        self.connecting_to: str | None = None
        self._received = 0
        self._acked = 0
        self._first_error: tuple[int, WcStatus, str] | None = None
        self.failure: PeerResumeTimeout | None = None
        self.cm_id: VirtualCmId | None = None
        self._closed = False
        #: A physical QP made ahead for the peer's reconnect (pre-setup), and its device.
        self._spare: tuple[Session, QP] | None = None
        #: A suspend message from the peer is being served (its resends are ignored).
        self.serving_suspend = False
        #: Set with the peer's answer to our in-band suspend.
        self._answer: tuple[trio.Event, list[object]] | None = None
        #: Key pushes the peer has not acknowledged yet: sends wait (see :meth:`fence`).
        self._fences: set[object] = set()
        self.qp_num = 0
        if ctx.session is not None:
            try:
                self._create_phys(ctx.session)
            except DeviceRemoved:
                self._phys = None
                ctx.device_gone()
        self.qp_num = ctx.core.qpns.allocate(
            self, self._phys.qp_num if self._phys is not None else None
        )

    # ------------------------------------------------------------------ contract

    @property
    def state(self) -> QpState:
        """The state the layer above sees (a migration is invisible here)."""
        if (
            self.peer is None
            and self._hold is None
            and self._phys is not None
            and self._vstate is not S.RESET
        ):
            # Not resumable: the physical QP's own transitions (ERR, drained SQD) show.
            with contextlib.suppress(VerbsError):
                self._vstate = self._phys.state
        return self._vstate

    @property
    def sq_draining(self) -> bool:
        """Whether a user-requested SQD is still draining."""
        if self._phys is None or self._hold is not None or self._vstate is not S.SQD:
            return False
        try:
            return self._phys.sq_draining
        except VerbsError:
            return False

    @property
    def held(self) -> Hold | None:
        """Why posts are being held right now, or ``None`` while they flow."""
        return self._hold

    @property
    def physical(self) -> QP | None:
        """The physical QP currently bound (for tests and diagnostics)."""
        return self._phys

    @property
    def physical_cm(self) -> PhysCmId | None:
        """The physical CM id of the current binding."""
        return self._pcm

    @property
    def received(self) -> int:
        """Counted messages received on this virtual QP, ever."""
        return self._received

    def modify(self, attr: QpAttr) -> None:
        """Move the QP to ``attr.state``, as :meth:`rdsx.verbs.QP.modify`.

        While the QP is held by a migration only ERR and RESET are accepted;
        they take effect on the virtual QP at once.

        Raises:
            InvalidState: an illegal transition, or a transition other than ERR
                or RESET while the QP is held by a migration.
            InvalidArgument: a required attribute is missing or out of range.
        """
        self._check_open()
        check_modify(self.state, attr)
        target = attr.state
        if target in (S.ERR, S.RESET):
            # The layer above ends the connection: nothing more to resume.
            self.peer = None
        if self._phys is not None and self._hold is None:
            try:
                self._phys.modify(attr)
            except DeviceRemoved:
                self._ctx.device_gone()
                self._hold_for(Hold.LOCAL)
            else:
                self._modified(attr)
                return
        if self._hold is not None or self._phys is None:
            if target is S.ERR:
                self._give_up(None)
                return
            if target is S.RESET:
                self._give_up(None)
                self._sends.clear()
                self._recvs.clear()
                self._vstate = S.RESET
                self._replay.clear()
                self._resume_fresh()
                self.failure = None
                self.cm_id = None
                session = self._ctx.session
                if session is not None and not session.removal.is_set():
                    # Reusable at once: a fresh physical QP in RESET on this device.
                    with contextlib.suppress(DeviceRemoved):
                        self._create_phys(session)
                return
            if self.peer is None and self.cm_id is None:
                # Set up by hand: the next device replays it.
                self._modified(attr)
                return
            raise InvalidState(f"QP {self.qp_num} is held by a migration; only ERR/RESET now")

    def _modified(self, attr: QpAttr) -> None:
        target = attr.state
        self._vstate = target
        self._user_sqd = target is S.SQD
        if target is S.RESET:
            self._replay.clear()
            self._sends.clear()
            self._recvs.clear()
            self._fences.clear()
        else:
            self._replay.append(attr)
        if target is S.ERR and self._fences:
            # Nothing more reaches the peer: what a key push held flushes now, in order.
            for token in list(self._fences):
                self.unfence(token)

    def post_send(self, wrs: SendWR | Sequence[SendWR]) -> None:
        """Post send WRs; during a migration they are held, never refused.

        Raises:
            InvalidState: the QP is in RESET, INIT or RTR.
            QueueFull: more than ``max_send_wr`` outstanding (held ones count).
            InvalidArgument: too many SGEs, a message over ``max_msg_sz``, a
                negative length, a ``*_WITH_IMM`` without ``imm_data``, an
                ``imm_data`` outside 32 bits.
        """
        self._check_open()
        batch = [wrs] if isinstance(wrs, SendWR) else list(wrs)
        state = self.state
        if state in (S.RESET, S.INIT, S.RTR):
            raise InvalidState(f"post_send on a QP in {state.name}")
        # Checked here, not left to the device: a held WR meets no device.
        check_send_wrs(batch, self._cap.max_send_sge, self._ctx.port_attr.max_msg_sz)
        if len(self._sends) + len(batch) > self._cap.max_send_wr:
            raise QueueFull(f"more than {self._cap.max_send_wr} sends outstanding")
        if state is S.ERR and (self._phys is None or self.failure is not None):
            for wr in batch:
                self._send_cq.push(self._send_wc(wr, WcStatus.WR_FLUSH_ERR))
            return
        entries = [_Entry(next(self._seq), wr) for wr in batch]
        for entry in entries:
            self._sends[entry.seq] = entry
        if not self._can_post():
            self._ctx.core.recorder.held(len(entries))
        elif not self._fences:
            try:
                self._post_sends(entries, from_user=True)
            except VerbsError:
                for entry in entries:
                    del self._sends[entry.seq]
                raise

    def post_recv(self, wrs: RecvWR | Sequence[RecvWR]) -> None:
        """Post receive WRs; during a migration they are kept and posted later.

        Raises:
            InvalidState: the QP is in RESET.
            QueueFull: more than ``max_recv_wr`` outstanding.
            InvalidArgument: more SGEs than ``max_recv_sge``, a negative length.
        """
        self._check_open()
        batch = [wrs] if isinstance(wrs, RecvWR) else list(wrs)
        state = self.state
        if state is S.RESET:
            raise InvalidState("post_recv on a QP in RESET")
        check_recv_wrs(batch, self._cap.max_recv_sge)
        if len(self._recvs) + len(batch) > self._cap.max_recv_wr:
            raise QueueFull(f"more than {self._cap.max_recv_wr} receives outstanding")
        if state is S.ERR and (self._phys is None or self.failure is not None):
            for wr in batch:
                self._recv_cq.push(self._recv_wc(wr, WcStatus.WR_FLUSH_ERR))
            return
        entries = [_Entry(next(self._seq), wr) for wr in batch]
        for entry in entries:
            self._recvs[entry.seq] = entry
        if self._can_post():
            try:
                self._post_recvs(entries, from_user=True)
            except VerbsError:
                for entry in entries:
                    del self._recvs[entry.seq]
                raise

    def close(self) -> None:
        """Destroy the QP; outstanding WRs are discarded without completions."""
        if self._closed:
            return
        self._closed = True
        self.peer = None
        self._drop_phys()
        self._drop_spare()
        self._sends.clear()
        self._recvs.clear()
        self._ctx.core.qpns.release(self.qp_num)
        self._ctx.forget_qp(self)

    # ------------------------------------------------------------------ posting

    def _check_open(self) -> None:
        if self._closed:
            raise InvalidHandle(f"QP {self.qp_num} is destroyed")

    def _can_post(self) -> bool:
        return self._phys is not None and self._hold is None

    def _translate_sges(self, sges: tuple[Sge, ...]) -> tuple[Sge, ...]:
        physical_lkey = self._ctx.core.physical_lkey
        if all(physical_lkey(sge.lkey) == sge.lkey for sge in sges):
            return sges  # the common case until a migration: keep the caller's tuple
        return tuple(Sge(sge.addr, sge.length, physical_lkey(sge.lkey)) for sge in sges)

    def _upward(self, wc: WorkCompletion, wr_id: int) -> WorkCompletion:
        """``wc`` as the layer above must see it: its own wr_id, the virtual QPN."""
        return WorkCompletion(
            wr_id, wc.status, wc.opcode, wc.byte_len, self.qp_num, wc.imm_data, wc.message
        )

    def _post_sends(self, entries: list[_Entry], *, from_user: bool) -> None:
        assert self._phys is not None and self._session is not None
        session = self._session
        physical: list[SendWR] = []
        for entry in entries:
            wr = entry.wr
            assert isinstance(wr, SendWR)
            wr_id = session.register(self, entry)
            physical.append(
                SendWR(
                    wr_id,
                    wr.opcode,
                    self._translate_sges(wr.sg_list),
                    wr.imm_data,
                    wr.remote_addr,
                    self._ctx.core.physical_rkey(self.peer, wr.rkey),
                    True,
                )
            )
        if self._post_physical(self._phys.post_send, physical, from_user=from_user):
            for entry in entries:
                entry.posted = True
                entry.tries += 1

    def _post_recvs(self, entries: list[_Entry], *, from_user: bool) -> None:
        assert self._phys is not None and self._session is not None
        session = self._session
        physical: list[RecvWR] = []
        for entry in entries:
            wr = entry.wr
            physical.append(RecvWR(session.register(self, entry), self._translate_sges(wr.sg_list)))
        if self._post_physical(self._phys.post_recv, physical, from_user=from_user):
            for entry in entries:
                entry.posted = True

    def _post_physical(
        self, post: Callable[[list[_WR]], None], physical: list[_WR], *, from_user: bool
    ) -> bool:
        """Post ``physical`` on the physical QP; True if it took them.

        A removal noticed here holds the QP (the WRs are posted again on the next
        device); any other refusal reaches the caller only for the user's own post,
        a repost is logged. Either way the wr_ids registered for them are released.
        """
        assert self._phys is not None and self._session is not None
        try:
            post(physical)
            return True
        except VerbsError as exc:
            for wr in physical:
                self._session.unregister(wr.wr_id)
            if isinstance(exc, DeviceRemoved):
                self._session.report_removal(None)
                self._hold_for(Hold.LOCAL)
                return False
            if from_user:
                raise
            log.warning("QP %d: repost of %d WRs refused: %s", self.qp_num, len(physical), exc)
            return False

    # ------------------------------------------------------------------ completions

    def _send_wc(self, wr: SendWR | RecvWR, status: WcStatus, message: str = "") -> WorkCompletion:
        assert isinstance(wr, SendWR)
        # byte_len is the contract's only for a SUCCESS; a failure or a flush reports 0.
        length = sum(sge.length for sge in wr.sg_list) if status is WcStatus.SUCCESS else 0
        return WorkCompletion(
            wr.wr_id, status, WC_OPCODE[wr.opcode], length, self.qp_num, None, message
        )

    def _recv_wc(self, wr: SendWR | RecvWR, status: WcStatus) -> WorkCompletion:
        return WorkCompletion(wr.wr_id, status, WcOpcode.RECV, 0, self.qp_num)

    def _swallows(self, status: WcStatus) -> bool:
        return self.peer is not None and (self._hold is not None or status in TRANSPORT_FAILURES)

    def on_completion(self, entry: _Entry, wc: WorkCompletion) -> None:
        """Handle one physical completion of ``entry`` (called by the dispatcher)."""
        is_send = isinstance(entry.wr, SendWR)
        table = self._sends if is_send else self._recvs
        if table.get(entry.seq) is not entry:
            return
        if wc.status is WcStatus.SUCCESS:
            del table[entry.seq]
            if is_send:
                if entry.counted:
                    self._acked += 1
                if self._quiescing:
                    self._ctx.core.recorder.drained(1)
                wr = entry.wr
                assert isinstance(wr, SendWR)
                if wr.signaled or self._sq_sig_all:
                    self._send_cq.push(self._upward(wc, wr.wr_id))
                if self._quiescing and not any(e.posted for e in self._sends.values()):
                    self._drained.set()
            else:
                self._received += 1
                self._recv_cq.push(self._upward(wc, entry.wr.wr_id))
            return
        if self._swallows(wc.status):
            entry.posted = False
            if is_send and self._first_error is None and wc.status is not WcStatus.WR_FLUSH_ERR:
                self._first_error = (entry.seq, wc.status, wc.message)
            if self._hold is None:
                log.info("QP %d: %s; holding until the peer is back", self.qp_num, wc.status)
                self._hold_for(Hold.LOST)
            if self._quiescing and not any(e.posted for e in self._sends.values()):
                self._drained.set()
            return
        # A failure the layer above must see; the physical QP is in ERR now.
        del table[entry.seq]
        self.peer = None
        cq = self._send_cq if is_send else self._recv_cq
        cq.push(self._upward(wc, entry.wr.wr_id))

    def on_sq_drained(self) -> bool:
        """The physical QP reported SQ_DRAINED; True if the shim (not the user) asked for it."""
        if self._quiescing:
            self._drained.set()
        return not self._user_sqd

    # ------------------------------------------------------------------ hold / bind

    def _resume_fresh(self) -> None:
        if self._resumed.is_set():
            self._resumed = trio.Event()

    def _hold_for(self, reason: Hold, *, ahead: bool = True) -> None:
        """Stop posting to the physical QP; posts queue until :meth:`bind`.

        Unless ``ahead`` is False (the peer is reconnecting right now), a hold
        for the peer's sake makes its replacement QP at once (:meth:`presetup`).
        """
        if self._hold is Hold.LOCAL and reason is not Hold.LOCAL:
            return
        first = self._hold is None
        self._hold = reason
        self._resume_fresh()
        if reason is not Hold.LOCAL and ahead:
            # The peer will reconnect to us: make its QP now, off its critical path.
            self.presetup()
            timeout = self._ctx.core.config.resume_timeout
            self._resume_deadline = trio.current_time() + timeout
            if first and self._session is not None:
                self._session.spawn(self._watchdog)

    def fence(self) -> object:
        """Hold new sends until the peer has a key pair we are pushing to it.

        A memory region registered after a migration may not keep its physical
        rkey as its virtual one (:meth:`~rdsx.shim.core.Core.rkey_moved`). The
        layer above learns the virtual rkey from ``reg_mr`` and may tell the peer
        at once, in the next send on this very connection; the peer's shim must
        already translate it by then, or the peer's RDMA names a key the device
        does not know (or someone else's). So sends queue here (receives do not)
        until the push is acknowledged (:meth:`unfence`), or until our device
        goes (:meth:`detach`: the next device's reconnects carry the whole map).
        A reconnect of the peer does not lift it: the key map it carried may
        have been taken before this key moved.

        Returns:
            The token to hand to :meth:`unfence`.
        """
        token = object()
        self._fences.add(token)
        return token

    def fenced_by(self, token: object) -> bool:
        """Whether ``token`` (from :meth:`fence`) still holds this QP's sends."""
        return token in self._fences

    def unfence(self, token: object) -> None:
        """The key push behind ``token`` is over: post what it held, in order."""
        if token not in self._fences:
            return  # lifted already: our device went, the next one carries the map
        self._fences.discard(token)
        if self._fences or not self._can_post() or self._closed:
            return
        waiting = [entry for entry in self._sends.values() if not entry.posted]
        if waiting:
            self._post_sends(waiting, from_user=False)

    def extend_resume_deadline(self) -> None:
        """The peer is alive and trying: restart the resume bound."""
        self._resume_deadline = trio.current_time() + self._ctx.core.config.resume_timeout

    async def _watchdog(self) -> None:
        while self._hold in (Hold.SUSPENDED, Hold.LOST):
            with trio.move_on_at(self._resume_deadline):
                await self._resumed.wait()
            if self._hold not in (Hold.SUSPENDED, Hold.LOST):
                return
            if trio.current_time() >= self._resume_deadline:
                self.fail(
                    PeerResumeTimeout(
                        f"QP {self.qp_num}: peer {self.peer} did not resume within "
                        f"{self._ctx.core.config.resume_timeout}s"
                    )
                )
                return

    async def wait_resumed(self, deadline: float) -> bool:
        """Wait until the QP is bound again (or ``deadline``); True if it is."""
        with trio.move_on_at(deadline):
            while self._hold is not None and self.failure is None:
                await self._resumed.wait()
        return self._hold is None and self.failure is None

    def _create_phys(self, session: Session) -> QP | None:
        ppd = self._pd.physical
        if ppd is None or not (self._send_cq.has_physical and self._recv_cq.has_physical):
            return None  # its parents are not on this device (yet): made with them later
        qp = ppd.create_qp(self._send_cq.physical_cq(), self._recv_cq.physical_cq(), self._cap)
        self._phys = qp
        self._session = session
        session.bind_qp(qp, self)
        return qp

    def presetup(self) -> None:
        """Make the physical QP the peer's reconnect will be accepted with, now.

        MigrRDMA's pre-setup: while the peer is away (suspended for its
        migration, or lost), its replacement QP is created and moved to INIT on
        our device, so the accept only has RTR/RTS left to do. Its receives are
        moved onto it at the reconnect (:meth:`prepost`; posting is local and
        cheap, and they are still posted on the old QP until then). Dropped if
        we give up, close, or lose our own device first.
        """
        session = self._session
        if (
            self._spare is not None
            or session is None
            or session.removal.is_set()
            or session.closed
            or self.peer is None
            or self.failure is not None
            or self._closed
        ):
            return
        try:
            qp = self.new_physical(session)
        except VerbsError as exc:
            if isinstance(exc, DeviceRemoved):
                self._ctx.device_gone()
            log.debug("QP %d: no pre-setup: %s", self.qp_num, exc)
            return
        try:
            cm_init(qp)
        except VerbsError as exc:
            log.debug("QP %d: pre-setup QP not in INIT: %s", self.qp_num, exc)
            with contextlib.suppress(VerbsError):
                qp.close()
            return
        self._spare = (session, qp)
        self._ctx.core.recorder.presetups += 1

    def take_spare(self, session: Session) -> QP | None:
        """The QP :meth:`presetup` made, if it lives on ``session``'s device."""
        spare, self._spare = self._spare, None
        if spare is None:
            return None
        if spare[0] is not session:
            with contextlib.suppress(VerbsError):
                spare[1].close()
            return None
        self._ctx.core.recorder.presetups_used += 1
        return spare[1]

    def _drop_spare(self) -> None:
        spare, self._spare = self._spare, None
        if spare is not None:
            with contextlib.suppress(VerbsError):
                spare[1].close()

    @property
    def spare(self) -> QP | None:
        """The physical QP made ahead for the peer's reconnect (tests, diagnostics)."""
        return self._spare[1] if self._spare is not None else None

    def expect_answer(self) -> tuple[trio.Event, list[object]]:
        """Wait for the peer's answer to our in-band suspend: (set when it came, [answer])."""
        self._answer = (trio.Event(), [])
        return self._answer

    def answered(self, message: object) -> None:
        """The peer answered our in-band suspend with ``message``."""
        waiter = self._answer
        if waiter is not None and not waiter[0].is_set():
            waiter[1].append(message)
            waiter[0].set()

    def new_physical(self, session: Session) -> QP:
        """A fresh physical QP in RESET on ``session``'s device, not yet bound."""
        ppd = self._pd.physical
        assert ppd is not None
        return ppd.create_qp(self._send_cq.physical_cq(), self._recv_cq.physical_cq(), self._cap)

    def prepost(self, session: Session, qp: QP) -> list[int] | None:
        """Post the kept receives on ``qp``, a new physical QP the CM is about to connect.

        ``qp`` goes to INIT first (the CM keeps receives posted there), so the
        peer's first send after the resume finds a buffer instead of an RNR NAK
        and a wait of the responder's ``min_rnr_timer``. :meth:`bind` posts only
        what was posted since; if the connection is not made, :meth:`unpost`.

        Returns:
            The physical wr_ids posted, or ``None`` if nothing was done.
        """
        if self._phys is not None or self.failure is not None or self._closed:
            return None  # still on a physical QP: bind settles it first
        entries = [entry for entry in self._recvs.values() if not entry.posted]
        physical: list[RecvWR] = []
        try:
            cm_init(qp)
            for entry in entries:
                sges = self._translate_sges(entry.wr.sg_list)
                physical.append(RecvWR(session.register(self, entry), sges))
            qp.post_recv(physical)
        except VerbsError as exc:
            # The CM call that follows meets the same trouble and reports it.
            log.debug("QP %d: no receives before the reconnect: %s", self.qp_num, exc)
            for wr in physical:
                session.unregister(wr.wr_id)
            return None
        for entry in entries:
            entry.posted = True
        return [wr.wr_id for wr in physical]

    def unpost(self, session: Session, wr_ids: list[int] | None) -> None:
        """The QP :meth:`prepost` posted ``wr_ids`` on was not connected (and is closed)."""
        if not wr_ids:
            return
        gone = set(wr_ids)
        for wr_id in wr_ids:
            session.unregister(wr_id)
        # Only these: a reconnect from the peer may have posted them on another QP since.
        for entry in self._recvs.values():
            if entry.pwr in gone:
                entry.posted = False

    def release_cm(self) -> None:
        """Hand the physical CM id to the caller: the QP will not close it."""
        self._pcm = None

    def _drop_phys(self) -> None:
        """Forget the physical QP (closing it); entries stay, marked unposted."""
        session, qp, pcm = self._session, self._phys, self._pcm
        self._phys = None
        self._pcm = None
        for entry in (*self._sends.values(), *self._recvs.values()):
            entry.posted = False
        if session is not None:
            session.forget_entries(self)
            if qp is not None:
                session.unbind_qp(qp)
        for resource in (pcm, qp):
            if resource is not None:
                with contextlib.suppress(VerbsError):
                    resource.close()

    def detach(self) -> None:
        """Our device is going: hold, and let go of the physical QP."""
        self._drop_spare()
        # The reconnect on the next device carries our whole key map: no push to wait for.
        self._fences.clear()
        if self.failure is not None or self._closed:
            self._drop_phys()
            self._session = None
            return
        # The state the owner set (a cm_connect in flight leaves it in RESET or INIT).
        if self.peer is None and self._vstate not in (S.RESET, S.INIT):
            # Connected by hand, or through the CM to a peer without a shim (or ended):
            # nobody can tell the peer where our next QP will be, so it ends here.
            state = self.state  # ERR if the physical QP failed on its own
            self._send_cq.drain_now()
            self._recv_cq.drain_now()
            self._replay.clear()
            if state is S.ERR:
                self._give_up(None)  # ended already, and said so: it stays ended
            else:
                self._unresumable()
            self._session = None
            return
        if self.peer is not None or self._phys is not None:
            self._hold_for(Hold.LOCAL)
        self._drop_phys()
        self._session = None

    def _unresumable(self) -> None:
        """End a connection the shim cannot carry to the next device, explicitly.

        Everything outstanding flushes, the QP is in ERR, the context reports
        ``QP_FATAL`` and a CM id ``DISCONNECTED``/``TIMEWAIT_EXIT``: the owner resets
        the QP and connects it again, through the CM so that the shim can resume it.
        """
        why = "its peer has no shim" if self.cm_id is not None else "connected by hand (no CM)"
        info = (
            f"QP {self.qp_num} cannot be resumed on a new device: {why}; "
            "reset it and connect it again through the CM"
        )
        log.warning("%s", info)
        self._ctx.core.recorder.unresumable += 1
        self._give_up(None)
        self._ctx.push_event(AsyncEvent(AsyncEventType.QP_FATAL, qp_num=self.qp_num, info=info))
        if self.cm_id is not None:
            self.cm_id.push_event(CmEvent(CmEventType.DISCONNECTED, info=info))
            self.cm_id.push_event(CmEvent(CmEventType.TIMEWAIT_EXIT, info=info))

    def attach_unconnected(self, session: Session) -> None:
        """On a new device: a physical QP for a QP with no peer, its state replayed."""
        self._session = session
        if self.failure is not None:
            return
        if self._vstate is S.ERR and not self._replay:
            # Ended through the CM before the move: stay in ERR, flush what is left.
            self._give_up(None)
            return
        qp = self._create_phys(session)
        if qp is None:
            return
        try:
            for attr in self._replay:
                qp.modify(attr)
        except VerbsError as exc:
            log.warning("QP %d: replaying its state failed: %s", self.qp_num, exc)
        self._hold = None
        self._resumed.set()
        if self._vstate in (S.RTS, S.SQD, S.ERR, S.INIT, S.RTR):
            self._post_recvs(list(self._recvs.values()), from_user=False)
        if self._vstate in (S.RTS, S.ERR):
            self._post_sends(list(self._sends.values()), from_user=False)

    def connected(
        self, session: Session, pcm: PhysCmId, peer: PeerLink | None, cm_id: VirtualCmId
    ) -> None:
        """The layer above connected this QP through the CM (first connection)."""
        self._pcm = pcm
        self.peer = peer
        self.cm_id = cm_id
        self._vstate = S.RTS
        self._replay.clear()
        session.watch_cm(self, pcm)

    def connected_in_move(self, peer: PeerLink, cm_id: VirtualCmId) -> None:
        """Accepted on a device that went before the RTU: the peer may use it already.

        The REP may have reached the peer, which then counts the connection as made
        and sends. So it is kept like a connection whose device went: held, it
        reconnects to the peer on the next device (and ends there, as any resume
        the peer does not know of, if the REP never arrived).
        """
        # The accept's physical QP, or one made for us on the next device while we had
        # no peer: either way the reconnect makes the one we keep.
        self._drop_phys()
        self.peer = peer
        self.cm_id = cm_id
        self._vstate = S.RTS
        self._replay.clear()
        self._hold_for(Hold.LOCAL)
        session = self._ctx.session
        self._session = None
        if session is not None and not session.removal.is_set():
            # The next device came first: its reconnect_all did not know of us.
            session.spawn(session.reconnect, self)

    def resumed_ok(self) -> bool:
        """Bound to a physical QP again, and not given up."""
        return self._hold is None and self.failure is None and self.peer is not None

    def abandon(self) -> None:
        """End a connection nobody above holds (its accept failed): no event, no error."""
        if not self._closed and self.failure is None:
            self.cm_id = None
            self._give_up(None)

    def quiesce_begin(self, reason: Hold) -> bool:
        """Hold, and move the physical QP to SQD; True if there is anything to drain."""
        self._hold_for(reason)
        qp = self._phys
        if qp is None:
            return False
        if not self._quiescing:
            # A second suspend (the CM fallback after an unanswered in-band one)
            # waits on the same drain as the first.
            self._quiescing = True
            self._drained = trio.Event()
        try:
            if qp.state is S.RTS:
                qp.modify(QpAttr(state=S.SQD, en_sqd_async_notify=True))
        except VerbsError as exc:
            log.info("QP %d: no SQD (%s); relying on completions", self.qp_num, exc)
        if not any(e.posted for e in self._sends.values()):
            self._drained.set()
        return True

    async def quiesce_wait(self, deadline: float) -> bool:
        """Wait (until ``deadline``) for our sends to drain; True if they did."""
        with trio.move_on_at(deadline):
            await self._drained.wait()
        self._send_cq.drain_now()
        self._recv_cq.drain_now()
        self._quiescing = False
        return not any(e.posted for e in self._sends.values())

    def prepare_rebind(self) -> None:
        """The peer reconnects: settle and drop the old physical QP so ``received`` is final."""
        if self._hold is None:
            self._hold_for(Hold.LOST, ahead=False)
        self.extend_resume_deadline()
        self._send_cq.drain_now()
        self._recv_cq.drain_now()
        self._drop_phys()

    def bind(self, session: Session, qp: QP, pcm: PhysCmId, peer_received: int, inc: int) -> None:
        """Resume on the new physical ``qp``: resequence, repost, release the held sends.

        Args:
            session: the session of the device ``qp`` lives on.
            qp: the new physical QP, connected to the peer's new physical QP (RTS).
            pcm: its CM id.
            peer_received: counted messages the peer has received from us, ever.
            inc: the peer's device incarnation.
        """
        recorder = self._ctx.core.recorder
        if self._phys is not None:
            self._send_cq.drain_now()
            self._recv_cq.drain_now()
            # Without a physical QP there is nothing to drop, and the receives
            # :meth:`prepost` put on ``qp`` must stay registered.
            self._drop_phys()
        assert self.peer is not None
        self.peer = attrs.evolve(self.peer, inc=inc)
        self._phys = qp
        self._pcm = pcm
        self._session = session
        session.bind_qp(qp, self)
        session.watch_cm(self, pcm)
        pending = list(self._sends.values())
        try:
            done = plan_resend([e.counted for e in pending], self._acked, peer_received)
        except Exception as exc:
            # The peer lost what it had acknowledged (its receive completions died
            # with its device before they were polled): resend what we still hold.
            log.warning("QP %d: %s", self.qp_num, exc)
            recorder.lost(max(0, self._acked - peer_received))
            done = 0
            self._acked = peer_received
        for entry in pending[:done]:
            del self._sends[entry.seq]
            if entry.counted:
                self._acked += 1
            wr = entry.wr
            assert isinstance(wr, SendWR)
            if wr.signaled or self._sq_sig_all:
                self._send_cq.push(self._send_wc(wr, WcStatus.SUCCESS))
        recorder.duplicates_dropped(done)
        rest = pending[done:]
        recorder.resent(sum(1 for entry in rest if entry.tries))
        self._drop_spare()  # made for a reconnect that came another way
        self._hold = None
        self._first_error = None
        unposted = [entry for entry in self._recvs.values() if not entry.posted]
        if unposted:
            self._post_recvs(unposted, from_user=False)
        if self._phys is not None and rest:
            self._post_sends(rest, from_user=False)
        self._resumed.set()

    def fail(self, exc: PeerResumeTimeout) -> None:
        """Give up resuming: report ``exc`` and flush like a QP in ERR."""
        if self.failure is not None or self._closed:
            return
        log.warning("%s", exc)
        self.failure = exc
        self._ctx.core.recorder.resume_timeout()
        self._give_up(exc)

    def _give_up(self, exc: PeerResumeTimeout | None) -> None:
        first = self._first_error
        self._drop_phys()
        self._drop_spare()
        self.peer = None
        self._hold = None
        self._vstate = S.ERR
        self._resumed.set()
        for entry in list(self._sends.values()):
            status, message = WcStatus.WR_FLUSH_ERR, ""
            if first is not None and first[0] == entry.seq:
                status, message = first[1], first[2]
            self._send_cq.push(self._send_wc(entry.wr, status, message))
        for entry in list(self._recvs.values()):
            self._recv_cq.push(self._recv_wc(entry.wr, WcStatus.WR_FLUSH_ERR))
        self._sends.clear()
        self._recvs.clear()
        self._fences.clear()
        if exc is not None:
            if self.cm_id is not None:
                self.cm_id.push_error(exc)
            self._ctx.push_event(
                AsyncEvent(AsyncEventType.QP_FATAL, qp_num=self.qp_num, info=str(exc))
            )

    def on_disconnected(self) -> bool:
        """The physical CM id saw DISCONNECTED; True if the layer above should see it."""
        if self.peer is None:
            return True  # the peer's shim announced it (or there is no shim)
        # Unannounced: the peer's device went away under the connection (a
        # transport that notices, like tcp). Hold and wait for it to reconnect.
        if self._hold is None:
            self._hold_for(Hold.LOST)
        return False
