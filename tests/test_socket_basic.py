"""Socket semantics on two sim nodes and on loopback (rds.md §1), in virtual time."""

from __future__ import annotations

import pytest
import trio
from node_world import recv_n, world

import rdsx
from rdsx._bind import BindTable


def test_bind_table_rules() -> None:
    import random

    table: BindTable[str] = BindTable(random.Random(1))
    assert table.bind(4000, "a") == 4000
    with pytest.raises(rdsx.AddressInUse):
        table.bind(4000, "b")
    with pytest.raises(rdsx.AddressNotAvailable):
        table.bind(1, "b")
    for bad in (-1, 65536):
        with pytest.raises(rdsx.AddressNotAvailable):
            table.bind(bad, "b")
    chosen = {table.bind(0, "x") for _ in range(200)}
    assert len(chosen) == 200 and min(chosen) >= 2 and 4000 not in chosen
    table.unbind(4000)
    assert table.bind(4000, "c") == 4000


async def test_bind_on_a_node(autojump_clock: trio.abc.Clock) -> None:
    async with world(1) as w:
        node = w.nodes[0]
        a = node.socket()
        assert a.bind(4000) == 4000
        assert a.getsockname() == ("127.0.0.1", 4000)
        with pytest.raises(rdsx.AddressNotAvailable):
            a.bind(4001)  # no rebind
        b = node.socket()
        with pytest.raises(rdsx.AddressInUse):
            b.bind(4000)
        with pytest.raises(rdsx.AddressNotAvailable):
            b.bind(1)
        port = b.bind(0)
        assert port >= 2 and port != 4000
        c = node.socket()
        with pytest.raises(rdsx.NotBound):
            c.getsockname()
        with pytest.raises(rdsx.NotBound):
            c.sendto_nowait(b"x", ("127.0.0.1", 4000))
        with pytest.raises(rdsx.NotBound):
            c.recv_nowait()
        with pytest.raises(rdsx.NotConnected):
            await a.send(b"x")
        a.close()
        assert c.bind(4000) == 4000  # close unbinds
        with pytest.raises(rdsx.SocketClosed):
            a.sendto_nowait(b"x", ("127.0.0.1", 4000))


async def test_send_recv_two_nodes_both_ways(autojump_clock: trio.abc.Clock) -> None:
    async with world(2) as w:
        a, b = w.nodes
        sa, sb = a.socket(), b.socket()
        sa.bind(4000)
        sb.bind(5000)
        # the higher address speaks first: it must connect although it is not the initiator
        for i in range(3):
            assert await sb.sendto(b"b%d" % i, ("127.0.0.1", 4000)) == 2
        got = await recv_n(sa, 3)
        assert got == [(b"b%d" % i, ("127.0.0.2", 5000)) for i in range(3)]
        sa.connect(("127.0.0.2", 5000))
        for i in range(3):
            await sa.send(b"a%d" % i)
        assert [d for d, _ in await recv_n(sb, 3)] == [b"a0", b"a1", b"a2"]
        # zero-byte and fragmented messages
        big = bytes(range(256)) * 700
        await sa.send(b"")
        await sa.send(big)
        assert await sb.recvfrom() == (b"", ("127.0.0.1", 4000))
        assert await sb.recv() == big
        assert a.connection_state("127.0.0.2") is rdsx.engine.ConnState.UP


async def test_order_per_pair_many_sockets(autojump_clock: trio.abc.Clock) -> None:
    async with world(3) as w:
        senders = []
        for node in w.nodes[:2]:
            for port in (100, 101, 102):
                s = node.socket()
                s.bind(port)
                senders.append(s)
        dst = w.nodes[2].socket(rcvbuf=1 << 20)
        dst.bind(9)
        async with trio.open_nursery() as nursery:

            async def blast(s: rdsx.Socket) -> None:
                for i in range(40):
                    await s.sendto(b"%d" % i + b"." * (i * 97 % 5000), ("127.0.0.3", 9))

            for s in senders:
                nursery.start_soon(blast, s)
            got = await recv_n(dst, 40 * len(senders))
        per_src: dict[tuple[str, int], list[int]] = {}
        for data, src in got:
            per_src.setdefault(src, []).append(int(data.split(b".")[0]))
        assert len(per_src) == 6
        for seqs in per_src.values():
            assert seqs == list(range(40))


async def test_unbound_port_dropped_counted_and_acked(autojump_clock: trio.abc.Clock) -> None:
    async with world(2) as w:
        a, b = w.nodes
        sa = a.socket()
        sa.bind(4000)
        sb = b.socket()
        sb.bind(5000)
        for _ in range(3):
            await sa.sendto(b"lost", ("127.0.0.2", 6000))
        await sa.sendto(b"found", ("127.0.0.2", 5000))
        assert await sb.recv() == b"found"
        assert b.statistics().recv_drop_no_sock == 3
        with trio.fail_after(5):
            while sa.snd_bytes:  # acked although nobody read them
                await trio.sleep(0.001)


async def test_loopback_and_ping(autojump_clock: trio.abc.Clock) -> None:
    async with world(2) as w:
        a = w.nodes[0]
        s1, s2 = a.socket(), a.socket()
        s1.bind(10)
        s2.bind(11)
        await s1.sendto(b"self", ("127.0.0.1", 11))
        assert s2.recvfrom_nowait() == (b"self", ("127.0.0.1", 10))  # no wire, no wait
        assert s1.snd_bytes == 0
        await s1.sendto(b"", ("127.0.0.1", 0))  # loopback ping
        assert s1.recvfrom_nowait() == (b"", ("127.0.0.1", 0))
        await s1.sendto(b"", ("127.0.0.2", 0))  # remote ping
        assert await s1.recvfrom() == (b"", ("127.0.0.2", 0))
        stats = a.statistics()
        assert stats.recv_ping == 1 and stats.send_pong == 1  # the loopback one
        assert w.nodes[1].statistics().recv_ping == 1
        assert any(c.loopback for c in a.info().connections)


async def test_message_too_large(autojump_clock: trio.abc.Clock) -> None:
    async with world(1) as w:
        s = w.nodes[0].socket(sndbuf=2 << 20)
        s.bind(5)
        with pytest.raises(rdsx.MessageTooLarge):
            await s.sendto(b"x" * ((1 << 20) + 1), ("127.0.0.1", 5))
        small = w.nodes[0].socket(sndbuf=1000)
        small.bind(6)
        with pytest.raises(rdsx.MessageTooLarge):
            small.sendto_nowait(b"x" * 1001, ("127.0.0.1", 5))
        assert await s.sendto(b"x" * (1 << 20), ("127.0.0.1", 5)) == 1 << 20


async def test_tiny_rings_still_deliver_everything(autojump_clock: trio.abc.Clock) -> None:
    """Two send slots and four receive buffers: the ring fills and credits run out."""
    async with world(2, config={"send_slots": 2, "recv_slots": 4}) as w:
        a, b = w.nodes
        sa, sb = a.socket(sndbuf=1 << 20), b.socket(rcvbuf=1 << 22)
        sa.bind(10)
        sb.bind(20)
        big = [bytes([k % 251]) * (10_000 + k) for k in range(60)]  # 3 fragments each
        for payload in big:
            sa.sendto_nowait(payload, ("127.0.0.2", 20))
        got = await recv_n(sb, len(big))
        assert [d for d, _ in got] == big
        stats = a.statistics()
        assert stats.ib_tx_ring_full > 0 and stats.ib_tx_throttle > 0


async def test_leaving_the_node_closes_sockets_and_stops_everything(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world(1) as w:
        vm = w.fabric.create_vm("extra", address="127.0.0.5")
        await w.fabric.attach(vm, w.spare[0])
        outcomes: list[type[BaseException]] = []

        async def blocked_sender(sock: rdsx.Socket) -> None:
            try:
                while True:  # nobody at 127.0.0.9: never acked, the send buffer fills
                    await sock.sendto(b"x" * 100, ("127.0.0.9", 1))
            except rdsx.SocketClosed as exc:
                outcomes.append(type(exc))

        async def blocked_receiver(sock: rdsx.Socket) -> None:
            try:
                await sock.recv()
            except rdsx.SocketClosed as exc:
                outcomes.append(type(exc))

        async with (
            trio.open_nursery() as nursery,
            rdsx.open_node("127.0.0.5", vm.devices) as node,
        ):
            sock = node.socket(sndbuf=100)
            sock.bind(10)
            nursery.start_soon(blocked_sender, sock)
            nursery.start_soon(blocked_receiver, sock)
            await trio.sleep(1.0)
            assert not outcomes
        # the node's tasks are gone and its parked callers were woken
        assert outcomes == [rdsx.SocketClosed, rdsx.SocketClosed]
        assert node.closed and sock.closed and node.device is None
        with pytest.raises(rdsx.SocketClosed):
            node.socket()
        await w.fabric.detach(vm, grace=0.0)  # its context is closed: no DeviceBusy
