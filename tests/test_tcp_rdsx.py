"""rdsx sockets over the tcp transport while devices come and go (reconnect mode)."""

from __future__ import annotations

import trio

import rdsx
from transports.tcp import TcpTransport
from transports.tcp.harness import TEST_SECRET

A, B = "127.0.0.31", "127.0.0.32"
N = 600


async def test_exactly_once_in_order_across_surprise_and_graceful_removals() -> None:
    with trio.fail_after(30):
        async with TcpTransport().open_network(secret=TEST_SECRET, port=0) as net:
            node_a, node_b = await net.add_node(A), await net.add_node(B)
            async with rdsx.open_node(A, node_a) as na, rdsx.open_node(B, node_b) as nb:
                sa, sb = na.socket(), nb.socket()
                sa.bind(4001)
                sb.bind(4002)
                got: list[int] = []
                progress = trio.Event()

                async def receive() -> None:
                    nonlocal progress
                    while len(got) < N:
                        data, source = await sb.recvfrom()
                        assert source == (A, 4001)
                        got.append(int(data))
                        progress.set()
                        progress = trio.Event()

                async def caught_up(count: int) -> None:
                    while len(got) < count:
                        await progress.wait()

                async def replace_gracefully() -> None:
                    device = node_a.device
                    assert device is not None
                    await device.detach(2.0)  # the node releases it within the grace
                    await node_a.attach()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(receive)
                    for i in range(N):
                        await sa.sendto(b"%d" % i, (B, 4002))
                        if i == N // 3:
                            await caught_up(i - 10)  # traffic is flowing over the devices
                            device = node_b.device
                            assert device is not None
                            await device.detach(None)  # surprise: the peer's device vanishes
                            await node_b.attach()
                        elif i == 2 * N // 3:
                            await caught_up(i - 10)
                            await replace_gracefully()
                assert got == list(range(N))
                stats = net.statistics()
                assert stats.tcp_conn_accepted >= 6  # the QPs were rebuilt twice
                assert stats.tcp_protocol_errors == 0 and stats.tcp_auth_failures == 0
