"""Top-down mode: the device is removed (gracefully or by surprise) mid-traffic and a
new VF arrives on another host; every socket pair still gets exactly its sent sequence."""

from __future__ import annotations

import itertools

import pytest
import trio
from node_world import move, world

import rdsx
from rdsx.engine import ConnState

N = 200


async def _traffic(w, mover: int, grace: float | None, paced: bool) -> dict[tuple, list[int]]:
    socks = []
    for node in w.nodes:
        s = node.socket(sndbuf=64 * 1024, rcvbuf=1 << 20)
        s.bind(4000)
        socks.append(s)
    received: dict[tuple, list[int]] = {}
    third = trio.Event()

    async def sender(i: int) -> None:
        dst = (w.addr(1 - i), 4000)
        for k in range(N):
            await socks[i].sendto(b"%d:" % k + b"x" * (k * 37 % 6000), dst)
            if paced:
                await trio.sleep(0.0005)

    async def receiver(i: int) -> None:
        for k in range(N):
            data, src = await socks[i].recvfrom()
            received.setdefault((src, w.addr(i)), []).append(int(data.split(b":")[0]))
            if k == N // 3:
                third.set()

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in (0, 1):
                nursery.start_soon(sender, i)
                nursery.start_soon(receiver, i)
            await third.wait()
            await move(w, mover, grace=grace)  # raises DeviceBusy if resources were held
    return received


@pytest.mark.parametrize("mover", [0, 1], ids=["lower-moves", "higher-moves"])
@pytest.mark.parametrize("grace", [2.0, None], ids=["graceful", "surprise"])
@pytest.mark.parametrize("paced", [True, False], ids=["paced", "flood"])
async def test_removal_mid_traffic_is_exactly_once(
    autojump_clock: trio.abc.Clock, mover: int, grace: float | None, paced: bool
) -> None:
    async with world(2, seed=7) as w:
        received = await _traffic(w, mover, grace, paced)
        assert len(received) == 2
        for seqs in received.values():
            assert seqs == list(range(N))  # 0 lost, 0 duplicated, 0 reordered
        moved = w.nodes[mover]
        await moved.wait_device()
        stats = moved.statistics()
        assert stats.device_removal == 1 and stats.device_arrival == 2
        assert stats.conn_reset >= 1
        assert moved.device is w.vms[mover].device  # serving the new VF
        assert stats.drain_timeout == 0
        for node in w.nodes:
            assert node.connection_state(w.addr(1 - w.nodes.index(node))) is ConnState.UP


async def test_sockets_wait_through_a_removal(autojump_clock: trio.abc.Clock) -> None:
    """Between removal and arrival sends queue up and receives wait."""
    async with world(2, seed=1) as w:
        a, b = w.nodes
        sa, sb = a.socket(), b.socket()
        sa.bind(1000)
        sb.bind(2000)
        await sa.sendto(b"before", ("127.0.0.2", 2000))
        assert await sb.recv() == b"before"
        await w.fabric.detach(w.vms[0], grace=1.0)
        assert a.device is None
        for k in range(5):
            sa.sendto_nowait(b"during%d" % k, ("127.0.0.2", 2000))
        assert a.info().send_queue  # queued, not lost
        with pytest.raises(rdsx.WouldBlock):
            sb.recv_nowait()
        await trio.sleep(3.0)  # the VM is "migrating"
        with pytest.raises(rdsx.WouldBlock):
            sb.recv_nowait()
        await w.fabric.attach(w.vms[0], w.spare[0])
        with trio.fail_after(10):
            assert [await sb.recv() for _ in range(5)] == [b"during%d" % k for k in range(5)]
        await sb.sendto(b"after", ("127.0.0.1", 1000))
        with trio.fail_after(10):
            assert await sa.recv() == b"after"


async def test_graceful_detach_fails_without_release_is_not_our_problem(
    autojump_clock: trio.abc.Clock,
) -> None:
    """The node closes its context before the deadline: even a tiny grace succeeds."""
    async with world(2, seed=2) as w:
        sa = w.nodes[0].socket()
        sa.bind(10)
        await sa.sendto(b"x", ("127.0.0.2", 0))
        assert await sa.recvfrom() == (b"", ("127.0.0.2", 0))
        await w.fabric.detach(w.vms[0], grace=0.01)  # no DeviceBusy
        assert w.nodes[0].device is None


async def _stream(w, n: int, action) -> list[int]:  # type: ignore[no-untyped-def]
    sa, sb = w.nodes[0].socket(), w.nodes[1].socket(rcvbuf=1 << 22)
    sa.bind(31)
    sb.bind(32)
    got: list[int] = []

    async def send() -> None:
        for k in range(n):
            await sa.sendto(b"%d:" % k + b"y" * (k * 53 % 5000), ("127.0.0.2", 32))
            await trio.sleep(0.0005)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(send)
            await trio.sleep(0.02)
            await action()
            for _ in range(n):
                got.append(int((await sb.recv()).split(b":")[0]))
    return got


async def test_both_nodes_removed_at_once(autojump_clock: trio.abc.Clock) -> None:
    async with world(2, seed=4, spare_hosts=2) as w:

        async def both() -> None:
            for vm in w.vms:
                await w.fabric.detach(vm, grace=None)
            await trio.sleep(0.5)
            for vm, host in zip(w.vms, w.spare, strict=True):
                await w.fabric.attach(vm, host)

        assert await _stream(w, 150, both) == list(range(150))


async def test_tiny_grace_under_load_still_detaches(autojump_clock: trio.abc.Clock) -> None:
    async with world(2, seed=6) as w:

        async def tiny() -> None:
            await move(w, 0, grace=0.001)  # shorter than the drain margin: no DeviceBusy

        assert await _stream(w, 150, tiny) == list(range(150))


async def test_link_down_longer_than_rc_retries(autojump_clock: trio.abc.Clock) -> None:
    async with world(2, seed=8) as w:

        async def outage() -> None:
            w.fabric.link_down(w.hosts[1])
            await trio.sleep(3.0)  # RC gives up (RETRY_EXC_ERR) and reconnects fail meanwhile
            w.fabric.link_up(w.hosts[1])

        assert await _stream(w, 100, outage) == list(range(100))
        stats = w.nodes[0].statistics()
        assert stats.conn_reset >= 1
        assert stats.conn_connect_failed >= 1  # reconnects were retried during the outage
        assert stats.conn_connect_attempt > stats.conn_connect_failed


@pytest.mark.parametrize("mover", [0, 1], ids=["sender-moves", "receiver-moves"])
@pytest.mark.parametrize("grace", [2.0, None], ids=["graceful", "surprise"])
async def test_added_pause_is_small_after_a_long_transit(
    autojump_clock: trio.abc.Clock, mover: int, grace: float | None
) -> None:
    """Whoever moved reconnects as soon as its VF arrives, even as the higher address
    (the lower one may be a second deep into its back-off)."""
    transit = 1.5
    async with world(2, seed=1) as w:
        tx, rx = w.nodes[0].socket(), w.nodes[1].socket()
        tx.bind(1000)
        rx.bind(2000)
        arrivals: list[float] = []

        async def stream() -> None:
            for k in range(1100):
                await tx.sendto(b"%d" % k, ("127.0.0.2", 2000))
                await trio.sleep(0.002)

        async def migrate() -> None:
            await trio.sleep(0.3)
            await w.fabric.detach(w.vms[mover], grace=grace)
            await trio.sleep(transit)
            await w.fabric.attach(w.vms[mover], w.spare[0])

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream)
                nursery.start_soon(migrate)
                for k in range(1100):
                    assert await rx.recv() == b"%d" % k
                    arrivals.append(trio.current_time())
        pause = max(b - a for a, b in itertools.pairwise(arrivals))
        assert transit <= pause < transit + 0.02
