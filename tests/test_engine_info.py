"""Counters and info snapshots."""

from __future__ import annotations

import attrs
from engine_link import Link

from rdsx.engine import COUNTER_NAMES, ConnState, EngineCounters, QueuedMessage


def test_counters_are_frozen_snapshots_that_add_up() -> None:
    link = Link()
    link.connect()
    link.a.conn.send(1, 2, b"x")
    before = link.a.conn.statistics()
    link.run()
    after = link.a.conn.statistics()
    assert before.send_drop_acked == 0 and after.send_drop_acked == 1
    assert attrs.has(EngineCounters) and COUNTER_NAMES[0] == "conn_reset"
    total = after + link.b.conn.statistics()
    assert total.send_queued == 1 and total.send_drop_acked == 1
    assert list(total.as_dict()) == list(COUNTER_NAMES)


def test_info_shows_queues_and_sequence_numbers() -> None:
    link = Link()
    link.a.conn.send(1, 2, b"abc")
    info = link.a.conn.info()
    assert info.state is ConnState.DOWN and info.send_credits is None
    assert info.send_queue == (QueuedMessage(1, 2, 0, 3),)
    link.connect()
    link.a.conn.frames_to_send(0.0)
    info = link.a.conn.info()
    assert info.retransmit_queue == (QueuedMessage(1, 2, 1, 3),)
    assert (info.next_tx_seq, info.next_rx_seq, info.peer_generation) == (2, 0, 22)
    assert info.send_credits == 31
