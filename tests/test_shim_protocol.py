"""The shim's sans-IO pieces: wire messages, resequencing arithmetic, handle tables."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rdsx.errors import RemoteProtocolError
from rdsx.shim.protocol import (
    HEADER_RESERVE,
    KEYMAP_CHUNK,
    MAGIC,
    USER_PRIVATE_DATA_MAX,
    Accept,
    Ack,
    Close,
    Connect,
    KeyMap,
    Message,
    Reconnect,
    Refused,
    RefuseReason,
    Resumed,
    Suspend,
    Suspended,
    decode,
    encode,
    plan_resend,
)
from rdsx.shim.tables import HandleSpace

U24 = (1 << 24) - 1
BIG = (1 << 63) - 1

EXAMPLES: list[Message] = [
    Connect(vqpn=U24, inc=BIG),
    Accept(vqpn=0, inc=1),
    Suspend(src_vqpn=5, dst_vqpn=U24, budget=0.25),
    Suspended(drained=False),
    Reconnect(src_vqpn=U24, dst_vqpn=U24, received=BIG, inc=BIG, peer_inc=BIG),
    Resumed(received=BIG, inc=3),
    Refused(reason=RefuseReason.DUEL),
    KeyMap(inc=2, pairs=[(1 << 32) - 1] * (2 * KEYMAP_CHUNK), first=False),
    Ack(),
    Close(src_vqpn=1, dst_vqpn=U24),
]


@pytest.mark.parametrize("message", EXAMPLES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_within_the_cm_limit(message: Message) -> None:
    data = encode(message, b"user")
    assert len(data) <= 196 + 4
    assert decode(data) == (message, b"user")


def test_connect_headers_leave_the_user_its_share() -> None:
    worst = encode(Connect(vqpn=U24, inc=BIG))
    assert len(worst) <= HEADER_RESERVE
    assert len(encode(Accept(vqpn=U24, inc=BIG), bytes(USER_PRIVATE_DATA_MAX))) <= 196


def test_data_without_the_magic_is_the_users() -> None:
    assert decode(b"plain private data") == (None, b"plain private data")
    assert decode(b"") == (None, b"")


@pytest.mark.parametrize(
    "data",
    [
        MAGIC,
        MAGIC + b"\x05\x92",
        MAGIC + b"\x01\xc1",
        MAGIC + b"\x01\x07",
        MAGIC + b"\x02\x91\x63",
        MAGIC + b"\x03\x92\x01\x01",
        MAGIC + b"\x04\x93\x01\xa1x",
        MAGIC + b"\x04\x93\x07\x09\x00",
    ],
)
def test_malformed_headers_are_remote_protocol_errors(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode(data)


@given(st.binary(max_size=64))
def test_any_input_decodes_or_is_a_remote_protocol_error(tail: bytes) -> None:
    for data in (tail, MAGIC + tail):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)


def test_values_are_validated() -> None:
    with pytest.raises(ValueError):
        Connect(vqpn=1 << 24, inc=0)
    with pytest.raises(ValueError):
        Resumed(received=-1, inc=0)
    with pytest.raises(ValueError):
        KeyMap(inc=1, pairs=[1, 2, 3])


# ---------------------------------------------------------------- resequencing


def test_nothing_received_means_resend_everything() -> None:
    assert plan_resend([True, True, False, True], acked=4, peer_received=4) == 0


def test_a_received_prefix_is_not_resent() -> None:
    # counted, read, counted, counted: the peer has 2 of our 3 counted messages
    assert plan_resend([True, False, True, True], acked=10, peer_received=12) == 3


def test_uncounted_ops_after_the_last_received_message_are_resent() -> None:
    assert plan_resend([True, False, False], acked=0, peer_received=1) == 1


def test_a_peer_claiming_less_than_acknowledged_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        plan_resend([True], acked=5, peer_received=4)


def test_a_peer_claiming_more_than_sent_is_refused() -> None:
    with pytest.raises(RemoteProtocolError):
        plan_resend([True, False], acked=0, peer_received=2)


@given(st.lists(st.booleans(), max_size=40), st.integers(0, 40), st.integers(0, 1000))
def test_the_plan_splits_exactly_at_the_peers_count(
    pending: list[bool], got: int, acked: int
) -> None:
    counted = sum(pending)
    got = min(got, counted)
    done = plan_resend(pending, acked, acked + got)
    assert sum(pending[:done]) == got
    assert done == 0 or pending[done - 1]  # the split is right after a counted message


# ---------------------------------------------------------------- tables


def test_a_handle_keeps_its_physical_number_when_free() -> None:
    space: HandleSpace[str] = HandleSpace(24, first=0x100)
    assert space.allocate("a", prefer=72) == 72
    other = space.allocate("b", prefer=72)  # a new host reuses 72: collision avoided
    assert other != 72 and space.lookup(other) == "b" and space.lookup(72) == "a"
    space.release(72)
    assert space.lookup(72) is None and 72 not in space
    assert space.allocate("c", prefer=72) == 72


def test_handles_are_unique_until_the_space_is_full() -> None:
    space: HandleSpace[int] = HandleSpace(4, first=0)
    rng = random.Random(0)
    got = {space.allocate(i, prefer=rng.randrange(16)) for i in range(16)}
    assert got == set(range(16))
    with pytest.raises(OverflowError):
        space.allocate(99)
