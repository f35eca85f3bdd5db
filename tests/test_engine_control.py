"""Congestion-map updates, ping/pong, cancel, reconnect back-off and duel resolution."""

from __future__ import annotations

import random

import pytest
from engine_link import Link

from rdsx.engine import (
    Backoff,
    CongestionMap,
    CongestionUpdated,
    DropReason,
    MessageAcked,
    MessageDropped,
    MessageReceived,
    PeerRestarted,
    PongReceived,
    should_initiate,
)
from rdsx.engine._wire import FLAG_CONG_BITMAP, HEADER_FIXED


def test_congestion_map_bits() -> None:
    cmap = CongestionMap([5, 65535])
    cmap.set(0)
    cmap.clear(5)
    assert cmap.ports() == [0, 65535]
    assert cmap.test(65535) and not cmap.test(5)
    assert len(cmap.to_bytes()) == 8192 and cmap.to_bytes()[0] == 1
    assert cmap.copy() == cmap
    with pytest.raises(ValueError):
        cmap.set(65536)


def test_cong_update_goes_ahead_of_queued_data_and_updates_the_peer_map() -> None:
    link = Link()
    link.connect()
    local = CongestionMap()
    for _ in range(3):
        link.a.conn.send(1, 2, b"data")
    local.set(4000)
    local.set(7)
    link.a.conn.queue_cong_update(local)
    local.set(9)  # coalesced into the same update, read at transmit time
    link.a.conn.queue_cong_update(local)
    frames = link.pull(link.a)
    first = HEADER_FIXED.unpack_from(frames[0])
    assert first[0] == 0 and first[5] == FLAG_CONG_BITMAP
    assert link.a.conn.statistics().cong_update_queued == 1
    assert link.deliver(link.b, frames)
    assert [e for e in link.b.events if isinstance(e, CongestionUpdated)] == [
        CongestionUpdated(frozenset({7, 9, 4000}), frozenset())
    ]
    assert link.b.conn.peer_congested(4000) and not link.b.conn.peer_congested(2)
    local.clear(4000)
    local.clear(9)
    link.a.conn.queue_cong_update(local)
    link.run()
    update = [e for e in link.b.events if isinstance(e, CongestionUpdated)][-1]
    assert update.newly_uncongested == {4000, 9} and update.newly_congested == set()
    assert update.monitor_mask == (1 << (4000 % 64)) | (1 << 9)
    assert link.b.conn.statistics().cong_update_received == 2


def test_cong_map_is_resent_on_every_up() -> None:
    link = Link()
    link.connect()
    link.a.conn.queue_cong_update(CongestionMap([3]))
    link.run()
    link.reset()
    link.b.events.clear()
    link.connect()
    link.run()
    assert [e for e in link.b.events if isinstance(e, CongestionUpdated)] == [
        CongestionUpdated(frozenset(), frozenset())
    ]
    assert link.b.conn.peer_congested(3)


def test_ping_gets_a_pong_from_port_zero() -> None:
    link = Link()
    link.connect()
    link.a.conn.send(4242, 0, b"")
    link.run()
    assert [e for e in link.a.events if isinstance(e, PongReceived)] == [PongReceived(4242, 1)]
    assert not [e for e in link.b.events if isinstance(e, MessageReceived)]
    stats = link.b.conn.statistics()
    assert (stats.recv_ping, stats.send_pong) == (1, 1)
    assert [e.token for e in link.a.events if isinstance(e, MessageAcked)] == [None]


def test_pings_from_port_zero_are_ignored() -> None:
    link = Link()
    link.connect()
    link.a.conn.send(0, 0, b"")
    link.run()
    assert link.b.conn.statistics().recv_ping == 0
    assert not [e for e in link.a.events if isinstance(e, PongReceived)]


def test_cancel_queued_and_unacked_messages() -> None:
    link = Link()
    link.connect()
    link.a.conn.send(1, 2, b"sent-then-canceled", token="s")
    link.pull(link.a)  # transmitted, lost below
    link.a.conn.send(1, 2, b"queued", token="q")
    link.a.conn.send(1, 3, b"other port", token="o")
    link.a.conn.send(5, 2, b"other socket", token="x")
    assert link.a.conn.cancel(1, 2) == ["s", "q"]
    assert link.a.conn.cancel(1) == ["o"]
    link.reset()
    link.connect()
    link.run()
    assert [e.data for e in link.b.events if isinstance(e, MessageReceived)] == [b"other socket"]
    assert [e.token for e in link.a.events if isinstance(e, MessageAcked)] == ["x"]


def test_backoff_sequence_with_a_seeded_rng() -> None:
    backoff = Backoff()
    rng = random.Random(7)
    check = random.Random(7)
    delays = [backoff.next_delay(rng) for _ in range(14)]
    assert delays[0] == 0.0
    caps = [0.001 * 2**i for i in range(13)]
    expected = [check.random() * min(cap, 1.0) for cap in caps]
    assert delays[1:] == pytest.approx(expected)
    assert all(d <= 1.0 for d in delays)
    backoff.reset()
    assert backoff.next_delay(rng) == 0.0


def test_duel_resolution() -> None:
    assert should_initiate("127.0.0.1", "127.0.0.2")
    assert not should_initiate("127.0.0.2", "127.0.0.1")
    assert should_initiate("127.0.0.9", "127.0.0.10")  # numeric, not text, order
    with pytest.raises(ValueError):
        should_initiate("127.0.0.1", "127.0.0.1")


def test_raced_incoming_connect() -> None:
    link = Link()
    low, high = link.a.conn, link.b.conn  # 127.0.0.1 should initiate
    low.start_connect(0.0)
    assert not low.incoming_connect(0.0)  # the high side must not initiate: reject
    high.start_connect(0.0)
    assert high.incoming_connect(0.0)  # the low side's connect wins
    assert low.statistics().ib_connect_raced == 1
    assert high.statistics().ib_connect_raced == 1


def test_duel_ends_with_one_transport_and_delivery() -> None:
    link = Link()
    low, high = link.a.conn, link.b.conn
    high.send(9, 9, b"from the high side")  # the high side has data, so it tried too
    low.start_connect(0.0)
    high.start_connect(0.0)
    high.receives_posted(32)
    high_attempt = high.handshake()
    assert not low.incoming_connect(0.0)  # low rejects the high side's connect ...
    assert high_attempt  # (which dies with that reject)
    low.receives_posted(32)
    hs_low = low.handshake()
    assert high.incoming_connect(0.0)  # ... and high accepts low's, abandoning its own
    high.receives_posted(32)
    hs_high = high.handshake()
    high.transport_up(hs_low, 0.0)
    low.transport_up(hs_high, 0.0)
    link.a.posted = link.b.posted = 32
    link.run()
    assert [e.data for e in link.a.events if isinstance(e, MessageReceived)] == [
        b"from the high side"
    ]


def test_incoming_connect_while_up_replaces_a_stale_transport() -> None:
    link = Link()
    link.connect()
    link.b.conn.send(4, 5, b"unacked when a rebooted", token="old")
    link.pull(link.b)  # a had it in a receive buffer when it died
    # a reboots: a new engine with a new generation connects to b, which is still UP
    rebooted = Link(gen_a=33)
    link.a.conn = rebooted.a.conn
    link.a.events.clear()
    link.b.conn.send(4, 5, b"after the reboot", token="new")
    link.connect()
    assert link.b.conn.statistics().ib_listen_closed_stale == 1
    link.run()
    b_events = link.b.events
    assert [e for e in b_events if isinstance(e, PeerRestarted)] == [PeerRestarted(11, 33)]
    dropped = [(e.token, e.reason) for e in b_events if isinstance(e, MessageDropped)]
    assert dropped == [("old", DropReason.PEER_RESTARTED)]
    got = [(e.data, e.seq) for e in link.a.events if isinstance(e, MessageReceived)]
    assert got == [(b"after the reboot", 1)]
