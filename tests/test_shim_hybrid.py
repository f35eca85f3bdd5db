"""The hybrid: when the shim gives a peer up, the RDS node above reconnects on its own."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio
from node_world import recv_n

import rdsx
from rdsx.config import NodeConfig
from rdsx.shim import ShimConfig, TransparentDeviceSource
from transports.sim import open_fabric


async def test_a_peer_gone_longer_than_the_bound_falls_back_to_rds(
    autojump_clock: trio.abc.Clock,
) -> None:
    """B is away longer than the shim's resume bound: RDS reconnects, nothing lost or doubled."""
    outage = ShimConfig().resume_timeout + 10.0
    with trio.fail_after(outage + 120):
        async with open_fabric(seed=3) as fabric, AsyncExitStack() as stack:
            hosts = [fabric.add_host(f"h{i}", num_vfs=2) for i in range(3)]
            vms = [fabric.create_vm(f"vm{i}", address=f"127.0.0.{i + 1}") for i in range(2)]
            for vm, host in zip(vms, hosts, strict=False):
                await fabric.attach(vm, host)
            a, b = [
                await stack.enter_async_context(
                    rdsx.open_node(
                        vm.address, vm.devices, mode="transparent", config=NodeConfig(seed=i)
                    )
                )
                for i, vm in enumerate(vms)
            ]
            sa, sb = a.socket(), b.socket()
            sa.bind(11)
            sb.bind(22)
            n = 60
            async with trio.open_nursery() as nursery:

                async def send() -> None:
                    for k in range(n):
                        await sa.sendto(b"%d" % k, ("127.0.0.2", 22))
                        await trio.sleep(0.05)

                nursery.start_soon(send)
                await trio.sleep(0.5)
                await fabric.detach(vms[1], grace=1.0)  # B suspends A's side...
                await trio.sleep(outage)  # ...and stays away past the bound
                await fabric.attach(vms[1], hosts[2])
                got = await recv_n(sb, n, timeout=120.0)
            assert [int(data) for data, _ in got] == list(range(n))
            stats = a.statistics()
            assert stats.device_removal == 0  # the shim still hid the device removal
            assert stats.conn_reset >= 1  # but RDS itself had to reconnect
            shim = TransparentDeviceSource.over(vms[0].devices)
            assert shim is not None and shim.statistics().resume_timeouts >= 1
