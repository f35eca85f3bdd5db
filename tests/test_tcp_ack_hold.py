"""The link holds a QP's cumulative ACK for the next frame going back, or sends it alone."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio
import trio.testing

from transports.tcp._frames import Ack, FrameDecoder, Send, encode_ack, encode_send
from transports.tcp._link import Link
from transports.tcp._stats import Counters


class _NoFault:
    def blocked(self, a: str, b: str) -> bool:
        return False

    async def wait_unblocked(self, a: str, b: str) -> None:
        return None


class _Ignore:
    def frames_received(self, link: Link, frames: list[object]) -> None:
        return None

    def link_closed(self, link: Link, error: BaseException | None) -> None:
        return None


@asynccontextmanager
async def _running_link() -> AsyncIterator[tuple[Link, trio.SocketStream, Counters]]:
    left, right = trio.socket.socketpair()
    counters = Counters()
    link = Link(
        trio.SocketStream(left),
        counters,
        local="127.0.0.1",
        peer="127.0.0.2",
        frame_timeout=5.0,
        fault=_NoFault(),
    )
    peer = trio.SocketStream(right)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(link.run, _Ignore())
        await trio.testing.wait_all_tasks_blocked()
        yield link, peer, counters
        link.close()
    await peer.aclose()


async def _frames(peer: trio.SocketStream, count: int) -> list[object]:
    decoder = FrameDecoder(1 << 20)
    frames: list[object] = []
    while len(frames) < count:
        frames.extend(decoder.feed(await peer.receive_some(65536)))
    return frames


async def test_held_ack_rides_with_the_next_frame(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(5):
        async with _running_link() as (link, peer, counters):
            link.send_ack(encode_ack(1), 60.0)
            link.send_ack(encode_ack(2), 60.0)  # cumulative: replaces the held one
            link.send(encode_send(7, None, b"reply"))
            assert await _frames(peer, 2) == [Ack(2), Send(7, None, b"reply")]
            assert counters.tcp_acks_tx == 1
            assert counters.tcp_send_batches == 1  # one write for both


async def test_held_ack_goes_alone_after_its_delay(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(5):
        async with _running_link() as (link, peer, counters):
            start = trio.current_time()
            link.send_ack(encode_ack(5), 0.001)
            assert await _frames(peer, 1) == [Ack(5)]
            assert trio.current_time() - start >= 0.001
            assert counters.tcp_acks_tx == 1
