"""Timing profiles and the pre-copy model: data with sources, arithmetic by hand."""

import json
import math
from pathlib import Path

import pytest

from rdsx.errors import InvalidArgument
from transports.sim.precopy import plan_precopy
from transports.sim.profile import FIGURES, available_profiles, load_profile

MiB = 2**20


def test_shipped_profiles_load_and_every_figure_is_sourced() -> None:
    assert {"seed-cx2-xen", "modern"} <= set(available_profiles())
    for name in available_profiles():
        profile = load_profile(name)
        assert set(profile.figures) == set(FIGURES)
        for key, fig in profile.figures.items():
            assert fig.source or (fig.assumption and fig.note), (name, key)


def test_seed_profile_carries_the_seed_testbed() -> None:
    profile = load_profile("seed-cx2-xen")
    assert profile["vm_memory"] == 512 * MiB
    assert "seed" in profile.figures["vm_memory"].source
    assert profile["max_rounds"] == 30
    assert "hotplug_attach" in profile.assumptions


def _seed_dict() -> dict:
    text = (Path(__file__).parents[1] / "transports/sim/profiles/seed-cx2-xen.json").read_text()
    return json.loads(text)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["figures"].pop("smp_rtt"),
        lambda d: d["figures"].__setitem__("bogus", {"value": 1, "unit": "s", "source": "x"}),
        lambda d: d["figures"]["smp_rtt"].pop("assumption"),
        lambda d: d["figures"]["smp_rtt"].__setitem__("unit", "ms"),
        lambda d: d["figures"]["smp_rtt"].__setitem__("value", -1),
        lambda d: d["figures"]["max_rounds"].__setitem__("value", 2.5),
    ],
    ids=["missing", "unknown", "unsourced", "unit", "negative", "fractional-count"],
)
def test_a_bad_profile_is_refused(tmp_path: Path, mutate) -> None:
    data = _seed_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidArgument):
        load_profile(path)


def test_a_profile_loads_from_a_path_and_unknown_names_fail(tmp_path: Path) -> None:
    data = _seed_dict()
    data["name"] = "mine"
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(data))
    assert load_profile(path).name == "mine"
    assert load_profile(load_profile(path)).name == "mine"
    with pytest.raises(InvalidArgument):
        load_profile("no-such-profile")


def _plan(**overrides: float):
    args = dict(
        memory=100 * MiB,
        dirty_rate=10 * MiB,
        working_set=1000 * MiB,
        bandwidth=100 * MiB,
        page_size=4096,
        max_rounds=30,
        stop_threshold=64 * 1024,
        max_sent_factor=3,
    )
    args.update(overrides)
    return plan_precopy(**args)  # type: ignore[arg-type]


def test_precopy_rounds_shrink_geometrically_until_the_threshold() -> None:
    plan = _plan()
    # Round 1 sends 100 MiB in 1 s; the guest dirties 10 MiB; then 1 MiB, 0.1 MiB, ...
    assert [r.bytes for r in plan.rounds[:3]] == [100 * MiB, 10 * MiB, 1 * MiB]
    assert plan.rounds[0].duration == pytest.approx(1.0)
    assert plan.reason == "converged"
    assert plan.final_bytes <= 64 * 1024
    assert plan.final_copy == pytest.approx(plan.final_bytes / (100 * MiB))
    assert plan.total_bytes == sum(r.bytes for r in plan.rounds) + plan.final_bytes
    assert plan.precopy_time == pytest.approx(math.fsum(r.duration for r in plan.rounds))


def test_dirty_bytes_saturate_at_the_working_set() -> None:
    plan = _plan(dirty_rate=1000 * MiB, working_set=5 * MiB)
    # Round 2 re-sends the 5 MiB working set, which the guest dirties again at once.
    assert [r.bytes for r in plan.rounds] == [100 * MiB, 5 * MiB]
    assert plan.reason == "not-converging"
    assert plan.final_bytes == 5 * MiB


def test_the_round_limit_forces_stop_and_copy() -> None:
    plan = _plan(max_rounds=2)
    assert [r.bytes for r in plan.rounds] == [100 * MiB, 10 * MiB]
    assert (plan.reason, plan.final_bytes) == ("max-rounds", 1 * MiB)


def test_a_guest_dirtying_faster_than_the_link_stops_early() -> None:
    plan = _plan(dirty_rate=200 * MiB, working_set=80 * MiB)
    assert plan.reason in {"not-converging", "max-sent"}
    assert len(plan.rounds) <= 3
    assert plan.total_bytes - plan.final_bytes <= 3 * 100 * MiB


def test_an_idle_guest_needs_one_round_and_no_final_copy() -> None:
    plan = _plan(dirty_rate=0)
    assert len(plan.rounds) == 1
    assert (plan.final_bytes, plan.reason) == (0, "converged")


def test_precopy_refuses_nonsense() -> None:
    with pytest.raises(InvalidArgument):
        _plan(bandwidth=0)
    with pytest.raises(InvalidArgument):
        _plan(memory=-1)
