"""rdsx-ping: rds-ping's options, output and exit status, over sim and real tcp."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import pytest
import trio
from _ports import free_port

import rdsx
from bench.ping import PingOptions, parse_args, parse_interval, ping, run_ping
from transports.tcp.harness import TEST_SECRET

REPLY = re.compile(r"^ +(\d+): (\d+) usec$")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1", 1.0),
        ("0.25", 0.25),
        ("20ms", 0.02),
        ("20msec", 0.02),
        ("500us", 5e-4),
        ("500usec", 5e-4),
    ],
)
def test_interval_suffixes(text: str, seconds: float) -> None:
    assert parse_interval(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["0", "-1", "abc", "5min"])
def test_bad_interval_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_interval(text)


def test_command_line() -> None:
    opts = parse_args(
        ["-c", "3", "-i", "10ms", "-I", "127.0.0.9", "--transport", "sim", "127.0.0.8"]
    )
    assert opts == PingOptions(
        dst="127.0.0.8", count=3, interval=0.01, local="127.0.0.9", transport="sim"
    )


async def test_sim_ping_prints_one_line_per_reply(autojump_clock: trio.testing.MockClock) -> None:
    out = io.StringIO()
    with trio.fail_after(60):
        result = await run_ping(
            PingOptions(dst="127.0.0.2", count=11, interval=0.1, transport="sim"), out=out
        )
    matches = [REPLY.match(line) for line in out.getvalue().splitlines()]
    # 11 pings over 8 sockets: the rotation reuses sockets once their pongs are in.
    assert [int(m.group(1)) if m else None for m in matches] == list(range(1, 12))
    assert (result.sent, result.received, result.duplicates, result.exit_status) == (11, 11, 0, 0)


async def test_sim_ping_is_answered_by_pongs_and_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    transport = rdsx.load_transport("sim")
    async with transport.open_network(seed=3) as net:
        da, db = await net.add_node("127.0.0.1"), await net.add_node("127.0.0.2")
        async with rdsx.open_node("127.0.0.1", da) as a, rdsx.open_node("127.0.0.2", db) as b:
            with trio.fail_after(60):
                result = await ping(a, "127.0.0.2", count=4, interval=0.05, out=io.StringIO())
            assert result.received == 4
            assert b.statistics()["recv_ping"] == 4
            assert b.statistics()["send_pong"] == 4


async def test_tcp_ping_between_two_networks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The tool's own node (its own network, as another process would be) pings a node."""
    here, there = "127.0.0.61", "127.0.0.62"
    port = free_port(here, there)
    out = io.StringIO()
    tcp = rdsx.load_transport("tcp")
    with trio.fail_after(30):
        async with tcp.open_network(secret=TEST_SECRET, port=port) as net:
            devices = await net.add_node(there)
            async with rdsx.open_node(there, devices):
                monkeypatch.setenv("RDSX_SECRET", TEST_SECRET.decode())
                result = await run_ping(
                    PingOptions(dst=there, count=3, interval=0.02, local=here, transport_port=port),
                    out=out,
                )
    assert result.received == 3, out.getvalue()
    assert all(REPLY.match(line) for line in out.getvalue().splitlines())


async def test_no_reply_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    here, nobody = "127.0.0.63", "127.0.0.64"
    port = free_port(here, nobody)
    out = io.StringIO()
    monkeypatch.setenv("RDSX_SECRET", TEST_SECRET.decode())
    with trio.fail_after(30):
        result = await run_ping(
            PingOptions(dst=nobody, count=2, interval=0.01, local=here, transport_port=port),
            out=out,
        )
    assert (result.sent, result.received, result.exit_status) == (2, 0, 1)
    assert out.getvalue() == ""


def test_console_script_over_tcp() -> None:
    """``python -m bench.ping`` in its own process against a node in another one."""
    here, there = "127.0.0.65", "127.0.0.66"
    port = free_port(here, there)
    responder = (
        "import sys, trio, rdsx\n"
        "async def main():\n"
        f"    async with rdsx.load_transport('tcp').open_network(port={port}) as net:\n"
        f"        async with rdsx.open_node('{there}', await net.add_node('{there}')):\n"
        "            print('ready', flush=True)\n"
        "            await trio.to_thread.run_sync(sys.stdin.read)\n"
        "trio.run(main)\n"
    )
    env = {**os.environ, "RDSX_SECRET": TEST_SECRET.decode()}
    with subprocess.Popen(
        [sys.executable, "-c", responder],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    ) as node:
        assert node.stdout is not None and node.stdin is not None
        assert node.stdout.readline().strip() == "ready"
        try:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.ping",
                    "-c",
                    "2",
                    "-i",
                    "20ms",
                    "-I",
                    here,
                    "--transport-port",
                    str(port),
                    there,
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )
        finally:
            node.stdin.close()
            node.wait(timeout=10)
    assert done.returncode == 0, done.stderr
    assert [REPLY.match(line) is not None for line in done.stdout.splitlines()] == [True, True]


def test_console_script_without_secret_fails_cleanly() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RDSX_SECRET"}
    done = subprocess.run(
        [sys.executable, "-m", "bench.ping", "-c", "1", "-I", "127.0.0.67", "127.0.0.68"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert "secret" in done.stderr.lower()
