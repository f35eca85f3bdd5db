"""The Timeline value: stage accessors, pause, device gap, table and dict forms."""

import attrs
import pytest

from transports.sim.timeline import Stage, Strategy, Timeline


def _tl(**kw: object) -> Timeline:
    stages = (
        Stage(name="detach", start=0.0, end=0.5),
        Stage(name="pre-copy", round=1, start=0.5, end=4.5, bytes=2**29),
        Stage(name="pre-copy", round=2, start=4.5, end=4.9, bytes=2**22),
        Stage(name="stop-and-copy", start=4.9, end=4.95, bytes=4096),
        Stage(name="attach", start=4.95, end=6.45),
        Stage(name="sm-update", start=6.45, end=6.55, smps=2),
    )
    args: dict = dict(
        vm="vm1",
        source="hostA",
        destination="hostB",
        strategy=Strategy.THREE_STAGE,
        port_model="shared",
        profile="seed-cx2-xen",
        stages=stages,
        start=0.0,
        end=6.55,
        smps=2,
        device_ready=6.5,
        released=0.2,
        old_lid=1,
        new_lid=2,
        precopy_stop="converged",
    )
    args.update(kw)
    return Timeline(**args)


def test_accessors() -> None:
    tl = _tl()
    assert tl.rounds == 2
    assert tl.pause == pytest.approx(0.05)
    # The VF is gone from its release (not from the removal notice) to the new one.
    assert tl.device_gap == (0.2, 6.5) and tl.removal_notice == 0.0
    assert tl.paused_stages == ("stop-and-copy",)
    late = attrs.evolve(
        tl, stages=(*tl.stages[:4], attrs.evolve(tl.stages[4], paused=True), tl.stages[5])
    )
    assert late.pause == pytest.approx(1.55) and late.paused_stages[-1] == "attach"
    assert _tl(released=None).device_gap is None
    assert tl.stage("attach") is not None and tl.stage("attach").duration == pytest.approx(1.5)
    assert [s.label for s in tl.named("pre-copy")] == ["pre-copy 1", "pre-copy 2"]
    assert tl.duration == pytest.approx(6.55)


def test_no_detach_means_no_device_gap_and_bad_names_are_refused() -> None:
    tl = _tl(stages=(Stage(name="pre-copy", round=1, start=0.0, end=1.0),), end=1.0, released=None)
    assert tl.device_gap is None and tl.pause == 0
    with pytest.raises(ValueError):
        Stage(name="coffee", start=0.0, end=1.0)


def test_table_and_dict() -> None:
    tl = _tl()
    table = str(tl)
    assert "three-stage" in table and "shared" in table
    assert "pre-copy 2" in table and "sm-update" in table
    assert "VM pause 50.000 ms (stop-and-copy)" in table and "paused" in table
    d = tl.to_dict()
    assert d["strategy"] == "three-stage" and len(d["stages"]) == 6
    assert d["pause"] == pytest.approx(0.05)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        tl.smps = 3  # type: ignore[misc]
