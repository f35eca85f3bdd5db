"""The examples run and say what they should."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # The examples import their sibling ``_pair``, which a script run finds in its own folder.
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


async def test_hello(autojump_clock: trio.abc.Clock) -> None:
    lines = await _load("hello").main()
    assert lines[:3] == [f"bob got 'hello bob #{i}' from 127.0.0.1:4000" for i in range(3)]
    assert lines[3:6] == [f"alice got 'hello alice #{i}' from 127.0.0.2:5000" for i in range(3)]
    assert lines[6] == "alice got a pong from 127.0.0.2:0"
    assert lines[7] == "alice sent 4 messages, all acked: True"


async def test_rdma(autojump_clock: trio.abc.Clock) -> None:
    lines = await _load("rdma").main()
    assert lines == [
        "bob got 'look at your buffer'",
        "bob's buffer now holds \"written by alice's RDMA\"",
        "alice's notification: token=42 status=SUCCESS",
    ]


def test_hello_runs_as_a_script() -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "hello.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "alice got a pong from 127.0.0.2:0" in out.stdout


def _ms(line: str, pattern: str) -> float:
    found = re.search(pattern, line)
    assert found is not None, line
    return float(found[1])


@pytest.mark.parametrize(("mode", "standby"), [("reconnect", False), ("transparent", True)])
async def test_migrate(autojump_clock: trio.abc.Clock, mode: str, standby: bool) -> None:
    lines = await _load("migrate").run(mode, standby)
    device = "VF + standby device" if standby else "VF only"
    assert lines[0] == f"== {mode} mode, {device}: alice's VM migrates =="
    assert lines[1].endswith("late-detach, vswitch port, profile seed-cx2-xen: migrated")
    attach = next(line for line in lines if line.startswith("attach "))
    assert attach.endswith("running" if standby else "paused")
    no_vf = _ms(next(line for line in lines if line.startswith("no VF")), r": ([\d.]+) ms$")
    pause = _ms(next(line for line in lines if line.startswith("VM pause")), r"pause ([\d.]+) ms")
    assert any(line.startswith("standby device from") for line in lines) == standby
    for name in ("bob  ", "alice"):
        got = next(line for line in lines if line.startswith(name + " received"))
        assert f"{name} received 3300, exactly once and in order: yes, " in got
        gap = _ms(got, r"longest gap ([\d.]+) ms")
        extra = _ms(got, r"VM pause \+ ([\d.]+) ms")
        assert abs(gap - pause - extra) < 0.2
        # Without a standby nothing moves until the new VF is ready; with one, only the
        # pause stops the traffic (vSwitch: the issue's < 1 ms, plus one 1 ms pacing step).
        assert (no_vf - pause <= extra < no_vf - pause + 10) if not standby else (0 <= extra < 2)
    resets = int(lines[-1].rsplit(" ", 1)[1])
    assert resets == (0 if mode == "transparent" else 1 + standby)


def test_migrate_standby_option() -> None:
    parse_args = _load("migrate").parse_args
    assert parse_args(["--standby"]).standby
    assert not parse_args([]).standby
