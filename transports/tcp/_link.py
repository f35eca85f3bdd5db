"""One TCP connection carrying frames: a batching writer and a batch-parsing reader.

A :class:`Link` is created around an accepted or connected stream. During the
handshake its owner drives it step by step (:meth:`Link.next_frame`,
:meth:`Link.flush`); afterwards :meth:`Link.run` starts exactly one reader and
one writer for it. Synchronous code (``post_send``, the responder) only calls
:meth:`Link.send` or :meth:`Link.send_parts`, which append to a list: the writer
hands everything queued since its last call to one scatter-gather ``sendmsg``,
so frames are batched for free and a SEND's payload (a view of registered
memory) is copied only by the kernel.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
from typing import Any, Protocol

import trio

from rdsx.errors import RemoteProtocolError

from ._frames import Frame, FrameDecoder, ReadReq
from ._stats import Counters

__all__ = ["PRE_AUTH_MAX_FRAME", "Link", "LinkHandler", "StalledPeer"]

log = logging.getLogger("rdsx.tcp.link")

#: Frames before authentication are small control maps; refuse anything larger.
PRE_AUTH_MAX_FRAME = 4096
_RECV_CHUNK = 256 * 1024
#: The most buffers one sendmsg takes (Linux's IOV_MAX).
_IOV_MAX = 1024
#: Stop reading from a peer while this much of our answer to it is unsent: a peer
#: that asks (RDMA READs) without reading the responses is slowed by TCP, not by
#: our memory.
HIGH_WATER = 32 * 1024 * 1024
_LINGER_ABORT = struct.pack("ii", 1, 0)


class StalledPeer(RemoteProtocolError):
    """The peer started a frame and did not finish it within the frame timeout."""


class Fault(Protocol):
    """The fault hook a link consults (the network's injected partitions)."""

    def blocked(self, a: str, b: str) -> bool:
        """True while traffic between ``a`` and ``b`` is lost."""

    async def wait_unblocked(self, a: str, b: str) -> None:
        """Return once traffic between ``a`` and ``b`` flows again."""


class LinkHandler(Protocol):
    """What a link's owner (a QP, a CM id) implements."""

    def frames_received(self, link: Link, frames: list[Frame]) -> None:
        """Handle one batch of frames, in order (may call ``link.send``).

        Raises:
            RemoteProtocolError: a frame that is not legal here; the link is reset.
        """

    def link_closed(self, link: Link, error: BaseException | None) -> None:
        """The link is gone: ``error`` is None after EOF or a local close."""


class Link:
    """An authenticated (or authenticating) TCP connection carrying frames.

    Args:
        stream: the connected stream (owned from now on).
        counters: where to count frames, batches and resets.
        local: this side's address; ``peer``: the other side's (for the fault hook).
        frame_timeout: how long a peer may take to finish a frame it started.
        fault: the fault hook. While it blocks the two addresses, data frames (of a
            running link) either way are lost, which is what RC retries repair; the
            handshake and CM frames before :meth:`run` are only held back until the
            partition heals, as TCP's own retransmission would do.
    """

    def __init__(
        self,
        stream: trio.SocketStream,
        counters: Counters,
        *,
        local: str,
        peer: str,
        frame_timeout: float,
        fault: Fault,
    ) -> None:
        self.stream = stream
        self.counters = counters
        self.local = local
        self.peer = peer
        self.frame_timeout = frame_timeout
        self._fault = fault
        self._blocked = fault.blocked
        self._lossy = False  # frames are dropped (not held) while partitioned once running
        self.decoder = FrameDecoder(PRE_AUTH_MAX_FRAME)
        #: The largest frame the peer said it accepts (set by the handshake).
        self.peer_max_frame = PRE_AUTH_MAX_FRAME
        self._pending: list[Frame] = []
        self._out: list[bytes | memoryview] = []
        self._out_frames = 0
        # The parts the writer is sending, and the prefix of them inside sendmsg.
        self._sending: list[bytes | memoryview] | None = None
        self._batch: list[bytes | memoryview] | None = None
        self._unsent = 0  # bytes queued or not yet taken by the kernel
        self._drained = trio.Event()
        self._wake = trio.Event()
        self._cancel = trio.CancelScope()
        self._closing = False
        self._error: BaseException | None = None
        self._running = False
        self.closed = False
        with contextlib.suppress(OSError):  # a stream that died before we got here
            stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)

    # ------------------------------------------------------------------ sending

    @property
    def partitioned(self) -> bool:
        """True while the fault hook discards this link's frames."""
        return self._blocked(self.local, self.peer)

    def send(self, frame: bytes) -> None:
        """Queue an encoded frame; never blocks. Dropped if closed or partitioned."""
        if self.closed or self._closing:
            return
        if self._lossy and self._blocked(self.local, self.peer):
            self.counters.tcp_fault_drops += 1
            return
        self._out.append(frame)
        self._out_frames += 1
        self._unsent += len(frame)
        self._wake.set()

    def send_parts(self, parts: list[bytes | memoryview], frames: int, size: int) -> None:
        """Queue ``frames`` encoded frames given as consecutive ``parts`` of ``size`` bytes.

        A frame may span parts (a SEND's header, then a view of its payload): the
        writer's ``sendmsg`` gathers them, so the kernel's is the one copy. Like
        :meth:`send`, never blocks.
        """
        if self.closed or self._closing:
            return
        if self._lossy and self._blocked(self.local, self.peer):
            self.counters.tcp_fault_drops += frames
            return
        self._out += parts
        self._out_frames += frames
        self._unsent += size
        self._wake.set()

    async def flush(self) -> None:
        """Write everything queued (handshake phase only, before :meth:`run`)."""
        if self._out:
            await self._fault.wait_unblocked(self.local, self.peer)
            data = b"".join(self._take())
            await self.stream.send_all(data)
            self._unsent -= len(data)

    def _take(self) -> list[bytes | memoryview]:
        """Everything queued, as the parts of one send."""
        parts, self._out = self._out, []
        self.counters.tcp_frames_tx += self._out_frames
        self._out_frames = 0
        self.counters.tcp_send_batches += 1
        return parts

    # ------------------------------------------------------------------ receiving

    async def _receive_batch(self) -> list[Frame] | None:
        """Return the next non-empty batch of frames, or None at EOF.

        Raises:
            RemoteProtocolError: malformed bytes, or a peer stalled mid-frame.
        """
        if self._pending:
            frames, self._pending = self._pending, []
            return frames
        deadline = trio.current_time() + self.frame_timeout
        while True:
            if self.decoder.partial:
                with trio.move_on_at(deadline) as scope:
                    data = await self.stream.receive_some(_RECV_CHUNK)
                if scope.cancelled_caught:
                    self.counters.tcp_frame_timeouts += 1
                    raise StalledPeer(f"peer {self.peer} stalled mid-frame")
            else:
                data = await self.stream.receive_some(_RECV_CHUNK)
                deadline = trio.current_time() + self.frame_timeout
            if not data:
                if self.decoder.partial:
                    raise RemoteProtocolError(f"peer {self.peer} closed mid-frame")
                return None
            frames = self.decoder.feed(data)
            if frames:
                self.counters.tcp_frames_rx += len(frames)
                self.counters.tcp_recv_batches += 1
                if self._blocked(self.local, self.peer):
                    if self._lossy:
                        self.counters.tcp_fault_drops += len(frames)
                        continue
                    await self._fault.wait_unblocked(self.local, self.peer)
                return frames

    async def next_frame(self) -> Frame:
        """Return the next frame (handshake phase).

        Raises:
            RemoteProtocolError: malformed bytes, a stall, or EOF before a frame.
        """
        if not self._pending:
            frames = await self._receive_batch()
            if frames is None:
                raise RemoteProtocolError(f"peer {self.peer} closed during the handshake")
            self._pending = frames
        return self._pending.pop(0)

    # ------------------------------------------------------------------ running

    async def run(self, handler: LinkHandler, *, lossy: bool = True) -> None:
        """Read and write until EOF, an error or :meth:`close`; then tell ``handler``.

        ``lossy``: an injected partition drops this link's frames (a QP stream, whose
        RC layer recovers); otherwise it only delays them (the CM's DREQ).

        Never raises for the link's own failures: a malformed or stalled peer is
        counted and reported to ``handler.link_closed`` with the error.
        """
        self._running = True
        self._lossy = lossy
        try:
            with self._cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._guarded, self._writer, nursery.cancel_scope)
                    await self._guarded(self._reader, nursery.cancel_scope, handler)
        finally:
            self._abort()
        if not self._closing:
            handler.link_closed(self, self._error)

    async def _guarded(self, fn: Any, scope: trio.CancelScope, *args: Any) -> None:
        """Run the reader or the writer; its end (or failure) ends the other one too."""
        try:
            await fn(*args)
        except RemoteProtocolError as exc:
            if not isinstance(exc, StalledPeer):
                self.counters.tcp_protocol_errors += 1
            self.counters.tcp_conn_reset += 1
            log.info("resetting link %s -> %s: %s", self.local, self.peer, exc)
            self._error = exc
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._error = self._error or exc
        scope.cancel()

    async def _reader(self, handler: LinkHandler) -> None:
        while True:
            frames = await self._receive_batch()
            if frames is None:
                return
            # A READ request is the one frame whose answer can be large: hand them over one
            # at a time and stop reading while the answers pile up unsent.
            if not self.decoder.read_requests:  # none since the last look: the whole batch
                handler.frames_received(self, frames)
                while self._unsent > HIGH_WATER:
                    self._drained = trio.Event()
                    await self._drained.wait()
                continue
            self.decoder.read_requests = 0
            start, count = 0, len(frames)
            while start < count:
                end = start
                while end < count and type(frames[end]) is not ReadReq:
                    end += 1
                end = min(end + 1, count)
                handler.frames_received(self, frames if end - start == count else frames[start:end])
                start = end
                while self._unsent > HIGH_WATER:
                    self._drained = trio.Event()
                    await self._drained.wait()

    async def _writer(self) -> None:
        while True:
            if not self._out:
                if self._closing:
                    return
                self._wake = trio.Event()
                await self._wake.wait()
                continue
            if not self._lossy:
                await self._fault.wait_unblocked(self.local, self.peer)
            await self._send_parts(self._take())
            if self._unsent <= HIGH_WATER:
                self._drained.set()

    async def _send_parts(self, parts: list[bytes | memoryview]) -> None:
        """Send ``parts`` with scatter-gather ``sendmsg``: no joined copy of the payloads.

        ``parts`` (and the prefix handed to the kernel) stay visible to
        :meth:`close` while this runs, so a flushing close can copy the payload
        views before their WRs complete and their memory is reused.
        """
        sock = self.stream.socket
        self._sending = parts
        try:
            while parts:
                batch = parts if len(parts) <= _IOV_MAX else parts[:_IOV_MAX]
                self._batch = batch
                sent = await sock.sendmsg(batch)
                self._unsent -= sent
                done = 0
                while done < len(batch) and sent >= len(batch[done]):
                    sent -= len(batch[done])
                    done += 1
                if sent:
                    parts[done] = memoryview(parts[done])[sent:]
                del parts[:done]
        finally:
            self._sending = self._batch = None

    def _copy_views(self) -> None:
        """Replace every payload view still to be sent by a copy of its bytes."""
        for parts in (self._out, self._sending, self._batch):
            if parts:
                for index, part in enumerate(parts):
                    if type(part) is memoryview:
                        parts[index] = bytes(part)

    def close(self, *, flush: bool = False) -> None:
        """Close the link. With ``flush`` the frames already queued go out first.

        A flushing close of a link whose :meth:`run` has not started yet leaves
        the sending to ``run``. The handler is not told about a close it asked for.
        """
        if self.closed:
            return
        self._closing = True
        if flush:
            # Copy what is not sent yet: its WRs complete (flushed) before the writer runs
            # again, and their owners may then reuse the memory the payload views point into.
            self._copy_views()
            self._wake.set()
            # The writer ends the run after its last send_all; bound how long that may take.
            self._cancel.deadline = min(self._cancel.deadline, trio.current_time() + 1.0)
            return
        self._cancel.cancel()
        self._abort()

    def _abort(self) -> None:
        """Close the socket now, with an RST if data may still be in flight."""
        if self.closed:
            return
        self.closed = True
        sock = self.stream.socket
        try:
            if not self._closing:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
        except OSError:
            pass
        sock.close()
