"""VMs and PCI hot-plug: attach, graceful and surprise detach, link and host faults.

A VM holds at most one VF. Its node sees devices through :attr:`Vm.devices`
(a :class:`rdsx.verbs.DeviceSource`); a device announces its own removal with
``DEVICE_REMOVAL``. A VM created with ``standby=True`` also has an emulated
device (:mod:`.standby`): an incarnation of it is queued on the stream as soon
as the VF gets its removal notice, and retired (a graceful removal notice,
``Fabric.standby_grace``) when a new VF is attached, so the node moves back to
the VF by its normal graceful path. The VF is always preferred. These
functions are the primitives the VMM (``transports/sim/vmm.py``) composes into
migrations.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

import trio

from rdsx.errors import DeviceBusy, InvalidArgument, InvalidState
from rdsx.verbs import AsyncEvent, AsyncEventType, DeviceSource

from . import standby as sb
from .hca import Endpoint, Function, Host, PortModel
from .verbs import SimDevice

if TYPE_CHECKING:
    from .fabric import Fabric

__all__ = ["Vm", "VmDevices", "attach", "crash", "detach", "set_link"]


class VmDevices(DeviceSource):
    """The hot-plug stream of one VM: every VF attached to it, in order."""

    def __init__(self) -> None:
        self._queue: deque[SimDevice] = deque()
        self._ready: trio.Event | None = None
        self._closed = False

    def push(self, device: SimDevice) -> None:
        """A device arrived."""
        self._queue.append(device)
        self._wake()

    def close(self) -> None:
        """No device will come any more (the fabric closed)."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        if self._ready is not None:
            self._ready.set()
            self._ready = None

    async def next_device(self) -> SimDevice:
        """Wait for the next device that is still present.

        Raises:
            trio.EndOfChannel: the fabric closed.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            while self._queue:
                device = self._queue.popleft()
                if not device.removed:
                    await trio.lowlevel.cancel_shielded_checkpoint()
                    return device
            if self._closed:
                raise trio.EndOfChannel
            if self._ready is None:
                self._ready = trio.Event()
            await self._ready.wait()


class Vm:
    """A virtual machine: a name, a node address, maybe a VF.

    Attributes:
        name: the VM's name.
        address: its node's out-of-band address (survives migration).
        host: the host it runs on (set by :func:`attach`, or by the VMM).
        device: the VF it holds now; ``None`` while detached.
        devices: its hot-plug stream.
        crashed: True once its host crashed.
        last_lid: the LID its last VF had (for ``attach(..., lid=vm.last_lid)``).
        standby: True if the VM has an emulated standby device (:mod:`.standby`).
        standby_device: its live incarnation, if any.
        standby_log: ``[offered, superseded]`` per incarnation (superseded: the
            time it was removed or a VF came back; None while neither happened).
        backend: the hypervisor's software RC behind the emulated device.
    """

    def __init__(self, fabric: Fabric, name: str, address: str, *, standby: bool = False) -> None:
        self.fabric = fabric
        self.name = name
        self.address = address
        self.host: Host | None = None
        self.device: SimDevice | None = None
        self.devices = VmDevices()
        self.crashed = False
        self.last_lid = 0
        self.standby = standby
        self.standby_device: sb.StandbyDevice | None = None
        self.standby_endpoint: Endpoint | None = None
        self.standby_vguid = 0
        self.standby_count = 0
        self.standby_log: list[list[float | None]] = []
        self.backend = sb.Backend(fabric, self)

    @property
    def answering_device(self) -> SimDevice | None:
        """The device a connection to the VM's address reaches: its VF unless it is
        leaving or gone, then its live emulated device, if any."""
        vf = self.device
        if vf is not None and not vf.removed and not vf.removal_pending:
            return vf
        standby = self.standby_device
        if standby is not None and not standby.removed:
            return standby
        return vf

    def __repr__(self) -> str:
        return f"<Vm {self.name} {self.address} on {self.host.name if self.host else None}>"


async def attach(fabric: Fabric, vm: Vm, host: Host, *, lid: int | None = None) -> SimDevice:
    """Hot-plug a free VF of ``host`` into ``vm``.

    The SM gives the VF a new vGUID. Under ``shared`` the VF answers on the
    port's LID; under ``vswitch`` it gets a LID of its own (``lid`` asks for a
    specific one, e.g. ``vm.last_lid`` so the LID follows the VM, which costs
    only the LFT blocks whose route changes).

    Returns:
        The new device (also pushed to ``vm.devices``).

    Raises:
        InvalidState: the VM already holds a VF, or it crashed.
        InvalidArgument: the host crashed; ``lid`` under ``shared`` or already taken.
        ResourceExhausted: no free VF on the host, or no LID left.
    """
    await trio.lowlevel.checkpoint()
    if vm.device is not None:
        raise InvalidState(f"{vm.name} already holds {vm.device.name}")
    if vm.crashed:
        raise InvalidState(f"{vm.name} crashed with its host")
    if host.crashed:
        raise InvalidArgument(f"{host.name} crashed")
    vf = host.hca.free_vf()
    port = host.hca.port
    assert port is not None
    if fabric.port_model is PortModel.SHARED:
        if lid is not None and lid != port.lid:
            raise InvalidArgument("under the shared port model a VF has the port's LID")
        endpoint = port
    else:
        new_lid = fabric.sm.assign_lid(host.where, lid)
        endpoint = Endpoint(host, new_lid, vf.space)
        fabric._endpoints[new_lid] = endpoint
    vf.endpoint = endpoint
    vf.vguid = fabric.sm.assign_vguid()
    endpoint.functions[vf.vguid] = vf
    vf.vm = vm
    device = SimDevice(fabric, vf, vm)
    vf.device = device
    vm.device = device
    vm.host = host
    vm.last_lid = endpoint.lid
    fabric.record("attach", vm.name, f"{vf.name} lid={endpoint.lid} vguid={vf.vguid:#x}")
    vm.devices.push(device)
    sb.retire(fabric, vm, fabric.standby_grace)
    return device


async def detach(fabric: Fabric, vm: Vm, grace: float | None) -> None:
    """Hot-unplug ``vm``'s VF.

    With ``grace`` seconds: every context gets ``DEVICE_REMOVAL`` with deadline
    now + grace (every CM id a ``DEVICE_REMOVAL`` event); the detach waits for
    every context to close. ``grace=None``: surprise removal, gone at once.
    Afterwards every old handle raises DeviceRemoved.

    Raises:
        InvalidState: the VM holds no VF.
        DeviceBusy: a context was still open at the deadline; the device stays
            attached and working (the seed's problem 1b).
    """
    device = vm.device
    if device is None:
        raise InvalidState(f"{vm.name} holds no VF")
    if grace is None:
        await trio.lowlevel.checkpoint()
        fabric.record("surprise_removal", vm.name, device.name)
        sb.offer(fabric, vm)
        device.announce_removal(None)
        _unplug(fabric, vm, device)
        return
    if grace < 0:
        raise InvalidArgument("grace must be >= 0 seconds or None")
    deadline = trio.current_time() + grace
    fabric.record("device_removal", vm.name, f"{device.name} grace={grace}")
    sb.offer(fabric, vm)
    released = device.announce_removal(deadline)
    with trio.move_on_at(deadline):
        await released.wait()
    if device.contexts:
        device.removal_failed()
        fabric.record("device_busy", vm.name, f"{len(device.contexts)} contexts open")
        # The VF stays: the standby offered for its absence is not needed.
        sb.retire(fabric, vm, fabric.standby_grace)
        raise DeviceBusy(
            f"{device.name}: {len(device.contexts)} context(s) still open at the deadline"
        )
    _unplug(fabric, vm, device)


def _unplug(fabric: Fabric, vm: Vm, device: SimDevice) -> None:
    device.remove()
    vf: Function = device.function
    endpoint = vf.endpoint
    if endpoint is not None:
        endpoint.functions.pop(vf.vguid, None)
        if fabric.port_model is PortModel.VSWITCH:
            fabric._endpoints.pop(endpoint.lid, None)
            fabric.sm.release_lid(endpoint.lid)
    vf.endpoint = None
    vf.vm = None
    vf.device = None
    vm.device = None
    fabric.record("detach", vm.name, vf.name)


def set_link(fabric: Fabric, host: Host, *, up: bool) -> None:
    """Take ``host``'s cable down or up; its contexts see PORT_ERR / PORT_ACTIVE."""
    if host.link_is_up == up:
        return
    host.link_is_up = up
    host.reachable = up and not host.crashed
    fabric.record("link_up" if up else "link_down", host.name)
    kind = AsyncEventType.PORT_ACTIVE if up else AsyncEventType.PORT_ERR
    for function in [host.hca.pf, *host.hca.vfs]:
        if function.device is not None:
            for ctx in list(function.device.contexts):
                ctx.post_event(AsyncEvent(kind))


def crash(fabric: Fabric, host: Host) -> None:
    """Power ``host`` off: its VMs and their devices vanish without telling peers."""
    if host.crashed:
        return
    host.crashed = True
    host.reachable = False
    fabric.record("crash", host.name)
    for guest in fabric.vms.values():
        # A VM running on its standby device (its VF is away) dies with its host too;
        # where the standby's LID is routed does not matter (mid-migration it may already
        # lead to the destination while the guest is still on the source).
        if guest.standby_device is not None and guest.host is host:
            guest.crashed = True
            sb.drop_all(fabric, guest)
    for vf in host.hca.vfs:
        device, vm = vf.device, vf.vm
        if device is not None:
            device.remove()
        if vm is not None:
            vm.crashed = True
            vm.device = None
