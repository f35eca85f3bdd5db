"""The conformance-suite harness for ``sim`` (:class:`rdsx.testing.Harness`)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from rdsx.testing import Harness
from rdsx.verbs import Device

from .fabric import Fabric, open_fabric
from .faults import partitioned
from .hca import PortModel
from .verbs import SimDevice

__all__ = ["SimHarness"]


class SimHarness(Harness):
    """Two hosts, two VMs with a VF each, on one fabric in virtual time.

    Attributes:
        fabric: the fabric of the pair currently open (``None`` outside).
    """

    name = "sim"
    virtual_time = True

    def __init__(
        self, port_model: PortModel | str = PortModel.VSWITCH, seed: int = 0, **options: Any
    ):
        self.port_model = PortModel(port_model)
        self.seed = seed
        self.options = options
        self.fabric: Fabric | None = None

    @asynccontextmanager
    async def open_pair(self) -> AsyncIterator[tuple[Device, Device]]:
        """Two devices on two hosts that can reach each other."""
        async with open_fabric(
            port_model=self.port_model, seed=self.seed, **self.options
        ) as fabric:
            self.fabric = fabric
            try:
                host_a = fabric.add_host("hostA", num_vfs=4)
                host_b = fabric.add_host("hostB", num_vfs=4)
                vm_a = fabric.create_vm("vmA", address="127.0.0.1")
                vm_b = fabric.create_vm("vmB", address="127.0.0.2")
                dev_a = await fabric.attach(vm_a, host_a)
                dev_b = await fabric.attach(vm_b, host_b)
                yield dev_a, dev_b
            finally:
                self.fabric = None

    async def remove(self, device: Device, grace: float | None) -> None:
        """Hot-unplug ``device`` through ``fabric.detach`` (DeviceBusy if held)."""
        assert isinstance(device, SimDevice) and self.fabric is not None
        await self.fabric.detach(device.vm, grace)

    @contextmanager
    def partition(self, a: Device, b: Device) -> Iterator[None]:
        """Lose every packet between ``a`` and ``b`` while open."""
        assert isinstance(a, SimDevice) and isinstance(b, SimDevice) and self.fabric is not None
        with partitioned(self.fabric, lambda: a.function.lid, lambda: b.function.lid):
            yield
