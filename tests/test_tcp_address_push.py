"""The address watch looks at once when told to: rescan(), and the kernel's netlink news."""

from __future__ import annotations

import ipaddress
import os
import secrets
import shutil
import subprocess
import sys
import textwrap

import pytest
import trio

from transports.tcp import LocalAddresses, TcpTransport
from transports.tcp.harness import TEST_SECRET


async def test_rescan_looks_now_not_at_the_next_poll() -> None:
    """With an hour-long poll, a rescan() still removes a gone address's device at once."""
    present = {ipaddress.IPv4Network("127.0.0.0/8")}
    looks = 0

    def source() -> LocalAddresses:
        nonlocal looks
        looks += 1
        return LocalAddresses(set(present))

    with trio.fail_after(5):
        async with TcpTransport().open_network(
            secret=TEST_SECRET,
            port=0,
            watch_addresses=source,
            watch_interval=3600.0,
            removal_grace=0.0,
        ) as net:
            node = await net.add_node("127.0.0.6")
            device = await node.next_device()
            while looks == 0:
                await trio.sleep(0.001)  # the watcher's first look, at its start
            present.clear()
            net.rescan()
            while not device.removed:
                await trio.sleep(0.001)
            present.add(ipaddress.IPv4Network("127.0.0.0/8"))
            net.rescan()
            again = await node.next_device()
            assert again is not device and not again.removed


def _netns_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (creates a network namespace)"
    if shutil.which("ip") is None:
        return "needs the ip command (iproute2)"
    return None


_SCRIPT = textwrap.dedent(
    """
    import subprocess, trio
    from transports.tcp._addresses import watch_kernel

    async def main():
        told = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_kernel, told.set)
            await trio.sleep(0.05)  # subscribed before the change is made
            await trio.run_process(["ip", "addr", "add", "198.18.7.1/32", "dev", "lo"])
            with trio.move_on_after(5):
                await told.wait()
            print("told" if told.is_set() else "not told", flush=True)
            nursery.cancel_scope.cancel()

    trio.run(main)
    """
)


@pytest.mark.skipif(_netns_reason() is not None, reason=_netns_reason() or "")
def test_netlink_announces_a_new_address() -> None:
    """In a namespace of our own, adding an address wakes watch_kernel (no polling)."""
    ns = f"rxpush{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", ns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"ip netns add failed: {made.stderr.strip()}")
    try:
        done = subprocess.run(
            ["ip", "netns", "exec", ns, sys.executable, "-c", _SCRIPT],
            capture_output=True,
            text=True,
            timeout=30,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        assert done.stdout.strip() == "told", done.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
