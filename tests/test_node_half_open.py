"""A peer removed by surprise in the middle of accepting our connection.

Found by the exactly-once soak (random multi-node removals on a lossy fabric):
the passive side answered the REQ (its QP in RTS, receives posted), the active
side took the REP as established and sent; the passive QP acknowledged those
SENDs at the RC level, but its node was still waiting for the RTU when its VF
vanished, so the frames were never read. The active side, with nothing more to
send, never met a dead QP and kept its messages unacknowledged forever: lost.
"""

from __future__ import annotations

import trio
from node_world import move, recv_n, until, world

from rdsx.engine import ConnState
from transports.sim import Packet
from transports.sim.cm import ACCEPT_TIMEOUT, Rtu


async def test_peer_removed_while_accepting_still_gets_everything(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world(2, spare_hosts=1) as w:
        a, b = w.nodes
        inner = w.fabric.route_packet

        def drop_rtu(packet: Packet) -> None:
            # Hold b inside accept(): it never learns the connection was made.
            if isinstance(packet.msg, Rtu):
                w.fabric.drop_packet(packet, "test: RTU lost")
                return
            inner(packet)

        w.fabric.route_packet = drop_rtu
        sa, sb = a.socket(), b.socket()
        sa.bind(100)
        sb.bind(200)
        for k in range(5):
            await sa.sendto(b"m%d" % k, (w.addr(1), 200))
        await until(lambda: a.connection_state(w.addr(1)) is ConnState.UP)
        # Let the fabric carry the SENDs and b's QP acknowledge them (microseconds).
        await trio.sleep(0.01)
        await move(w, 1, grace=None)
        w.fabric.route_packet = inner
        got = await recv_n(sb, 5, timeout=10.0)
        assert [data for data, _ in got] == [b"m%d" % k for k in range(5)]
        assert b.statistics().recv_drop_old_seq == 0


async def test_accept_timing_out_after_the_rep_still_gets_everything(
    autojump_clock: trio.abc.Clock,
) -> None:
    # The same half-open connection without a removal: every RTU is lost until the
    # acceptor gives up (the sim's 5 s accept timeout) and closes its QP.
    async with world(2, spare_hosts=1) as w:
        a, b = w.nodes
        inner = w.fabric.route_packet
        dropping = True

        def drop_rtu(packet: Packet) -> None:
            if dropping and isinstance(packet.msg, Rtu):
                w.fabric.drop_packet(packet, "test: RTU lost")
                return
            inner(packet)

        w.fabric.route_packet = drop_rtu
        sa, sb = a.socket(), b.socket()
        sa.bind(100)
        sb.bind(200)
        for k in range(5):
            await sa.sendto(b"m%d" % k, (w.addr(1), 200))
        await until(lambda: a.connection_state(w.addr(1)) is ConnState.UP)
        await trio.sleep(ACCEPT_TIMEOUT + 1.0)  # b's accept gives up and closes its QP
        dropping = False
        got = await recv_n(sb, 5, timeout=10.0)
        assert [data for data, _ in got] == [b"m%d" % k for k in range(5)]
        # a learnt of the closed QP (b's CM tells it), reconnected and resent all five.
        assert a.statistics().send_retransmitted == 5
