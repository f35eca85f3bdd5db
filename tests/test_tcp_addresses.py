"""The interface-address watch: an address going away removes its device; coming back, attaches."""

from __future__ import annotations

import ipaddress

import trio

from rdsx.verbs import AsyncEventType
from transports.tcp import LocalAddresses, TcpTransport, system_addresses
from transports.tcp._addresses import parse_fib_trie
from transports.tcp.harness import TEST_SECRET

FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 192.0.2.0/24 2 0 2
           |-- 192.0.2.0
              /24 link UNICAST
           |-- 192.0.2.2
              /32 host LOCAL
"""


def test_fib_trie_host_local_entries() -> None:
    local = parse_fib_trie(FIB_TRIE)
    assert "127.0.0.1" in local and "127.0.0.9" in local  # loopback's whole /8
    assert "192.0.2.2" in local
    assert "192.0.2.3" not in local and "192.0.2.255" not in local  # broadcast is not LOCAL
    assert "not an address" not in local


def test_this_host_has_loopback() -> None:
    assert "127.0.0.1" in system_addresses()


async def test_address_gone_removes_the_device_and_its_return_attaches_a_new_one() -> None:
    present = {ipaddress.IPv4Network("127.0.0.0/8")}

    def source() -> LocalAddresses:
        return LocalAddresses(set(present))

    with trio.fail_after(5):
        async with TcpTransport().open_network(
            secret=TEST_SECRET,
            port=0,
            watch_addresses=source,
            watch_interval=0.01,
            removal_grace=0.5,
        ) as net:
            node = await net.add_node("127.0.0.5")
            first = await node.next_device()
            ctx = await first.open()
            present.clear()  # the interface loses its address
            event = await ctx.get_async_event()
            assert event.type is AsyncEventType.DEVICE_REMOVAL and event.deadline is not None
            ctx.close()  # released in time: a clean removal
            present.add(ipaddress.IPv4Network("127.0.0.5/32"))
            second = await node.next_device()
            assert first.removed and not second.removed
            assert second.address == "127.0.0.5" and second is not first


async def test_a_held_device_is_removed_anyway_when_its_address_is_gone() -> None:
    present = {ipaddress.IPv4Network("127.0.0.0/8")}
    with trio.fail_after(5):
        async with TcpTransport().open_network(
            secret=TEST_SECRET,
            port=0,
            watch_addresses=lambda: LocalAddresses(set(present)),
            watch_interval=0.01,
            removal_grace=0.05,
        ) as net:
            node = await net.add_node("127.0.0.6")
            device = await node.next_device()
            ctx = await device.open()
            present.clear()
            graceful = await ctx.get_async_event()
            assert graceful.type is AsyncEventType.DEVICE_REMOVAL and graceful.deadline
            # We hold the context past the deadline: the removal is forced (a surprise one).
            forced = await ctx.get_async_event()
            assert forced.type is AsyncEventType.DEVICE_REMOVAL and forced.deadline is None
            assert device.removed
