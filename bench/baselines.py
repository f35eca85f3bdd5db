"""Baselines for rdsx-stress: the same traffic with no RDS layer underneath.

Both baselines run rdsx-stress's own task loops, ledger and rows
(:func:`bench.stress.run_stress`) over a minimal stand-in for two rdsx nodes,
so the only thing that differs from an rdsx run is what carries the messages:

* ``tcp``: plain trio TCP over loopback. One connection between the two nodes
  is shared by all tasks; each node has one writer that coalesces everything
  queued into one ``send_all``; frames are ``len u32 | src port u16 | dst port
  u16 | message``. No sequence numbers, acks, retransmission or congestion map:
  TCP's own reliability is all there is.
* ``zmq``: pyzmq PUSH/PULL sockets over loopback TCP, one pair per direction,
  a message per frame (the ``bench`` extra; skipped with a message when pyzmq
  is not installed).
* ``memory``: each message is handed straight to the peer's socket: no
  transport at all, so this measures rdsx-stress's own cost (task loops,
  ledger, verification, trio scheduling).
* ``verbs``: bare RC SENDs on the same sim fabric rdsx-stress uses, one QP
  per node pair, through the public verbs contract (:mod:`bench.verbs_baseline`):
  what rdsx-stress over rdsx costs without the RDS layer. Every SEND signaled.
* ``verbs-batch``: the same, posted as rdsx's path posts (while SENDs are
  outstanding, one post per scheduler pass of up to 12, only the last signaled).

Run ``python -m bench.baselines KIND -q 4K -a 4K -t 7 -T 10 [--json FILE]`` with KIND one
of ``tcp``, ``zmq``, ``memory``, ``verbs``, ``verbs-batch`` (any rdsx-stress option applies).
"""

from __future__ import annotations

import collections
import functools
import json
import struct
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TextIO

import trio
import trio.testing

from rdsx.errors import AddressInUse, NotBound, SocketClosed

from .options import Options, parse_args
from .stress import Outcome, run_stress

__all__ = [
    "KINDS",
    "BaselineNode",
    "BaselineSocket",
    "main",
    "open_memory_pair",
    "open_tcp_pair",
    "open_zmq_pair",
]

Address = tuple[str, int]
_FRAME = struct.Struct(">IHH")


class BaselineSocket:
    """A datagram endpoint of a :class:`BaselineNode` (the rdsx socket shape)."""

    def __init__(self, node: BaselineNode) -> None:
        self._node = node
        self._port: int | None = None
        self._queue: collections.deque[tuple[bytes, Address]] = collections.deque()
        self._arrived = trio.Event()
        self._closed = False

    def bind(self, port: int = 0) -> int:
        """Bind to ``port`` on the node.

        Raises:
            AddressInUse: another socket of the node has that port.
        """
        if port in self._node.sockets:
            raise AddressInUse(f"port {port} is taken")
        self._node.sockets[port] = self
        self._port = port
        return port

    def sendto_nowait(self, data: bytes, dest: Address) -> int:
        """Queue ``data`` for the peer node's socket on ``dest``'s port; never blocks.

        Raises:
            SocketClosed: the socket was closed.
            NotBound: the socket is not bound.
        """
        if self._closed:
            raise SocketClosed("socket closed")
        if self._port is None:
            raise NotBound("bind first")
        self._node.queue_frame(self._port, dest[1], data)
        return len(data)

    async def sendto(self, data: bytes, dest: Address) -> int:
        """:meth:`sendto_nowait` plus a checkpoint."""
        await trio.lowlevel.checkpoint()
        return self.sendto_nowait(data, dest)

    def deliver(self, data: bytes, source: Address) -> None:
        """Called by the node's reader with a message for this socket."""
        self._queue.append((data, source))
        self._arrived.set()

    async def recvfrom(self) -> tuple[bytes, Address]:
        """The next message and its (address, port) source."""
        while not self._queue:
            self._arrived = trio.Event()
            await self._arrived.wait()
        return self._queue.popleft()

    def close(self) -> None:
        """Unbind; later messages to the port are dropped."""
        self._closed = True
        if self._port is not None:
            self._node.sockets.pop(self._port, None)


class BaselineNode:
    """One end of a baseline pair: sockets by port and the frames waiting to go out."""

    def __init__(self, address: str, peer_address: str) -> None:
        self.address = address
        self.peer_address = peer_address
        self.sockets: dict[int, BaselineSocket] = {}
        self.outgoing: list[tuple[int, int, bytes]] = []
        self.wake = trio.Event()
        #: The ``memory`` baseline: the peer node, which gets every message at once.
        self.direct: BaselineNode | None = None

    def socket(self, *, sndbuf: int, rcvbuf: int) -> BaselineSocket:
        """A new unbound socket (the buffer sizes are ignored: there is no flow control)."""
        return BaselineSocket(self)

    def queue_frame(self, src_port: int, dst_port: int, data: bytes) -> None:
        """Queue one message for the writer (or hand it straight to a memory peer)."""
        if self.direct is not None:
            self.direct.dispatch(src_port, dst_port, data)
            return
        self.outgoing.append((src_port, dst_port, data))
        self.wake.set()

    async def next_batch(self) -> list[tuple[int, int, bytes]]:
        """Everything queued so far (waits until there is something)."""
        while not self.outgoing:
            self.wake = trio.Event()
            await self.wake.wait()
        batch, self.outgoing = self.outgoing, []
        return batch

    def dispatch(self, src_port: int, dst_port: int, data: bytes) -> None:
        """Hand an arrived message to the socket bound on ``dst_port`` (or drop it)."""
        sock = self.sockets.get(dst_port)
        if sock is not None:
            sock.deliver(data, (self.peer_address, src_port))


async def _tcp_writer(node: BaselineNode, stream: trio.SocketStream) -> None:
    while True:
        batch = await node.next_batch()
        out = bytearray()
        for src, dst, data in batch:
            out += _FRAME.pack(len(data), src, dst)
            out += data
        await stream.send_all(out)


async def _tcp_reader(node: BaselineNode, stream: trio.SocketStream) -> None:
    buf = bytearray()
    while True:
        chunk = await stream.receive_some(1 << 18)
        if not chunk:
            return
        buf += chunk
        pos = 0
        while len(buf) - pos >= _FRAME.size:
            length, src, dst = _FRAME.unpack_from(buf, pos)
            end = pos + _FRAME.size + length
            if end > len(buf):
                break
            node.dispatch(src, dst, bytes(buf[pos + _FRAME.size : end]))
            pos = end
        del buf[:pos]


@asynccontextmanager
async def open_tcp_pair(a: str, b: str) -> AsyncIterator[tuple[BaselineNode, BaselineNode]]:
    """Two baseline nodes joined by one loopback TCP connection."""
    node_a, node_b = BaselineNode(a, b), BaselineNode(b, a)
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        stream_a = await trio.open_tcp_stream("127.0.0.1", port)
        stream_b = await listeners[0].accept()
        await listeners[0].aclose()
        for node, stream in ((node_a, stream_a), (node_b, stream_b)):
            nursery.start_soon(_tcp_writer, node, stream)
            nursery.start_soon(_tcp_reader, node, stream)
        try:
            yield node_a, node_b
        finally:
            nursery.cancel_scope.cancel()
            await stream_a.aclose()
            await stream_b.aclose()


async def _zmq_writer(node: BaselineNode, sock: Any, zmq: Any) -> None:
    while True:
        for src, dst, data in await node.next_batch():
            frame = _FRAME.pack(len(data), src, dst) + data
            while True:
                try:
                    sock.send(frame, zmq.NOBLOCK, copy=False)
                    break
                except zmq.Again:
                    await trio.lowlevel.wait_readable(sock.FD)


async def _zmq_reader(node: BaselineNode, sock: Any, zmq: Any) -> None:
    while True:
        try:
            frame = sock.recv(zmq.NOBLOCK)
        except zmq.Again:
            # The FD is edge-triggered: it fires when EVENTS changes, and this
            # socket is only ever read, so after an empty read the next edge is
            # a new message.
            if not sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                await trio.lowlevel.wait_readable(sock.FD)
            continue
        _length, src, dst = _FRAME.unpack_from(frame)
        node.dispatch(src, dst, frame[_FRAME.size :])


@asynccontextmanager
async def open_zmq_pair(a: str, b: str) -> AsyncIterator[tuple[BaselineNode, BaselineNode]]:
    """Two baseline nodes joined by pyzmq PUSH/PULL sockets over loopback TCP.

    Raises:
        ImportError: pyzmq is not installed (``pip install '.[bench]'``).
    """
    import zmq

    ctx = zmq.Context()
    node_a, node_b = BaselineNode(a, b), BaselineNode(b, a)
    socks: list[Any] = []
    try:
        pulls = []
        for _ in range(2):
            pull = ctx.socket(zmq.PULL)
            pull.setsockopt(zmq.RCVHWM, 0)
            port = pull.bind_to_random_port("tcp://127.0.0.1")
            push = ctx.socket(zmq.PUSH)
            push.setsockopt(zmq.SNDHWM, 0)
            push.connect(f"tcp://127.0.0.1:{port}")
            socks += [pull, push]
            pulls.append((push, pull))
        async with trio.open_nursery() as nursery:
            (push_ab, pull_ab), (push_ba, pull_ba) = pulls
            nursery.start_soon(_zmq_writer, node_a, push_ab, zmq)
            nursery.start_soon(_zmq_reader, node_b, pull_ab, zmq)
            nursery.start_soon(_zmq_writer, node_b, push_ba, zmq)
            nursery.start_soon(_zmq_reader, node_a, pull_ba, zmq)
            try:
                yield node_a, node_b
            finally:
                nursery.cancel_scope.cancel()
    finally:
        for s in socks:
            s.close(linger=0)
        ctx.term()


@asynccontextmanager
async def open_memory_pair(a: str, b: str) -> AsyncIterator[tuple[BaselineNode, BaselineNode]]:
    """Two baseline nodes that hand each message straight to the other: the tool's own cost."""
    node_a, node_b = BaselineNode(a, b), BaselineNode(b, a)
    node_a.direct, node_b.direct = node_b, node_a
    yield node_a, node_b


_OPENERS = {"tcp": open_tcp_pair, "zmq": open_zmq_pair, "memory": open_memory_pair}
#: Every kind ``python -m bench.baselines`` runs (``verbs`` is sized from the options).
KINDS = (*_OPENERS, "verbs", "verbs-batch")


def _opener(kind: str, opts: Options) -> Any:
    if kind not in ("verbs", "verbs-batch"):
        return _OPENERS[kind]
    # Imported here: bench.verbs_baseline builds on this module's BaselineNode.
    from .verbs_baseline import POST_MAX, open_verbs_pair

    return functools.partial(
        open_verbs_pair,
        max_message=max(opts.req_bytes, opts.ack_bytes),
        post_max=POST_MAX if kind == "verbs-batch" else None,
        seed=opts.seed,
        port_model=opts.port_model,
    )


async def run_baseline(
    kind: str, opts: Options, stop_on_sigint: bool = False, out: TextIO | None = None
) -> Outcome:
    """Run rdsx-stress's traffic over one of the baselines (:data:`KINDS`)."""
    async with _opener(kind, opts)(opts.recv_addr, opts.send_addr) as (a, b):
        return await run_stress(opts, a, b, out=out, stop_on_sigint=stop_on_sigint)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m bench.baselines KIND [rdsx-stress options]``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in KINDS:
        kinds = ",".join(KINDS)
        print(
            f"usage: python -m bench.baselines {{{kinds}}} [rdsx-stress options]", file=sys.stderr
        )
        return 2
    kind, opts = args[0], parse_args(args[1:])
    if opts.rdma_bytes:
        print("the baselines have no RDMA: -D is rdsx-only", file=sys.stderr)
        return 2
    if kind == "zmq":
        try:
            import zmq  # noqa: F401
        except ImportError:
            print("pyzmq is not installed (pip install '.[bench]'): zmq baseline skipped")
            return 0
    if opts.virtual_time and kind in ("tcp", "zmq"):
        print("--virtual-time needs an in-process baseline (memory or verbs)", file=sys.stderr)
        return 2
    clock = trio.testing.MockClock(autojump_threshold=0) if opts.virtual_time else None
    outcome = trio.run(functools.partial(run_baseline, kind, opts, opts.time == 0), clock=clock)
    if opts.json_path:
        with open(opts.json_path, "w") as fh:
            json.dump({**outcome.report, "baseline": kind}, fh, indent=2)
            fh.write("\n")
    return outcome.exit_status


if __name__ == "__main__":
    sys.exit(main())
