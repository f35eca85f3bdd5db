"""The link's scatter-gather writer: payload views are sent, never a stale copy of them."""

from __future__ import annotations

import struct

import trio

from transports.tcp._frames import Frame, FrameDecoder, Send, encode_send_header
from transports.tcp._link import Link
from transports.tcp._stats import Counters


class _NoFault:
    def blocked(self, a: str, b: str) -> bool:
        return False

    async def wait_unblocked(self, a: str, b: str) -> None:
        await trio.lowlevel.checkpoint()


class _Handler:
    def frames_received(self, link: Link, frames: list[Frame]) -> None:
        pass

    def link_closed(self, link: Link, error: BaseException | None) -> None:
        pass


def _pair() -> tuple[Link, trio.SocketStream]:
    a, b = trio.socket.socketpair()
    link = Link(
        trio.SocketStream(a),
        Counters(),
        local="127.0.0.1",
        peer="127.0.0.2",
        frame_timeout=5.0,
        fault=_NoFault(),
    )
    return link, trio.SocketStream(b)


async def _read_all(stream: trio.SocketStream) -> bytes:
    data = bytearray()
    while chunk := await stream.receive_some(1 << 20):
        data += chunk
    return bytes(data)


def _send_parts(psn: int, payload: bytes | memoryview) -> tuple[list[bytes | memoryview], int]:
    header = encode_send_header(psn, None, len(payload))
    return [header, payload], len(header) + len(payload)


async def test_every_frame_of_a_large_batch_arrives_whole_and_in_order() -> None:
    link, peer = _pair()
    memory = bytearray(b"".join(b"%04d" % i for i in range(3000)))
    payloads = [memoryview(memory)[i * 4 : i * 4 + 4] for i in range(3000)]
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run, _Handler())
            for psn, payload in enumerate(payloads):  # > IOV_MAX parts in one batch
                parts, size = _send_parts(psn, payload)
                link.send_parts(parts, 1, size)
            link.close(flush=True)
            data = await _read_all(peer)
    frames = FrameDecoder(1 << 20).feed(data)
    assert frames == [Send(psn, None, bytes(p)) for psn, p in enumerate(payloads)]
    assert link.counters.tcp_frames_tx == 3000


async def test_a_flushing_close_sends_the_bytes_queued_not_memory_reused_after_it() -> None:
    link, peer = _pair()
    filler = bytes(8 << 20)  # more than the socket buffers: the writer blocks mid-batch
    in_flight = bytearray(b"A" * 4096)  # in the batch the writer is sending
    queued = bytearray(b"B" * 4096)  # queued behind it
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run, _Handler())
            parts, size = _send_parts(0, filler)
            more, more_size = _send_parts(1, memoryview(in_flight))
            link.send_parts(parts + more, 2, size + more_size)
            await trio.testing.wait_all_tasks_blocked()
            assert link._sending  # the writer is inside sendmsg, the kernel's buffers full
            parts, size = _send_parts(2, memoryview(queued))
            link.send_parts(parts, 1, size)
            link.close(flush=True)
            # The QP flushes the WRs now and their owner reuses the memory at once.
            in_flight[:] = b"x" * 4096
            queued[:] = b"y" * 4096
            data = await _read_all(peer)
    frames = FrameDecoder(16 << 20).feed(data)
    assert [frame.psn for frame in frames if isinstance(frame, Send)] == [0, 1, 2]
    assert frames[1] == Send(1, None, b"A" * 4096)
    assert frames[2] == Send(2, None, b"B" * 4096)
    assert struct.unpack_from("!I", data)[0] == len(filler) + 10
