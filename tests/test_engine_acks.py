"""ACK_REQUIRED policy, explicit and piggybacked acks, the delayed-ack timer, credits."""

from __future__ import annotations

from engine_link import Link

from rdsx.engine import EngineConfig, MessageAcked, MessageReceived
from rdsx.engine._wire import FLAG_ACK_REQUIRED, HEADER_FIXED


def headers(frames: list[bytes]) -> list[tuple[int, ...]]:
    return [HEADER_FIXED.unpack_from(f) for f in frames]


def test_ack_required_every_max_unacked_packets() -> None:
    link = Link()
    link.connect()
    for _ in range(20):
        link.a.conn.send(1, 2, b"m")
    flagged = [h[0] for h in headers(link.pull(link.a)) if h[5] & FLAG_ACK_REQUIRED]
    assert flagged == [1, 9, 17]
    assert link.a.conn.statistics().send_ack_required == 3


def test_ack_required_by_bytes_and_by_the_node() -> None:
    link = Link(EngineConfig(max_unacked_bytes=10_000, max_unacked_packets=100))
    link.connect()
    for _ in range(6):
        link.a.conn.send(1, 2, b"b" * 3000)
    link.a.conn.send(1, 2, b"half-full sndbuf", ack_required=True)
    flagged = [h[0] for h in headers(link.pull(link.a)) if h[5] & FLAG_ACK_REQUIRED]
    assert flagged == [1, 4, 7]


def test_ack_required_gets_one_explicit_ack_at_once() -> None:
    link = Link()
    link.connect()
    link.a.conn.send(1, 2, b"x")
    link.a.conn.send(1, 2, b"y")
    assert link.deliver(link.b, link.pull(link.a))
    acks = headers(link.pull(link.b))
    assert len(acks) == 1
    seq, ack, length, sport, dport, flags, *_ = acks[0]
    assert (seq, ack, length, sport, dport, flags) == (0, 2, 0, 0, 0, 0)
    assert link.b.conn.statistics().ib_ack_sent == 1
    assert link.b.conn.statistics().recv_ack_required == 1
    assert link.pull(link.b) == []  # nothing new to say: no second ack


def test_delayed_ack_timer_when_traffic_stops() -> None:
    link = Link(EngineConfig(ack_delay=0.004))
    link.connect()
    link.a.conn.send(1, 2, b"first")  # carries ACK_REQUIRED
    link.run()
    link.now = 1.0
    link.a.conn.send(1, 2, b"second")  # does not
    assert link.deliver(link.b, link.pull(link.a))
    assert link.b.conn.get_timer() == 1.004
    assert link.pull(link.b) == []
    link.b.conn.handle_timer(1.003)
    assert link.pull(link.b) == []
    link.b.conn.handle_timer(1.004)
    (ack,) = headers(link.pull(link.b))
    assert ack[1] == 2
    assert link.b.conn.get_timer() is None
    assert link.deliver(link.a, [])
    acked = [e.seq for e in link.a.events if isinstance(e, MessageAcked)]
    assert acked == [1]  # the explicit ack frame is still with the link
    link.run()


def test_data_frames_piggyback_the_ack_and_cancel_the_timer() -> None:
    link = Link()
    link.connect()
    link.a.conn.send(1, 2, b"first")
    link.run()
    link.a.conn.send(1, 2, b"second")
    assert link.deliver(link.b, link.pull(link.a))
    assert link.b.conn.get_timer() is not None
    link.b.conn.send(2, 1, b"reply")
    (frame,) = headers(link.pull(link.b))
    assert frame[0] == 1 and frame[1] == 2
    assert link.b.conn.get_timer() is None
    assert link.b.conn.statistics().ib_ack_send_piggybacked == 1


def test_credits_are_never_exceeded_and_flow_resumes() -> None:
    link = Link(ring=4)
    link.connect()
    payloads = [bytes([i]) * 5000 for i in range(40)]
    for data in payloads:
        link.a.conn.send(1, 2, data)
    first = link.pull(link.a)
    assert len(first) == 3  # four credits, the last kept back for a credit update
    assert link.a.conn.statistics().ib_tx_throttle == 1
    assert link.deliver(link.b, first)
    link.run()  # the link asserts no frame ever arrives without a posted buffer
    got = [e.data for e in link.b.events if isinstance(e, MessageReceived)]
    assert got == payloads
    assert link.b.conn.statistics().ib_tx_credit_updates > 0
    assert link.a.conn.statistics().ib_rx_credit_updates > 0


def test_no_flow_control_unless_both_sides_advertise() -> None:
    link = Link(EngineConfig(flow_control=False), ring=4)
    link.connect()
    for _ in range(10):
        link.a.conn.send(1, 2, b"x")
    assert len(link.a.conn.frames_to_send(0.0)) == 10
    assert link.a.conn.info().send_credits is None


def test_frames_to_send_honours_the_limit() -> None:
    link = Link()
    link.connect()
    for _ in range(5):
        link.a.conn.send(1, 2, b"x" * 9000)
    assert len(link.a.conn.frames_to_send(0.0, limit=4)) == 4
    assert len(link.a.conn.frames_to_send(0.0, limit=4)) == 4
