"""Faults under the node: malformed frames, lossy fabric, random device removals.

The property: whatever the fabric and the VMM do, every (source socket,
destination socket) pair receives exactly the sequence it sent.
"""

from __future__ import annotations

import faulthandler
from contextlib import AsyncExitStack
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from node_world import move, recv_n, until, world

import rdsx
from rdsx.config import NodeConfig
from rdsx.engine import ConnState
from transports.sim import Packet, chaos, open_fabric
from transports.sim.packet import Kind


async def test_malformed_frame_resets_only_that_connection(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world(3) as w:
        a, b, c = w.nodes
        sa, sb, sc = a.socket(), b.socket(), c.socket()
        for s in (sa, sb, sc):
            s.bind(50)
        for s in (sa, sc):  # both connections to b are up
            await s.sendto(b"hello", ("127.0.0.2", 50))
        await recv_n(sb, 2)
        lid_a = w.vms[0].device.function.lid  # type: ignore[union-attr]
        deliver = w.fabric.route_packet
        corrupted = []

        def corrupt(packet: Packet) -> None:
            if (
                not corrupted
                and packet.kind == Kind.SEND
                and packet.src_lid == lid_a
                and len(packet.payload) >= 48
            ):
                frame = bytearray(packet.payload)
                frame[24] |= 0x80  # an unknown header flag
                packet.payload = memoryview(bytes(frame))
                corrupted.append(packet)
            deliver(packet)

        w.fabric.route_packet = corrupt
        for k in range(5):
            await sa.sendto(b"a%d" % k, ("127.0.0.2", 50))
            await sc.sendto(b"c%d" % k, ("127.0.0.2", 50))
        got = await recv_n(sb, 10)
        assert corrupted
        per_src: dict[str, list[bytes]] = {}
        for data, (addr, _port) in got:
            per_src.setdefault(addr, []).append(data)
        assert per_src["127.0.0.1"] == [b"a%d" % k for k in range(5)]  # resent after the reset
        assert per_src["127.0.0.3"] == [b"c%d" % k for k in range(5)]
        stats_b = b.statistics()
        assert stats_b.recv_drop_bad_frame == 1 and stats_b.recv_protocol_error == 1
        assert c.statistics().conn_reset == 0  # the other connection never noticed
        assert a.statistics().conn_reset == 1


Plan = list[tuple[int, int, int, int]]


async def _scenario(
    seed: int,
    plan: Plan,
    removals: list[tuple[float, int, bool]],
    loss: float,
    rcvbuf: int = 1 << 22,
) -> dict[Any, list[int]]:
    n_nodes = 3
    async with open_fabric(seed=seed) as fabric, AsyncExitStack() as stack:
        hosts = [fabric.add_host(f"h{i}", num_vfs=4) for i in range(n_nodes + 2)]
        vms = [fabric.create_vm(f"vm{i}", address=f"127.0.0.{i + 1}") for i in range(n_nodes)]
        for vm, host in zip(vms, hosts, strict=False):
            await fabric.attach(vm, host)
        free = hosts[n_nodes:]
        nodes = [
            await stack.enter_async_context(
                rdsx.open_node(vm.address, vm.devices, config=NodeConfig(seed=seed + i))
            )
            for i, vm in enumerate(vms)
        ]
        # a small rcvbuf keeps ports flipping between congested and free
        socks = [[node.socket(rcvbuf=rcvbuf) for _ in range(2)] for node in nodes]
        for pair in socks:
            for j, s in enumerate(pair):
                s.bind(100 + j)
        fabric.route_packet = chaos(fabric, drop=loss, duplicate=loss, delay=loss * 4)
        expected: dict[tuple[int, int], int] = {}
        for _, _, dn, ds in plan:
            expected[(dn, ds)] = expected.get((dn, ds), 0) + 1
        received: dict[Any, list[int]] = {}

        async def sender(sn: int, ss: int) -> None:
            mine = [(k, dn, ds) for k, (n, s, dn, ds) in enumerate(plan) if (n, s) == (sn, ss)]
            for k, dn, ds in mine:
                await socks[sn][ss].sendto(
                    b"%d" % k + b"." * (k * 331 % 9000), (f"127.0.0.{dn + 1}", 100 + ds)
                )
                await trio.sleep(0.002)

        async def receiver(dn: int, ds: int) -> None:
            for _ in range(expected.get((dn, ds), 0)):
                data, src = await socks[dn][ds].recvfrom()
                received.setdefault((src, dn, ds), []).append(int(data.split(b".")[0]))

        async def remover() -> None:
            for at, who, graceful in sorted(removals):
                await trio.sleep_until(at)
                vm = vms[who]
                old = vm.host
                await fabric.detach(vm, grace=1.0 if graceful else None)
                await trio.sleep(0.05)  # the VM is in transit
                await fabric.attach(vm, free.pop(0))
                assert old is not None
                free.append(old)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(remover)
                for sn in range(n_nodes):
                    for ss in range(2):
                        nursery.start_soon(sender, sn, ss)
                async with trio.open_nursery() as receivers:
                    for dn in range(n_nodes):
                        for ds in range(2):
                            receivers.start_soon(receiver, dn, ds)
        sent: dict[Any, list[int]] = {}
        for k, (sn, ss, dn, ds) in enumerate(plan):
            sent.setdefault(((f"127.0.0.{sn + 1}", 100 + ss), dn, ds), []).append(k)
        assert received == sent
        return received


@settings(
    max_examples=8,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 1000),
    plan=st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 1), st.integers(0, 2), st.integers(0, 1)),
        min_size=1,
        max_size=60,
    ),
    removals=st.lists(
        st.tuples(st.floats(0.0, 0.15), st.integers(0, 2), st.booleans()), max_size=3
    ),
    loss=st.sampled_from([0.0, 0.01, 0.03]),
    rcvbuf=st.sampled_from([8192, 1 << 22]),
    repeat=st.sampled_from([1, 8]),
)
def test_every_pair_gets_exactly_its_sequence(
    seed: int,
    plan: Plan,
    removals: list[tuple[float, int, bool]],
    loss: float,
    rcvbuf: int,
    repeat: int,
) -> None:
    plan = [entry for entry in plan for _ in range(repeat)]  # bursts keep removals mid-traffic
    # A livelock would not advance virtual time, so fail_after could not catch it.
    faulthandler.dump_traceback_later(120, exit=True)
    trio.run(
        _scenario,
        seed,
        plan,
        removals,
        loss,
        rcvbuf,
        clock=trio.testing.MockClock(autojump_threshold=0),
    )
    faulthandler.cancel_dump_traceback_later()


async def test_peer_restart_starts_a_new_sequence(autojump_clock: trio.abc.Clock) -> None:
    async with open_fabric(seed=3) as fabric:
        hosts = [fabric.add_host(f"h{i}", num_vfs=2) for i in range(3)]
        vms = [fabric.create_vm(f"vm{i}", address=f"127.0.0.{i + 1}") for i in range(2)]
        for vm, host in zip(vms, hosts, strict=False):
            await fabric.attach(vm, host)
        async with rdsx.open_node("127.0.0.1", vms[0].devices, config=NodeConfig(seed=1)) as a:
            sa = a.socket()
            sa.bind(10)
            async with rdsx.open_node("127.0.0.2", vms[1].devices, config=NodeConfig(seed=2)) as b:
                sb = b.socket()
                sb.bind(20)
                for k in range(3):
                    await sa.sendto(b"old%d" % k, ("127.0.0.2", 20))
                assert [d for d, _ in await recv_n(sb, 3)] == [b"old0", b"old1", b"old2"]
            # b's process is gone; its VM gets a fresh VF and a fresh node (new generation)
            await fabric.detach(vms[1], grace=1.0)
            await fabric.attach(vms[1], hosts[2])
            await until(lambda: a.connection_state("127.0.0.2") is not ConnState.UP)
            # queued, never transmitted: it survives the restart (transmitted-unacked ones
            # would be flushed, as Linux does for a peer with a new generation)
            await sa.sendto(b"new", ("127.0.0.2", 20))
            async with rdsx.open_node("127.0.0.2", vms[1].devices, config=NodeConfig(seed=3)) as b2:
                sb2 = b2.socket()
                sb2.bind(20)
                with trio.fail_after(30):
                    assert await sb2.recvfrom() == (b"new", ("127.0.0.1", 10))
                (conn,) = a.info().connections
                assert conn.next_tx_seq == 2  # the sequence restarted with the peer


async def _cancel_scenario(seed: int, ops: list[tuple[str, int]]) -> None:
    async with world(2, seed=seed, spare_hosts=2) as w:
        sa = w.nodes[0].socket(sndbuf=1 << 20)
        sa.bind(10)
        sb = w.nodes[1].socket(rcvbuf=1 << 22)
        sb.bind(20)
        dst = ("127.0.0.2", 20)
        sent: list[int] = []
        maybe: set[int] = set()  # canceled: may or may not arrive, never twice
        k = 0
        for op, arg in ops:
            if op == "send":
                for _ in range(arg):
                    sa.sendto_nowait(b"%d" % k, dst)
                    sent.append(k)
                    k += 1
            elif op == "cancel":
                sa.cancel_sent_to(dst)
                maybe.update(sent)
            elif op == "sleep":
                await trio.sleep(arg * 1e-5)
            else:
                await move(w, arg, grace=1.0 if op == "graceful" else None)
                # The VM runs on its new host for a moment before the next move.
                await trio.sleep(0.001)
        sa.sendto_nowait(b"end", dst)
        got: list[int] = []
        with trio.fail_after(60):
            while (data := await sb.recv()) != b"end":
                got.append(int(data))
        assert got == sorted(set(got))  # no duplicate, no reordering
        assert set(sent) - maybe <= set(got)  # nothing that was not canceled is lost
        assert set(got) <= set(sent)
        await until(lambda: sa.snd_bytes == 0)  # all accounted for: acked or canceled


@settings(max_examples=10, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 100),
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("send"), st.integers(1, 20)),
            st.tuples(st.just("cancel"), st.just(0)),
            st.tuples(st.just("sleep"), st.integers(0, 50)),
            st.tuples(st.sampled_from(["graceful", "surprise"]), st.integers(0, 1)),
        ),
        max_size=12,
    ),
)
def test_cancel_across_resets_never_duplicates_or_loses(
    seed: int, ops: list[tuple[str, int]]
) -> None:
    faulthandler.dump_traceback_later(120, exit=True)
    trio.run(_cancel_scenario, seed, ops, clock=trio.testing.MockClock(autojump_threshold=0))
    faulthandler.cancel_dump_traceback_later()


async def test_removal_right_after_attach(autojump_clock: trio.abc.Clock) -> None:
    """Back to back removals in one instant.

    Depending on trio's scheduling order, node 1 may try to open its new VF after
    the next removal was announced. The device refuses a new context while its
    removal is pending (DeviceRemoved, the verbs contract), so the node waits for
    the next VF and nothing holds the detach up: no DeviceBusy.
    """
    async with world(2, spare_hosts=2) as w:
        for who, grace in ((0, 1.0), (1, 1.0), (0, None), (1, 1.0)):
            await move(w, who, grace=grace)
        for node in w.nodes:
            await node.wait_device()
