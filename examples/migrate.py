"""Top-down live migration: a VF is pulled from under a node mid-stream and comes back.

Alice streams numbered datagrams to Bob. Midway, Alice's VM loses its VF with
a 2-second grace period (the node drains, disconnects and closes its context
in time, so the detach succeeds), spends 50 ms "in transit", and gets a new VF
on another host. The node reconnects and resends what Bob had not acknowledged;
Bob's node drops what it already had. Bob sees a pause, and every message once
and in order. Runs in virtual time, so it finishes at once.

Run it with ``python examples/migrate.py``.
"""

from __future__ import annotations

import itertools

import trio
import trio.testing

import rdsx
from transports.sim import open_fabric

ALICE, BOB = "127.0.0.1", "127.0.0.2"
COUNT = 400


async def main() -> list[str]:
    """Run the migration; return (and print) the outcome."""
    lines: list[str] = []
    async with open_fabric(seed=3) as fabric:
        host_a, host_b, host_c = (fabric.add_host(name, num_vfs=2) for name in "abc")
        vm_a = fabric.create_vm("alice", address=ALICE)
        vm_b = fabric.create_vm("bob", address=BOB)
        await fabric.attach(vm_a, host_a)
        await fabric.attach(vm_b, host_b)
        async with (
            rdsx.open_node(ALICE, vm_a.devices) as alice,
            rdsx.open_node(BOB, vm_b.devices) as bob,
        ):
            tx = alice.socket()
            tx.bind(4000)
            rx = bob.socket()
            rx.bind(5000)
            arrivals: list[tuple[float, int]] = []

            async def stream() -> None:
                for k in range(COUNT):
                    await tx.sendto(k.to_bytes(4, "big"), (BOB, 5000))
                    await trio.sleep(0.001)  # 1,000 messages per second

            async def migrate() -> None:
                await trio.sleep(0.2)
                await fabric.detach(vm_a, grace=2.0)  # DeviceBusy if the node held on
                await trio.sleep(0.05)  # the VM moves
                await fabric.attach(vm_a, host_c)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream)
                nursery.start_soon(migrate)
                for _ in range(COUNT):
                    data = await rx.recv()
                    arrivals.append((trio.current_time(), int.from_bytes(data, "big")))
            numbers = [k for _, k in arrivals]
            gap = max(b[0] - a[0] for a, b in itertools.pairwise(arrivals))
            stats = alice.statistics()
            lines.append(
                f"bob received {len(numbers)} messages, in order: {numbers == sorted(numbers)}"
            )
            lines.append(
                f"lost: {COUNT - len(set(numbers))}, duplicated: {len(numbers) - len(set(numbers))}"
            )
            lines.append(f"longest pause at bob: {gap * 1000:.1f} ms")
            where = alice.device.name if alice.device is not None else None
            lines.append(
                f"alice: {stats.device_removal} removal, {stats.device_arrival} devices, "
                f"{stats.conn_reset} connection reset, now on {where}"
            )
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
