"""The examples run and say what they should."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

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


async def test_migrate(autojump_clock: trio.abc.Clock) -> None:
    lines = await _load("migrate").main()
    assert lines[0] == "bob received 400 messages, in order: True"
    assert lines[1] == "lost: 0, duplicated: 0"
    pause_ms = float(lines[2].split(": ")[1].split()[0])
    assert 50.0 <= pause_ms < 100.0  # the 50 ms in transit plus the reconnect
    assert lines[3] == "alice: 1 removal, 2 devices, 1 connection reset, now on c/vf1"
