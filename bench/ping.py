"""``rdsx-ping``: rds-ping for rdsx (reference/rds.md §5.4).

``rdsx-ping [-c count] [-i interval] [-I local_addr] [--transport tcp|sim]
[--secret-file PATH] dst`` opens 8 sockets on random ports and rotates through
them, sending a 0-byte message to ``dst`` port 0; the node there answers with
an empty message from port 0 (a pong). Each reply prints ``" %3u: %ld usec"``,
with ``" (addr)"`` if it came from another address, ``" DUP!"`` for a second
reply to one ping, or ``" ERROR: ..."`` if the send failed. Exit status 0 if any
reply arrived, 1 otherwise.

Over ``tcp`` the tool runs its own node on ``-I`` (default: the address a UDP
socket connected to ``dst`` would use) and needs the cluster secret
(``--secret-file`` or ``RDSX_SECRET``). Over ``sim`` the whole fabric is in this
process, so ``dst`` is a second node created here: a demo of the mechanism.

A socket is not reused while its ping is pending; when all 8 are pending, the
oldest ping is given up so the tool never stalls on a dead peer. After the last
ping it waits for outstanding replies for one interval, at least 1 s.
"""

from __future__ import annotations

import argparse
import socket as pysocket
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TextIO

import attrs
import trio

import rdsx

__all__ = ["PingOptions", "PingResult", "main", "parse_interval", "ping", "run_ping"]

#: rds-ping's socket count.
NSOCKETS = 8
_SUFFIXES = (("usec", 1e-6), ("msec", 1e-3), ("us", 1e-6), ("ms", 1e-3), ("s", 1.0))


def parse_interval(text: str) -> float:
    """Parse ``-i``: seconds as a float, or with ``ms``/``msec``/``us``/``usec``.

    Raises:
        ValueError: not a positive number with a known suffix.
    """
    value = text.strip().lower()
    scale = 1.0
    for suffix, factor in _SUFFIXES:
        if value.endswith(suffix):
            value, scale = value[: -len(suffix)], factor
            break
    seconds = float(value) * scale
    if not seconds > 0:
        raise ValueError(f"interval must be > 0: {text!r}")
    return seconds


@attrs.frozen(slots=True, kw_only=True)
class PingOptions:
    """The command line of ``rdsx-ping``.

    Attributes:
        dst: the address to ping.
        count: pings to send (``None``: until interrupted).
        interval: seconds between pings.
        local: ``-I``, this node's address (``None``: chosen as UDP would).
        transport: ``"tcp"`` or ``"sim"``.
        secret_file: where the tcp cluster secret is (else ``RDSX_SECRET``).
        transport_port: the tcp transport's port (both ends use it).
    """

    dst: str
    count: int | None = None
    interval: float = 1.0
    local: str | None = None
    transport: str = "tcp"
    secret_file: str | None = None
    transport_port: int = 18634


@attrs.frozen(slots=True, kw_only=True)
class PingResult:
    """What one run did.

    Attributes:
        sent: pings sent.
        received: first replies received (duplicates not counted).
        duplicates: extra replies.
        errors: sends that failed.
    """

    sent: int
    received: int
    duplicates: int
    errors: int

    @property
    def exit_status(self) -> int:
        """rds-ping's: 0 if any reply arrived, 1 otherwise."""
        return 0 if self.received else 1


@attrs.define(slots=True)
class _Slot:
    """One of the 8 sockets and its ping in flight."""

    sock: rdsx.Socket
    seq: int = 0
    sent_at: float = 0.0
    pending: bool = False


async def ping(
    node: rdsx.Node,
    dst: str,
    *,
    count: int | None,
    interval: float,
    out: TextIO,
    stop: trio.Event | None = None,
) -> PingResult:
    """Ping ``dst`` from ``node`` and print one line per reply.

    Args:
        node: the local node (any transport).
        dst: the address to ping.
        count: pings to send; ``None`` runs until cancelled.
        interval: seconds between pings.
        out: where the reply lines go.
        stop: set it to stop sending early (Ctrl-C); the counts are still returned.

    Returns:
        The counts of the run.
    """
    slots = []
    for _ in range(NSOCKETS):
        sock = node.socket()
        sock.bind(0)
        slots.append(_Slot(sock))
    sent = received = dups = errors = 0
    outstanding = trio.lowlevel.ParkingLot()
    stop = stop if stop is not None else trio.Event()

    def line(seq: int, text: str) -> None:
        out.write(f" {seq:3d}: {text}\n")
        out.flush()

    async def reader(slot: _Slot) -> None:
        nonlocal received, dups
        while True:
            _, (addr, port) = await slot.sock.recvfrom()
            if port != 0:
                continue  # only pongs come from port 0
            usec = int((trio.current_time() - slot.sent_at) * 1e6)
            where = f" ({addr})" if addr != dst else ""
            if slot.pending:
                slot.pending = False
                received += 1
                line(slot.seq, f"{usec} usec{where}")
                outstanding.unpark_all()
            else:
                dups += 1
                line(slot.seq, f"{usec} usec{where} DUP!")

    async with trio.open_nursery() as nursery:
        for slot in slots:
            nursery.start_soon(reader, slot)
        turn = 0
        next_at = trio.current_time()
        while count is None or sent < count:
            with trio.move_on_at(next_at):  # the ping schedule itself
                await stop.wait()
            if stop.is_set():
                break
            next_at += interval
            free = [slots[(turn + k) % NSOCKETS] for k in range(NSOCKETS)]
            free = [s for s in free if not s.pending] or [min(slots, key=lambda s: s.sent_at)]
            slot = free[0]
            turn = (slots.index(slot) + 1) % NSOCKETS
            sent += 1
            slot.seq, slot.sent_at, slot.pending = sent, trio.current_time(), True
            try:
                await slot.sock.sendto(b"", (dst, 0))
            except rdsx.RdsError as exc:
                slot.pending = False
                errors += 1
                line(slot.seq, f"ERROR: {exc}")
        with trio.move_on_after(0 if stop.is_set() else max(interval, 1.0)):
            while any(s.pending for s in slots):
                await outstanding.park()
        nursery.cancel_scope.cancel()
    for slot in slots:
        slot.sock.close()
    return PingResult(sent=sent, received=received, duplicates=dups, errors=errors)


def source_address(dst: str) -> str:
    """The local address a UDP socket connected to ``dst`` would send from.

    Nothing is sent: connecting a UDP socket only picks the route.

    Raises:
        OSError: no route to ``dst``.
    """
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_DGRAM) as probe:
        probe.connect((dst, 9))
        return str(probe.getsockname()[0])


@asynccontextmanager
async def open_ping_node(opts: PingOptions) -> AsyncIterator[rdsx.Node]:
    """The local node of a run: its own tcp node on ``-I``, or a sim pair.

    Raises:
        SecretNotConfigured: tcp without a secret.
        TransportNotFound: an unknown transport.
    """
    transport = rdsx.load_transport(opts.transport)
    if opts.transport == "tcp":
        from transports.tcp import load_secret

        local = opts.local or source_address(opts.dst)
        secret = load_secret(opts.secret_file)
        async with transport.open_network(secret=secret, port=opts.transport_port) as net:
            devices = await net.add_node(local)
            async with rdsx.open_node(local, devices) as node:
                yield node
        return
    local = opts.local or ("127.0.0.2" if opts.dst == "127.0.0.1" else "127.0.0.1")
    async with transport.open_network(seed=0) as net:
        devices = await net.add_node(local)
        if local == opts.dst:
            async with rdsx.open_node(local, devices) as node:
                yield node
            return
        peer_devices = await net.add_node(opts.dst)
        async with (
            rdsx.open_node(opts.dst, peer_devices),
            rdsx.open_node(local, devices) as node,
        ):
            yield node


async def run_ping(
    opts: PingOptions, *, out: TextIO | None = None, stop: trio.Event | None = None
) -> PingResult:
    """Run ``rdsx-ping`` with ``opts``; reply lines go to ``out`` (stdout).

    Args:
        opts: the parsed command line.
        out: where the reply lines go.
        stop: set it to stop early (the console script sets it on Ctrl-C).
    """
    out = out if out is not None else sys.stdout
    async with open_ping_node(opts) as node:
        return await ping(
            node, opts.dst, count=opts.count, interval=opts.interval, out=out, stop=stop
        )


async def _run_until_interrupted(opts: PingOptions) -> PingResult:
    import signal

    stop = trio.Event()
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT) as signals:
                async for _ in signals:
                    stop.set()

        nursery.start_soon(watch)
        result = await run_ping(opts, stop=stop)
        nursery.cancel_scope.cancel()
    return result


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def parse_args(argv: Sequence[str]) -> PingOptions:
    """Parse the command line (exits with a usage message on errors)."""
    parser = argparse.ArgumentParser(prog="rdsx-ping", description="rds-ping for rdsx")
    parser.add_argument("-c", dest="count", type=int, default=None, help="pings to send")
    parser.add_argument(
        "-i", dest="interval", default="1", help="seconds between pings (ms/msec/us/usec)"
    )
    parser.add_argument("-I", dest="local", default=None, help="local address")
    parser.add_argument("--transport", choices=("tcp", "sim"), default="tcp")
    parser.add_argument("--secret-file", default=None, help="tcp cluster secret file")
    parser.add_argument("--transport-port", type=int, default=18634, help="tcp port (18634)")
    parser.add_argument("dst")
    args = parser.parse_args(list(argv))
    try:
        interval = parse_interval(args.interval)
    except ValueError as exc:
        parser.error(str(exc))
    if args.count is not None and args.count < 1:
        parser.error("count must be >= 1")
    return PingOptions(
        dst=args.dst,
        count=args.count,
        interval=interval,
        local=args.local,
        transport=args.transport,
        secret_file=args.secret_file,
        transport_port=args.transport_port,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The ``rdsx-ping`` console script; returns the exit status."""
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = trio.run(_run_until_interrupted, opts)
    except (rdsx.RdsError, OSError, BaseExceptionGroup) as exc:
        leaves = _leaves(exc)
        if not all(isinstance(e, (rdsx.RdsError, OSError)) for e in leaves):
            raise
        for leaf in leaves:
            print(f"rdsx-ping: {leaf}", file=sys.stderr)
        return 1
    return result.exit_status


if __name__ == "__main__":
    sys.exit(main())
