"""Where the port models differ for the layers above: SA path caching across a migration."""

from __future__ import annotations

import pytest
import trio

from transports.sim import open_fabric
from transports.sim.fabric import QP_CREATE_SHARE
from transports.sim.verbs import SimDevice
from transports.sim.vmm import VMM

SA, QP = 0.0002, 0.001  # the seed profile's sa_query and qp_create


async def _connect(client: SimDevice, server: SimDevice, address: str) -> float:
    """One CM connection from ``client`` to ``server``; returns the seconds it took."""
    ctx_c, ctx_s = await client.open(), await server.open()
    qps = []
    for ctx in (ctx_c, ctx_s):
        pd, cq = ctx.alloc_pd(), ctx.create_cq()
        qps.append(pd.create_qp(cq, cq))
    listener = await ctx_s.cm_listen(7)
    t0 = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def accept() -> None:
            request = await listener.get_request()
            await request.accept(qps[1], b"")

        nursery.start_soon(accept)
        await ctx_c.cm_connect(qps[0], address, 7, b"")
    took = trio.current_time() - t0
    ctx_c.close()
    ctx_s.close()
    return took


@pytest.mark.parametrize(("model", "queries_after"), [("vswitch", 0), ("shared", 1)])
async def test_a_cached_path_survives_the_migration_only_if_the_lid_does(
    autojump_clock: trio.abc.Clock, model: str, queries_after: int
) -> None:
    with trio.fail_after(60):
        async with open_fabric(port_model=model, seed=0) as fabric:
            fabric.sa_query_time, fabric.qp_setup_time = SA, QP
            fabric.path_cache = {}
            hosts = [fabric.add_host(n, num_vfs=2) for n in ("hostA", "hostB", "hostC")]
            vm = fabric.create_vm("m", address="127.0.0.1")
            peer = fabric.create_vm("p", address="127.0.0.2")
            await fabric.attach(vm, hosts[0])
            await fabric.attach(peer, hosts[1])
            assert vm.device is not None and peer.device is not None
            first = await _connect(vm.device, peer.device, peer.address)
            assert fabric.sm.sa_queries == 1 and first > QP
            await VMM(fabric).migrate(vm, hosts[2], strategy="late-detach", grace=1.0)
            queries = fabric.sm.sa_queries
            assert vm.device is not None
            again = await _connect(vm.device, peer.device, peer.address)
            # vSwitch: the VM kept its LID, so its cached PathRecord still holds;
            # shared: its new LID is a new source, so the SA is asked again.
            assert fabric.sm.sa_queries - queries == queries_after
            # The query runs while the QP is being created (its longer half), so
            # it does not lengthen the connect in either model.
            assert SA < QP * QP_CREATE_SHARE
            assert again == pytest.approx(first)


async def test_without_a_cache_every_connect_asks_the_sa(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(60):
        async with open_fabric(port_model="vswitch", seed=0) as fabric:
            a, b = fabric.add_host("hostA"), fabric.add_host("hostB")
            vm = fabric.create_vm("m", address="127.0.0.1")
            peer = fabric.create_vm("p", address="127.0.0.2")
            await fabric.attach(vm, a)
            await fabric.attach(peer, b)
            assert vm.device is not None and peer.device is not None
            for _ in range(2):
                await _connect(vm.device, peer.device, "127.0.0.2")
            assert fabric.sm.sa_queries == 2 and fabric.path_cache is None
