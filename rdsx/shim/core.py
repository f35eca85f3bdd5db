"""The node-wide state of one shim: configuration, tables, contexts, current session."""

from __future__ import annotations

from typing import TYPE_CHECKING

import attrs
import trio

from ..errors import ConnectTimeout
from ..verbs import DeviceAttr, DeviceSource, PortAttr, PortState
from .stats import Recorder
from .tables import HandleSpace

if TYPE_CHECKING:
    from .qp import PeerLink, VirtualQP
    from .recovery import Session
    from .resources import VirtualContext, VirtualMR

__all__ = ["Core", "ShimConfig"]


@attrs.frozen(slots=True, kw_only=True)
class ShimConfig:
    """Knobs of the transparent shim.

    Attributes:
        control_port: the CM port every shim listens on for its peers' suspend
            and reconnect requests (the same on every node).
        resume_timeout: how long a suspended (or lost) peer may take to come back,
            and how long reconnecting to a peer may take after a device arrives,
            before the virtual QP gives up with ``PeerResumeTimeout``.
        drain_share: the share of a grace window spent suspending peers and
            draining sends; the rest is margin for the release.
        connect_timeout: bound on one control-plane CM exchange.
        retry_interval: first pause between reconnect attempts (doubles).
        max_retry_interval: longest pause between reconnect attempts.
    """

    control_port: int = 18635
    resume_timeout: float = 30.0
    drain_share: float = attrs.field(default=0.8)
    connect_timeout: float = 1.0
    retry_interval: float = 0.02
    max_retry_interval: float = 0.5

    @drain_share.validator
    def _check_share(self, attribute: attrs.Attribute[float], value: float) -> None:
        if not 0.0 < value < 1.0:
            raise ValueError(f"drain_share must be in (0, 1), got {value}")


class Core:
    """Everything one node's shim knows, shared by its virtual objects."""

    def __init__(self, underlying: DeviceSource, config: ShimConfig) -> None:
        self.underlying = underlying
        self.config = config
        self.recorder = Recorder()
        #: Per-node virtual namespaces (problem 2: no collision with the new host's numbers).
        self.qpns: HandleSpace[VirtualQP] = HandleSpace(24, first=0x100)
        self.lkeys: HandleSpace[VirtualMR] = HandleSpace(32, first=0x1000)
        self.rkeys: HandleSpace[VirtualMR] = HandleSpace(32, first=0x1000)
        self.contexts: list[VirtualContext] = []
        self.listen_ports: set[int] = set()
        self.session: Session | None = None
        self.address = ""
        #: peer address -> (its device incarnation, its virtual -> physical rkeys).
        self.peer_keys: dict[str, tuple[int, dict[int, int]]] = {}
        self.device_attr: DeviceAttr
        self.port_attr: PortAttr
        self._attached = trio.Event()

    def set_first_device(self, address: str, device: DeviceAttr, port: PortAttr) -> None:
        """Fix the virtual device's identity from the first physical device."""
        self.address = address
        self.device_attr = device
        self.port_attr = attrs.evolve(port, state=PortState.ACTIVE)

    def attached(self, session: Session) -> None:
        """``session``'s device is ready for use."""
        self.session = session
        self._attached.set()

    def detached(self) -> None:
        """The device is gone; calls that need one wait."""
        self.session = None
        if self._attached.is_set():
            self._attached = trio.Event()

    async def wait_attached(self, ctx: VirtualContext, deadline: float) -> Session:
        """Wait (until ``deadline``) until ``ctx`` is attached to a device.

        Raises:
            ConnectTimeout: no device came in time.
        """
        with trio.move_on_at(deadline):
            await self._attached.wait()
        if ctx.session is None:
            raise ConnectTimeout("no device arrived in time")
        return ctx.session

    def forget_context(self, ctx: VirtualContext) -> None:
        """``ctx`` was closed."""
        if ctx in self.contexts:
            self.contexts.remove(ctx)

    def all_qps(self) -> list[VirtualQP]:
        """Every live virtual QP of the node."""
        return [qp for ctx in self.contexts for qp in ctx.qps]

    def physical_lkey(self, lkey: int) -> int:
        """The current physical key of our virtual ``lkey`` (unknown keys pass as they are)."""
        mr = self.lkeys.lookup(lkey)
        if mr is None or mr.physical is None:
            return lkey
        return mr.physical.lkey

    def physical_rkey(self, peer: PeerLink | None, rkey: int) -> int:
        """The peer's current physical key for its virtual ``rkey``.

        A virtual key is the physical key it was first registered with whenever
        that number is free, so most keys translate to themselves; a peer that
        migrated pushes the pairs that do not (:class:`~rdsx.shim.protocol.KeyMap`)
        before it reconnects.
        """
        if peer is None:
            return rkey
        known = self.peer_keys.get(peer.address)
        if known is None or known[0] != peer.inc:
            return rkey
        return known[1].get(rkey, rkey)

    def rkey_moved(self, virtual: int, physical: int) -> None:
        """A new MR's rkey could not keep its physical number: tell connected peers.

        Each peer's QPs hold their sends until that peer acknowledged the pair
        (:meth:`VirtualQP.fence`), so a message that carries the new rkey can
        never reach the peer before its shim knows how to translate it.
        """
        session = self.session
        if session is None or session.closed:
            return  # pushed with the whole map when the next device reconnects
        by_peer: dict[str, list[VirtualQP]] = {}
        for qp in self.all_qps():
            if qp.peer is not None:
                by_peer.setdefault(qp.peer.address, []).append(qp)
        for address in sorted(by_peer):
            fences = [(qp, qp.fence()) for qp in by_peer[address]]
            session.spawn(session.control.push_pairs, address, [virtual, physical], fences)

    def key_pairs(self) -> list[int]:
        """Our remote keys whose physical value differs from the virtual one, flattened."""
        pairs: list[int] = []
        for ctx in self.contexts:
            for mr in ctx.mrs():
                if mr.physical is not None and mr.physical.rkey != mr.rkey:
                    pairs += [mr.rkey, mr.physical.rkey]
        return pairs
