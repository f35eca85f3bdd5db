"""Engine micro-benchmarks: the data-header codec (struct vs msgpack) and the engine's
per-message cost, with no I/O at all.

Run: ``taskset -c 0,1 .venv/bin/python -m bench.engine_codec``

1. Codec: encode + decode one 4 KiB single-fragment message, both ways, in one run:
   * ``struct``: ``HEADER.pack`` of the 48-byte header, ``header + payload`` (the copy a
     node makes into its send buffer), then ``HEADER_FIXED.unpack_from`` and the payload
     copy the receiver keeps (``bytes(view[48:])``);
   * ``msgpack``: ``packb([seq, ack, len, sport, dport, flags, credit, index, count, csum,
     payload])`` and ``unpackb`` of it (the payload is copied in both directions too);
   and the same for the header fields alone (no payload), where the codec is all there is.
All times are CPU time of this process (``time.process_time``), so other work on the
shared machine inflates them less than wall-clock time would.

2. Engine: two connections joined in memory, no fault: ``send`` -> ``frames_to_send`` ->
   ``receive_frame`` -> ``next_event`` plus the acks and credit updates flowing back, per
   message, for 64 B, 4 KiB and 64 KiB messages; then 64 B and 4 KiB again with the
   ``batch_acks`` and ``on_message`` options (messages through a callback, one event per ack).
"""

from __future__ import annotations

import argparse
import inspect
import sys
import time
import timeit
from typing import Any

import msgpack

from rdsx.engine import Connection, EngineConfig, MessageReceived
from rdsx.engine._wire import HEADER, HEADER_FIXED

PAYLOAD = bytes(range(256)) * 16  # 4 KiB


def _struct_round_trip() -> None:
    header = HEADER.pack(123456, 123400, 4096, 4001, 4002, 2, 17, 0, 1, 0, b"")
    wire = header + PAYLOAD
    view = memoryview(wire)
    HEADER_FIXED.unpack_from(view)
    bytes(view[48:])


def _msgpack_round_trip() -> None:
    wire = msgpack.packb([123456, 123400, 4096, 4001, 4002, 2, 17, 0, 1, 0, PAYLOAD])
    msgpack.unpackb(wire)


def _struct_header_only() -> None:
    HEADER_FIXED.unpack_from(HEADER.pack(123456, 123400, 4096, 4001, 4002, 2, 17, 0, 1, 0, b""))


def _msgpack_header_only() -> None:
    msgpack.unpackb(msgpack.packb([123456, 123400, 4096, 4001, 4002, 2, 17, 0, 1, 0]))


def paired_ns(first: object, second: object, number: int) -> tuple[float, float]:
    """Best of 7 interleaved runs of ``number`` calls each, in ns per call.

    Interleaving puts both codecs under the same background load (the machine is shared).
    """
    timers = [
        timeit.Timer(first, timer=time.process_time),  # type: ignore[arg-type]
        timeit.Timer(second, timer=time.process_time),  # type: ignore[arg-type]
    ]
    best = [float("inf"), float("inf")]
    for _ in range(7):
        for i, timer in enumerate(timers):
            best[i] = min(best[i], timer.timeit(number) / number * 1e9)
    return best[0], best[1]


def engine_per_message_us(size: int, count: int, *, options: bool = False) -> float:
    """µs of engine work per message (both ends) for ``count`` messages of ``size`` bytes.

    With ``options``, both engines use ``batch_acks`` and ``on_message`` (what the node
    uses when it can): received messages are counted by the callback, not as events.
    """
    config = EngineConfig()
    received = 0

    def on_message(sport: int, dport: int, data: bytes, ext: bytes, seq: int) -> None:
        nonlocal received
        received += 1

    extra: dict[str, Any] = {"batch_acks": True, "on_message": on_message} if options else {}
    a = Connection("127.0.0.1", "127.0.0.2", generation=1, config=config, **extra)
    b = Connection("127.0.0.2", "127.0.0.1", generation=2, config=config, **extra)
    a.start_connect(0.0)
    a.receives_posted(256)
    hs_a = a.handshake()
    b.incoming_connect(0.0)
    b.receives_posted(256)
    hs_b = b.handshake()
    b.transport_up(hs_a, 0.0)
    a.transport_up(hs_b, 0.0)
    payload = bytes(size)

    def run() -> None:
        nonlocal received
        for _ in range(count):
            a.send(4001, 4002, payload)
            for header, body in a.frames_to_send(0.0, 64):
                b.receive_frame(header + body, 0.0)
                b.receives_posted(1)
            while (event := b.next_event()) is not None:
                if type(event) is MessageReceived:
                    received += 1
            for header, body in b.frames_to_send(0.0, 64):
                a.receive_frame(header + body, 0.0)
                a.receives_posted(1)
            while a.next_event() is not None:
                pass

    seconds = min(timeit.repeat(run, repeat=3, number=1, timer=time.process_time))
    assert received == 3 * count
    return seconds / count * 1e6


def main(argv: list[str] | None = None) -> int:
    """Print both codec figures and the engine's per-message cost."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--number", type=int, default=200_000, help="codec calls per run")
    parser.add_argument("--messages", type=int, default=20_000, help="engine messages per run")
    args = parser.parse_args(argv)
    print(f"python {sys.version.split()[0]}, msgpack {msgpack.version}")
    s, m = paired_ns(_struct_round_trip, _msgpack_round_trip, args.number)
    print(f"codec 4 KiB encode+decode: struct {s:8.0f} ns   msgpack {m:8.0f} ns   ({m / s:.2f}x)")
    s, m = paired_ns(_struct_header_only, _msgpack_header_only, args.number)
    print(f"codec header only        : struct {s:8.0f} ns   msgpack {m:8.0f} ns   ({m / s:.2f}x)")
    for size in (64, 4096, 65536):
        n = args.messages if size <= 4096 else max(args.messages // 16, 100)
        print(f"engine a->b, {size:6d} B messages: {engine_per_message_us(size, n):7.2f} us/msg")
    if "batch_acks" in inspect.signature(Connection).parameters:  # absent from older engines
        for size in (64, 4096):
            us = engine_per_message_us(size, args.messages, options=True)
            print(f"engine a->b, {size:6d} B, batch_acks+on_message: {us:7.2f} us/msg")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
