"""The tcp transport's conformance harness: two nodes on loopback, real sockets, real time."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import (
    AbstractAsyncContextManager,
    AbstractContextManager,
    asynccontextmanager,
    contextmanager,
)
from typing import Any

from rdsx.errors import InvalidArgument
from rdsx.testing import Harness
from rdsx.verbs import Device

from ._device import TcpDevice
from ._network import TcpNetwork, TcpTransport

__all__ = ["TEST_SECRET", "TcpHarness"]

#: A secret for tests only; never a default of the transport itself.
TEST_SECRET = b"rdsx-tcp-test-secret-0123456789"


class TcpHarness(Harness):
    """Two devices on ``127.0.0.1`` and ``127.0.0.2`` (ports picked by the kernel).

    Args:
        addresses: the two node addresses.
        options: passed to :meth:`TcpTransport.open_network`; the defaults keep
            timeouts short so failure paths are quick to test.

    Attributes:
        network: the open network while :meth:`open_pair` is active.
    """

    name = "tcp"
    virtual_time = False

    def __init__(self, addresses: tuple[str, str] = ("127.0.0.1", "127.0.0.2"), **options: Any):
        self.addresses = addresses
        self.options: dict[str, Any] = {
            "secret": TEST_SECRET,
            "port": 0,
            "handshake_timeout": 2.0,
            "frame_timeout": 1.0,
            "park_timeout": 2.0,
            "qp_timeout": 0.05,
            **options,
        }
        self.network: TcpNetwork | None = None

    def open_pair(self) -> AbstractAsyncContextManager[tuple[Device, Device]]:
        """Open a network with two nodes and yield their first devices."""
        return self._open_pair()

    @asynccontextmanager
    async def _open_pair(self) -> AsyncIterator[tuple[Device, Device]]:
        async with TcpTransport().open_network(**self.options) as network:
            self.network = network
            try:
                a = await (await network.add_node(self.addresses[0])).next_device()
                b = await (await network.add_node(self.addresses[1])).next_device()
                yield a, b
            finally:
                self.network = None

    async def remove(self, device: Device, grace: float | None) -> None:
        """Detach ``device`` (see :meth:`TcpDevice.detach`)."""
        if not isinstance(device, TcpDevice):
            raise InvalidArgument("not a tcp device")
        await device.detach(grace)

    def partition(self, a: Device, b: Device) -> AbstractContextManager[None]:
        """Lose every QP frame between the two devices' addresses while open.

        Handshake and CM frames are held back until the partition ends instead (TCP
        would retransmit them), so only the RC layer's own recovery is exercised.
        """
        return self._partition(a, b)

    @contextmanager
    def _partition(self, a: Device, b: Device) -> Iterator[None]:
        if not isinstance(a, TcpDevice) or not isinstance(b, TcpDevice):
            raise InvalidArgument("not tcp devices")
        with a.network.partition(a.address, b.address):
            yield
