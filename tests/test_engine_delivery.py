"""Two engines over a fake link: exactly once, in order, across resets."""

from __future__ import annotations

from engine_link import Link

from rdsx.engine import (
    DropReason,
    MessageAcked,
    MessageDropped,
    MessageReceived,
    PeerRestarted,
)
from rdsx.engine._wire import FLAG_RETRANSMITTED, HEADER_FIXED


def received(side_events: list[object]) -> list[tuple[int, int, bytes]]:
    return [(e.sport, e.dport, e.data) for e in side_events if isinstance(e, MessageReceived)]


def test_messages_arrive_in_order_and_are_acked() -> None:
    link = Link()
    link.connect()
    sent = [(5, 6, bytes([i]) * (i * 700)) for i in range(30)]
    for i, (sport, dport, data) in enumerate(sent):
        link.a.conn.send(sport, dport, data, token=i)
    link.run()
    assert received(link.b.events) == sent
    acked = [e.token for e in link.a.events if isinstance(e, MessageAcked)]
    assert acked == list(range(30))
    assert link.a.conn.info().retransmit_queue == ()
    assert link.a.conn.next_tx_seq == 31
    assert link.b.conn.next_rx_seq == 31


def test_sends_queue_while_down_and_go_out_on_up() -> None:
    link = Link()
    link.a.conn.send(1, 2, b"early", token="t")
    assert link.a.conn.frames_to_send(0.0) == []
    link.connect()
    link.run()
    assert received(link.b.events) == [(1, 2, b"early")]


def test_reset_resends_unacked_in_order_with_original_seqs() -> None:
    link = Link()
    link.connect()
    for i in range(5):
        link.a.conn.send(7, 8, b"m%d" % i, token=i)
    lost = link.pull(link.a)  # transmitted, never delivered
    assert len(lost) == 5
    assert [r.seq for r in link.a.conn.info().retransmit_queue] == [1, 2, 3, 4, 5]
    link.reset()
    assert [r.seq for r in link.a.conn.info().send_queue] == [1, 2, 3, 4, 5]
    link.connect()
    resent = link.pull(link.a)
    headers = [HEADER_FIXED.unpack_from(f) for f in resent]
    assert [h[0] for h in headers] == [1, 2, 3, 4, 5]
    assert all(h[5] & FLAG_RETRANSMITTED for h in headers)
    assert link.deliver(link.b, resent)
    link.run()
    assert received(link.b.events) == [(7, 8, b"m%d" % i) for i in range(5)]
    assert link.a.conn.statistics().conn_reset == 1
    assert link.a.conn.statistics().send_retransmitted == 5


def test_handshake_ack_purges_before_resend() -> None:
    link = Link()
    link.connect()
    for i in range(3):
        link.a.conn.send(7, 8, b"x", token=i)
    frames = link.pull(link.a)
    assert link.deliver(link.b, frames)  # b has all three, but its ack never gets back
    link.reset()
    link.connect()
    assert link.pull(link.a) == []  # nothing to resend: b's handshake acked seq 3
    link.drain()
    assert [e.token for e in link.a.events if isinstance(e, MessageAcked)] == [0, 1, 2]
    assert len(received(link.b.events)) == 3


def test_duplicates_are_dropped_and_counted() -> None:
    link = Link()
    link.connect()
    for i in range(4):
        link.a.conn.send(7, 8, b"d%d" % i, token=i)
    link.pull(link.a)
    link.reset()
    link.connect()
    resent = link.pull(link.a)
    assert link.deliver(link.b, resent[:3])
    assert link.deliver(link.b, resent[1:])  # the link duplicates two retransmitted frames
    link.run()
    assert received(link.b.events) == [(7, 8, b"d%d" % i) for i in range(4)]
    assert link.b.conn.statistics().recv_drop_old_seq == 2


def test_rdma_messages_are_not_resent() -> None:
    link = Link()
    link.connect()
    link.a.conn.send(7, 8, b"plain", token="p")
    link.a.conn.send(7, 8, b"rdma", token="r", rdma=True)
    link.a.conn.send(7, 8, b"after", token="q")
    link.pull(link.a)
    link.reset()
    link.drain()
    dropped = [e for e in link.a.events if isinstance(e, MessageDropped)]
    assert [(e.token, e.reason) for e in dropped] == [("r", DropReason.RDMA_DROPPED)]
    link.connect()
    link.run()
    assert received(link.b.events) == [(7, 8, b"plain"), (7, 8, b"after")]
    assert link.b.conn.next_rx_seq == 4  # the RDMA seq was consumed by a tombstone


def test_peer_restart_flushes_retransmit_queue_and_resets_seqs() -> None:
    link = Link()
    link.connect()
    link.a.conn.send(7, 8, b"one", token=1)
    link.b.conn.send(8, 7, b"from the old b")
    link.run()
    assert link.a.conn.next_rx_seq == 2
    link.a.events.clear()
    link.a.conn.send(7, 8, b"lost", token=2)
    link.pull(link.a)
    link.reset()
    # b restarts: a new Connection with a new generation
    fresh = Link(gen_a=11, gen_b=99)
    link.b.conn = fresh.b.conn
    link.b.events.clear()
    link.a.conn.send(7, 8, b"new", token=3)
    link.connect()
    link.run()
    restarted = [e for e in link.a.events if isinstance(e, PeerRestarted)]
    assert restarted == [PeerRestarted(22, 99)]
    dropped = [e for e in link.a.events if isinstance(e, MessageDropped)]
    assert [(e.token, e.reason) for e in dropped] == [(2, DropReason.PEER_RESTARTED)]
    assert received(link.b.events) == [(7, 8, b"new")]
    assert [e.seq for e in link.b.events if isinstance(e, MessageReceived)] == [1]
    # and the restarted b's own seqs start over at 1, which a accepts
    link.b.conn.send(8, 7, b"hello from the new b")
    link.run()
    got = [(e.data, e.seq) for e in link.a.events if isinstance(e, MessageReceived)]
    assert got == [(b"hello from the new b", 1)]
