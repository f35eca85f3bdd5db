"""A peer removed by surprise in the middle of accepting our connection.

Found by the exactly-once soak (random multi-node removals on a lossy fabric):
the passive side answered the REQ (its QP in RTS, receives posted), the active
side took the REP as established and sent; the passive QP acknowledged those
SENDs at the RC level, but its node was still waiting for the RTU when its VF
vanished, so the frames were never read. The active side, with nothing more to
send, never met a dead QP and kept its messages unacknowledged forever: lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import trio
from node_world import World, move, recv_n, until, world

from rdsx import Socket
from rdsx.engine import ConnState
from transports.sim import Packet
from transports.sim.cm import ACCEPT_TIMEOUT, Rtu


@contextlib.contextmanager
def rtus_lost(w: World) -> Iterator[None]:
    """Every CM RTU is lost inside the block: the acceptor never learns it was accepted."""
    inner = w.fabric.route_packet

    def drop_rtu(packet: Packet) -> None:
        if isinstance(packet.msg, Rtu):
            w.fabric.drop_packet(packet, "test: RTU lost")
            return
        inner(packet)

    w.fabric.route_packet = drop_rtu
    try:
        yield
    finally:
        w.fabric.route_packet = inner


async def send_five_half_open(w: World) -> Socket:
    """Node 0 sends five messages to node 1 port 200 and sees the connection UP; returns
    node 1's socket."""
    a, b = w.nodes
    sa, sb = a.socket(), b.socket()
    sa.bind(100)
    sb.bind(200)
    for k in range(5):
        await sa.sendto(b"m%d" % k, (w.addr(1), 200))
    await until(lambda: a.connection_state(w.addr(1)) is ConnState.UP)
    return sb


async def test_peer_removed_while_accepting_still_gets_everything(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world(2, spare_hosts=1) as w:
        with rtus_lost(w):  # b stays inside accept()
            sb = await send_five_half_open(w)
            # Let the fabric carry the SENDs and b's QP acknowledge them (microseconds).
            await trio.sleep(0.01)
            await move(w, 1, grace=None)
        got = await recv_n(sb, 5, timeout=10.0)
        assert [data for data, _ in got] == [b"m%d" % k for k in range(5)]
        assert w.nodes[1].statistics().recv_drop_old_seq == 0


async def test_lost_rtus_cost_nothing_once_the_first_send_arrives(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The same half-open connection without a removal: every RTU is lost. The first of
    # a's SENDs reaching b's QP establishes b's side (IB's COMM_EST, as good as the RTU),
    # so b's accept returns then rather than timing out ACCEPT_TIMEOUT later and closing.
    async with world(2, spare_hosts=1) as w:
        with rtus_lost(w):
            sb = await send_five_half_open(w)
            got = await recv_n(sb, 5, timeout=ACCEPT_TIMEOUT / 10)
        assert [data for data, _ in got] == [b"m%d" % k for k in range(5)]
        assert w.nodes[0].statistics().send_retransmitted == 0
        assert w.nodes[0].statistics().conn_reset == 0
