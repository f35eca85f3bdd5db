"""Helpers for the node and socket tests: a sim fabric with N nodes, one host each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import attrs
import trio

from rdsx.config import NodeConfig
from rdsx.node import Node, open_node
from transports.sim import Fabric, Host, Vm, open_fabric


@attrs.define
class World:
    fabric: Fabric
    hosts: list[Host]
    vms: list[Vm]
    nodes: list[Node]
    spare: list[Host]

    def addr(self, i: int) -> str:
        return self.nodes[i].address


@asynccontextmanager
async def world(
    n: int = 2, *, seed: int = 0, spare_hosts: int = 1, config: dict[str, Any] | None = None
) -> AsyncIterator[World]:
    """``n`` nodes 127.0.0.1.. on their own hosts, plus spare hosts to migrate to."""
    async with open_fabric(seed=seed) as fabric, AsyncExitStack() as stack:
        hosts = [fabric.add_host(f"h{i}", num_vfs=4) for i in range(n)]
        spare = [fabric.add_host(f"s{i}", num_vfs=4) for i in range(spare_hosts)]
        vms = [fabric.create_vm(f"vm{i}", address=f"127.0.0.{i + 1}") for i in range(n)]
        for vm, host in zip(vms, hosts, strict=True):
            await fabric.attach(vm, host)
        nodes = []
        for i, vm in enumerate(vms):
            cfg = NodeConfig(seed=seed * 100 + i, **(config or {}))
            nodes.append(
                await stack.enter_async_context(open_node(vm.address, vm.devices, config=cfg))
            )
        yield World(fabric, hosts, vms, nodes, spare)


async def move(w: World, i: int, *, grace: float | None) -> None:
    """Detach node ``i``'s VF (gracefully or by surprise) and attach one on another host."""
    vm = w.vms[i]
    old = vm.host
    await w.fabric.detach(vm, grace=grace)
    target = w.spare.pop(0)
    assert old is not None
    w.spare.append(old)
    await w.fabric.attach(vm, target)


async def recv_n(sock: Any, n: int, timeout: float = 30.0) -> list[tuple[bytes, tuple[str, int]]]:
    out = []
    with trio.fail_after(timeout):
        for _ in range(n):
            out.append(await sock.recvfrom())
    return out


async def until(predicate: Any, timeout: float = 10.0, step: float = 0.001) -> None:
    """Wait (in virtual time) until ``predicate()`` holds; fail after ``timeout``."""
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(step)


@asynccontextmanager
async def mode_pair(mode: str, *, seed: int) -> AsyncIterator[World]:
    """Nodes 127.0.0.1 and .2 in ``mode`` on hosts h0 and h1 (two VFs each); h2 is spare."""
    async with open_fabric(seed=seed) as fabric, AsyncExitStack() as stack:
        hosts = [fabric.add_host(f"h{i}", num_vfs=2) for i in range(3)]
        vms = [fabric.create_vm(f"vm{i}", address=f"127.0.0.{i + 1}") for i in range(2)]
        for vm, host in zip(vms, hosts, strict=False):
            await fabric.attach(vm, host)
        nodes = [
            await stack.enter_async_context(
                open_node(vm.address, vm.devices, mode=mode, config=NodeConfig(seed=i))  # type: ignore[arg-type]
            )
            for i, vm in enumerate(vms)
        ]
        yield World(fabric, hosts[:2], vms, nodes, hosts[2:])


async def send_numbered(sock: Any, n: int, dest: tuple[str, int], interval: float) -> None:
    """Send ``b"0"`` .. ``b"<n-1>"`` to ``dest``, ``interval`` seconds apart."""
    for k in range(n):
        await sock.sendto(b"%d" % k, dest)
        await trio.sleep(interval)


async def numbered_across_a_move(
    w: World,
    n: int,
    *,
    interval: float,
    move_at: float,
    vm: int,
    grace: float | None,
    away: float = 0.0,
    timeout: float = 30.0,
) -> list[int]:
    """Stream ``n`` numbered datagrams from node 0 (port 11) to node 1 (port 22), one per
    ``interval``; ``move_at`` seconds in, move ``w.vms[vm]`` to the spare host (removal
    with ``grace``, ``away`` seconds without a VF). Returns the numbers node 1 received,
    in arrival order."""
    sa, sb = w.nodes[0].socket(), w.nodes[1].socket()
    sa.bind(11)
    sb.bind(22)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_numbered, sa, n, ("127.0.0.2", 22), interval)
        await trio.sleep(move_at)
        await w.fabric.detach(w.vms[vm], grace=grace)
        if away:
            await trio.sleep(away)
        await w.fabric.attach(w.vms[vm], w.spare[0])
        got = await recv_n(sb, n, timeout=timeout)
    return [int(data) for data, _ in got]
