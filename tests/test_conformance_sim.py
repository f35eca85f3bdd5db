"""The public conformance suite run against the sim transport, per port model, in virtual time."""

from __future__ import annotations

import pytest

from rdsx.testing import CHECKS, check_transport
from transports.sim.harness import SimHarness

PORT_MODELS = ("shared", "vswitch")

#: (port model or None for both, check) -> what the sim gets wrong. Each is a strict
#: xfail: when the sim is fixed the test turns red until the entry is removed.
SIM_GAPS: dict[tuple[str | None, str], str] = {}


def _params() -> list[object]:
    params: list[object] = []
    for model in PORT_MODELS:
        for name in CHECKS:
            reason = SIM_GAPS.get((model, name)) or SIM_GAPS.get((None, name))
            marks = [pytest.mark.xfail(strict=True, reason=f"sim: {reason}")] if reason else []
            params.append(pytest.param(model, name, marks=marks, id=f"{model}-{name}"))
    return params


@pytest.mark.parametrize(("model", "name"), _params())
async def test_sim_conforms(model: str, name: str, autojump_clock: object) -> None:
    await check_transport(SimHarness(port_model=model), seed=0, only=[name])
