"""A tiny in-memory stand-in for rdsx nodes, shaped like API.md's sockets (test-only).

Delivery takes a fixed ``latency`` of trio time, so a closed loop in virtual
time still lets time pass. ``route`` sees every message and returns what to
deliver now (``[]`` drops it, two copies duplicate it), which is how the tests
inject the faults rdsx-stress must catch.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import trio

from rdsx.errors import AddressInUse, NotBound, SocketClosed

Address = tuple[str, int]
Route = Callable[[Address, Address, bytes], list[bytes]]


class FakeNet:
    """Nodes by address; one latency; one replaceable route."""

    def __init__(self, latency: float = 1e-5) -> None:
        self.latency = latency
        self.sockets: dict[Address, FakeSocket] = {}
        self.route: Route = lambda src, dst, data: [data]
        #: RDMA regions by cookie; ``rdma_writes=False`` silently skips every write.
        self.regions: dict[int, bytearray] = {}
        self.rdma_writes = True

    def node(self, address: str) -> FakeNode:
        return FakeNode(self, address)


class FakeNode:
    def __init__(self, net: FakeNet, address: str) -> None:
        self.net = net
        self.address = address

    def socket(self, *, sndbuf: int, rcvbuf: int) -> FakeSocket:
        return FakeSocket(self, sndbuf)


class FakeSocket:
    def __init__(self, node: FakeNode, sndbuf: int) -> None:
        self.node = node
        self.sndbuf = sndbuf
        self.name: Address | None = None
        self.queue: collections.deque[tuple[float, bytes, Address]] = collections.deque()
        self.arrived = trio.Event()
        self.closed = False

    def bind(self, port: int = 0) -> int:
        name = (self.node.address, port)
        if name in self.node.net.sockets:
            raise AddressInUse(str(name))
        self.node.net.sockets[name] = self
        self.name = name
        return port

    def get_mr(self, buffer: bytearray, *, readwrite: bool = True) -> int:
        cookie = len(self.node.net.regions) + 1
        self.node.net.regions[cookie] = buffer
        return cookie

    def free_mr(self, cookie: int) -> None:
        del self.node.net.regions[cookie]

    async def recv_notification(self) -> object:
        await trio.sleep_forever()

    def sendto_nowait(self, data: bytes, dest: Address, *, rdma: Any = None) -> int:
        if rdma is not None and self.node.net.rdma_writes:
            region = self.node.net.regions[rdma.cookie]
            region[: len(rdma.local)] = rdma.local
        if self.closed:
            raise SocketClosed("closed")
        if self.name is None:
            raise NotBound("not bound")
        target = self.node.net.sockets.get(dest)
        due = trio.current_time() + self.node.net.latency
        for copy in self.node.net.route(self.name, dest, bytes(data)):
            if target is not None:
                target.queue.append((due, copy, self.name))
                target.arrived.set()
        return len(data)

    async def sendto(self, data: bytes, dest: Address, *, rdma: Any = None) -> int:
        await trio.lowlevel.checkpoint()
        return self.sendto_nowait(data, dest, rdma=rdma)

    async def recvfrom(self) -> tuple[bytes, Address]:
        while not self.queue:
            self.arrived = trio.Event()
            await self.arrived.wait()
        due, data, source = self.queue[0]
        await trio.sleep_until(due)
        self.queue.popleft()
        return data, source

    def close(self) -> None:
        self.closed = True
        if self.name is not None:
            self.node.net.sockets.pop(self.name, None)
