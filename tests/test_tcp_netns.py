"""A real interface address deleted and re-added, inside a network namespace we create.

The node runs in the namespace (``ip netns exec``) with the address watch on; the test
deletes its address (DEVICE_REMOVAL with a deadline), then adds it back (a new device).
Skipped without root or ``ip netns``. Traffic stays inside the namespace.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import textwrap

import pytest
import trio

ADDRESS = "198.51.100.7"  # TEST-NET-2, only ever configured inside our own namespace

CHILD = textwrap.dedent(
    """
    import trio
    from rdsx.verbs import AsyncEventType
    from transports.tcp import TcpTransport

    async def main():
        async with TcpTransport().open_network(
            secret=b"netns-test-secret-0123", port=0, watch_addresses=True,
            watch_interval=0.05, removal_grace=2.0,
        ) as net:
            node = await net.add_node("ADDRESS")
            device = await node.next_device()
            ctx = await device.open()
            print("ready", device.name, flush=True)
            event = await ctx.get_async_event()
            assert event.type is AsyncEventType.DEVICE_REMOVAL and event.deadline is not None
            print("removal", flush=True)
            ctx.close()
            fresh = await node.next_device()
            assert fresh is not device and device.removed
            print("new", fresh.name, flush=True)

    trio.run(main)
    """
).replace("ADDRESS", ADDRESS)


def _netns_usable() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"rdsx-probe-{secrets.token_hex(3)}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return made


pytestmark = pytest.mark.skipif(not _netns_usable(), reason="needs root and ip netns")


async def _ip(*args: str) -> None:
    await trio.run_process(["ip", *args], capture_stdout=True, capture_stderr=True)


async def test_address_removed_and_restored_in_a_namespace() -> None:
    ns = f"rdsx-tcp-{secrets.token_hex(3)}"
    await _ip("netns", "add", ns)
    try:
        await _ip("-n", ns, "link", "set", "lo", "up")
        # Both ends of a veth pair inside the namespace: a real device, no way out.
        await _ip("-n", ns, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        await _ip("-n", ns, "link", "set", "v0", "up")
        await _ip("-n", ns, "link", "set", "v1", "up")
        await _ip("-n", ns, "addr", "add", f"{ADDRESS}/32", "dev", "v0")
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                child = await nursery.start(
                    lambda task_status: trio.run_process(
                        ["ip", "netns", "exec", ns, sys.executable, "-c", CHILD],
                        stdout=subprocess.PIPE,
                        check=False,
                        task_status=task_status,
                    )
                )
                assert child.stdout is not None
                output = b""

                async def expect(word: bytes) -> None:
                    nonlocal output
                    while word not in output:
                        chunk = await child.stdout.receive_some(4096)
                        assert chunk, f"child ended before {word!r}: {output!r}"
                        output += chunk

                await expect(b"ready")
                await _ip("-n", ns, "addr", "del", f"{ADDRESS}/32", "dev", "v0")
                await expect(b"removal")
                await _ip("-n", ns, "addr", "add", f"{ADDRESS}/32", "dev", "v0")
                await expect(b"new")
                assert await child.wait() == 0
    finally:
        await _ip("netns", "del", ns)
