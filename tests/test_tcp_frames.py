"""The tcp frame codec: round trips, batching, bounds, and a fuzz of the decoder."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rdsx.errors import RemoteProtocolError
from transports.tcp._frames import (
    Ack,
    Bye,
    Control,
    FrameDecoder,
    FrameType,
    Nak,
    NakCode,
    ReadReq,
    ReadResp,
    Send,
    Write,
    encode_ack,
    encode_bye,
    encode_control,
    encode_nak,
    encode_read_req,
    encode_read_resp,
    encode_send,
    encode_write,
)

FRAME_TYPES = (Control, Send, Write, ReadReq, ReadResp, Ack, Nak, Bye)
SAMPLES = [
    (encode_send(5, None, b"abc"), Send(5, None, b"abc")),
    (encode_send(0xFFFFFF, 7, b""), Send(0xFFFFFF, 7, b"")),
    (encode_write(1, None, 0x1000, 42, b"xy"), Write(1, None, 0x1000, 42, b"xy")),
    (encode_write(2, 9, 0, 1, b"z"), Write(2, 9, 0, 1, b"z")),
    (encode_read_req(3, 0x2000, 77, 4096), ReadReq(3, 0x2000, 77, 4096)),
    (encode_read_resp(3, b"data"), ReadResp(3, b"data")),
    (encode_ack(17), Ack(17)),
    (encode_nak(4, NakCode.RNR, 0.25), Nak(4, NakCode.RNR, 0.25)),
    (encode_bye(), Bye()),
    (encode_control("hello", v=1, n=b"\0" * 32), Control("hello", {"v": 1, "n": b"\0" * 32})),
]


def test_every_frame_round_trips_in_one_batch() -> None:
    stream = b"".join(encoded for encoded, _ in SAMPLES)
    assert FrameDecoder(1 << 20).feed(stream) == [frame for _, frame in SAMPLES]


def test_frames_split_at_every_byte_still_decode() -> None:
    stream = b"".join(encoded for encoded, _ in SAMPLES)
    decoder = FrameDecoder(1 << 20)
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == [frame for _, frame in SAMPLES]
    assert not decoder.partial


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 400), max_size=12))
def test_frames_split_anywhere_decode_the_same(cuts: list[int]) -> None:
    stream = b"".join(encoded for encoded, _ in SAMPLES) * 2
    bounds = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    decoder = FrameDecoder(1 << 20)
    got = []
    for start, stop in itertools.pairwise(bounds):
        got += decoder.feed(stream[start:stop])
    assert got == [frame for _, frame in SAMPLES] * 2
    assert not decoder.partial


def test_a_decoded_send_payload_is_a_read_only_view() -> None:
    data = bytearray(encode_send(1, None, b"abcd"))
    (frame,) = FrameDecoder(1 << 20).feed(data)
    assert isinstance(frame, Send) and frame.payload == b"abcd"
    with pytest.raises(TypeError):
        frame.payload[0] = 0


@pytest.mark.parametrize(
    "data",
    [
        struct.pack("!I", 0),  # an empty frame
        struct.pack("!I", 1 << 21),  # longer than the maximum
        struct.pack("!IB", 1, 200),  # unknown type
        struct.pack("!IB", 3, FrameType.ACK) + b"\0\0",  # ACK of the wrong size
        struct.pack("!IBI", 5, FrameType.ACK, 1 << 24),  # PSN beyond 24 bits
        struct.pack("!IBIBd", 14, FrameType.NAK, 1, 9, 0.0),  # unknown NAK code
        struct.pack("!IBIBd", 14, FrameType.NAK, 1, 1, float("nan")),  # NaN timer
        struct.pack("!IBIBI", 10, FrameType.SEND, 1, 0x80, 0),  # unknown flags
        struct.pack("!IB", 3, FrameType.CONTROL) + b"\xc1\xc1",  # not msgpack
        struct.pack("!IB", 2, FrameType.CONTROL) + b"\x01",  # msgpack, not a map
    ],
)
def test_malformed_frames_raise_remote_protocol_error(data: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        FrameDecoder(1 << 20).feed(data)


def test_a_length_above_the_maximum_is_refused_before_the_body_arrives() -> None:
    decoder = FrameDecoder(1024)
    with pytest.raises(RemoteProtocolError):
        decoder.feed(struct.pack("!I", 1025))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_fuzz_decoder_parses_or_raises_remote_protocol_error(chunks: list[bytes]) -> None:
    decoder = FrameDecoder(4096)
    try:
        for chunk in chunks:
            for frame in decoder.feed(chunk):
                assert isinstance(
                    frame, Control | Send | Write | ReadReq | ReadResp | Ack | Nak | Bye
                )
    except RemoteProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(0, 255))
def test_fuzz_bodies_of_every_type(body: bytes, kind: int) -> None:
    decoder = FrameDecoder(4096)
    try:
        frames = decoder.feed(struct.pack("!IB", len(body) + 1, kind) + body)
    except RemoteProtocolError:
        return
    assert len(frames) == 1 and isinstance(frames[0], FRAME_TYPES)
    assert not decoder.partial
