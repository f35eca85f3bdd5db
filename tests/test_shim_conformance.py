"""The shim implements the verbs contract, so the public conformance suite runs over it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio

from rdsx.shim import ShimConfig, TransparentDeviceSource
from rdsx.testing import CHECKS, Harness, check_rng
from rdsx.verbs import Device
from transports.sim import SimDevice
from transports.sim.harness import SimHarness

#: Checks about the device *removal* contract: the shim exists to hide removals
#: from the layer above (its virtual device is never removed), so they cannot
#: apply to it. Its own removal behaviour is tested in tests/test_shim_*.py.
HIDDEN_BY_DESIGN = {
    "remove-grace-released",
    "remove-grace-busy",
    "remove-surprise",
    "remove-every-context",
}


class ShimHarness(Harness):
    """A :class:`SimHarness` pair, each device seen through a transparent shim."""

    name = "sim+shim"
    virtual_time = True

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


@pytest.mark.parametrize("name", [name for name in CHECKS if name not in HIDDEN_BY_DESIGN])
async def test_shim_conforms(name: str, autojump_clock: trio.abc.Clock) -> None:
    await CHECKS[name](ShimHarness(), check_rng(0, name))
