"""How a path posts: at once when idle, coalesced while SENDs are outstanding.

While a SEND is outstanding, the messages of one scheduler pass go out in posts
of up to ``_POST_MAX`` frames with only each post's last SEND signaled; that completion
must retire the whole post, so the ring is seen empty again (the drain waits on
it) and a graceful removal in the middle of a burst drains in time.
"""

from __future__ import annotations

from typing import Any

import trio
from node_world import move, recv_n, until, world

from rdsx.path import Path

DST = ("127.0.0.2", 7000)


def _path(node: object) -> Path:
    (conn,) = node._conns.values()  # type: ignore[attr-defined]
    assert conn.path is not None
    return conn.path  # type: ignore[no-any-return]


async def _warm_pair(w: object) -> tuple[Any, Any, Any]:
    """Node 0, its socket bound to port 10, node 1's socket on DST; one message through."""
    a, b = w.nodes  # type: ignore[attr-defined]
    sa = a.socket()
    sa.bind(10)
    sb = b.socket()
    sb.bind(DST[1])
    sa.sendto_nowait(b"warm-up", DST)
    await recv_n(sb, 1)
    return a, sa, sb


async def test_a_burst_is_posted_in_batches_and_the_ring_empties(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world(2) as w:
        a, sa, sb = await _warm_pair(w)
        await until(lambda: not _path(a).sending and not a.info().retransmit_queue)
        events0 = a.statistics().ib_tx_cq_event
        for k in range(20):
            sa.sendto_nowait(b"m%d" % k, DST)
        # The first went out in the sender's call (idle ring); the rest wait for the flusher.
        assert [m.seq for m in a.info().retransmit_queue] == [2]
        assert len(a.info().send_queue) == 19
        got = await recv_n(sb, 20)
        assert [data for data, _ in got] == [b"m%d" % k for k in range(20)]
        await until(lambda: not a.info().retransmit_queue)
        await until(lambda: not _path(a).sending)
        assert "s" not in a.info().connections[0].flags
        # 1 + ceil(19 / _POST_MAX) posts, one signaled SEND each (plus any ack-only posts).
        assert a.statistics().ib_tx_cq_event - events0 < 10


async def test_graceful_removal_during_a_coalesced_burst_drains_in_time(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world(2) as w:
        a, sa, sb = await _warm_pair(w)
        for k in range(30):
            sa.sendto_nowait(b"m%d" % k, DST)
        await trio.sleep(0)  # the flusher posts the rest, partly unsignaled
        await move(w, 0, grace=1.0)
        got = await recv_n(sb, 30)
        assert [data for data, _ in got] == [b"m%d" % k for k in range(30)]
        stats = a.statistics()
        assert stats.drain_timeout == 0
        assert stats.device_removal == 1
