"""SNDBUF and RCVBUF accounting, congestion, cancel and close (rds.md §1.2-§1.6)."""

from __future__ import annotations

import pytest
import trio
from node_world import until, world

import rdsx
from rdsx.socket import CongestionUpdate, cong_monitor_mask

DST = ("127.0.0.2", 7000)


async def test_sndbuf_wouldblock_then_blocking_send_waits_for_acks(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world(2) as w:
        a, b = w.nodes
        sa = a.socket(sndbuf=10_000)
        sa.bind(10)
        sb = b.socket()
        sb.bind(DST[1])
        await w.fabric.detach(w.vms[0], grace=1.0)  # nothing can be acked now
        for _ in range(3):  # 0, 4000, 8000 < 10000 before adding: accepted (overshoot)
            sa.sendto_nowait(b"m" * 4000, DST)
        assert sa.snd_bytes == 12_000
        with pytest.raises(rdsx.WouldBlock) as info:
            sa.sendto_nowait(b"m" * 10, DST)
        assert not isinstance(info.value, rdsx.Congested)
        assert a.statistics().send_queue_full == 1
        done = trio.Event()

        async def blocked() -> None:
            await sa.sendto(b"last", DST)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked)
            await trio.sleep(1.0)
            assert not done.is_set()
            await w.fabric.attach(w.vms[0], w.spare[0])
            with trio.fail_after(10):
                await done.wait()
        got = [await sb.recv() for _ in range(4)]
        assert got == [b"m" * 4000] * 3 + [b"last"]
        await until(lambda: sa.snd_bytes == 0)  # released on the peer's ack


async def test_congestion_blocks_and_monitor_reports_uncongest_at_half(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world(2) as w:
        a, b = w.nodes
        sa = a.socket(cong_monitor=True)
        sa.bind(10)
        sb = b.socket(rcvbuf=10_000)
        sb.bind(DST[1])
        for _ in range(3):
            await sa.sendto(b"c" * 4000, DST)
        await until(lambda: a._is_congested(DST))  # the peer's map arrived
        assert b.info().sockets[0].rcv_bytes == 12_000
        with pytest.raises(rdsx.Congested) as info:
            sa.sendto_nowait(b"x", DST)
        assert info.value.destination == DST
        assert a.statistics().cong_send_error == 1
        # other ports of the same peer are not congested
        sa.sendto_nowait(b"to another port", ("127.0.0.2", 7001))
        sent = trio.Event()

        async def blocked() -> None:
            await sa.sendto(b"after", DST)
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked)
            await trio.sleep(0.5)
            assert not sent.is_set() and a.statistics().cong_send_blocked >= 1
            await sb.recv()  # 8000 left: not below rcvbuf/2 yet
            await trio.sleep(0.5)
            assert not sent.is_set() and a._is_congested(DST)
            await sb.recv()  # 4000 < 5000: uncongested, update sent
            with trio.fail_after(5):
                await sent.wait()
        update = await sa.recvmsg()
        assert update == CongestionUpdate(cong_monitor_mask(DST[1]))
        with pytest.raises(rdsx.WouldBlock):
            sa.recv_cong_update_nowait()  # delivered once
        assert [await sb.recv() for _ in range(2)] == [b"c" * 4000, b"after"]
        stats = b.statistics()
        assert stats.cong_update_queued >= 2 and a.statistics().cong_update_received >= 2


async def test_loopback_congestion(autojump_clock: trio.abc.Clock) -> None:
    async with world(1) as w:
        node = w.nodes[0]
        tx = node.socket(cong_monitor=True)
        tx.bind(1000)
        rx = node.socket(rcvbuf=100)
        rx.bind(1001)
        dst = ("127.0.0.1", 1001)
        tx.sendto_nowait(b"x" * 101, dst)
        with pytest.raises(rdsx.Congested):
            tx.sendto_nowait(b"y", dst)
        rx.recv_nowait()
        assert tx.recv_cong_update_nowait() == cong_monitor_mask(1001)
        tx.sendto_nowait(b"y", dst)


async def test_cancel_sent_to(autojump_clock: trio.abc.Clock) -> None:
    async with world(2) as w:
        a, b = w.nodes
        sa = a.socket()
        sa.bind(10)
        keep = b.socket()
        keep.bind(7001)
        drop = b.socket()
        drop.bind(DST[1])
        await sa.sendto(b"warm", ("127.0.0.2", 7001))
        assert await keep.recv() == b"warm"
        await w.fabric.detach(w.vms[0], grace=1.0)
        for k in range(3):
            sa.sendto_nowait(b"drop%d" % k, DST)
            sa.sendto_nowait(b"keep%d" % k, ("127.0.0.2", 7001))
        assert sa.cancel_sent_to(DST) == 3
        assert sa.snd_bytes == 15
        assert len(a.info().send_queue) == 3
        await w.fabric.attach(w.vms[0], w.spare[0])
        with trio.fail_after(10):
            assert [await keep.recv() for _ in range(3)] == [b"keep0", b"keep1", b"keep2"]
        await sa.sendto(b"later", DST)  # the destination still works afterwards
        with trio.fail_after(10):
            assert await drop.recv() == b"later"
        with pytest.raises(rdsx.WouldBlock):
            keep.recv_nowait()


async def test_close_cancels_queued_and_unbinds(autojump_clock: trio.abc.Clock) -> None:
    async with world(2) as w:
        a, b = w.nodes
        sb = b.socket()
        sb.bind(DST[1])
        async with a.socket() as sa:
            sa.bind(10)
            await sa.sendto(b"first", DST)
            assert await sb.recv() == b"first"
            await w.fabric.detach(w.vms[0], grace=1.0)
            for _ in range(3):
                sa.sendto_nowait(b"never", DST)
        assert sa.closed and not a.info().send_queue and not a.info().sockets
        with pytest.raises(rdsx.SocketClosed):
            await sa.recv()
        await w.fabric.attach(w.vms[0], w.spare[0])
        again = a.socket()
        again.bind(10)
        await again.sendto(b"new", DST)
        with trio.fail_after(10):
            assert await sb.recv() == b"new"


async def test_close_wakes_blocked_receiver(autojump_clock: trio.abc.Clock) -> None:
    async with world(1) as w:
        s = w.nodes[0].socket()
        s.bind(5)
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                with pytest.raises(rdsx.SocketClosed):
                    await s.recv()

            nursery.start_soon(reader)
            await trio.sleep(0.1)
            s.close()


async def test_counters_and_info_tables(autojump_clock: trio.abc.Clock) -> None:
    async with world(2) as w:
        a, b = w.nodes
        sa = a.socket(sndbuf=5000, rcvbuf=6000)
        sa.bind(10)
        sa.connect(DST)
        sb = b.socket()
        sb.bind(DST[1])
        for k in range(4):
            await sa.send(b"%d" % k * 10)
        await until(lambda: len(b.info().recv_queue) == 4)
        info_b = b.info()
        assert [(m.remote_addr, m.remote_port, m.seq, m.bytes) for m in info_b.recv_queue] == [
            ("127.0.0.1", 10, k + 1, 10) for k in range(4)
        ]
        (conn_b,) = info_b.connections
        assert (conn_b.remote_addr, conn_b.next_rx_seq, conn_b.state) == ("127.0.0.1", 5, "UP")
        assert "C" in conn_b.flags
        await until(lambda: not a.info().retransmit_queue)
        info_a = a.info()
        (sock_a,) = info_a.sockets
        assert (sock_a.bound_addr, sock_a.bound_port, sock_a.conn_addr, sock_a.conn_port) == (
            "127.0.0.1",
            10,
            "127.0.0.2",
            7000,
        )
        assert (sock_a.sndbuf, sock_a.rcvbuf, sock_a.snd_bytes) == (5000, 6000, 0)
        (conn_a,) = info_a.connections
        assert conn_a.next_tx_seq == 5
        stats_a, stats_b = a.statistics(), b.statistics()
        assert stats_a["send_queued"] == 4 and stats_a.send_drop_acked == 4
        assert stats_b.recv_delivered == 4 and stats_b.recv_drop_no_sock == 0
        assert isinstance(stats_a, rdsx.Counters) and "conn_reset" in stats_a
        # retransmit queue rows while the sender cannot get acks
        await w.fabric.detach(w.vms[1], grace=None)
        await sa.send(b"unacked")
        assert [(m.seq, m.bytes) for m in a.info().retransmit_queue] == [(5, 7)]
        # rows are frozen values
        with pytest.raises(AttributeError):
            conn_a.next_tx_seq = 0  # type: ignore[misc]
        # printed as rds-info prints them
        text = a.info().format()
        for header in (
            "RDS Sockets:",
            "RDS Connections:",
            "Receive Message Queue:",
            "Send Message Queue:",
            "Retransmit Message Queue:",
        ):
            assert header in text
        retrans = text.split("Retransmit Message Queue:")[1].splitlines()
        assert retrans[2].split() == ["127.0.0.1", "10", "127.0.0.2", "7000", "0", "5", "7"]
        counters = a.statistics().format().splitlines()
        assert counters[0] == "Counters:" and counters[1].split() == ["CounterName", "Value"]
        assert counters[2].split() == ["conn_reset", str(a.statistics().conn_reset)]


async def test_congestion_clears_across_a_removal(autojump_clock: trio.abc.Clock) -> None:
    """The receiver frees its port while its device is gone; the map travels on reconnect."""
    async with world(2) as w:
        a, b = w.nodes
        sa = a.socket()
        sa.bind(10)
        sb = b.socket(rcvbuf=5000)
        sb.bind(DST[1])
        for _ in range(2):
            await sa.sendto(b"c" * 3000, DST)
        await until(lambda: a._is_congested(DST))
        sent = trio.Event()

        async def blocked() -> None:
            await sa.sendto(b"after", DST)
            sent.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocked)
            await w.fabric.detach(w.vms[1], grace=1.0)
            assert [await sb.recv() for _ in range(2)] == [b"c" * 3000] * 2  # now uncongested
            await trio.sleep(1.0)
            assert not sent.is_set()  # the sender cannot know yet
            await w.fabric.attach(w.vms[1], w.spare[0])
            with trio.fail_after(10):
                await sent.wait()
        with trio.fail_after(10):
            assert await sb.recv() == b"after"
