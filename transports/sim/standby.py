"""The standby device: an emulated RC device whose state migrates with its VM.

While a VM has no VF (the hot-unplug before the pause, the pause, the hot-plug
and the SM's reaction after it) a VM created with ``standby=True`` is given an
emulated device instead: a software RC in the hypervisor that sends through the
host's PF. Production systems do exactly this: OpenStack Nova bonds the VF
with a macvtap port for the migration ("connectivity will not be lost but the
performance will be reduced", blueprint libvirt-neutron-sriov-livemigration);
Red Hat's US 2017/0075706 creates an emulated device corresponding to the VF
and processes the VM's calls with it; VMware's PVRDMA is a paravirtual RDMA
device whose state the hypervisor migrates.

The model:

* **Cost.** Every packet of its QPs, either way, goes through the :class:`Backend`:
  serialised at ``Fabric.standby_bandwidth`` and delayed ``standby_latency``.
  Its QPs are backend software: their setup costs ``standby_qp_create``, with
  the same create/connect split as a VF's ``qp_create``. Its CM MADs take no
  extra time.
* **Identity.** Under ``vswitch`` it answers on a LID of its own, assigned once
  (at its first incarnation) and following the VM (:func:`rehome`, charging the
  LFT blocks that change), with QPNs and keys from a space the VM owns: its QPs
  are the backend's state and survive the migration (same QPN, PSNs and peer).
  Under ``shared`` there is no per-VM LID: it answers on the host port's LID
  with the host HCA's QPN space, so at the resume the old incarnation is
  surprise-removed and a new one on the destination is offered
  (:func:`reincarnate`).
* **Pause.** While the VM is stopped (:func:`freeze` .. :func:`thaw`) its
  endpoint is frozen: every packet to or from it is dropped (traced, with the
  reason) and its retransmission timer stands still. At the thaw each RC QP
  resyncs: its requester resends from its oldest unacknowledged PSN at once
  and its responder sends its peer a sequence NAK with its ePSN, on which the
  peer resends at once (:mod:`.rc`), so traffic recovers in one round trip
  rather than after a 67 ms retransmission timeout.
* **Lifecycle.** :func:`offer` queues an incarnation on the VM's device stream
  when its VF gets a removal notice; :func:`retire` gives it a graceful
  removal notice (``Fabric.standby_grace``) when a new VF arrives, removes it
  once every context is closed, and pulls it at the deadline.

Under the real clock the fabric's fast lane is off while any incarnation is
live: a packet to or from an emulated device always takes the backend's path.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import trio

from .hca import Endpoint, Function, Host, PortModel, ResourceSpace
from .packet import HEADER_BYTES, Packet, Syndrome
from .rc import _LIVE, _RECEIVING
from .verbs import SimContext, SimDevice, SimQP

if TYPE_CHECKING:
    from .fabric import Fabric
    from .vm import Vm

__all__ = [
    "Backend",
    "StandbyDevice",
    "StandbyFunction",
    "StandbyQP",
    "drop_all",
    "freeze",
    "offer",
    "rehome",
    "reincarnate",
    "retire",
    "thaw",
]


class Backend:
    """The hypervisor's software RC of one VM: its queue, its delay, its pause.

    Attributes:
        frozen: True while the VM is paused (packets are dropped).
        busy_until: when the backend finishes what it was given so far.
    """

    def __init__(self, fabric: Fabric, vm: Vm) -> None:
        self.fabric = fabric
        self.vm = vm
        self.frozen = False
        self.busy_until = 0.0

    def _due(self, nbytes: int) -> float:
        fabric = self.fabric
        start = max(fabric.now(), self.busy_until)
        bandwidth = fabric.standby_bandwidth
        if math.isfinite(bandwidth):
            start += (HEADER_BYTES + nbytes) / bandwidth
        self.busy_until = start
        return start + fabric.standby_latency

    def drop(self, packet: Packet) -> None:
        """Lose ``packet``: the VM is paused."""
        self.fabric.drop_packet(packet, f"{self.vm.name} paused: emulated device frozen")

    def egress(self, packet: Packet) -> None:
        """A packet one of the VM's emulated QPs sends: through the backend, then the PF."""
        if self.frozen:
            self.drop(packet)
            return
        self.fabric.call_at(self._due(len(packet.payload)), lambda: self._out(packet))

    def _out(self, packet: Packet) -> None:
        # The VM may have paused while the packet sat in the backend.
        if self.frozen:
            self.drop(packet)
            return
        self.fabric.send_packet(packet)

    def ingress(self, qp: StandbyQP, packet: Packet) -> None:
        """A packet the fabric delivered to ``qp``: through the backend into the guest."""
        if self.frozen:
            self.drop(packet)
            return
        self.fabric.call_at(self._due(len(packet.payload)), lambda: self._in(qp, packet))

    def _in(self, qp: StandbyQP, packet: Packet) -> None:
        if self.frozen:
            self.drop(packet)
        elif qp.function.space.qps.get(qp.qp_num) is not qp:
            self.fabric.drop_packet(packet, "no such QP")
        else:
            SimQP.on_packet(qp, packet)


class StandbyFunction(Function):
    """The emulated device's place on the fabric (not one of the HCA's VFs)."""

    def __init__(self, vm: Vm, host: Host, space: ResourceSpace, number: int) -> None:
        # Index -1: not a PCI function of the HCA (0 is its PF, 1..N its VFs).
        super().__init__(host.hca, -1, space)
        self.vm = vm
        self._name = f"{vm.name}/standby{number}"

    @property
    def name(self) -> str:
        """``"<vm>/standby<n>"`` (the n-th incarnation)."""
        return self._name


class StandbyQP(SimQP):
    """An RC QP of the emulated device: its packets go through the VM's backend."""

    @property
    def backend(self) -> Backend:
        """The VM's :class:`Backend`, which every packet of this QP goes through."""
        device = self._ctx.device
        assert isinstance(device, StandbyDevice)
        return device.backend

    def on_packet(self, packet: Packet) -> None:
        """Hand an arriving packet to the backend (dropped while the VM is paused)."""
        self.backend.ingress(self, packet)

    def _on_timer(self) -> None:
        if self.backend.frozen:
            # The backend is stopped with the VM: no time passes for it; the thaw re-arms.
            self.timer_armed = False
            return
        super()._on_timer()

    def resync(self) -> None:
        """After the pause: resend from the oldest unacknowledged PSN, NAK the peer's gap."""
        if self._closed or self.function.space.qps.get(self.qp_num) is not self:
            return
        state = self._state
        if state in _LIVE and self.una < self.next_psn:
            self.retry_left = self.retry_cnt
            self.rnr_until = 0.0
            self.progress_at = self.fabric.now()
            self._retransmit(self.una)
            self._arm()
        if state in _RECEIVING:
            # What the peer sent during the pause was dropped: say where to resume.
            self.nak_psn = self.epsn
            self._reply(Syndrome.SEQ, self.epsn)


class StandbyDevice(SimDevice):
    """One incarnation of a VM's emulated RC device.

    Attributes:
        backend: the VM's :class:`Backend` (shared by its incarnations).
        offered: when this incarnation was offered to the VM.
    """

    def __init__(self, fabric: Fabric, function: StandbyFunction, vm: Vm, backend: Backend) -> None:
        super().__init__(fabric, function, vm)
        self.backend = backend
        self.egress = backend.egress
        self.offered = trio.current_time()

    @property
    def qp_setup_time(self) -> float:
        """``Fabric.standby_qp_create``: a QP here is backend software."""
        return self.fabric.standby_qp_create

    @property
    def frozen(self) -> bool:
        """True while the VM is paused."""
        return self.backend.frozen

    def qp_type(self) -> type[SimQP]:
        """:class:`StandbyQP`."""
        return StandbyQP

    def qps(self) -> list[StandbyQP]:
        """Every QP of every open context, in (context, PD, creation) order."""
        return [
            qp
            for ctx in self.contexts
            for pd in ctx.pds
            for qp in pd.qps
            if isinstance(qp, StandbyQP)
        ]

    def context_closed(self, ctx: SimContext) -> None:
        """Bookkeeping; a retiring incarnation goes once its last context closed."""
        super().context_closed(ctx)
        if self._removal_pending and not self.contexts and not self.removed:
            _unplug(self.fabric, self, "retired")


def offer(fabric: Fabric, vm: Vm) -> StandbyDevice | None:
    """Queue an incarnation of ``vm``'s emulated device on its device stream.

    Does nothing (returns the live one or None) if the VM has no standby, no
    host, crashed, or already has a live incarnation that is not retiring (one
    that is, still held past a VF's return, is pulled first).
    """
    live = vm.standby_device
    if live is not None and not live.removed:
        if not live.removal_pending:
            return live
        # Still retiring from the last VF's return: the new removal needs a fresh one.
        _unplug(fabric, live, "superseded by a new incarnation")
    host = vm.host
    if not vm.standby or host is None or vm.crashed or host.crashed:
        return None
    sm = fabric.sm
    if fabric.port_model is PortModel.VSWITCH:
        endpoint = vm.standby_endpoint
        if endpoint is None:
            space = ResourceSpace(f"{vm.name}/standby")
            lid = sm.assign_lid(host.where)
            endpoint = vm.standby_endpoint = Endpoint(host, lid, space)
            fabric._endpoints[lid] = endpoint
            vm.standby_vguid = sm.assign_vguid()
        elif endpoint.host is not host:
            rehome(fabric, vm, host)
        vguid = vm.standby_vguid
    else:
        port = host.hca.port
        assert port is not None
        endpoint = port
        vguid = sm.assign_vguid()
    vm.standby_count += 1
    function = StandbyFunction(vm, host, endpoint.space, vm.standby_count)
    function.endpoint = endpoint
    function.vguid = vguid
    endpoint.functions[vguid] = function
    device = StandbyDevice(fabric, function, vm, vm.backend)
    function.device = device
    vm.standby_device = device
    vm.standby_log.append([device.offered, None])
    fabric._standby_live += 1
    fabric._update_fast_lane()
    fabric.record("standby_offer", vm.name, f"{function.name} lid={endpoint.lid}")
    vm.devices.push(device)
    return device


def retire(fabric: Fabric, vm: Vm, grace: float) -> None:
    """Give ``vm``'s live incarnation a graceful removal notice (a VF is back).

    It is removed once every context is closed, or pulled at the deadline.
    """
    device = vm.standby_device
    if device is None or device.removed or device.removal_pending:
        return
    deadline = trio.current_time() + grace
    fabric.record("standby_retire", vm.name, f"{device.name} grace={grace}")
    _close_interval(vm, device)
    device.announce_removal(deadline)
    if not device.contexts:
        _unplug(fabric, device, "retired")
        return

    def expire() -> None:
        if not device.removed:
            _unplug(fabric, device, "forced at the deadline")

    fabric.call_at(deadline, expire)


def freeze(fabric: Fabric, vm: Vm) -> None:
    """The VM stops: its emulated device's endpoint is frozen."""
    vm.backend.frozen = True
    fabric.record("standby_freeze", vm.name)


def thaw(fabric: Fabric, vm: Vm) -> None:
    """The VM runs again: each emulated QP resyncs with its peer."""
    vm.backend.frozen = False
    fabric.record("standby_thaw", vm.name)
    device = vm.standby_device
    if device is None or device.removed:
        return
    qps = device.qps()

    def resync() -> None:
        for qp in qps:
            qp.resync()

    fabric.call_at(fabric.now(), resync)


def rehome(fabric: Fabric, vm: Vm, host: Host) -> int:
    """Move ``vm``'s emulated device (vSwitch: its LID) to ``host``; return the SMPs spent.

    Under ``shared`` nothing moves (see :func:`reincarnate`): returns 0.
    """
    endpoint = vm.standby_endpoint
    if endpoint is None or endpoint.host is host:
        return 0
    smps0 = fabric.sm.smps_sent
    endpoint.host = host
    for function in endpoint.functions.values():
        function.hca = host.hca
    fabric.sm.move_lid(endpoint.lid, host.where)
    fabric.record("standby_rehome", vm.name, f"lid={endpoint.lid} -> {host.name}")
    return fabric.sm.smps_sent - smps0


def reincarnate(fabric: Fabric, vm: Vm) -> StandbyDevice | None:
    """Shared port model, at the resume: the old incarnation is gone, a new one is offered."""
    old = vm.standby_device
    if old is not None and not old.removed:
        fabric.record("standby_lost", vm.name, f"{old.name}: the host port's identity stays")
        _close_interval(vm, old)
        old.announce_removal(None)
        _unplug(fabric, old, "left behind on the source")
    return offer(fabric, vm)


def drop_all(fabric: Fabric, vm: Vm) -> None:
    """The VM is gone (its host crashed): its emulated device vanishes too."""
    device = vm.standby_device
    if device is not None and not device.removed:
        _unplug(fabric, device, "crashed")


def _close_interval(vm: Vm, device: StandbyDevice) -> None:
    """End ``device``'s interval in ``vm.standby_log`` now, unless it has ended already."""
    for interval in vm.standby_log:
        if interval[0] == device.offered and interval[1] is None:
            interval[1] = trio.current_time()


def _unplug(fabric: Fabric, device: StandbyDevice, why: str) -> None:
    """Remove ``device`` (every handle a zombie) and take it off the fabric; ``why`` is traced."""
    vm = device.vm
    _close_interval(vm, device)
    device.remove()
    function = device.function
    endpoint = function.endpoint
    if endpoint is not None:
        endpoint.functions.pop(function.vguid, None)
    function.endpoint = None
    function.device = None
    if vm.standby_device is device:
        vm.standby_device = None
    fabric._standby_live -= 1
    fabric._update_fast_lane()
    fabric.record("standby_removed", vm.name, f"{device.name}: {why}")
