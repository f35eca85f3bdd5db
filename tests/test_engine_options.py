"""The opt-in event shortcuts: ``batch_acks`` (one MessagesAcked per ack) and
``on_message`` (received messages and pongs through a callback instead of events).

Besides direct examples, a twin runs every call on an engine with both options and on
a default engine and checks that they say the same things: the same messages (callback
calls vs MessageReceived/PongReceived events, in the same order), the same acknowledged
tokens in the same order, and every other event, state, queue and counter identical.
"""

from __future__ import annotations

from typing import Any, ClassVar

from engine_link import Link
from hypothesis import given
from hypothesis import strategies as st
from test_engine_fastpath import SETTINGS, Twin, op_strategy, run_program

from rdsx.engine import (
    Connection,
    EngineConfig,
    Event,
    MessageAcked,
    MessageReceived,
    MessagesAcked,
    PongReceived,
)

Delivery = tuple[int, int, bytes, bytes, int]


class OptionsTwin(Twin):
    """``fast``: both options on; ``ref``: the default engine. Events are compared as logs."""

    reference: ClassVar[dict[str, str]] = {}  # both engines through the public methods

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.delivered: list[Delivery] = []
        self.fast = Connection(
            *args, batch_acks=True, on_message=lambda *m: self.delivered.append(m), **kwargs
        )
        self.ref = Connection(*args, **kwargs)
        self.calls = 0
        self.ref_messages: list[Delivery] = []
        self.fast_other: list[object] = []
        self.ref_other: list[object] = []
        self.acked_bytes = [0, 0]

    def next_event(self) -> Event | None:
        """Drain both engines into comparable logs; the link sees no events."""
        while (event := self.fast.next_event()) is not None:
            assert type(event) not in (MessageReceived, PongReceived, MessageAcked)
            if type(event) is MessagesAcked:
                assert event.tokens and event.count == len(event.tokens)
                self.fast_other.extend(("acked", token) for token in event.tokens)
                self.acked_bytes[0] += event.nbytes
            else:
                self.fast_other.append(event)
        while (event := self.ref.next_event()) is not None:
            if type(event) is MessageReceived:
                self.ref_messages.append(
                    (event.sport, event.dport, event.data, event.ext, event.seq)
                )
            elif type(event) is PongReceived:
                self.ref_messages.append((0, event.port, b"", b"", event.seq))
            elif type(event) is MessageAcked:
                self.ref_other.append(("acked", event.token))
                self.acked_bytes[1] += event.nbytes
            else:
                self.ref_other.append(event)
        self.check()
        return None

    def check(self) -> None:
        fast, ref = self.fast, self.ref
        assert fast.info() == ref.info()
        assert fast.statistics() == ref.statistics()
        assert fast.get_timer() == ref.get_timer()
        if not fast._events and not ref._events:
            assert self.delivered == self.ref_messages
            assert self.fast_other == self.ref_other
            assert self.acked_bytes[0] == self.acked_bytes[1]


@SETTINGS
@given(st.lists(op_strategy, max_size=50))
def test_options_say_what_the_default_events_say(program: list[Any]) -> None:
    run_program(program, EngineConfig(frag_size=256, ack_delay=0.002), ring=6, twin=OptionsTwin)


def _pair(**options: Any) -> Link:
    link = Link()
    for side, (local, remote, gen) in (
        (link.a, ("127.0.0.1", "127.0.0.2", 11)),
        (link.b, ("127.0.0.2", "127.0.0.1", 22)),
    ):
        side.conn = Connection(local, remote, generation=gen, **options)
    link.connect()
    return link


def test_one_ack_retires_a_window_in_one_event() -> None:
    link = _pair(batch_acks=True)
    for i in range(9):
        link.a.conn.send(1, 2, b"x" * (i + 1), token=f"t{i}")
    link.run()
    acked = [e for e in link.a.events if isinstance(e, MessagesAcked)]
    assert [e.tokens for e in acked] == [tuple(f"t{i}" for i in range(9))]
    assert (acked[0].count, acked[0].nbytes, acked[0].up_to) == (9, 45, 9)
    assert not [e for e in link.a.events if isinstance(e, MessageAcked)]
    assert link.a.conn.statistics().send_drop_acked == 9


def test_internal_messages_are_left_out_of_the_batch() -> None:
    link = _pair(batch_acks=True)
    link.b.conn.send(7, 0, b"", token="ping")  # b pings a: a's pong is internal
    link.a.conn.send(1, 2, b"data", token="data")
    link.run()
    tokens = [t for e in link.a.events if isinstance(e, MessagesAcked) for t in e.tokens]
    assert tokens == ["data"]
    assert link.a.conn.statistics().send_drop_acked == 2  # the pong was retired too


def test_messages_and_pongs_reach_the_callback_in_arrival_order() -> None:
    got: list[Delivery] = []
    link = _pair(on_message=lambda *m: got.append(m))
    link.a.conn.send(1, 5, b"one", token=1)
    link.b.conn.send(5, 0, b"", token="ping")  # a answers b's ping; b gets the pong
    link.a.conn.send(1, 5, b"two", ext=b"e", token=2)
    link.run()
    # b gets a's two messages, then a's pong to its ping (a's third seq)
    assert got == [(1, 5, b"one", b"", 1), (1, 5, b"two", b"e", 2), (0, 5, b"", b"", 3)]
    assert not [e for s in (link.a, link.b) for e in s.events if isinstance(e, MessageReceived)]
    assert not [e for e in link.b.events if isinstance(e, PongReceived)]


def test_the_handshake_ack_retires_a_batch_too() -> None:
    """Messages the peer got before a reset, but whose ack was lost with the transport, are
    retired by the next handshake's ack: one MessagesAcked, before anything is resent."""
    link = _pair(batch_acks=True)
    for i in range(3):
        link.a.conn.send(1, 2, b"y" * (10 + i), token=i)
    assert link.deliver(link.b, link.pull(link.a))  # b has all three; its ack never leaves
    link.reset()
    assert len(link.a.conn.info().send_queue) == 3  # requeued for a resend
    link.connect()
    link.drain()
    acked = [e for e in link.a.events if isinstance(e, MessagesAcked)]
    assert [(e.tokens, e.count, e.nbytes, e.up_to) for e in acked] == [((0, 1, 2), 3, 33, 3)]
    assert link.a.conn.info().send_queue == ()  # nothing left to resend
