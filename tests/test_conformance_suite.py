"""The conformance suite itself, independent of any transport: registry, bounds, messages."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import pytest
import trio

from rdsx.errors import DeviceRemoved
from rdsx.testing import CHECKS, Harness, check_rng, check_transport
from rdsx.verbs import Context, Device


class _StuckDevice(Device):
    """A device whose open() never returns: a transport that hangs."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.address = name

    @property
    def removed(self) -> bool:
        return False

    async def open(self) -> Context:
        await trio.sleep_forever()
        raise AssertionError("unreachable")


class _GoneDevice(_StuckDevice):
    """A device that is already gone: open() raises DeviceRemoved."""

    async def open(self) -> Context:
        raise DeviceRemoved("gone")


class _FakeHarness(Harness):
    name = "fake"
    virtual_time = True

    def __init__(self, device_type: type[_StuckDevice]) -> None:
        self.device_type = device_type

    @asynccontextmanager
    async def _pair(self) -> AsyncIterator[tuple[Device, Device]]:
        yield self.device_type("127.0.0.1"), self.device_type("127.0.0.2")

    def open_pair(self):  # type: ignore[no-untyped-def]
        return self._pair()

    async def remove(self, device: Device, grace: float | None) -> None:
        raise NotImplementedError

    @contextmanager
    def _nothing(self) -> Iterator[None]:
        yield

    def partition(self, a: Device, b: Device):  # type: ignore[no-untyped-def]
        return self._nothing()


def test_every_check_is_documented_and_named() -> None:
    assert len(CHECKS) >= 30
    for name, fn in CHECKS.items():
        assert name == name.lower() and " " not in name, name
        assert inspect.getdoc(fn), f"check {name} has no docstring"


def test_rng_is_per_check_and_replays() -> None:
    assert check_rng(3, "x").random() == check_rng(3, "x").random()
    assert check_rng(3, "x").random() != check_rng(3, "y").random()
    assert check_rng(3, "x").random() != check_rng(4, "x").random()


async def test_unknown_check_name_is_refused() -> None:
    with pytest.raises(KeyError, match="no-such-check"):
        await check_transport(_FakeHarness(_GoneDevice), only=["no-such-check"])


async def test_a_hanging_transport_fails_instead_of_hanging(autojump_clock: object) -> None:
    with pytest.raises(AssertionError, match=r"^\[rdma-write\] fake: did not finish within"):
        await check_transport(_FakeHarness(_StuckDevice), only=["rdma-write"])


@pytest.mark.parametrize("name", ["qp-state-table", "cm-reject", "remove-surprise"])
async def test_an_unexpected_error_becomes_an_assertion(name: str) -> None:
    with pytest.raises(AssertionError, match=rf"^\[{name}\] fake: unexpected DeviceRemoved"):
        await CHECKS[name](_FakeHarness(_GoneDevice), check_rng(0, name))


def gone_harness() -> Harness:
    """A harness factory for the command-line runner: every device is already gone."""
    return _FakeHarness(_GoneDevice)


def test_command_line_runner(capsys: pytest.CaptureFixture[str]) -> None:
    from rdsx.testing.__main__ import main

    assert main(["transports.sim.harness:SimHarness", "--only", "queue-full", "rdma-read"]) == 0
    out = capsys.readouterr().out
    assert "ok   queue-full" in out and "2 passed, 0 failed (seed 0)" in out
    assert main([f"{__name__}:gone_harness", "--seed", "3", "--only", "cm-reject"]) == 1
    out = capsys.readouterr().out
    assert "FAIL cm-reject: [cm-reject] fake: unexpected DeviceRemoved" in out
