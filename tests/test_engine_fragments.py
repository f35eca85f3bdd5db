"""Fragmentation over the frag size, reassembly, message size limits, ext bytes."""

from __future__ import annotations

import pytest
from engine_link import Link

from rdsx.engine import HEADER_SIZE, MAX_MESSAGE_SIZE, EngineConfig, MessageReceived
from rdsx.engine._wire import HEADER_FIXED
from rdsx.errors import MessageTooLarge


def deliver_all(link: Link) -> list[MessageReceived]:
    link.run()
    return [e for e in link.b.events if isinstance(e, MessageReceived)]


@pytest.mark.parametrize(
    ("size", "fragments"),
    [(0, 1), (1, 1), (4095, 1), (4096, 1), (4097, 2), (8192, 2), (MAX_MESSAGE_SIZE, 256)],
)
def test_fragment_count_and_reassembly(size: int, fragments: int) -> None:
    link = Link()
    link.connect()
    payload = bytes(i % 251 for i in range(size))
    link.a.conn.send(3, 4, payload)
    frames = link.a.conn.frames_to_send(0.0, limit=1000)
    data = [f for f in frames if HEADER_FIXED.unpack_from(f[0])[0] == 1]
    # ring of 32 with the last credit kept back: the rest comes after credit updates
    assert len(data) == min(fragments, 31)
    for index, (header, body) in enumerate(data):
        seq, _, length, *_, frag_index, frag_count, _ = HEADER_FIXED.unpack_from(header)
        assert (seq, length, frag_index, frag_count) == (1, size, index, fragments)
        assert len(header) == HEADER_SIZE
        assert bytes(body) == payload[index * 4096 : (index + 1) * 4096]
    link.reset()
    link.connect()
    (got,) = deliver_all(link)
    assert got.data == payload and got.seq == 1


def test_smaller_frag_size_is_negotiated_down() -> None:
    link = Link(EngineConfig(frag_size=1024))
    link.connect()
    link.a.conn.send(3, 4, b"z" * 5000)
    assert len(link.a.conn.frames_to_send(0.0)) == 5
    link.reset()
    link.connect()
    assert [e.data for e in deliver_all(link)] == [b"z" * 5000]


def test_message_too_large() -> None:
    link = Link()
    with pytest.raises(MessageTooLarge):
        link.a.conn.send(3, 4, b"x" * (MAX_MESSAGE_SIZE + 1))
    with pytest.raises(MessageTooLarge):
        link.a.conn.send(3, 4, b"x", ext=b"y" * 16)
    small = Link(EngineConfig(max_message_size=100))
    with pytest.raises(MessageTooLarge):
        small.a.conn.send(3, 4, b"x" * 101)


def test_ext_bytes_travel_with_every_fragment() -> None:
    link = Link()
    link.connect()
    link.a.conn.send(3, 4, b"q" * 9000, ext=b"cookie12")
    link.a.conn.send(3, 4, b"", ext=b"\x00\x01")
    got = deliver_all(link)
    assert [(e.ext, len(e.data)) for e in got] == [(b"cookie12", 9000), (b"\x00\x01", 0)]


def test_memoryview_payloads_are_accepted() -> None:
    link = Link()
    link.connect()
    buf = bytearray(b"abcdef" * 2000)
    link.a.conn.send(3, 4, memoryview(buf))
    link.a.conn.send(3, 4, memoryview(bytes(8)).cast("Q"))
    got = deliver_all(link)
    assert [e.data for e in got] == [bytes(buf), bytes(8)]
