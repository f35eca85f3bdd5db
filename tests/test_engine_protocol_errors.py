"""Lying, malformed and truncated frames raise RemoteProtocolError, and nothing else."""

from __future__ import annotations

import contextlib

import pytest
from engine_link import Link
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsx.engine import ConnState, decode_handshake, parse_header
from rdsx.engine._wire import (
    FLAG_ACK_REQUIRED,
    FLAG_CONG_BITMAP,
    FLAG_EXT,
    FLAG_RETRANSMITTED,
    FLAG_TOMBSTONE,
    HEADER,
    decode_cong_update,
    parse_fragment,
)
from rdsx.errors import RemoteProtocolError


def frame(
    seq: int = 1,
    ack: int = 0,
    length: int = 0,
    sport: int = 1,
    dport: int = 2,
    flags: int = 0,
    credit: int = 0,
    index: int = 0,
    count: int = 1,
    csum: int = 0,
    ext: bytes = b"",
    payload: bytes = b"",
) -> bytes:
    return HEADER.pack(seq, ack, length, sport, dport, flags, credit, index, count, csum, ext) + (
        payload
    )


#: msgpack [65536]: one port beyond the 16-bit range
PORT_65536 = b"\x91\xce\x00\x01\x00\x00"


def up_pair() -> Link:
    link = Link()
    link.connect()
    return link


LIES = {
    "truncated header": frame()[:47],
    "unknown flag": frame(flags=0x80),
    "checksum set": frame(csum=1),
    "index out of range": frame(index=1, count=1),
    "zero fragments": frame(count=0),
    "count does not match length": frame(length=5000, count=1, payload=b"x" * 4096),
    "payload longer than header says": frame(length=2, payload=b"abc"),
    "payload shorter than header says": frame(length=4, payload=b"abc"),
    "over the maximum size": frame(length=(1 << 20) + 1, count=257, payload=b"x" * 4096),
    "seq from the future": frame(seq=2),
    "ack of a seq never sent": frame(ack=1),
    "continuation without a start": frame(length=5000, index=1, count=2, payload=b"x" * 904),
    "ack-only frame with ports": frame(seq=0, sport=3),
    "ack-only frame with a payload": frame(seq=0, sport=0, dport=0, length=1, payload=b"x"),
    "sequenced cong update": frame(flags=FLAG_CONG_BITMAP),
    "tombstone not retransmitted": frame(flags=FLAG_TOMBSTONE),
    "tombstone with data": frame(flags=FLAG_TOMBSTONE | FLAG_RETRANSMITTED, length=1, payload=b"x"),
    "empty ext": frame(flags=FLAG_EXT, ext=b"\x00"),
    "ext too long": frame(flags=FLAG_EXT, ext=b"\x10" + b"x" * 15),
    "cong update that is not msgpack": frame(
        seq=0, sport=0, dport=0, flags=FLAG_CONG_BITMAP, length=1, payload=b"\xc1"
    ),
    "cong update with a bad port": frame(
        seq=0, sport=0, dport=0, flags=FLAG_CONG_BITMAP, length=6, payload=PORT_65536
    ),
}


@pytest.mark.parametrize("name", sorted(LIES))
def test_lying_frame_raises_and_moves_to_error(name: str) -> None:
    link = up_pair()
    conn = link.b.conn
    with pytest.raises(RemoteProtocolError):
        conn.receive_frame(LIES[name], 0.0)
    assert conn.state is ConnState.ERROR
    assert conn.statistics().recv_protocol_error == 1
    conn.transport_down(0.0)
    assert conn.state is ConnState.DOWN


def test_fragment_that_does_not_continue_the_message() -> None:
    for second in (
        frame(seq=2, length=5000, index=1, count=2, payload=b"y" * 904),  # another seq
        frame(seq=1, length=5000, index=1, count=2, sport=9, payload=b"y" * 904),  # another port
        frame(seq=1, length=9000, index=0, count=3, payload=b"y" * 4096),  # restarts
    ):
        link = up_pair()
        conn = link.b.conn
        conn.receive_frame(frame(seq=1, length=5000, count=2, payload=b"x" * 4096), 0.0)
        with pytest.raises(RemoteProtocolError):
            conn.receive_frame(second, 0.0)


def test_old_seq_must_be_marked_retransmitted() -> None:
    link = up_pair()
    conn = link.b.conn
    conn.receive_frame(frame(seq=1, flags=FLAG_ACK_REQUIRED), 0.0)
    conn.receive_frame(frame(seq=1, flags=FLAG_RETRANSMITTED), 0.0)
    assert conn.statistics().recv_drop_old_seq == 1
    with pytest.raises(RemoteProtocolError):
        conn.receive_frame(frame(seq=1), 0.0)


def test_sending_beyond_granted_credits() -> None:
    link = Link(ring=2)
    link.connect()
    conn = link.b.conn
    conn.receive_frame(frame(seq=1), 0.0)
    conn.receive_frame(frame(seq=2), 0.0)
    with pytest.raises(RemoteProtocolError):
        conn.receive_frame(frame(seq=3), 0.0)


def test_handshake_acking_a_seq_never_sent() -> None:
    link = Link()
    link.b.conn.start_connect(0.0)
    lying = link.b.conn.handshake()
    link.a.conn.start_connect(0.0)
    link.a.conn.handshake()
    # b claims to have received seq 5 of a's current generation
    from rdsx.engine._wire import Handshake, encode_handshake

    hs = decode_handshake(lying)
    forged = encode_handshake(
        Handshake(
            src=hs.src,
            dst=hs.dst,
            generation=hs.generation,
            peer_generation=link.a.conn.generation,
            ack=5,
            credits=hs.credits,
            frag_size=hs.frag_size,
        )
    )
    with pytest.raises(RemoteProtocolError):
        link.a.conn.transport_up(forged, 0.0)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=200))
def test_decoders_parse_or_raise_remote_protocol_error(data: bytes) -> None:
    for decode in (parse_header, decode_handshake, decode_cong_update):
        with contextlib.suppress(RemoteProtocolError):
            decode(data)
    for frag_size in (1, 16, 4096):
        with contextlib.suppress(RemoteProtocolError):
            parse_fragment(data, frag_size, 1 << 20)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(
    st.tuples(
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(0, 10_000),
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(0, 255),
        st.integers(0, 255),
        st.integers(0, 3),
        st.integers(0, 3),
        st.integers(0, 1),
        st.binary(max_size=16),
    ),
    st.binary(max_size=5000),
    st.binary(max_size=100),
)
def test_receive_frame_parses_or_raises_remote_protocol_error(
    fields: tuple[int, ...], payload: bytes, garbage: bytes
) -> None:
    link = up_pair()
    conn = link.b.conn
    conn.send(2, 1, b"something to ack")
    conn.frames_to_send(0.0)
    for data in (HEADER.pack(*fields) + payload, garbage):
        if conn.state is not ConnState.UP:
            break
        try:
            conn.receive_frame(data, 0.0)
        except RemoteProtocolError:
            assert conn.state is ConnState.ERROR
