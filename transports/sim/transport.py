"""The ``sim`` entry of the ``rdsx.transports`` group: a fabric as a Network."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from rdsx.errors import AddressInUse
from rdsx.verbs import Network, Transport

from .fabric import Fabric, open_fabric
from .vm import VmDevices

__all__ = ["SimNetwork", "SimTransport"]


class SimNetwork(Network):
    """Every node is a VM on a host of its own, holding one VF.

    Attributes:
        fabric: the :class:`~transports.sim.fabric.Fabric` (for the VMM and faults).
        num_vfs: VFs per host created by :meth:`add_node`.
        profile: the timing profile given to ``open_network`` (used by the VMM).
    """

    def __init__(self, fabric: Fabric, num_vfs: int, profile: Any) -> None:
        self.fabric = fabric
        self.num_vfs = num_vfs
        self.profile = profile

    async def add_node(self, address: str, *, standby: bool = False) -> VmDevices:
        """Create host ``host-<address>``, VM ``vm-<address>`` and attach a VF.

        ``standby=True`` gives the VM an emulated standby device that carries its
        traffic while it has no VF (:mod:`transports.sim.standby`).

        Raises:
            AddressInUse: a node with that address exists.
        """
        if self.fabric.vm_at(address) is not None:
            raise AddressInUse(f"a node answers on {address} already")
        host = self.fabric.add_host(f"host-{address}", num_vfs=self.num_vfs)
        vm = self.fabric.create_vm(f"vm-{address}", address=address, standby=standby)
        await self.fabric.attach(vm, host)
        return vm.devices


class SimTransport(Transport):
    """The in-process InfiniBand fabric transport."""

    name: ClassVar[str] = "sim"

    def open_network(self, **options: Any) -> Any:
        """Open a fabric; options are :func:`~transports.sim.open_fabric`'s plus
        ``num_vfs`` (per host, default 4) and ``profile`` (a timing profile name,
        path or value: the CM then charges its ``sa_query`` and ``qp_create``
        figures, and emulated standby devices its ``standby_*`` figures; it is
        also kept as ``network.profile`` for the VMM)."""
        return _open_network(**options)


@asynccontextmanager
async def _open_network(
    *, num_vfs: int = 4, profile: Any = None, **options: Any
) -> AsyncIterator[SimNetwork]:
    async with open_fabric(**options) as fabric:
        if profile is not None:
            from .profile import load_profile

            loaded = load_profile(profile)
            fabric.sa_query_time = loaded["sa_query"]
            fabric.qp_setup_time = loaded["qp_create"]
            fabric.standby_latency = loaded["standby_latency"]
            fabric.standby_bandwidth = loaded["standby_bandwidth"]
            fabric.standby_qp_create = loaded["standby_qp_create"]
        yield SimNetwork(fabric, num_vfs, profile)
