"""The shim's control plane: one-round-trip RPCs between shims over the CM.

A request is a CM connect to the peer shim's control port carrying a
:mod:`~rdsx.shim.protocol` message; the answer comes back in the reject's
private data (``SUSPEND`` -> ``SUSPENDED``, ``KeyMap``/``CLOSE`` -> ``Ack``), or,
for ``RECONNECT``, in the accept that connects the two new physical QPs.
``SUSPEND`` goes first in band, as a CM message on the connection's own CM id
(no QP is made for it), and through the control port only when that CM
carries no messages or stays silent.
Nothing here touches the layer above's QPs or receive buffers.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import attrs
import trio

from ..errors import (
    ConnectionRejected,
    ConnectTimeout,
    DeviceRemoved,
    NotSupported,
    RemoteProtocolError,
    Unreachable,
    VerbsError,
)
from ..verbs import CmId, CmListener, CmRequest, QpCap
from .protocol import (
    KEYMAP_CHUNK,
    Ack,
    Close,
    KeyMap,
    Message,
    Reconnect,
    Refused,
    RefuseReason,
    Resumed,
    Suspend,
    Suspended,
    decode,
    encode,
)
from .qp import Hold, PeerLink, VirtualQP

if TYPE_CHECKING:
    from .recovery import Session

__all__ = ["ControlPlane"]

log = logging.getLogger("rdsx.shim")


class ControlPlane:
    """A session's side of the shim-to-shim protocol (client and server)."""

    def __init__(self, session: Session) -> None:
        self._s = session
        self._key_locks: dict[str, trio.Lock] = {}
        self._keys_pushed: set[str] = set()

    async def call(self, address: str, message: Message, timeout: float) -> Message | None:
        """One control RPC: a connect request the peer's shim answers with a reject.

        Returns:
            The peer's answer, or ``None`` if it could not be reached.
        """
        ctrl, pd, cq = self._s.ctrl, self._s.ctrl_pd, self._s.ctrl_cq
        assert ctrl is not None and pd is not None and cq is not None
        try:
            qp = pd.create_qp(cq, cq, QpCap(1, 1, 1, 1))
        except DeviceRemoved:
            self._s.report_removal(None)
            return None
        try:
            cm = await ctrl.cm_connect(
                qp, address, self._s.core.config.control_port, encode(message), timeout=timeout
            )
        except ConnectionRejected as exc:
            try:
                return decode(exc.private_data)[0]
            except RemoteProtocolError:
                return None
        except (Unreachable, ConnectTimeout):
            return None
        except DeviceRemoved:
            self._s.report_removal(None)
            return None
        else:
            cm.close()
            return None
        finally:
            with contextlib.suppress(VerbsError):
                qp.close()

    async def serve(self, listener: CmListener) -> None:
        """Answer peers' SUSPEND and RECONNECT requests on the control port."""
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    request = await listener.get_request()
                except VerbsError:
                    return
                self._s.spawn(self._serve_one, request, nursery=nursery)

    def _find(self, vqpn: int, source: str, src_vqpn: int) -> VirtualQP | None:
        qp = self._s.core.qpns.lookup(vqpn)
        if qp is None or qp.failure is not None or qp.peer is None:
            return None
        if qp.peer.address != source or qp.peer.vqpn != src_vqpn:
            return None
        return qp

    def _connecting(self, vqpn: int, source: str) -> bool:
        qp = self._s.core.qpns.lookup(vqpn)
        return qp is not None and qp.failure is None and qp.connecting_to == source

    async def _serve_one(self, request: CmRequest) -> None:
        self._s.core.recorder.control_requests += 1
        try:
            message, _ = decode(request.private_data)
        except RemoteProtocolError:
            message = None
        try:
            if isinstance(message, Suspend):
                await self._on_suspend(request, message)
            elif isinstance(message, Reconnect):
                await self._on_reconnect(request, message)
            elif isinstance(message, Close):
                qp = self._find(message.dst_vqpn, request.source, message.src_vqpn)
                if qp is not None:
                    qp.peer = None  # its DISCONNECTED is the end, not a loss
                await request.reject(encode(Ack()))
            elif isinstance(message, KeyMap):
                self._on_keymap(request.source, message)
                await request.reject(encode(Ack()))
            else:
                await request.reject(encode(Refused(reason=RefuseReason.UNKNOWN)))
        except VerbsError as exc:
            log.info("control request from %s failed: %s", request.source, exc)

    async def _on_suspend(self, request: CmRequest, message: Suspend) -> None:
        qp = self._find(message.dst_vqpn, request.source, message.src_vqpn)
        if qp is None:
            await request.reject(encode(Refused(reason=RefuseReason.UNKNOWN)))
            return
        drained = await self._suspend_here(qp, message)
        await request.reject(encode(Suspended(drained=drained)))

    async def _suspend_here(self, qp: VirtualQP, message: Suspend) -> bool:
        """Hold and drain our side of ``qp`` for the peer (its QP made ahead meanwhile)."""
        qp.quiesce_begin(Hold.SUSPENDED)
        return await qp.quiesce_wait(trio.current_time() + message.budget)

    # ------------------------------------------------------------------ in band

    async def suspend_peer(self, qp: VirtualQP, peer: PeerLink, budget_end: float) -> None:
        """Ask the peer of ``qp`` to suspend, and wait for its answer (until ``budget_end``).

        First over the connection's own CM id (a CM message: no QP is made, so
        it costs a round trip plus the peer's drain), resent while unanswered;
        through the peer's control port when that CM cannot carry messages, or
        when half the budget went by without an answer.
        """
        now = trio.current_time()
        remaining = max(budget_end - now, 0.0)
        suspend = Suspend(src_vqpn=qp.qp_num, dst_vqpn=peer.vqpn, budget=remaining / 4)
        answer = await self._suspend_in_band(qp, suspend, now + remaining / 2)
        in_band = answer is not None
        if answer is None:
            remaining = max(budget_end - trio.current_time(), 0.0)
            suspend = attrs.evolve(suspend, budget=remaining / 2)
            answer = await self.call(peer.address, suspend, timeout=remaining)
        if isinstance(answer, Suspended):
            self._s.core.recorder.suspended(in_band=in_band)

    async def _suspend_in_band(
        self, qp: VirtualQP, message: Suspend, give_up_at: float
    ) -> Message | None:
        pcm = qp.physical_cm
        if pcm is None:
            return None
        done, answer = qp.expect_answer()
        data = encode(message)
        pause = self._s.core.config.retry_interval
        with trio.move_on_at(give_up_at):
            while not done.is_set():
                try:
                    await pcm.send_message(data)
                except NotSupported:
                    return None  # tcp's CM, for one: the control port then
                except DeviceRemoved:
                    self._s.report_removal(None)
                    return None
                except VerbsError as exc:
                    log.debug("QP %d: no in-band suspend: %s", qp.qp_num, exc)
                    return None
                # A CM message is a MAD: lost with its packet, so resent until answered.
                with trio.move_on_after(message.budget + pause):
                    await done.wait()
                pause = min(pause * 2, self._s.core.config.max_retry_interval)
        if not answer:
            return None
        found = answer[0]
        return found if isinstance(found, Suspended) else None

    def on_message(self, qp: VirtualQP, pcm: CmId, data: bytes) -> None:
        """A CM message on ``qp``'s physical connection (only shims send them)."""
        try:
            message, _ = decode(data)
        except RemoteProtocolError as exc:
            log.info("QP %d: bad CM message: %s", qp.qp_num, exc)
            return
        peer = qp.peer
        if isinstance(message, Suspended):
            qp.answered(message)
        elif isinstance(message, Suspend) and peer is not None:
            if message.dst_vqpn != qp.qp_num or message.src_vqpn != peer.vqpn:
                return
            if not qp.serving_suspend:
                self._s.spawn(self._serve_suspend_message, qp, pcm, message)

    async def _serve_suspend_message(self, qp: VirtualQP, pcm: CmId, message: Suspend) -> None:
        self._s.core.recorder.suspends_in_band += 1
        qp.serving_suspend = True
        try:
            drained = await self._suspend_here(qp, message)
            await pcm.send_message(encode(Suspended(drained=drained)))
        finally:
            qp.serving_suspend = False

    def _on_keymap(self, source: str, message: KeyMap) -> None:
        known = self._s.core.peer_keys.get(source)
        if known is not None and message.inc < known[0]:
            return  # a late push from a device the peer has left since
        if message.first or known is None or known[0] != message.inc:
            known = (message.inc, {})
            self._s.core.peer_keys[source] = known
        pairs = message.pairs
        known[1].update(zip(pairs[0::2], pairs[1::2], strict=True))

    def learn_keys(self, source: str, inc: int, pairs: tuple[int, ...]) -> None:
        """Take the key map a ``Reconnect``/``Resumed`` carried (merged, as later pushes are)."""
        if pairs:
            self._on_keymap(source, KeyMap(inc=inc, pairs=pairs, first=False))

    def with_keys(self, message: Reconnect | Resumed) -> bytes | None:
        """``message`` encoded with our key map riding along, or ``None`` if it does not fit.

        Saves the separate ``KeyMap`` round trip before a reconnect. On the first
        device every key is its own physical key, so there is nothing to carry.
        """
        if self._s.inc <= 1:
            return encode(message)
        try:
            return encode(attrs.evolve(message, keys=self._s.core.key_pairs()))
        except ValueError:
            return None  # too many moved keys: push them in KEYMAP chunks first

    async def push_keys(self, address: str) -> bool:
        """Tell the peer at ``address`` (once) which of our remote keys changed on this device."""
        lock = self._key_locks.setdefault(address, trio.Lock())
        async with lock:
            if address in self._keys_pushed:
                return True
            if await self._push_keys(address):
                self._keys_pushed.add(address)
                return True
            return False

    async def push_pairs(
        self, address: str, pairs: list[int], fences: list[tuple[VirtualQP, object]]
    ) -> None:
        """Add ``pairs`` to the peer's copy of our key map (a key registered since).

        Retried until the peer acknowledges, our device goes (the next one's
        reconnects carry the whole map: :meth:`VirtualQP.detach` lifts every
        fence), or ``resume_timeout`` passes; then the sends ``fences`` held on
        the QPs towards that peer go out.
        """
        config = self._s.core.config
        deadline = trio.current_time() + config.resume_timeout
        pause = config.retry_interval
        message = KeyMap(inc=self._s.inc, pairs=pairs, first=False)
        try:
            while any(qp.fenced_by(token) for qp, token in fences):
                answer = await self.call(address, message, timeout=config.connect_timeout)
                if isinstance(answer, Ack) or trio.current_time() >= deadline:
                    return
                with trio.move_on_at(deadline):
                    await trio.sleep(pause)
                pause = min(pause * 2, config.max_retry_interval)
        finally:
            for qp, token in fences:
                qp.unfence(token)

    async def _push_keys(self, address: str) -> bool:
        pairs = self._s.core.key_pairs()
        if not pairs:
            return True  # no map for our incarnation means "identity": nothing to say
        step = 2 * KEYMAP_CHUNK
        chunks = [pairs[i : i + step] for i in range(0, len(pairs), step)]
        for index, chunk in enumerate(chunks):
            answer = await self.call(
                address,
                KeyMap(inc=self._s.inc, pairs=chunk, first=index == 0),
                timeout=self._s.core.config.connect_timeout,
            )
            if not isinstance(answer, Ack):
                return False
        return True

    async def _on_reconnect(self, request: CmRequest, message: Reconnect) -> None:
        qp = self._find(message.dst_vqpn, request.source, message.src_vqpn)
        if qp is None and self._connecting(message.dst_vqpn, request.source):
            # Our connect to the requester has its REP but has not returned yet: the
            # requester's device went meanwhile, and it asks before we know the QP.
            await request.reject(encode(Refused(reason=RefuseReason.BUSY)))
            return
        if qp is None or message.peer_inc > self._s.inc:
            await request.reject(encode(Refused(reason=RefuseReason.UNKNOWN)))
            return
        if qp._ctx.session is not self._s or self._s.removal.is_set():
            await request.reject(encode(Refused(reason=RefuseReason.BUSY)))
            return
        # Learnt even if refused below: a duel's loser reconnects no further.
        self.learn_keys(request.source, message.inc, message.keys)
        if message.peer_inc < self._s.inc and not request.source < self._s.core.address:
            # Both sides were replaced; the lower address's attempt wins (no duels).
            await request.reject(encode(Refused(reason=RefuseReason.DUEL)))
            return
        answer = Resumed(received=qp.received, inc=self._s.inc)
        data = self.with_keys(answer)
        if data is None:
            # The requester may not know our keys yet (both sides migrated).
            await self.push_keys(request.source)
            answer = Resumed(received=qp.received, inc=self._s.inc)
            data = encode(answer)
        if qp.peer is None:
            # Ended (closed, or given up) while we pushed our keys: nothing to resume.
            await request.reject(encode(Refused(reason=RefuseReason.UNKNOWN)))
            return
        qp.prepare_rebind()
        # Made when the peer said it was leaving (pre-setup): only RTR/RTS are left.
        phys = qp.take_spare(self._s) or qp.new_physical(self._s)
        preposted = qp.prepost(self._s, phys)
        try:
            pcm = await request.accept(phys, data)
        except VerbsError:
            phys.close()
            qp.unpost(self._s, preposted)
            raise
        if qp.peer is None:
            # Ended while the accept was on the wire (the layer above closed it, or our
            # node is shutting down): the new connection has nothing to carry.
            pcm.close()
            phys.close()
            qp.unpost(self._s, preposted)
            return
        qp.bind(self._s, phys, pcm, message.received, message.inc)
        self._s.core.recorder.resumed()
