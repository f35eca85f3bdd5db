"""One rdsx node on the tcp transport inside a network namespace, for test_netns_migration.

Run as ``ip netns exec NS python tests/netns_worker.py --addr A --peer B --mode M
[--grace G]``. It opens a tcp network that follows the namespace's addresses
(``watch_addresses``), runs a node at A, and streams numbered datagrams to B
(port 4000 to port 4000) every ``--interval`` seconds while it receives B's.

It speaks JSON lines on stdout, every one with ``t`` = ``time.monotonic()``
(CLOCK_MONOTONIC is shared by all namespaces, so the test can compare them):

* ``{"event": "ready"}`` once the node serves its first device;
* ``{"event": "attached", "name"}`` when the transport has a new device for the
  address (its arrival; seen within 1 ms);
* ``{"event": "device", "name"}`` each time the node's source hands the node (or the
  transparent shim) a device;
* ``{"event": "removed", "name"}`` when the current device has been removed;
* ``{"event": "flowing"}`` when the first datagram from the peer arrived;
* ``{"event": "sent", "count", "unacked"}`` after ``stop`` (unacked bytes left);
* ``{"event": "received", "seqs", "times", "shim"}`` after ``report`` (``shim``: the
  transparent shim's release and resume times per migration, ms).

Commands on stdin, one per line: ``start`` (begin sending), ``unplug`` (hide the
address from the watcher: the transport removes the device with the grace
period, as a hot-unplug request would, while the device still works),
``plug`` (stop hiding), ``stop`` (stop sending, wait for every ack), ``report``,
``quit``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import trio

import rdsx
from rdsx.verbs import Device, DeviceSource
from transports.tcp import LocalAddresses, TcpNode, TcpTransport, system_addresses

PORT = 4000


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout, stamped with the shared monotonic clock."""
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


class _Hiding(LocalAddresses):
    """The system's addresses minus the hidden ones."""

    def __init__(self, present: LocalAddresses, hidden: set[str]) -> None:
        self._present = present
        self._hidden = hidden

    def __contains__(self, address: object) -> bool:
        return address not in self._hidden and address in self._present


class _Stamped(DeviceSource):
    """The node's device source, reporting each arrival as the node receives it."""

    def __init__(self, inner: TcpNode) -> None:
        self._inner = inner

    async def next_device(self) -> Device:
        device = await self._inner.next_device()
        emit("device", name=device.name)
        return device


async def _watch_removals(tcp_node: TcpNode) -> None:
    watched = None
    while True:
        if watched is not None and watched.removed:
            emit("removed", name=watched.name)
            watched = None
        if watched is None and tcp_node.device is not None and not tcp_node.device.removed:
            watched = tcp_node.device
            emit("attached", name=watched.name)
        # The transport has no removal callback for observers; a 1 ms look is
        # far finer than the downtime measured.
        await trio.sleep(0.001)


def _shim_figures(node: rdsx.Node) -> list[dict[str, Any]]:
    """The transparent shim's own timeline of each migration, in ms (none in reconnect mode)."""
    core = getattr(node.device, "_core", None)
    if core is None:
        return []
    figures = []
    for record in core.recorder.snapshot().migrations:
        release, resume = record.release_seconds, record.resume_seconds
        figures.append(
            {
                "release_ms": None if release is None else release * 1e3,
                "resume_ms": None if resume is None else resume * 1e3,
            }
        )
    return figures


async def main(args: argparse.Namespace) -> None:
    hidden: set[str] = set()

    def addresses() -> LocalAddresses:
        return _Hiding(system_addresses(), hidden)

    grace = 0.0 if args.grace is None else args.grace
    options: dict[str, Any] = {
        "watch_addresses": addresses,
        "watch_interval": args.watch_interval,
        "removal_grace": grace,
        "qp_timeout": 0.05,
    }
    sent = 0
    seqs: list[int] = []
    times: list[float] = []
    go = trio.Event()
    stop = trio.Event()
    async with TcpTransport().open_network(**options) as net:
        tcp_node = await net.add_node(args.addr)
        async with (
            rdsx.open_node(args.addr, _Stamped(tcp_node), mode=args.mode) as node,
            trio.open_nursery() as nursery,
        ):
            sock = node.socket()
            sock.bind(PORT)
            nursery.start_soon(_watch_removals, tcp_node)

            async def receiver() -> None:
                while True:
                    data = await sock.recv()
                    times.append(time.monotonic())
                    seqs.append(int.from_bytes(data[:8], "big"))
                    if len(seqs) == 1:
                        emit("flowing")

            async def sender() -> None:
                nonlocal sent
                await go.wait()
                next_at = trio.current_time()
                while not stop.is_set():
                    await sock.sendto((sent + 1).to_bytes(8, "big"), (args.peer, PORT))
                    sent += 1
                    next_at += args.interval
                    with trio.move_on_at(next_at):  # the send schedule
                        await stop.wait()

            nursery.start_soon(receiver)
            nursery.start_soon(sender)
            emit("ready")
            commands = trio.wrap_file(sys.stdin)
            while True:
                line = (await commands.readline()).strip()
                if line == "start":
                    go.set()
                elif line == "unplug":
                    hidden.add(args.addr)
                    net.rescan()  # not a kernel change, so netlink does not say it
                elif line == "plug":
                    hidden.discard(args.addr)
                    net.rescan()
                elif line == "stop":
                    stop.set()
                    with trio.move_on_after(10):
                        while sock.snd_bytes:
                            await trio.sleep(0.005)  # waiting on the peer's acks
                    emit("sent", count=sent, unacked=sock.snd_bytes)
                elif line == "report":
                    emit("received", seqs=seqs, times=times, shim=_shim_figures(node))
                elif line in ("quit", ""):
                    nursery.cancel_scope.cancel()
                    return


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--mode", choices=("reconnect", "transparent"), default="reconnect")
    parser.add_argument("--grace", type=float, default=None)
    parser.add_argument("--interval", type=float, default=0.001)
    # The kernel's netlink news bring each look; the poll is only the fallback.
    parser.add_argument("--watch-interval", type=float, default=0.5)
    parser.add_argument("--log", action="store_true", help="rdsx debug log on stderr")
    options = parser.parse_args()
    if options.log:
        import logging

        class _Mono(logging.Formatter):
            def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
                return f"{time.monotonic():.4f}"

        handler = logging.StreamHandler()
        handler.setFormatter(_Mono(f"%(asctime)s {options.addr} %(name)s %(message)s"))
        logging.basicConfig(level=logging.DEBUG, handlers=[handler])
    trio.run(main, options)
