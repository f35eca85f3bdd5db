"""Faults (link down/up, host crash) and determinism: one seed, one trace."""

from __future__ import annotations

import trio
import trio.testing
from sim_support import End, connect

from rdsx.verbs import AsyncEventType, Opcode, PortState, QpAttr, QpState, WcStatus
from transports.sim import TraceRecord, chaos, open_fabric


async def _scenario(seed: int) -> list[TraceRecord]:
    async with open_fabric(seed=seed, mtu=512) as fabric:
        a_host, b_host = fabric.add_host("a", num_vfs=1), fabric.add_host("b", num_vfs=1)
        vm_a = fabric.create_vm("va", address="127.0.0.1")
        da = await fabric.attach(vm_a, a_host)
        db = await fabric.attach(fabric.create_vm("vb", address="127.0.0.2"), b_host)
        a, b = await connect(da, db)
        fabric.route_packet = chaos(fabric, drop=0.1, duplicate=0.1, delay=0.2)
        for i in range(20):
            b.post_recv(i, i * 2000, 2000)
            a.send(i, 0, 1500, opcode=Opcode.SEND)
        await b.completions(20)
        await a.completions(20)
        a.ctx.close()
        await fabric.detach(vm_a, grace=1.0)
        return list(fabric.trace)


async def test_same_seed_same_trace(autojump_clock: trio.testing.MockClock) -> None:
    first = await _scenario(7)
    second = await _scenario(7)
    assert first == second
    assert any(record.event == "drop" for record in first)
    assert any(record.event == "detach" for record in first)
    assert await _scenario(8) != first


async def test_link_down_and_up(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        host_a, host_b = fabric.add_host("a", num_vfs=1), fabric.add_host("b", num_vfs=1)
        da = await fabric.attach(fabric.create_vm("va", address="127.0.0.1"), host_a)
        db = await fabric.attach(fabric.create_vm("vb", address="127.0.0.2"), host_b)
        a, b = await connect(da, db)
        fabric.link_down(host_b)
        assert (await b.ctx.get_async_event()).type is AsyncEventType.PORT_ERR
        assert b.ctx.query_port().state is PortState.DOWN
        b.post_recv(1)
        a.send(2, 0, 10)
        await trio.sleep(0.2)  # a few ACK timeouts: the send is retried, not lost
        assert a.cq.poll() == [] and a.qp.retransmits > 0
        fabric.link_up(host_b)
        assert (await b.ctx.get_async_event()).type is AsyncEventType.PORT_ACTIVE
        (wc,) = await a.completions(1)
        assert wc.status is WcStatus.SUCCESS


async def test_host_crash_peer_gets_retry_exceeded(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        host_a, host_b = fabric.add_host("a", num_vfs=1), fabric.add_host("b", num_vfs=1)
        vm_b = fabric.create_vm("vb", address="127.0.0.2")
        da = await fabric.attach(fabric.create_vm("va", address="127.0.0.1"), host_a)
        db = await fabric.attach(vm_b, host_b)
        a, _b = await connect(da, db)
        a.qp.modify(QpAttr(state=QpState.RTS, timeout=0.01, retry_cnt=2))
        host_b.crash()
        assert db.removed and vm_b.crashed and vm_b.device is None
        a.send(1, 0, 10)
        (wc,) = await a.completions(1)
        assert wc.status is WcStatus.RETRY_EXC_ERR
        assert a.cm_id is not None and a.cm_id.connected  # nobody told the CM


async def _concurrent_scenario(seed: int) -> list[TraceRecord]:
    async with open_fabric(seed=seed, mtu=512) as fabric:
        hosts = [fabric.add_host(f"h{i}", num_vfs=1) for i in range(4)]
        devices = [
            await fabric.attach(fabric.create_vm(f"v{i}", address=f"127.0.0.{i + 1}"), host)
            for i, host in enumerate(hosts)
        ]
        pairs = []
        async with trio.open_nursery() as nursery:

            async def connect_pair(i: int) -> None:
                pairs.append(await connect(devices[2 * i], devices[2 * i + 1], port=100 + i))

            for i in range(2):
                nursery.start_soon(connect_pair, i)
        fabric.route_packet = chaos(fabric, drop=0.1, duplicate=0.1, delay=0.2)

        async def run(a: End, b: End) -> None:
            for k in range(15):
                b.post_recv(k, k * 2000, 2000)
                a.send(k, 0, 1500)
                await trio.sleep(0)
            await b.completions(15)
            await a.completions(15)

        async with trio.open_nursery() as nursery:
            for a, b in pairs:
                nursery.start_soon(run, a, b)
        return list(fabric.trace)


async def test_same_seed_same_trace_with_concurrent_tasks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # trio runs the tasks of one instant in a random order; the fabric collects
    # what they post and sends it in (LID, QPN) order once they are all blocked.
    first = await _concurrent_scenario(11)
    for _ in range(3):
        assert await _concurrent_scenario(11) == first
