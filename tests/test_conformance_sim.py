"""The public conformance suite run against the sim transport, per port model, in virtual time."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from rdsx.testing import CHECKS, check_transport
from rdsx.verbs import Device
from transports.sim.faults import chaos
from transports.sim.harness import SimHarness

PORT_MODELS = ("shared", "vswitch")

#: (port model or None for both, check) -> what the sim gets wrong. Each is a strict
#: xfail: when the sim is fixed the test turns red until the entry is removed.
SIM_GAPS: dict[tuple[str | None, str], str] = {}


def _marks(model: str, name: str) -> list[pytest.MarkDecorator]:
    reason = SIM_GAPS.get((model, name)) or SIM_GAPS.get((None, name))
    return [pytest.mark.xfail(strict=True, reason=f"sim: {reason}")] if reason else []


def _params() -> list[object]:
    return [
        pytest.param(model, name, marks=_marks(model, name), id=f"{model}-{name}")
        for model in PORT_MODELS
        for name in CHECKS
    ]


@pytest.mark.parametrize(("model", "name"), _params())
async def test_sim_conforms(model: str, name: str, autojump_clock: object) -> None:
    await check_transport(SimHarness(port_model=model), seed=0, only=[name])


class ChaosSimHarness(SimHarness):
    """The sim with a 256-byte MTU and a route that drops and duplicates 5% of packets and
    delays (reorders) 10%: RC must hide all of it, so every check still holds."""

    name = "sim+chaos"

    def __init__(self, port_model: str, seed: int) -> None:
        super().__init__(port_model=port_model, seed=seed, mtu=256)

    @asynccontextmanager
    async def open_pair(self) -> AsyncIterator[tuple[Device, Device]]:  # type: ignore[override]
        async with super().open_pair() as pair:
            assert self.fabric is not None
            self.fabric.route_packet = chaos(
                self.fabric, drop=0.05, duplicate=0.05, delay=0.1, max_delay=20e-6
            )
            yield pair


def _chaos_params() -> list[object]:
    return [
        pytest.param(seed, name, marks=_marks(PORT_MODELS[seed % 2], name), id=f"{seed}-{name}")
        for seed in (1, 2)
        for name in CHECKS
    ]


@pytest.mark.parametrize(("seed", "name"), _chaos_params())
async def test_sim_conforms_under_chaos(seed: int, name: str, autojump_clock: object) -> None:
    model = PORT_MODELS[seed % 2]
    await check_transport(ChaosSimHarness(model, seed), seed=seed, only=[name])
