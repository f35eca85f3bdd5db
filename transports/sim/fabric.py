"""The fabric: one subnet of switches, hosts and links, and the packet pump.

Shaped like trio's FakeNet: a sender calls :meth:`Fabric.send_packet`, which
hands the packet to the replaceable :attr:`Fabric.route_packet` policy; the
default policy is :meth:`Fabric.deliver_packet`, which computes when the packet
arrives (egress serialisation at the link's bandwidth, then one latency per
link hop) and schedules it. Policies in :mod:`.faults` drop, duplicate, delay
or reorder packets with the fabric's seeded RNG.

Theory of operation (why it is fast and deterministic):

* There is no trio task per packet. One pump task owns a heap of
  ``(due, seq, item)`` where an item is a packet or a timer callback; it wakes
  at the earliest due time and handles everything already due in one pass.
* Under the real clock, anything due within :data:`REALTIME_SLACK` is not worth
  a timer: it goes to an "immediate" queue drained in the same call stack. Under
  a :class:`trio.testing.MockClock` every delay is modelled exactly.
* Under the virtual clock, QPs with new work (and CM packets) are not sent from
  the posting task: the pump waits until every task is blocked, then sends them
  in (LID, QPN) order, so the trace does not depend on the order trio happens to
  run the tasks of one instant in. Comm ids and start PSNs derive from the seed,
  LID and QPN for the same reason.
* Under an autojumping :class:`~trio.testing.MockClock` the pump makes the clock's
  jump to its next item itself once every task is blocked (when no other deadline
  comes first): the same instants in the same order, two scheduler passes fewer each.
* Under the real clock, with the default route and no trace, positive ACKs and
  SENDs of up to a window with nothing outstanding take a fast lane (the same effects
  without a packet object); nothing could drop, delay or observe them there.
"""

from __future__ import annotations

import heapq
import math
import random
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio
import trio.testing

from rdsx.errors import AddressInUse, InvalidArgument
from rdsx.verbs import MTU_VALUES

from .hca import Endpoint, Host, PortModel
from .packet import HEADER_BYTES, Kind, Packet
from .rc import _LIVE
from .sm import PathRecord, SubnetManager

if TYPE_CHECKING:
    from .rc import RcQp
    from .verbs import SimDevice
    from .vm import Vm

__all__ = [
    "QP_CREATE_SHARE",
    "REALTIME_SLACK",
    "Fabric",
    "FabricStatistics",
    "TraceRecord",
    "open_fabric",
]

#: Under the real clock, a delay shorter than this is delivered in the same pass.
REALTIME_SLACK = 20e-6
#: The share of ``Fabric.qp_setup_time`` a QP's creation takes (the rest is the CM's
#: INIT -> RTR -> RTS). The profiles' ``qp_create`` is "create QP plus three modify-QP
#: firmware commands"; creating (with RESET -> INIT, as ``rdma_create_qp``) is two of
#: those four, and this assumes the four cost the same. The split says what a QP made
#: ahead of time saves: its creation, not the RTR/RTS that need the peer's new QPN.
QP_CREATE_SHARE = 0.5

RoutePolicy = Callable[[Packet], None]


@attrs.frozen(slots=True)
class TraceRecord:
    """One entry of :attr:`Fabric.trace`.

    Attributes:
        time: seconds since the fabric opened, to 0.1 ns.
        event: what happened (``"deliver"``, ``"drop"``, ``"attach"``, ...).
        subject: what it happened to (a packet, a VM, a host).
        detail: extra words (why a packet was dropped, the new LID, ...).
    """

    time: float
    event: str
    subject: str
    detail: str = ""


@attrs.frozen(slots=True)
class FabricStatistics:
    """Packet counters of one fabric."""

    packets_sent: int
    packets_delivered: int
    packets_dropped: int
    bytes_delivered: int


class Fabric:
    """One InfiniBand subnet. Create it with :func:`open_fabric`.

    Attributes:
        port_model: how SR-IOV functions appear (:class:`PortModel`).
        seed: the seed of :attr:`random`.
        random: the fabric's RNG; routing policies draw from it.
        latency: seconds per link hop.
        bandwidth: bytes per second of every link.
        mtu: the largest payload per packet.
        sm: the :class:`~transports.sim.sm.SubnetManager`.
        hosts: name -> :class:`~transports.sim.hca.Host`.
        vms: name -> :class:`~transports.sim.vm.Vm`.
        trace: the event trace (a list of :class:`TraceRecord`), when tracing.
        route_packet: the routing policy; replace it to inject faults.
        sa_query_time: seconds the CM spends per SA path query (default 0).
        qp_setup_time: seconds one QP's setup takes (default 0): its creation
            (with RESET -> INIT, as ``rdma_create_qp``) takes
            :data:`QP_CREATE_SHARE` of it, counted from ``create_qp``; the CM
            spends the rest (INIT -> RTR -> RTS) when it connects or accepts
            with it. A timing profile's ``sa_query`` and ``qp_create`` go here.
        path_cache: None (default: every ``cm_connect`` asks the SA), or a dict
            in which the CM keeps PathRecords per (source address, SLID, DLID,
            DGUID): SA path caching (Tasoulas et al., CCGrid 2015). Keyed by the
            VM's address, the cache moves with the VM (it is the guest kernel's);
            a record holds while both ends keep their LIDs, so under vSwitch it
            survives a migration and under the shared port model it does not.
    """

    def __init__(
        self,
        *,
        port_model: PortModel | str = PortModel.VSWITCH,
        seed: int = 0,
        latency: float = 1.3e-6,
        bandwidth: float = 4.0e9,
        mtu: int = 4096,
        switches: int = 1,
        trace: bool = True,
    ) -> None:
        if mtu not in MTU_VALUES:
            raise InvalidArgument(f"mtu must be one of {MTU_VALUES}")
        if latency < 0 or bandwidth <= 0 or switches < 1:
            raise InvalidArgument("latency >= 0, bandwidth > 0 and switches >= 1 are required")
        self.port_model = PortModel(port_model)
        self.seed = seed
        self.random = random.Random(seed)
        self._latency = self._bandwidth = 0.0
        self.latency = latency
        self.bandwidth = bandwidth
        self.mtu = mtu
        self.num_switches = switches
        self.sm = SubnetManager(switches, self._route)
        self.hosts: dict[str, Host] = {}
        self.vms: dict[str, Vm] = {}
        self._trace: list[tuple[tuple[float, int, str], int, TraceRecord]] = []
        self._tracing = trace
        self._policy: RoutePolicy = self.deliver_packet
        self._default_route = True
        self.fast_lane = False
        #: Seconds one SA path query takes (charged by ``cm_connect``; 0 = free).
        self.sa_query_time = 0.0
        #: Seconds to set one QP up: created and in INIT, then RTR and RTS (see above).
        self.qp_setup_time = 0.0
        self.path_cache: dict[tuple[str, int, int, int], PathRecord] | None = None
        #: Emulated standby devices (:mod:`.standby`): extra one-way delay per packet
        #: through the backend, its bandwidth, one QP's setup, and the grace a live
        #: incarnation gets when a VF comes back (profile figures ``standby_*``).
        self.standby_latency = 0.0
        self.standby_bandwidth = math.inf
        self.standby_qp_create = 0.0
        self.standby_grace = 1.0
        self._standby_live = 0
        self._endpoints: dict[int, Endpoint] = {}
        self._heap: list[tuple[float, int, Any]] = []
        self._seq = 0
        self._immediate: deque[Any] = deque()
        self._draining = False
        self._ready: set[RcQp] = set()
        self._outbox: list[Packet] = []
        self._realtime = False
        self._slack = 0.0
        self._now = 0.0
        self._lot = trio.lowlevel.ParkingLot()
        self._wake_at = -math.inf
        self._next_guid = 0x0002_C903_0000_0001
        #: ``trio.current_time()`` when the fabric opened; trace times count from it.
        self.epoch = 0.0
        self._sent = self._delivered = self._dropped = self._bytes = 0
        for index in range(switches):
            self.sm.assign_lid(("switch", index))

    @property
    def latency(self) -> float:
        """Seconds per link hop."""
        return self._latency

    @latency.setter
    def latency(self, value: float) -> None:
        self._latency = value
        self._two_hops = 2 * value

    @property
    def bandwidth(self) -> float:
        """Bytes per second of every link."""
        return self._bandwidth

    @bandwidth.setter
    def bandwidth(self, value: float) -> None:
        self._bandwidth = value
        self._seconds_per_byte = 1.0 / value

    # ------------------------------------------------------------------ topology

    def _route(self, switch: int, where: object) -> object:
        """A switch's output port towards ``where`` (spine = switch 0 when there are several)."""
        kind, target = cast(tuple[Any, Any], where)
        leaf = target if kind == "switch" else kind
        if kind == "switch":
            if switch == leaf:
                return "local"
        elif switch == leaf:
            return f"host:{target}"
        if self.num_switches > 1 and switch == 0:
            return f"switch:{leaf}"
        return "switch:0"

    def hops(self, a: Host, b: Host) -> int:
        """Links a packet crosses from ``a`` to ``b``."""
        return 2 if a.switch == b.switch else 4

    def add_host(self, name: str, num_vfs: int = 16, *, switch: int | None = None) -> Host:
        """Cable a new host (an HCA with one PF and ``num_vfs`` VFs) to a switch.

        The subnet manager gives the port (the PF) a LID.

        Args:
            name: unique host name.
            num_vfs: VFs the HCA exposes.
            switch: which switch; leaves are filled round-robin when ``None``.

        Raises:
            AddressInUse: a host of that name exists.
            ResourceExhausted: no LID left.
        """
        if name in self.hosts:
            raise AddressInUse(f"host {name!r} exists")
        if num_vfs < 0:
            raise InvalidArgument("num_vfs must be >= 0")
        if switch is None:
            leaves = self.num_switches - 1
            switch = 0 if leaves == 0 else 1 + len(self.hosts) % leaves
        host = Host(self, name, switch, num_vfs, self.port_model)
        lid = self.sm.assign_lid(host.where)
        endpoint = Endpoint(host, lid, host.hca.pf.space)
        host.hca.port = endpoint
        host.hca.pf.endpoint = endpoint
        host.hca.pf.vguid = self._next_guid
        self._next_guid += 1
        endpoint.functions[host.hca.pf.vguid] = host.hca.pf
        self._endpoints[lid] = endpoint
        self.hosts[name] = host
        self.record("add_host", name, f"lid={lid} switch={switch} vfs={num_vfs}")
        return host

    def create_vm(self, name: str, *, address: str, standby: bool = False) -> Vm:
        """Create a VM (holding no VF yet) whose node answers on ``address``.

        ``standby=True`` gives it an emulated RC device that carries its traffic
        while it has no VF (see :mod:`.standby`).

        Raises:
            AddressInUse: the name or the address is taken.
        """
        from .vm import Vm

        if name in self.vms:
            raise AddressInUse(f"VM {name!r} exists")
        if any(vm.address == address for vm in self.vms.values()):
            raise AddressInUse(f"address {address!r} belongs to another VM")
        vm = Vm(self, name, address, standby=standby)
        self.vms[name] = vm
        self.record("create_vm", name, address + (" standby" if standby else ""))
        return vm

    def vm_at(self, address: str) -> Vm | None:
        """The VM whose node answers on ``address``, if any."""
        for vm in self.vms.values():
            if vm.address == address:
                return vm
        return None

    def endpoint(self, lid: int) -> Endpoint | None:
        """What ``lid`` leads to now, if anything."""
        return self._endpoints.get(lid)

    # ------------------------------------------------------------------ hot-plug and faults

    async def attach(self, vm: Vm, host: Host, *, lid: int | None = None) -> SimDevice:
        """Hot-plug a free VF of ``host`` into ``vm`` (see :func:`.vm.attach`)."""
        from .vm import attach

        return await attach(self, vm, host, lid=lid)

    async def detach(self, vm: Vm, grace: float | None) -> None:
        """Hot-unplug ``vm``'s VF (see :func:`.vm.detach`)."""
        from .vm import detach

        await detach(self, vm, grace)

    def link_down(self, host: Host) -> None:
        """Unplug ``host``'s cable: its packets are lost, its contexts see PORT_ERR."""
        from .vm import set_link

        set_link(self, host, up=False)

    def link_up(self, host: Host) -> None:
        """Plug ``host``'s cable back: contexts see PORT_ACTIVE."""
        from .vm import set_link

        set_link(self, host, up=True)

    def crash_host(self, host: Host) -> None:
        """Power ``host`` off: its VMs' devices vanish; peers are told nothing."""
        from .vm import crash

        crash(self, host)

    def path_to(self, src: Host, dlid: int, dguid: int) -> PathRecord:
        """Ask the SA for a path from ``src`` to ``dlid`` (one counted query).

        Raises:
            Unreachable: nothing has that LID.
        """
        endpoint = self._endpoints.get(dlid)
        hops = self.hops(src, endpoint.host) if endpoint is not None else 0
        return self.sm.path_query(dlid, dguid, self.mtu, hops)

    # ------------------------------------------------------------------ packets

    @property
    def route_packet(self) -> RoutePolicy:
        """The routing policy every packet goes through (FakeNet's ``route_packet``).

        Assign a callable taking a :class:`Packet`; it must call
        :meth:`deliver_packet` (maybe later, maybe twice) or :meth:`drop_packet`.
        """
        return self._policy

    @route_packet.setter
    def route_packet(self, policy: RoutePolicy) -> None:
        self._policy = policy
        self._default_route = policy == self.deliver_packet
        self._update_fast_lane()

    @property
    def tracing(self) -> bool:
        """Whether :attr:`trace` is being recorded."""
        return self._tracing

    @tracing.setter
    def tracing(self, on: bool) -> None:
        self._tracing = on
        self._update_fast_lane()

    def _update_fast_lane(self) -> None:
        # An ACK may skip the packet machinery when nothing could observe, drop or
        # delay it: real clock, default route, no trace.
        # Nor while an emulated device is live: its packets take the backend's path.
        self.fast_lane = (
            self._realtime and self._default_route and not self._tracing and not self._standby_live
        )

    def send_packet(self, packet: Packet) -> None:
        """Put ``packet`` on the wire: hand it to :attr:`route_packet`.

        Under the virtual clock a packet sent from a task (not from the pump) waits
        in an outbox until every task is blocked, then goes out in a stable order.
        """
        if not self._draining and not self._realtime:
            self._outbox.append(packet)
            self._kick()
            return
        self._sent += 1
        self._policy(packet)

    def fast_ack(self, src_lid: int, src_qpn: int, dst_lid: int, dst_qpn: int, psn: int) -> bool:
        """Deliver a positive ACK at once, without a packet (when ``fast_lane``).

        Only valid from protocol code run by the fabric (never re-entrant).
        Returns False when the ACK must take the normal path.
        """
        endpoint = self._endpoints.get(dst_lid)
        if endpoint is None or not endpoint.host.reachable:
            return False
        peer = endpoint.space.qps.get(dst_qpn)
        if peer is None or peer.dest_lid != src_lid or peer.dest_qpn != src_qpn:
            return False
        self._sent += 1
        self._delivered += 1
        if peer._state in _LIVE and psn < peer.next_psn:
            peer._acked(psn)
        return True

    def now(self) -> float:
        """The fabric's notion of now: fixed for one pass of the pump (under the
        virtual clock it cannot move within a pass anyway; under the real clock
        a pass is shorter than :data:`REALTIME_SLACK`)."""
        return self._now if self._draining else trio.current_time()

    def deliver_packet(self, packet: Packet, delay: float = 0.0) -> None:
        """The default route: deliver ``packet`` after its transit time plus ``delay``.

        Transit is egress serialisation at :attr:`bandwidth` behind earlier
        packets of the same source port, then :attr:`latency` per hop. A packet
        leaving a host whose link is down (or that crashed) is lost at once; one
        arriving at such a host is lost on arrival.
        """
        now = self._now if self._draining else trio.current_time()
        endpoints = self._endpoints
        src = endpoints.get(packet.src_lid)
        wire = (HEADER_BYTES + len(packet.payload)) * self._seconds_per_byte
        if src is None:
            due = now + wire + self._two_hops + delay
        else:
            host = src.host
            if not host.reachable:
                self.drop_packet(packet, f"{host.name} unreachable")
                return
            depart = host.tx_free
            if depart < now:
                depart = now
            host.tx_free = depart + wire
            dst = endpoints.get(packet.dst_lid)
            if dst is None or dst.host.switch == host.switch:
                due = depart + wire + self._two_hops + delay
            else:
                due = depart + wire + 2 * self._two_hops + delay
        if due - now < self._slack:
            self._immediate.append(packet)
            if not self._draining:
                self._drain()
        else:
            self._schedule(due, packet, now)

    def drop_packet(self, packet: Packet, reason: str) -> None:
        """Lose ``packet`` on purpose (counted and traced)."""
        self._dropped += 1
        if self.tracing:
            self.record("drop", packet.describe(), reason)

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        """Run ``callback()`` from the pump at ``when`` (no task, no cancel: callbacks
        re-check their own state)."""
        self._schedule(when, callback, self.now())

    def statistics(self) -> FabricStatistics:
        """Packet counters so far."""
        return FabricStatistics(
            packets_sent=self._sent,
            packets_delivered=self._delivered,
            packets_dropped=self._dropped,
            bytes_delivered=self._bytes,
        )

    def record(self, event: str, subject: str, detail: str = "") -> None:
        """Append to :attr:`trace` (if tracing)."""
        if not self.tracing:
            return
        time = round(trio.current_time() - self.epoch, 10)
        # Records made by tasks (not the pump) sort after the pump's at the same
        # instant and by subject, since trio runs the tasks of an instant in a
        # random order; each subject's own records keep their order.
        key = (time, 0, "") if self._draining else (time, 1, subject)
        self._trace.append((key, len(self._trace), TraceRecord(time, event, subject, detail)))

    @property
    def trace(self) -> list[TraceRecord]:
        """Every traced event so far, in a canonical order (one seed, one trace)."""
        return [record for _, _, record in sorted(self._trace)]

    def _schedule(self, due: float, item: Any, now: float) -> None:
        if self._realtime and due - now < self._slack:
            self._immediate.append(item)
            if not self._draining:
                self._drain()
            return
        # Quantised relative to the epoch so that float noise cannot reorder
        # two runs of the same seed that started at different clock readings.
        due = self.epoch + round(due - self.epoch, 10)
        self._seq += 1
        heapq.heappush(self._heap, (due, self._seq, item))
        if due < self._wake_at:
            self._wake_at = -math.inf
            self._lot.unpark_all()

    def _fire(self, item: Any) -> None:
        if item.__class__ is Packet:
            self._arrive(item)
        else:
            item()

    def _drain(self) -> None:
        # Only ever entered from the outside (an API call or the pump), never from
        # protocol code: a handler that sends must not see another handler run
        # underneath it (it may be iterating its own queues).
        self._now = trio.current_time()
        self._draining = True
        try:
            self._run_immediate()
        finally:
            self._draining = False

    def _run_immediate(self) -> None:
        queue = self._immediate
        arrive = self._arrive
        while queue:
            item = queue.popleft()
            if item.__class__ is Packet:
                arrive(item)
            else:
                item()

    def _arrive(self, packet: Packet) -> None:
        dst = self._endpoints.get(packet.dst_lid)
        if dst is None:
            self.drop_packet(packet, "no such LID")
            return
        if not dst.host.reachable:
            self.drop_packet(packet, f"{dst.host.name} unreachable")
            return
        if packet.kind == Kind.CM:
            function = dst.functions.get(packet.dguid)
            if function is None or function.device is None:
                self.drop_packet(packet, "no such GUID")
                return
            target: Any = function.device.cm
        else:
            target = dst.space.qps.get(packet.dst_qpn)
            if target is None:
                self.drop_packet(packet, "no such QP")
                return
        self._delivered += 1
        self._bytes += len(packet.payload)
        if self.tracing:
            self.record("deliver", packet.describe())
        target.on_packet(packet)

    # ------------------------------------------------------------------ work scheduling

    def ready(self, qp: RcQp) -> None:
        """``qp`` has new work to transmit (from an API call, not the pump)."""
        if self._realtime:
            if self._draining:
                qp.transmit()
                return
            self._now = trio.current_time()
            self._draining = True
            try:
                qp.transmit()
                self._run_immediate()
            finally:
                self._draining = False
            return
        self._ready.add(qp)
        self._kick()

    def _kick(self) -> None:
        if self._wake_at > -math.inf:
            self._wake_at = -math.inf
            self._lot.unpark_all()

    def _transmit_ready(self) -> None:
        # Work that tasks started: QPs by (LID, QPN), then packets (CM) by their
        # addresses, so the order does not depend on which task trio ran first.
        ready = sorted(self._ready, key=lambda qp: qp.sort_key)
        self._ready.clear()
        for qp in ready:
            qp.transmit()
        if self._outbox:
            outbox = sorted(self._outbox, key=_packet_order)
            self._outbox.clear()
            for packet in outbox:
                self._sent += 1
                self._policy(packet)

    async def _pump(self) -> None:
        clock = trio.lowlevel.current_clock()
        jumper = None
        if (
            not self._realtime
            and isinstance(clock, trio.testing.MockClock)
            and clock.autojump_threshold == 0
            and clock.rate == 0
        ):
            jumper = clock
        while True:
            # One cancel scope per wait for a deadline, not per wake: a kick (a task
            # posted work) moves nothing in time, so it keeps the scope.
            with trio.CancelScope() as scope:
                await self._pump_until_due(scope, jumper)
            self._wake_at = -math.inf

    async def _pump_until_due(
        self, scope: trio.CancelScope, jumper: trio.testing.MockClock | None
    ) -> None:
        heap = self._heap
        settled = False
        while True:
            if not settled and (self._ready or self._outbox) and not self._realtime:
                # Let every task that can run at this instant post its work first.
                await trio.testing.wait_all_tasks_blocked()
            settled = False
            now = self._now = trio.current_time()
            limit = now + self._slack
            self._draining = True
            try:
                if self._ready or self._outbox:
                    self._transmit_ready()
                while heap and heap[0][0] <= limit:
                    self._fire(heapq.heappop(heap)[2])
                    if self._immediate:
                        self._run_immediate()
                    if self._ready:
                        self._transmit_ready()
            finally:
                self._draining = False
            if self._ready or self._outbox or (heap and heap[0][0] <= now):
                await trio.lowlevel.checkpoint()
                continue
            if jumper is not None and heap:
                # Under an autojumping clock, wait until every task is blocked and
                # make the jump the clock would make to our next item: the same
                # instants in the same order, without an empty scheduler pass, a
                # deadline and a wake per item, and a kick costs no extra wake.
                if scope.deadline != math.inf:
                    scope.deadline = math.inf
                await trio.testing.wait_all_tasks_blocked()
                settled = True
                step = heap[0][0] - trio.current_time()
                if self._ready or self._outbox or step <= 0:
                    continue
                if step < trio.lowlevel.current_statistics().seconds_to_next_deadline:
                    jumper.jump(step)
                    continue
                # Another task's deadline comes first (or at the same instant):
                # the clock's own jump decides, as when the pump parks.
            self._wake_at = heap[0][0] if heap else math.inf
            deadline = self._wake_at - self._slack
            if scope.deadline != deadline:
                scope.deadline = deadline
            await self._lot.park()
            self._wake_at = -math.inf

    def _close(self) -> None:
        for vm in self.vms.values():
            vm.devices.close()


def _packet_order(packet: Packet) -> tuple[int, int, int, int, int, int, str]:
    return (
        packet.src_lid,
        packet.src_qpn,
        packet.dst_lid,
        packet.dst_qpn,
        packet.kind,
        packet.psn,
        type(packet.msg).__name__,
    )


@asynccontextmanager
async def open_fabric(
    *,
    port_model: PortModel | str = PortModel.VSWITCH,
    seed: int = 0,
    latency: float = 1.3e-6,
    bandwidth: float = 4.0e9,
    mtu: int = 4096,
    switches: int = 1,
    trace: bool | None = None,
    realtime: bool | None = None,
) -> AsyncIterator[Fabric]:
    """Open a fabric; its pump runs until the ``async with`` block exits.

    Args:
        port_model: ``"vswitch"`` or ``"shared"`` (ConnectX-2).
        seed: one seed, one event trace.
        latency: seconds per link hop.
        bandwidth: bytes per second per link.
        mtu: largest payload per packet (256 … 4096).
        switches: 1 for a single switch; more for a spine (switch 0) and leaves.
        trace: record :attr:`Fabric.trace` (every packet delivered or dropped,
            every hot-plug, QP error and SM action); by default on under a
            :class:`trio.testing.MockClock` and off under the real clock (where
            it would grow without bound and slow every packet).
        realtime: coalesce sub-20 µs delays into one pass; by default on unless
            trio runs on a :class:`trio.testing.MockClock`.

    Yields:
        The :class:`Fabric`.
    """
    virtual = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    fabric = Fabric(
        port_model=port_model,
        seed=seed,
        latency=latency,
        bandwidth=bandwidth,
        mtu=mtu,
        switches=switches,
        trace=virtual if trace is None else trace,
    )
    if realtime is None:
        realtime = not virtual
    fabric.epoch = trio.current_time()
    fabric._realtime = realtime
    fabric._update_fast_lane()
    fabric._slack = REALTIME_SLACK if realtime else 0.0
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fabric._pump)
            try:
                yield fabric
            finally:
                nursery.cancel_scope.cancel()
    finally:
        fabric._close()
