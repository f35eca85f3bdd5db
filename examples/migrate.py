"""Live migration under load: the VMM moves a VM while it streams, once per mode.

Alice and Bob stream numbered datagrams to each other, 1,000 a second each way.
After 0.2 s the VMM live-migrates Alice's VM to another host (late detach, the
seed's timing profile, a 64 MiB guest): her VF gets a removal notice, the
guest is paused for the stop-and-copy, the restore and the new VF's hot-plug,
and the subnet manager makes the new VF usable. This runs once per mode:
``reconnect`` (RDS reconnects and resends) and ``transparent`` (the verbs shim
hides the removal). Each run prints the migration's timeline and what each
receiver saw: how many messages, whether every one came exactly once and in
order, the longest gap between two deliveries, and that gap minus the VM's own
pause.

With ``--standby`` both VMs also get an emulated standby device
(``transports/sim/standby.py``) that carries their traffic while the VF is
away; the VMM then attaches the new VF to the running guest, so the pause is
shorter and the gap is little more than the pause. Runs in virtual time, so it
finishes in seconds.

Run it with ``python examples/migrate.py [--standby]``.
"""

from __future__ import annotations

import argparse
import itertools

import trio
import trio.testing

import rdsx
from rdsx.node import Mode
from transports.sim import SimTransport
from transports.sim.timeline import Timeline
from transports.sim.vmm import VMM

ALICE, BOB = "127.0.0.1", "127.0.0.2"
PORT = 4000
#: Messages each way: 1,000 a second for 3.3 s, past the migration's end (3.0 s).
COUNT = 3300
MODES: tuple[Mode, ...] = ("reconnect", "transparent")


async def stream(tx: rdsx.Socket, to: str) -> None:
    """Send COUNT numbered datagrams to ``to``, one a millisecond."""
    for k in range(COUNT):
        await tx.sendto(k.to_bytes(4, "big"), (to, PORT))
        await trio.sleep(0.001)


async def receive(rx: rdsx.Socket, arrivals: list[tuple[float, int]]) -> None:
    """Receive COUNT datagrams, noting when each arrived."""
    for _ in range(COUNT):
        data = await rx.recv()
        arrivals.append((trio.current_time(), int.from_bytes(data, "big")))


def verdict(name: str, arrivals: list[tuple[float, int]], pause: float) -> str:
    """One line on what a receiver saw."""
    numbers = [k for _, k in arrivals]
    exact = "yes" if numbers == list(range(COUNT)) else "NO"
    gap = max(b[0] - a[0] for a, b in itertools.pairwise(arrivals))
    return (
        f"{name} received {len(numbers)}, exactly once and in order: {exact}, "
        f"longest gap {gap * 1000:.1f} ms = VM pause + {(gap - pause) * 1000:.1f} ms"
    )


async def run(mode: Mode, standby: bool) -> list[str]:
    """Migrate Alice's VM under load in ``mode``; return the lines to print."""
    # The sim transport itself (rdsx.load_transport("sim") gives the same) for its fabric.
    async with SimTransport().open_network(seed=3, profile="seed-cx2-xen", num_vfs=2) as net:
        alice_devices = await net.add_node(ALICE, standby=standby)
        bob_devices = await net.add_node(BOB, standby=standby)
        vm = net.fabric.vm_at(ALICE)
        assert vm is not None
        destination = net.fabric.add_host("host-dest", num_vfs=2)
        timelines: list[Timeline] = []
        at_alice: list[tuple[float, int]] = []
        at_bob: list[tuple[float, int]] = []

        async def migrate() -> None:
            await trio.sleep(0.2)
            vmm = VMM(net.fabric, net.profile)
            timelines.append(
                await vmm.migrate(
                    vm, destination, strategy="late-detach", grace=2.0, memory=64 * 2**20
                )
            )

        async with (
            rdsx.open_node(ALICE, alice_devices, mode=mode) as alice,
            rdsx.open_node(BOB, bob_devices, mode=mode) as bob,
        ):
            a, b = alice.socket(), bob.socket()
            a.bind(PORT)
            b.bind(PORT)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream, a, BOB)
                nursery.start_soon(stream, b, ALICE)
                nursery.start_soon(receive, a, at_alice)
                nursery.start_soon(receive, b, at_bob)
                nursery.start_soon(migrate)
            stats = alice.statistics()
    timeline = timelines[0]
    device = "VF + standby device" if standby else "VF only"
    return [
        f"== {mode} mode, {device}: alice's VM migrates ==",
        *str(timeline).splitlines(),
        verdict("bob  ", at_bob, timeline.pause),
        verdict("alice", at_alice, timeline.pause),
        f"alice's node counted: device removals {stats.device_removal}, "
        f"device arrivals {stats.device_arrival}, connection resets {stats.conn_reset}",
    ]


async def main(standby: bool = False) -> list[str]:
    """Run one migration per mode; return (and print) the output lines."""
    lines: list[str] = []
    for mode in MODES:
        lines += await run(mode, standby)
    for line in lines:
        print(line)
    return lines


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line: ``--standby``."""
    parser = argparse.ArgumentParser(description="live migration under load, once per mode")
    parser.add_argument(
        "--standby", action="store_true", help="give each VM an emulated standby device"
    )
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    trio.run(main, args.standby, clock=trio.testing.MockClock(autojump_threshold=0))
