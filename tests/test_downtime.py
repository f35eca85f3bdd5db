"""Service and added downtime on hand-written timestamps."""

import math

import pytest
from sim_support import late_detach_timeline

from bench.downtime import (
    DELIVERY,
    NOTICE,
    PAUSE,
    REMOVAL,
    SENT,
    downtime,
    receiver_downtime,
)
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
    assert "measured gap 5000.000 ms" in report.format_table()


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


# Edge-exact figures. Timeline: notice 10.0 (detach), VF released 10.2, paused 10.7..12.5,
# new VF ready 12.6; deliveries every 50 ms until 9.95, each sent LAT earlier.
LAT = 0.001


def _steady() -> tuple[list[float], list[float]]:
    delivered = [round(4.0 + 0.05 * k, 3) for k in range(120)]  # 4.0 .. 9.95
    return delivered, [d - LAT for d in delivered]


def _with(after: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    # Then the gap, ``after``, and one delivery after the migration's end.
    delivered, sent = _steady()
    after = [*after, (13.0, 13.0 - LAT)]
    return delivered + [d for d, _ in after], sent + [s for _, s in after]


def test_a_gap_before_the_notice_starts_at_the_notice_and_ends_on_the_backlog() -> None:
    tl = late_detach_timeline()
    # The first delivery after the gap was sent at 10.05 (queued through the outage).
    delivered, sent = _with([(12.603, 10.05), (12.604, 10.1)])
    r = receiver_downtime("x", delivered, tl, sent)
    e = r.edge
    assert e is not None
    assert (r.gap_start, r.gap_end) == (9.95, 12.603)
    assert r.service_downtime == pytest.approx(2.653)  # the measured gap, pacing and all
    assert (e.start, e.start_by, e.end) == (10.0, NOTICE, 12.603)
    assert e.service == pytest.approx(2.603)
    assert e.added == pytest.approx(2.603 - tl.pause)
    assert e.backlog and e.exact and e.first_sent == 10.05
    assert e.latency == pytest.approx(LAT)
    # One latency, plus the notice-to-release span the stack might still have delivered in.
    assert e.resolution == pytest.approx(LAT + 0.2)
    # Edge-exact service = device gap + stack cost, the same outage.
    assert e.service == pytest.approx(r.device_gap + r.stack)


def test_a_gap_that_starts_after_the_notice_starts_at_its_last_delivery() -> None:
    tl = late_detach_timeline()
    delivered, sent = _with([(10.1, 10.1 - LAT), (12.603, 10.15)])
    e = receiver_downtime("y", delivered, tl, sent).edge
    assert e is not None
    assert (e.start, e.start_by) == (10.1, DELIVERY)
    assert e.service == pytest.approx(2.503)
    assert e.resolution == pytest.approx(LAT + 0.1)
    assert e.exact


def test_a_surprise_removal_starts_at_the_removal_or_at_a_message_it_caught() -> None:
    tl = late_detach_timeline(surprise=True)
    delivered, sent = _with([(12.603, 10.05)])
    e = receiver_downtime("z", delivered, tl, sent).edge
    assert e is not None
    assert (e.start, e.start_by) == (10.0, REMOVAL)
    assert e.service == pytest.approx(2.603)
    assert e.resolution == pytest.approx(LAT)  # no notice: nothing more to deliver after it
    # A message sent just before the removal was lost on the wire and resent after it:
    # the outage began when it was due, before the removal.
    delivered, sent = _with([(12.603, 9.9995), (12.604, 10.05)])
    e = receiver_downtime("z", delivered, tl, sent).edge
    assert e is not None
    assert (e.start, e.start_by) == (9.9995, SENT)
    assert e.service == pytest.approx(12.603 - 9.9995)
    assert e.resolution == pytest.approx(LAT)


def test_without_backlog_the_end_is_pacing_limited_and_says_so() -> None:
    tl = late_detach_timeline()
    # Nothing was queued: the first delivery after the gap was sent after the new VF came.
    delivered, sent = _with([(12.651, 12.65)])
    r = receiver_downtime("p", delivered, tl, sent)
    e = r.edge
    assert e is not None
    assert not e.backlog and not e.exact and e.first_sent == 12.65
    assert e.service == pytest.approx(2.651)
    # The path may have been back any time from 12.6: 51 ms of the figure are unknown.
    assert e.resolution == pytest.approx(LAT + 0.2 + 0.051)
    report = downtime({"p": delivered, "q": _with([(12.603, 10.05)])[0]}, tl, {"p": sent})
    assert not report.edge_exact
    assert report.edge_resolution == pytest.approx(e.resolution)
    assert "pacing-limited" in report.format_table()


def test_without_send_times_nothing_is_backlog() -> None:
    tl = late_detach_timeline()
    delivered, _ = _with([(12.603, 10.05)])
    e = receiver_downtime("n", delivered, tl).edge
    assert e is not None
    assert (e.start, e.start_by) == (10.0, NOTICE)
    assert not e.backlog and e.first_sent is None and math.isnan(e.latency)
    assert e.resolution == pytest.approx(0.2 + 0.003)
    with pytest.raises(ValueError, match="send times"):
        receiver_downtime("n", delivered, tl, [0.0])


def test_without_a_vf_loss_the_edge_is_the_measured_gap() -> None:
    tl = _timeline()  # no VF released: no event to anchor the start on
    ts = _paced(0.0, 19.9) + _paced(24.0, 30.0)
    r = receiver_downtime("g", ts, tl, [t - LAT for t in ts])
    assert r.edge is not None
    assert (r.edge.start, r.edge.start_by, r.edge.service) == (
        r.gap_start,
        DELIVERY,
        r.service_downtime,
    )
    assert not r.edge.exact and r.edge.resolution == r.resolution


def test_the_latency_leaves_out_the_connection_set_up_and_the_backlog() -> None:
    tl = late_detach_timeline()
    delivered, sent = _steady()
    # The first messages waited 2 ms for the connection; they are not the steady latency.
    sent[:5] = [delivered[0] - 0.002] * 5
    delivered += [12.603 + 1e-5 * k for k in range(50)] + [13.0]
    sent += [10.0 + 0.05 * k for k in range(50)] + [13.0 - LAT]
    e = receiver_downtime("l", delivered, tl, sent).edge
    assert e is not None and e.latency == pytest.approx(LAT)


def test_the_overall_edge_is_the_longest_receivers() -> None:
    tl = late_detach_timeline()
    early, early_sent = _with([(12.603, 10.05)])
    late, late_sent = _with([(12.61, 10.06)])
    report = downtime({"a": early, "b": late}, tl, {"a": early_sent, "b": late_sent})
    assert report.edge_worst == "b" and report.edge is not None
    assert report.edge_service == pytest.approx(2.61)
    assert report.edge_added == pytest.approx(2.61 - tl.pause)
    assert report.edge_exact
    # The measured gap is the same for both (pacing), so it cannot tell them apart.
    assert report.service_downtime == pytest.approx(2.66)


def test_deliveries_carried_past_the_release_start_the_outage_at_the_pause() -> None:
    tl = late_detach_timeline()
    # Something carried the traffic past the release (10.2) until shortly before the guest
    # paused (10.7); it resumed when the guest ran again (12.5), before the new VF (12.6).
    carried = [(10.25 + 0.05 * k, 10.25 + 0.05 * k - LAT) for k in range(9)]  # .. 10.65
    delivered, sent = _with([*carried, (12.51, 10.9), (12.52, 12.52 - LAT)])
    r = receiver_downtime("s", delivered, tl, sent)
    e = r.edge
    assert e is not None
    assert (r.gap_start, r.gap_end) == (pytest.approx(10.65), 12.51)
    # The path worked after the release: the outage starts when the guest pauses. Sent
    # during the pause and delivered when the guest ran again: backlog.
    assert (e.start, e.start_by) == (10.7, PAUSE)
    assert e.service == pytest.approx(12.51 - 10.7)
    assert e.backlog and e.anchored and e.exact
    assert e.resolution == pytest.approx(LAT)
    # Had the first delivery after the pause been sent after it, the end is pacing.
    delivered, sent = _with([*carried, (12.55, 12.55 - LAT)])
    e = receiver_downtime("s", delivered, tl, sent).edge
    assert e is not None and not e.backlog and not e.exact
    assert e.resolution == pytest.approx(LAT + 0.05)


def test_deliveries_inside_the_pause_leave_the_start_unanchored() -> None:
    tl = late_detach_timeline()
    # Deliveries went on past the release and even into the guest's pause (10.7): no
    # timeline event explains where the outage began, so the start is the last delivery.
    carried = [(10.25 + 0.05 * k, 10.25 + 0.05 * k - LAT) for k in range(11)]  # .. 10.75
    delivered, sent = _with([*carried, (12.51, 10.9)])
    e = receiver_downtime("u", delivered, tl, sent).edge
    assert e is not None
    assert (e.start, e.start_by) == (pytest.approx(10.75), DELIVERY)
    assert e.backlog and not e.anchored and not e.exact
