"""Two-process rdsx-stress: control handshake, start barrier, drain and ledger swap.

Both sides run in one trio run here, each with its own fake node; the control
connection is real loopback TCP.
"""

import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import attrs
import pytest
import trio
from _ports import free_port
from _stress_fake import FakeNet

from bench.options import Options, parse_args
from bench.stress import Outcome
from bench.twoproc import run_two_process


async def _pair(net: FakeNet, active: Options, passive: Options) -> tuple[Outcome, str, str]:
    @asynccontextmanager
    async def open_side(opts: Options) -> AsyncIterator[object]:
        yield net.node(opts.recv_addr)

    outs = {"active": io.StringIO(), "passive": io.StringIO()}
    results: dict[str, Outcome] = {}

    async def side(opts: Options) -> None:
        results[opts.role] = await run_two_process(opts, out=outs[opts.role], open_side=open_side)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(side, passive)
            await trio.sleep(0.05)  # the passive side is listening (connect retries cover more)
            nursery.start_soon(side, active)
    assert results["active"].tally == results["passive"].tally
    return results["active"], outs["active"].getvalue(), outs["passive"].getvalue()


def _options(port: int) -> tuple[Options, Options]:
    common = ["--transport", "tcp", "-p", str(port), "--connect-retries", "5"]
    active = parse_args([*common, "-r", "127.0.0.1", "-s", "127.0.0.2", "-t", "2", "-T", "1"])
    active = attrs.evolve(active, time=0.4, req_bytes=512, depth=2)
    passive = parse_args([*common, "-r", "127.0.0.2"])
    return active, passive


def test_roles_from_the_command_line() -> None:
    active, passive = _options(4000)
    assert (active.role, passive.role, passive.send_addr) == ("active", "passive", "")
    assert parse_args([]).role == "both"
    assert parse_args(["--transport", "tcp", "--in-process"]).role == "both"


async def test_two_sides_negotiate_run_and_agree() -> None:
    active, passive = _options(free_port())
    outcome, a_text, p_text = await _pair(FakeNet(latency=1e-4), active, passive)
    assert outcome.tally.ok and outcome.tally.requests_sent > 0
    assert a_text.startswith(f"connecting to 127.0.0.2:{active.port}\n")
    assert p_text.startswith(f"waiting for incoming connection on 127.0.0.2:{active.port}\n")
    assert "accepted connection from 127.0.0.1:" in p_text
    for text in (a_text, p_text):
        assert "negotiated options, tasks will start in 2 seconds\n" in text
        assert text.count("  (average)") == 1 and ": 0 lost, 0 duplicated, 0 reordered" in text


async def test_loss_on_one_side_is_reported_by_both() -> None:
    net = FakeNet(latency=1e-4)
    seen = 0

    def drop_fifth_from_passive(
        src: tuple[str, int], dst: tuple[str, int], data: bytes
    ) -> list[bytes]:
        nonlocal seen
        if src[0] == "127.0.0.2":
            seen += 1
            if seen == 5:
                return []
        return [data]

    net.route = drop_fifth_from_passive
    active, passive = _options(free_port())
    active = attrs.evolve(active, drain_timeout=0.3)
    outcome, a_text, p_text = await _pair(net, active, passive)
    assert outcome.tally.lost == 1 and outcome.exit_status == 1
    assert "1 lost" in a_text and "1 lost" in p_text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--transport", "tcp", "-s", "127.0.0.2"], "a two-process run needs -T"),
        (["--transport", "tcp", "-T", "1", "--virtual-time", "--rate", "5"], "one process"),
    ],
)
def test_two_process_option_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in capsys.readouterr().err
