"""Which IPv4 addresses are local right now: the interface-address watch of the tcp transport.

A device *is* its address, so an address going away is a device removal and an
address (re)appearing is a new device. The kernel says which addresses are
local in ``/proc/net/fib_trie`` (its ``host LOCAL`` entries; a ``/8 host
LOCAL`` like loopback's makes the whole prefix local). That file is read
without any dependency; where it is missing, ``ip -j -4 addr`` is asked.

When to look: :func:`watch_kernel` listens on a raw netlink socket for the
kernel's address and link announcements (``RTMGRP_IPV4_IFADDR``,
``RTMGRP_LINK``) and says "look now", so a new address is seen within a
scheduling delay instead of a polling period. The messages themselves are not
parsed: the table above stays the one source of truth. The poll remains, as the
fallback where netlink is unavailable and for address sources that are not the
kernel's.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import trio

__all__ = [
    "AddressSource",
    "LocalAddresses",
    "parse_fib_trie",
    "system_addresses",
    "watch_kernel",
]

#: Something that returns the local networks now (a test passes its own).
AddressSource = Callable[[], "LocalAddresses"]

_FIB_TRIE = Path("/proc/net/fib_trie")


class LocalAddresses:
    """A set of local IPv4 networks; ``address in it`` says whether a node may bind it."""

    def __init__(self, networks: set[ipaddress.IPv4Network]) -> None:
        self.networks = networks

    def __contains__(self, address: object) -> bool:
        try:
            ip = ipaddress.IPv4Address(str(address))
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def __repr__(self) -> str:
        return f"LocalAddresses({sorted(map(str, self.networks))})"


def parse_fib_trie(text: str) -> LocalAddresses:
    """Collect the ``host LOCAL`` entries of a ``/proc/net/fib_trie`` dump."""
    networks: set[ipaddress.IPv4Network] = set()
    leaf: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            leaf = stripped[4:]
        elif leaf is not None and stripped.startswith("/") and stripped.endswith("host LOCAL"):
            prefix = stripped[1:].split()[0]
            try:
                networks.add(ipaddress.IPv4Network(f"{leaf}/{prefix}", strict=False))
            except ValueError:
                continue
    return LocalAddresses(networks)


def _from_ip_command() -> LocalAddresses:
    output = subprocess.run(
        ["ip", "-j", "-4", "addr"], capture_output=True, check=True, timeout=5
    ).stdout
    networks: set[ipaddress.IPv4Network] = set()
    for link in json.loads(output):
        for info in link.get("addr_info", []):
            local, prefix = info.get("local"), info.get("prefixlen", 32)
            if local is None:
                continue
            # Only loopback makes a whole prefix local; elsewhere the address alone is.
            length = prefix if info.get("scope") == "host" else 32
            networks.add(ipaddress.IPv4Network(f"{local}/{length}", strict=False))
    return LocalAddresses(networks)


def system_addresses() -> LocalAddresses:
    """The host's local IPv4 addresses now (``/proc/net/fib_trie``, else ``ip -j addr``).

    Raises:
        OSError: neither source is available.
    """
    try:
        return parse_fib_trie(_FIB_TRIE.read_text())
    except OSError:
        try:
            return _from_ip_command()
        except (subprocess.SubprocessError, ValueError) as exc:
            raise OSError(f"cannot list local addresses: {exc}") from exc


#: Netlink multicast groups (linux/rtnetlink.h): link changes, IPv4 address changes.
_RTMGRP_LINK = 0x1
_RTMGRP_IPV4_IFADDR = 0x10


async def watch_kernel(changed: Callable[[], None]) -> None:
    """Call ``changed()`` each time the kernel announces an address or link change.

    Runs until cancelled; returns at once where netlink is not available (not
    Linux, or no permission), leaving the caller's poll as the only watch.
    """
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:
        return
    try:
        sock = trio.socket.socket(family, socket.SOCK_RAW, socket.NETLINK_ROUTE)
    except OSError:
        return
    with sock:
        try:
            await sock.bind((0, _RTMGRP_LINK | _RTMGRP_IPV4_IFADDR))
        except OSError:
            return
        while True:
            try:
                await sock.recv(1 << 16)
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    return
                # The kernel dropped announcements we were too slow for: look anyway.
            changed()
