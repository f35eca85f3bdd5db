"""Service and added downtime on hand-written timestamps."""

import math

import pytest

from bench.downtime import downtime, receiver_downtime
from transports.sim.timeline import Stage, Strategy, Timeline


def _timeline() -> Timeline:
    # late-detach: pre-copy 10..20, detach 20..21, stop-and-copy 21..21.5,
    # attach 21.5..23, sm-update 23..23.25.
    stages = (
        Stage(name="pre-copy", round=1, start=10.0, end=18.0, bytes=100),
        Stage(name="pre-copy", round=2, start=18.0, end=20.0, bytes=10),
        Stage(name="detach", start=20.0, end=21.0),
        Stage(name="stop-and-copy", start=21.0, end=21.5, bytes=1),
        Stage(name="attach", start=21.5, end=23.0),
        Stage(name="sm-update", start=23.0, end=23.25, smps=1),
    )
    return Timeline(
        vm="vm1",
        source="hostA",
        destination="hostB",
        strategy=Strategy.LATE_DETACH,
        port_model="vswitch",
        profile="test",
        stages=stages,
        start=10.0,
        end=23.25,
    )


def _paced(t0: float, t1: float, step: float = 0.1) -> list[float]:
    n = round((t1 - t0) / step)
    return [t0 + i * step for i in range(n + 1)]


def test_the_longest_gap_around_the_migration_and_its_breakdown() -> None:
    tl = _timeline()
    # Deliveries every 100 ms until 19.9 (quiesce before detach), again from 24.0.
    ts = _paced(0.0, 19.9) + _paced(24.0, 30.0)
    r = receiver_downtime("127.0.0.2:4001", ts, tl)
    assert r.gap_start == pytest.approx(19.9)
    assert r.gap_end == pytest.approx(24.0)
    assert r.service_downtime == pytest.approx(4.1)
    assert r.added_downtime == pytest.approx(4.1 - 0.5)
    b = r.breakdown
    assert b["pre-copy"] == pytest.approx(0.1)
    assert b["detach"] == pytest.approx(1.0)
    assert b["stop-and-copy"] == pytest.approx(0.5)
    assert b["attach"] == pytest.approx(1.5)
    assert b["sm-update"] == pytest.approx(0.25)
    assert b["after"] == pytest.approx(0.75)
    assert b["before"] == 0 and b["other"] == 0
    assert math.fsum(b.values()) == pytest.approx(r.service_downtime)
    assert r.resolution == pytest.approx(0.1)
    assert r.recovered and r.messages == len(ts)


def test_overall_is_the_worst_receiver_and_order_does_not_matter() -> None:
    tl = _timeline()
    quick = _paced(0.0, 21.0) + _paced(21.6, 30.0)  # only the pause, plus pacing
    slow = list(reversed(_paced(0.0, 20.0) + _paced(25.0, 30.0)))
    report = downtime({"a": quick, "b": slow}, tl)
    assert report.worst == "b"
    assert report.service_downtime == pytest.approx(5.0)
    assert report.added_downtime == pytest.approx(4.5)
    assert report.pause == pytest.approx(0.5)
    assert report.receivers[0].service_downtime == pytest.approx(0.6)
    assert report.recovered
    assert "service downtime 5000.000 ms" in report.format_table()


def test_a_receiver_that_never_recovers_has_infinite_downtime() -> None:
    tl = _timeline()
    report = downtime({"a": _paced(0.0, 20.0)}, tl)
    r = report.receivers[0]
    assert not r.recovered and not report.recovered
    assert math.isinf(report.service_downtime)
    assert r.gap_start == pytest.approx(20.0)


def test_a_receiver_that_starts_during_the_migration_counts_from_its_start() -> None:
    tl = _timeline()
    r = receiver_downtime("late", _paced(12.0, 30.0), tl)
    # The gap from the window's start (10.0) to its first delivery is the longest.
    assert (r.gap_start, r.gap_end) == (10.0, pytest.approx(12.0))
    assert r.breakdown["pre-copy"] == pytest.approx(2.0)


def test_no_receivers_gives_zero() -> None:
    report = downtime({}, _timeline())
    assert report.service_downtime == 0 and report.worst is None
    assert math.isnan(report.resolution)


def test_a_gap_starting_before_the_migration_splits_into_before() -> None:
    tl = _timeline()
    r = receiver_downtime("x", [0.0, 9.0, 11.0, *_paced(11.5, 30.0)], tl)
    assert (r.gap_start, r.gap_end) == (9.0, 11.0)
    assert r.breakdown["before"] == pytest.approx(1.0)
    assert r.breakdown["pre-copy"] == pytest.approx(1.0)
