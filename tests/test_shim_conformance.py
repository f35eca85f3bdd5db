"""The shim implements the verbs contract, so the public conformance suite runs over it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio

from rdsx.shim import PRIVATE_DATA_MAX, ShimConfig, TransparentDeviceSource
from rdsx.testing import CHECKS, Harness, check_rng
from rdsx.verbs import Device
from transports.sim import SimDevice
from transports.sim.harness import SimHarness
from transports.tcp import TcpNode, TcpTransport
from transports.tcp.harness import TcpHarness

#: Checks about the device *removal* contract: the shim exists to hide removals
#: from the layer above (its virtual device is never removed), so they cannot
#: apply to it. Its own removal behaviour is tested in tests/test_shim_*.py.
HIDDEN_BY_DESIGN = {
    "remove-grace-released",
    "remove-grace-busy",
    "remove-surprise",
    "remove-every-context",
    "remove-open-pending",
}


class ShimHarness(Harness):
    """A :class:`SimHarness` pair, each device seen through a transparent shim."""

    name = "sim+shim"
    virtual_time = True
    #: The shim keeps 20 of the CM's 196 bytes for its own header.
    cm_private_data = PRIVATE_DATA_MAX

    def __init__(self, seed: int = 0) -> None:
        self._sim = SimHarness(seed=seed)
        self._physical: dict[int, SimDevice] = {}

    @asynccontextmanager
    async def open_pair(self) -> AsyncIterator[tuple[Device, Device]]:
        """Two sim devices, each wrapped in its own shim (the node's view)."""
        config = ShimConfig(resume_timeout=2.0)
        async with self._sim.open_pair() as (dev_a, dev_b):
            assert isinstance(dev_a, SimDevice) and isinstance(dev_b, SimDevice)
            async with (
                TransparentDeviceSource(dev_a.vm.devices, config) as shim_a,
                TransparentDeviceSource(dev_b.vm.devices, config) as shim_b,
            ):
                virtual_a = await shim_a.next_device()
                virtual_b = await shim_b.next_device()
                self._physical = {id(virtual_a): dev_a, id(virtual_b): dev_b}
                yield virtual_a, virtual_b

    async def remove(self, device: Device, grace: float | None) -> None:
        """Remove the physical device under ``device`` (the shim absorbs it)."""
        await self._sim.remove(self._physical[id(device)], grace)

    @contextmanager
    def partition(self, a: Device, b: Device) -> Iterator[None]:
        """Partition the physical devices under ``a`` and ``b``."""
        with self._sim.partition(self._physical[id(a)], self._physical[id(b)]):
            yield


class TcpShimHarness(Harness):
    """Two tcp nodes on loopback (real sockets, real time), each behind a shim."""

    name = "tcp+shim"
    virtual_time = False
    #: The shim keeps 20 of the CM's 196 bytes for its own header.
    cm_private_data = PRIVATE_DATA_MAX

    def __init__(self) -> None:
        self._tcp = TcpHarness()
        self._nodes: dict[int, TcpNode] = {}

    @asynccontextmanager
    async def open_pair(self) -> AsyncIterator[tuple[Device, Device]]:
        """Two tcp nodes' device sources, each wrapped in its own shim."""
        config = ShimConfig(resume_timeout=2.0)
        async with TcpTransport().open_network(**self._tcp.options) as network:
            node_a = await network.add_node(self._tcp.addresses[0])
            node_b = await network.add_node(self._tcp.addresses[1])
            async with (
                TransparentDeviceSource(node_a, config) as shim_a,
                TransparentDeviceSource(node_b, config) as shim_b,
            ):
                virtual_a = await shim_a.next_device()
                virtual_b = await shim_b.next_device()
                self._nodes = {id(virtual_a): node_a, id(virtual_b): node_b}
                yield virtual_a, virtual_b

    async def remove(self, device: Device, grace: float | None) -> None:
        """Detach the tcp device under ``device`` (the shim absorbs it)."""
        physical = self._nodes[id(device)].device
        assert physical is not None
        await self._tcp.remove(physical, grace)

    @contextmanager
    def partition(self, a: Device, b: Device) -> Iterator[None]:
        """Partition the tcp devices under ``a`` and ``b``."""
        dev_a, dev_b = self._nodes[id(a)].device, self._nodes[id(b)].device
        assert dev_a is not None and dev_b is not None
        with self._tcp.partition(dev_a, dev_b):
            yield


NAMES = [name for name in CHECKS if name not in HIDDEN_BY_DESIGN]


@pytest.mark.parametrize("name", NAMES)
async def test_shim_conforms_on_sim(name: str, autojump_clock: trio.abc.Clock) -> None:
    await CHECKS[name](ShimHarness(), check_rng(0, name))


@pytest.mark.parametrize("name", NAMES)
async def test_shim_conforms_on_tcp(name: str) -> None:
    await CHECKS[name](TcpShimHarness(), check_rng(0, name))
