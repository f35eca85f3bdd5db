"""Routing policies that inject faults: drop, duplicate, delay, reorder, partition.

Each returns a callable to assign to ``fabric.route_packet``; it decides with
the fabric's seeded RNG and hands survivors to the policy that was installed
before (normally :meth:`Fabric.deliver_packet`), so policies stack.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .fabric import Fabric
from .packet import Packet

__all__ = ["chaos", "partitioned"]

Route = Callable[[Packet], None]


def chaos(
    fabric: Fabric,
    *,
    drop: float = 0.0,
    duplicate: float = 0.0,
    delay: float = 0.0,
    max_delay: float = 50e-6,
) -> Route:
    """A lossy, duplicating, reordering route (FakeNet's DTLS-test shape).

    Args:
        fabric: whose RNG decides and whose ``deliver_packet`` delivers.
        drop: probability a packet is lost.
        duplicate: probability a packet is delivered twice.
        delay: probability a packet is held back up to ``max_delay`` seconds
            (which reorders it behind later ones).
        max_delay: the largest extra delay.

    Returns:
        A routing policy for ``fabric.route_packet``.
    """
    rng = fabric.random
    deliver = fabric.deliver_packet

    def route(packet: Packet) -> None:
        if rng.random() < drop:
            fabric.drop_packet(packet, "chaos")
            return
        copies = 2 if rng.random() < duplicate else 1
        for _ in range(copies):
            extra = rng.uniform(0.0, max_delay) if rng.random() < delay else 0.0
            deliver(packet, extra)

    return route


@contextmanager
def partitioned(fabric: Fabric, a: Callable[[], int], b: Callable[[], int]) -> Iterator[None]:
    """While open, every packet between the LIDs ``a()`` and ``b()`` is lost.

    ``a`` and ``b`` are evaluated per packet, so a partition between two
    devices follows them if their LIDs change. The previous policy is restored
    on exit (policies installed meanwhile are kept only if they wrapped this one).
    """
    inner = fabric.route_packet

    def route(packet: Packet) -> None:
        ends = {a(), b()}
        if packet.src_lid in ends and packet.dst_lid in ends and packet.src_lid != packet.dst_lid:
            fabric.drop_packet(packet, "partition")
            return
        inner(packet)

    fabric.route_packet = route
    try:
        yield
    finally:
        if fabric.route_packet is route:
            fabric.route_packet = inner
