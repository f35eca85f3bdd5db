"""The tcp transport's entry point: a network of local interface addresses.

``TcpTransport().open_network(secret=..., port=...)`` gives a :class:`TcpNetwork`;
``add_node(address)`` binds a device to that local address and returns the
node's :class:`TcpNode` (a :class:`~rdsx.verbs.DeviceSource`). Devices of one
network find each other's listeners directly (so tests can use port 0); a
peer outside the process is reached on the network's port (default 18634).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Any, ClassVar

import attrs
import trio

from rdsx.errors import AddressInUse, AddressNotAvailable, DeviceBusy, Unreachable
from rdsx.verbs import Device, DeviceSource, Network, Transport

from ._addresses import AddressSource, LocalAddresses, system_addresses, watch_kernel
from ._auth import TicketBook
from ._device import TcpDevice, bind_error
from ._secret import check_secret, load_secret
from ._stats import Counters, TcpStatistics

__all__ = ["DEFAULT_PORT", "TcpNetwork", "TcpNode", "TcpTransport"]

log = logging.getLogger("rdsx.tcp")

#: The TCP port a device listens on unless told otherwise.
DEFAULT_PORT = 18634


class TcpNode(DeviceSource):
    """One node (local address) of a tcp network: its devices, one after another."""

    def __init__(self, network: TcpNetwork, address: str) -> None:
        self.network = network
        self.address = address
        self.counters = Counters()
        self.device: TcpDevice | None = None
        self.closed = False
        #: Spare tickets from this node's CM exchanges, by peer device; they outlive
        #: our devices, so a new device reaches a known peer in one round trip.
        self.spares = TicketBook()
        self._generation = 0
        self._send, self._recv = trio.open_memory_channel[Device](64)

    async def next_device(self) -> Device:
        """Wait for the next device of this node (the current one first).

        Devices removed before anyone asked for them are skipped.

        Raises:
            trio.EndOfChannel: the network is closing; no device will come.
        """
        while True:
            device = await self._recv.receive()
            if not device.removed:
                return device

    async def attach(self) -> TcpDevice:
        """Bind a new device to the node's address (the interface came back).

        Raises:
            AddressInUse: the node still has a device that was not removed.
            AddressNotAvailable: the address cannot be bound.
        """
        if self.device is not None and not self.device.removed:
            raise AddressInUse(f"{self.address} already has device {self.device.name}")
        self._generation += 1
        device = await self.network._start_device(self, self._generation)
        self.device = device
        self._send.send_nowait(device)
        return device

    def device_gone(self, device: TcpDevice) -> None:
        """Called by a device when it is removed."""
        if self.device is device:
            self.device = None

    def statistics(self) -> TcpStatistics:
        """Return this node's transport counters."""
        return self.counters.snapshot()

    def close(self) -> None:
        """No more devices will come: ``next_device`` raises EndOfChannel after the queue."""
        self.closed = True
        self._send.close()


class TcpNetwork(Network):
    """The local interfaces of one process, as nodes (see the module docstring).

    Attributes:
        secret: the cluster secret every handshake proves.
        port: the TCP port devices listen on (0: any free one).
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        secret: bytes,
        port: int,
        backlog: int,
        max_msg_sz: int,
        handshake_timeout: float,
        frame_timeout: float,
        park_timeout: float,
        max_handshakes: int,
        qp_timeout: float,
        min_rnr_timer: float,
    ) -> None:
        self._nursery = nursery
        self.secret = secret
        self.port = port
        self.backlog = backlog
        self.max_msg_sz = max_msg_sz
        self.max_frame = max_msg_sz + 64
        self.handshake_timeout = handshake_timeout
        self.frame_timeout = frame_timeout
        self.park_timeout = park_timeout
        self.max_handshakes = max_handshakes
        self.qp_timeout = qp_timeout
        self.min_rnr_timer = min_rnr_timer
        self.nodes: dict[str, TcpNode] = {}
        self._partitions: set[frozenset[str]] = set()
        self._healed = trio.Event()
        self._departing: set[TcpDevice] = set()
        self._rescan = trio.Event()

    async def add_node(self, address: str) -> TcpNode:
        """Bind a device to the local ``address`` and return the node's device source.

        Raises:
            AddressInUse: the network already has that node, or the port is taken.
            AddressNotAvailable: ``address`` is not a local IPv4 address.
        """
        if address in self.nodes:
            raise AddressInUse(f"node {address} already exists")
        try:
            socket.inet_aton(address)
        except OSError:
            raise AddressNotAvailable(f"{address!r} is not an IPv4 address") from None
        node = TcpNode(self, address)
        await node.attach()
        self.nodes[address] = node
        return node

    async def _start_device(self, node: TcpNode, generation: int) -> TcpDevice:
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            await sock.bind((node.address, self.port))
            sock.listen(self.backlog)
        except OSError as exc:
            sock.close()
            raise bind_error(exc, node.address, self.port) from None
        device = TcpDevice(node, generation, trio.SocketListener(sock))
        await self._nursery.start(device.run)
        return device

    def resolve(self, address: str) -> str:
        """Return the ``host:port`` locator of the node at ``address`` (the path query).

        Raises:
            Unreachable: the node is not in this network and no fixed port is set.
        """
        node = self.nodes.get(address)
        if node is not None and node.device is not None:
            return node.device.locator
        if self.port == 0:
            raise Unreachable(f"no node {address} here, and port 0 names no remote listener")
        return f"{address}:{self.port}"

    def blocked(self, a: str, b: str) -> bool:
        """The fault hook: True while traffic between ``a`` and ``b`` is lost."""
        return bool(self._partitions) and frozenset((a, b)) in self._partitions

    @contextmanager
    def partition(self, a: str, b: str) -> Iterator[None]:
        """Lose every frame between addresses ``a`` and ``b`` while the context is open."""
        key = frozenset((a, b))
        self._partitions.add(key)
        try:
            yield
        finally:
            self._partitions.discard(key)
            self._healed.set()
            self._healed = trio.Event()

    async def wait_unblocked(self, a: str, b: str) -> None:
        """Return once no partition separates ``a`` and ``b``."""
        while self.blocked(a, b):
            await self._healed.wait()

    async def watch_addresses(self, source: AddressSource, interval: float, grace: float) -> None:
        """Follow the local addresses: one gone removes its device, one back attaches a new one.

        Runs until cancelled (the network's task). A removal first gives the
        device's users ``grace`` seconds; if they still hold it, the removal is
        forced (the address is gone, so the device cannot stay).
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_kernel, self.rescan)
            while True:
                self._rescan = trio.Event()  # a change from here on brings the next look
                try:
                    present = await trio.to_thread.run_sync(source)
                except OSError as exc:
                    log.warning("cannot list local addresses: %s", exc)
                else:
                    await self._follow(present, grace)
                with trio.move_on_after(interval):  # the polling period, at the longest
                    await self._rescan.wait()

    def rescan(self) -> None:
        """Look at the local addresses now, not at the next poll.

        The kernel's address changes do this by themselves (netlink); an address
        source that is not the kernel's (a test hiding an address) calls it.
        """
        self._rescan.set()

    async def _follow(self, present: LocalAddresses, grace: float) -> None:
        for node in list(self.nodes.values()):
            device = node.device
            if device is not None and node.address not in present:
                if device not in self._departing:
                    self._departing.add(device)
                    self._nursery.start_soon(self._address_gone, device, grace)
            elif device is None and node.address in present and not node.closed:
                try:
                    await node.attach()
                except (AddressInUse, AddressNotAvailable) as exc:
                    log.warning("address %s is back but cannot be bound: %s", node.address, exc)

    async def _address_gone(self, device: TcpDevice, grace: float) -> None:
        log.info("address %s went away: removing %s", device.address, device.name)
        try:
            await device.detach(grace)
        except DeviceBusy:
            await device.detach(None)
        finally:
            self._departing.discard(device)

    def statistics(self) -> TcpStatistics:
        """Return the counters of every node, summed."""
        total = Counters()
        for node in self.nodes.values():
            for field in attrs.fields(Counters):
                name = field.name
                setattr(total, name, getattr(total, name) + getattr(node.counters, name))
        return total.snapshot()


class TcpTransport(Transport):
    """Soft verbs over real TCP sockets (siw-like), entry point ``tcp``."""

    name: ClassVar[str] = "tcp"

    def open_network(self, **options: Any) -> AbstractAsyncContextManager[TcpNetwork]:
        """Open a network of local interfaces.

        Args:
            secret: the cluster secret (bytes or str, >= 16 bytes); default: from
                ``RDSX_SECRET`` (:func:`load_secret`), an error if unset.
            port: the TCP port every device listens on (default 18634; 0 = any).
            backlog, max_msg_sz, handshake_timeout, frame_timeout, park_timeout,
            max_handshakes, qp_timeout, min_rnr_timer: tuning (see README).
            watch_addresses: follow the host's local addresses (True: from
                ``/proc/net/fib_trie`` or ``ip -j addr``; or a callable returning
                :class:`LocalAddresses`), every ``watch_interval`` seconds; an address
                that goes away removes its device after ``removal_grace`` seconds.

        Raises:
            SecretNotConfigured: no secret given and ``RDSX_SECRET`` unset.
        """
        return _open_network(**options)


@asynccontextmanager
async def _open_network(
    *,
    secret: bytes | str | None = None,
    port: int = DEFAULT_PORT,
    backlog: int = 128,
    max_msg_sz: int = 1 << 24,
    handshake_timeout: float = 5.0,
    frame_timeout: float = 10.0,
    park_timeout: float = 5.0,
    max_handshakes: int = 64,
    qp_timeout: float = 0.5,
    min_rnr_timer: float = 0.001,
    watch_addresses: bool | AddressSource = False,
    watch_interval: float = 0.5,
    removal_grace: float = 2.0,
) -> AsyncIterator[TcpNetwork]:
    key = load_secret() if secret is None else check_secret(secret)
    if not 0 <= port < 65536:
        raise AddressNotAvailable(f"port {port} outside 0..65535")
    try:
        async with trio.open_nursery() as nursery:
            network = TcpNetwork(
                nursery,
                secret=key,
                port=port,
                backlog=backlog,
                max_msg_sz=max_msg_sz,
                handshake_timeout=handshake_timeout,
                frame_timeout=frame_timeout,
                park_timeout=park_timeout,
                max_handshakes=max_handshakes,
                qp_timeout=qp_timeout,
                min_rnr_timer=min_rnr_timer,
            )
            if watch_addresses:
                source = system_addresses if watch_addresses is True else watch_addresses
                nursery.start_soon(network.watch_addresses, source, watch_interval, removal_grace)
            try:
                yield network
            finally:
                for node in network.nodes.values():
                    node.close()
                    if node.device is not None:
                        node.device._teardown()
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The caller's own exception should not come back wrapped in our nursery's group.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
