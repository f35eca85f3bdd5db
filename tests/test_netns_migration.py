"""Real hosts, a real device pulled mid-traffic: live migration across network namespaces.

Hosts are network namespaces with a bridge each (``h1``, ``h2``, ``hp``), joined by
veth uplinks to a core bridge (another namespace): a small L2 fabric. The "VM" is a
namespace whose only device is a veth plugged into host ``h1``'s bridge; the peer is a
namespace on host ``hp``. Each runs an rdsx node over the tcp transport as its own
process (``tests/netns_worker.py`` under ``ip netns exec``), streaming numbered
datagrams to the other every millisecond.

Migration: the VM's veth is deleted (the device vanishes from the kernel mid-traffic),
and a new veth, plugged into host ``h2``'s bridge, appears in the VM namespace with the
same MAC and RDS address (as an SR-IOV VF is given the VM's MAC). Without a grace
period the device just disappears (surprise removal); with one, the hot-unplug request
comes first (the address is withdrawn from the node's watcher with the grace period,
the node releases the device, only then is it deleted). Both modes: ``reconnect``
(RDS reconnects and resends) and ``transparent`` (the verbs shim hides it).

Asserted: every datagram of each direction delivered exactly once and in order.
Reported (printed, and in bench/RESULTS.md): the longest gap at any receiver, and the
time from the new device's arrival at the node to the first message delivered after it.

Addresses: 198.18.0.0/24 (RFC 2544 benchmarking range), configured only inside the
namespaces created here; nothing leaves them. Skipped without root or ``ip netns``.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import trio

WORKER = Path(__file__).resolve().parent / "netns_worker.py"
VM_ADDR, PEER_ADDR = "198.18.0.10", "198.18.0.20"
VM_MAC, PEER_MAC = "02:00:00:00:00:10", "02:00:00:00:00:20"
TRAFFIC_BEFORE, TRAFFIC_AFTER = 0.3, 0.5


def _netns_usable() -> str | None:
    """Why the test cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (creates network namespaces and veth pairs)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    probe = f"rxprobe{secrets.token_hex(3)}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode != 0:
        return f"ip netns add failed: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


_REASON = _netns_usable()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


async def ip(*args: str) -> None:
    """Run one ``ip`` command; raise with its stderr if it fails."""
    done = await trio.run_process(
        ["ip", *args], capture_stdout=True, capture_stderr=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.decode().strip()}")


async def wait_up(ns: str, dev: str) -> None:
    """Wait until ``dev`` is operationally up.

    A new link carries nothing until the kernel's link watch has run for it
    (its queue discipline drops every packet before that, which costs the first
    ARP or SYN a 1 s retransmission); the operstate turns UP in the same step.
    """
    with trio.fail_after(5):
        while True:
            done = await trio.run_process(
                ["ip", "-n", ns, "-j", "link", "show", dev], capture_stdout=True
            )
            if json.loads(done.stdout)[0].get("operstate") == "UP":
                return
            await trio.sleep(0.002)  # polling the kernel's link state


class Fabric:
    """The namespaces of one run (unique names), built and always torn down."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.core, self.h1, self.h2, self.hp = (f"rx{tag}{n}" for n in ("c", "h1", "h2", "hp"))
        self.vm, self.peer = f"rx{tag}vm", f"rx{tag}pe"
        self.made: list[str] = []

    async def build(self) -> None:
        for ns in (self.core, self.h1, self.h2, self.hp, self.vm, self.peer):
            await ip("netns", "add", ns)
            self.made.append(ns)
            await ip("-n", ns, "link", "set", "lo", "up")
        for ns in (self.core, self.h1, self.h2, self.hp):
            # ageing_time 0: the bridges flood instead of learning, so a MAC that
            # moves to another host is reachable at once.
            await ip("-n", ns, "link", "add", "br0", "type", "bridge", "ageing_time", "0")
            await ip("-n", ns, "link", "set", "br0", "up")
        for index, host in enumerate((self.h1, self.h2, self.hp)):
            down = f"dn{index}"
            await ip(
                "-n",
                host,
                "link",
                "add",
                "up0",
                "type",
                "veth",
                "peer",
                "name",
                down,
                "netns",
                self.core,
            )
            await ip("-n", host, "link", "set", "up0", "master", "br0", "up")
            await ip("-n", self.core, "link", "set", down, "master", "br0", "up")
        for index, host in enumerate((self.h1, self.h2, self.hp)):
            await wait_up(host, "up0")
            await wait_up(self.core, f"dn{index}")
        await self.plug(self.peer, self.hp, PEER_MAC, PEER_ADDR)
        await self.plug(self.vm, self.h1, VM_MAC, VM_ADDR)

    async def plug(self, guest: str, host: str, mac: str, addr: str) -> None:
        """A new device in ``guest``: a veth whose other end is on ``host``'s bridge."""
        await ip(
            "-n", host, "link", "add", "vf0", "type", "veth", "peer", "name", "eth0", "netns", guest
        )
        await ip("-n", host, "link", "set", "vf0", "master", "br0", "up")
        await ip("-n", guest, "link", "set", "eth0", "address", mac)
        await ip("-n", guest, "link", "set", "eth0", "up")
        await wait_up(host, "vf0")
        await wait_up(guest, "eth0")
        # The address last: once the watcher sees it, the device is complete.
        await ip("-n", guest, "addr", "add", f"{addr}/24", "dev", "eth0")

    async def unplug(self, host: str) -> None:
        """Delete the guest's device (deleting the host end removes both ends)."""
        await ip("-n", host, "link", "del", "vf0")

    def destroy(self) -> None:
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.made.clear()


class Worker:
    """One netns_worker process: commands in, JSON events out."""

    def __init__(self, name: str, process: trio.Process) -> None:
        self.name = name
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._buffer = b""

    async def send(self, command: str) -> None:
        assert self.process.stdin is not None
        await self.process.stdin.send_all(command.encode() + b"\n")

    async def expect(self, event: str, since: int | None = None) -> dict[str, Any]:
        """Return the first ``event`` from index ``since`` on (default: the next one read)."""
        assert self.process.stdout is not None
        cursor = len(self.events) if since is None else since
        while True:
            for record in self.events[cursor:]:
                if record["event"] == event:
                    return record
            cursor = len(self.events)
            while b"\n" not in self._buffer:
                chunk = await self.process.stdout.receive_some(1 << 16)
                if not chunk:
                    raise AssertionError(f"{self.name} ended before {event!r}: {self.events[-3:]}")
                self._buffer += chunk
            *lines, self._buffer = self._buffer.split(b"\n")
            self.events.extend(json.loads(line) for line in lines)


async def start_worker(
    nursery: trio.Nursery, ns: str, name: str, argv: list[str], env: dict[str, str]
) -> Worker:
    process = await nursery.start(
        lambda task_status: trio.run_process(
            ["ip", "netns", "exec", ns, sys.executable, str(WORKER), *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            check=False,
            task_status=task_status,
        )
    )
    return Worker(name, process)


def max_gap(times: list[float]) -> float:
    """The longest time between two consecutive deliveries."""
    return max(b - a for a, b in itertools.pairwise(times))


CASES = [
    ("reconnect", None),
    ("reconnect", 1.0),
    ("transparent", None),
    ("transparent", 1.0),
]


@pytest.mark.parametrize(
    ("mode", "grace"), CASES, ids=[f"{m}-{'grace' if g else 'surprise'}" for m, g in CASES]
)
async def test_vm_device_removed_and_replaced_on_another_host(
    mode: str, grace: float | None, capsys: pytest.CaptureFixture[str]
) -> None:
    fabric = Fabric()
    env = {**os.environ, "RDSX_SECRET": secrets.token_hex(32)}
    grace_args = [] if grace is None else ["--grace", str(grace)]
    log_args = ["--log"] if os.environ.get("RDSX_NETNS_LOG") else []  # rdsx's debug log
    try:
        with trio.fail_after(40):
            await fabric.build()
            async with trio.open_nursery() as nursery:
                peer = await start_worker(
                    nursery,
                    fabric.peer,
                    "peer",
                    ["--addr", PEER_ADDR, "--peer", VM_ADDR, "--mode", mode, *log_args],
                    env,
                )
                vm = await start_worker(
                    nursery,
                    fabric.vm,
                    "vm",
                    [
                        "--addr",
                        VM_ADDR,
                        "--peer",
                        PEER_ADDR,
                        "--mode",
                        mode,
                        *grace_args,
                        *log_args,
                    ],
                    env,
                )
                await peer.expect("ready")
                await vm.expect("ready")
                for worker in (peer, vm):
                    await worker.send("start")
                started = trio.current_time()
                started_mono = time.monotonic()
                flowing = [(await w.expect("flowing", 0))["t"] for w in (peer, vm)]
                await trio.sleep(TRAFFIC_BEFORE)  # traffic flowing before the migration
                if grace is not None:
                    await vm.send("unplug")  # the hot-unplug request, with its deadline
                    await vm.expect("removed")
                    await fabric.unplug(fabric.h1)
                else:
                    await fabric.unplug(fabric.h1)  # the device just vanishes
                    await vm.expect("removed")
                mark = len(vm.events)
                await fabric.plug(fabric.vm, fabric.h2, VM_MAC, VM_ADDR)
                plugged = time.monotonic()  # the new device exists in the kernel
                if grace is not None:
                    await vm.send("plug")
                attached = (await vm.expect("attached", mark))["t"]
                taken = (await vm.expect("device", mark))["t"]
                await trio.sleep(TRAFFIC_AFTER)  # traffic flowing after it
                for worker in (peer, vm):
                    await worker.send("stop")
                sent = {w.name: await w.expect("sent") for w in (peer, vm)}
                for worker in (peer, vm):
                    await worker.send("report")
                got = {w.name: await w.expect("received") for w in (peer, vm)}
                for worker in (peer, vm):
                    await worker.send("quit")
                assert trio.current_time() - started < 30
    finally:
        fabric.destroy()
    removed = next(e["t"] for e in vm.events if e["event"] == "removed")
    # The watcher reports the attach within 1 ms; the node may take it first.
    arrival = min(attached, taken)
    figures: dict[str, Any] = {
        "mode": mode,
        "grace": grace,
        "address_to_arrival_ms": (arrival - plugged) * 1e3,
        "first_connection_ms": (max(flowing) - started_mono) * 1e3,
    }
    for receiver, sender in (("vm", "peer"), ("peer", "vm")):
        seqs, times = got[receiver]["seqs"], got[receiver]["times"]
        # Exactly once, in order: the receiver saw 1..N, N = what the sender sent.
        assert sent[sender]["unacked"] == 0
        assert seqs == list(range(1, sent[sender]["count"] + 1)), (receiver, seqs[:5])
        before = [t for t in times if t < removed]
        after = [t for t in times if t > arrival]
        assert before and after, (
            receiver,
            [(e["event"], e["t"]) for e in vm.events if e["event"] not in ("sent", "received")],
            times[0],
            times[-1],
            arrival,
        )
        figures[f"{sender}->{receiver}"] = {
            "messages": len(seqs),
            "max_gap_ms": max_gap(times) * 1e3,
            "outage_ms": (after[0] - before[-1]) * 1e3,
            "arrival_to_first_ms": (after[0] - arrival) * 1e3,
        }
    shim = got["vm"]["shim"]
    if mode == "transparent":
        assert len(shim) == 1
        # The shim's own view: from the new device to every peer QP reconnected.
        figures["shim_resume_ms"] = shim[0]["resume_ms"]
    report = os.environ.get("RDSX_NETNS_RESULTS")  # append the figures as JSON lines
    if report:
        with open(report, "a") as fh:
            fh.write(json.dumps(figures) + "\n")
    lines = [
        f"{mode} {'grace ' + str(grace) if grace else 'surprise'}: the new device reached "
        f"the node {figures['address_to_arrival_ms']:.1f} ms after its address was added "
        f"(traffic first flowed {figures['first_connection_ms']:.0f} ms after the start)"
    ]
    if "shim_resume_ms" in figures:
        lines.append(f"  the shim reconnected its QPs {figures['shim_resume_ms']:.1f} ms after it")
    for pair in ("peer->vm", "vm->peer"):
        f = figures[pair]
        lines.append(
            f"  {pair}: {f['messages']} msgs exactly once in order; max gap "
            f"{f['max_gap_ms']:.1f} ms; first delivery {f['arrival_to_first_ms']:.1f} ms "
            f"after the new device's arrival"
        )
    with capsys.disabled():
        print("\n" + "\n".join(lines))
