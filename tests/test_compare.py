"""rdsx-stress --compare: table, reconnects per mode, devices, JSON, stack cost, plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import attrs
import pytest
import trio
from sim_support import late_detach_timeline, small_profile

from bench.compare import COLUMNS, RunResult, format_results, main, parse, plot_results
from bench.compare import run_migration as run_one
from bench.downtime import downtime, receiver_downtime


def test_the_stack_cost_is_service_minus_the_device_gap_split_around_it() -> None:
    tl = late_detach_timeline()
    # Last delivery 9.95 (0.05 of idle pacing before the notice), first after 12.603.
    paced = [round(4.0 + 0.05 * k, 3) for k in range(120)]  # 4.0 .. 9.95
    r = receiver_downtime("x", [*paced, 12.603, 13.0], tl)
    assert (r.gap_start, r.gap_end) == (9.95, 12.603)
    assert r.idle == pytest.approx(0.05)
    assert r.quiesce == pytest.approx(0.2)
    assert r.resume == pytest.approx(0.003)
    assert r.device_gap == pytest.approx(2.4)
    assert r.stack == pytest.approx(0.203)
    assert r.service_downtime == pytest.approx(r.idle + r.quiesce + r.device_gap + r.resume)
    assert r.beyond_device_gap == pytest.approx(r.idle + r.stack)
    # The pause counts the attach (late detach) as well: 1.8 s.
    assert tl.pause == pytest.approx(1.8)
    assert r.added_downtime == pytest.approx(r.service_downtime - 1.8)
    # Deliveries that go on after the notice shorten the quiesce, not the idle.
    late = receiver_downtime("y", [*paced, 10.1, 12.7], tl)
    assert (late.idle, late.quiesce) == (0.0, pytest.approx(0.1))
    report = downtime({"x": [*paced, 12.603, 13.0], "y": [*paced, 10.1, 12.7]}, tl)
    assert report.stack == pytest.approx(max(r.stack, late.stack))
    assert report.device_gap == pytest.approx(2.4)


def test_repeated_migrate_at_and_the_plot_and_jobs_options() -> None:
    _, mig = parse(["--compare", "--migrate-at", "4", "--migrate-at", "1", "--plot", "x.png"])
    assert mig.migrate_at == (4.0, 1.0) and mig.plot == "x.png" and mig.jobs >= 1
    _, real = parse(["--compare", "--clock", "real", "--jobs", "2"])
    assert real.jobs == 1  # real-clock runs must not slow each other down
    with pytest.raises(SystemExit):
        parse(["--compare", "--jobs", "0"])
    assert mig.sa_cache and not parse(["--compare", "--no-sa-cache"])[1].sa_cache


async def test_two_migrations_in_one_run_each_get_a_timeline_and_a_downtime(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    opts, mig = parse(
        f"--rate 40 -T 0 --mode transparent -z --migrate-at 0.5 --migrate-at 1 "
        f"--profile {small_profile(tmp_path)}".split()
    )
    with trio.fail_after(60):
        result = await run_one(opts, mig, out=_Sink())
    assert result.ok, result.error
    assert len(result.timelines) == len(result.downtimes) == 2
    first, second = result.timelines
    assert second.start >= first.end and first.destination != second.destination
    assert result.rds_reconnects == 0
    assert format_results([result]).count("\n  #2 ") == 1


def test_compare_prints_one_table_writes_the_json_and_draws_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the bench extra)")
    out, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    argv = (
        f"--compare -q 4K -a 4K -t 1 -T 3 --rate 20 --migrate-at 0.5 --jobs 1 "
        f"--profile {small_profile(tmp_path)} --json {out} --plot {png}"
    ).split()
    assert main(argv) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0].split()[: len(COLUMNS)] == [title for title, _ in COLUMNS]
    rows = [line.split() for line in lines[1:17]]
    # Every mode x strategy x port model x device, each combination's two devices side by side.
    assert [tuple(r[:4]) for r in rows] == [
        (m, s, p, d)
        for m in ("reconnect", "transparent")
        for s in ("three-stage", "late-detach")
        for p in ("shared", "vswitch")
        for d in ("VF", "VF+standby")
    ]
    assert all(r[-1] == "ok" for r in rows)
    assert "resolution" in text
    # With a standby device the stack/quiesce/resume split does not apply: '-', not 0.
    split = [title for title, _ in COLUMNS].index("stack")
    for r in rows:
        assert (r[split : split + 3] == ["-"] * 3) == (r[3] == "VF+standby")
    data = json.loads(out.read_text())
    runs = [r for r in data["runs"] if not r["standby"]]
    by_combo = {(r["mode"], r["strategy"], r["port_model"]): r for r in runs}
    assert data["schema"] == 4 and data["experiment"] == "compare"
    assert data["columns"] == [title for title, _ in COLUMNS]
    assert data["options"]["devices"] == ["VF", "VF+standby"]
    assert len(data["runs"]) == 16 == len({r["label"] for r in data["runs"]})
    for run in data["runs"]:
        assert run["ok"] and run["verified"]["lost"] == 0
        assert run["verified"]["duplicated"] == 0 and run["verified"]["reordered"] == 0
        if run["mode"] == "transparent":
            assert run["rds_reconnects"] == 0
        else:
            assert run["rds_reconnects"] >= 1
        assert run["device"] == ("VF+standby" if run["standby"] else "VF")
    for run in data["runs"]:
        if not run["standby"]:
            continue
        d = run["downtime"]
        assert run["migration"]["standby"] and run["throughput_msgs_per_s"]["during"] > 0
        assert d["stack_s"] is d["quiesce_s"] is d["resume_s"] is None
        # The outage is the guest's pause (stop-and-copy + restore, both strategies), not the VF's.
        assert run["migration"]["paused_stages"] == ["stop-and-copy", "restore"]
        assert d["pause_s"] <= d["service_s"] < d["device_gap_s"]
        assert all(r["start_by"] == "pause" for r in d["receivers"].values())
    for run in runs:
        d = run["downtime"]
        assert set(run["throughput_msgs_per_s"]) == {"before", "during", "after"}
        assert d["device_gap_s"] > 0 and d["stack_s"] == pytest.approx(
            d["quiesce_s"] + d["resume_s"]
        )
        # The judged figure is the measured gap without its pacing: notice to backlog.
        assert d["exact"] and d["service_s"] <= d["gap_s"]
        assert d["service_s"] == pytest.approx(d["device_gap_s"] + d["stack_s"], abs=1e-9)
        assert d["added_s"] == pytest.approx(d["service_s"] - d["pause_s"])
        assert d["resolution_s"] < 1e-3 < d["gap_resolution_s"]
        for receiver in d["receivers"].values():
            # Every delivery got its send time: the first after the gap was queued backlog.
            assert receiver["backlog"] and receiver["first_sent"] < receiver["end"]
            assert receiver["start_by"] in ("notice", "delivery")
        assert run["migration"]["paused_stages"][:2] == ["stop-and-copy", "restore"]
        late = run["strategy"] == "late-detach"
        assert ("attach" in run["migration"]["paused_stages"]) == late
        assert len(run["series"]["msgs_per_s"]) == math.ceil(3 / run["series"]["bin_s"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The targets are checked under both definitions, per port model and device.
    assert [(t["port_model"], t["device"]) for t in data["targets"]] == [
        ("shared", "VF"),
        ("shared", "VF+standby"),
        ("vswitch", "VF"),
        ("vswitch", "VF+standby"),
    ]
    for t in data["targets"]:
        if t["standby"]:
            assert t["stack_s"] is t["stack_met"] is None
            assert t["added_verdict"] == "met"
            continue
        run = by_combo[("transparent", "late-detach", t["port_model"])]
        assert t["stack_s"] == pytest.approx(run["downtime"]["stack_s"])
        assert t["stack_met"] == (t["stack_s"] < t["target_s"])
        assert t["added_s"] == pytest.approx(run["downtime"]["added_s"])
        assert t["gap_added_s"] == pytest.approx(run["downtime"]["gap_added_s"])
        # The added downtime clears the resolution either way, so the verdict is decided.
        assert t["added_verdict"] == ("met" if t["added_s"] < t["target_s"] else "not met")
        assert t["added_met"] == (t["added_verdict"] == "met")
    assert text.count("target transparent/late-detach/") == 4
    # One line says which rows meet the targets and which do not.
    (summary,) = [line for line in lines if line.startswith("targets ")]
    met, not_met = summary.split("; not met: ")
    assert met.endswith(
        "met: transparent/late-detach/shared/VF+standby, transparent/late-detach/vswitch/VF+standby"
    )
    assert not_met == "transparent/late-detach/shared/VF, transparent/late-detach/vswitch/VF"
    # With the SA cache, only the shared port model's new LID costs path queries again;
    # the query runs while the migrated side's QP is being created, so it costs no time.
    by = by_combo
    for mode in ("reconnect", "transparent"):
        for strategy in ("three-stage", "late-detach"):
            shared, vswitch = by[mode, strategy, "shared"], by[mode, strategy, "vswitch"]
            assert shared["sa_queries"] > vswitch["sa_queries"]
            assert shared["downtime"]["resume_s"] == pytest.approx(
                vswitch["downtime"]["resume_s"], abs=1e-5
            )


def test_the_plot_needs_matplotlib_or_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = RunResult(
        mode="reconnect",
        strategy="late-detach",
        port_model="shared",
        outcome=None,
        timeline=late_detach_timeline(),
        error=None,
        downtime=None,
        timelines=(late_detach_timeline(),),
        series=(10.0,) * 300,
        traffic=(0.0, 15.0),
    )
    # The same with a standby device: its interval is drawn as a band of its own.
    standby = attrs.evolve(
        result,
        standby=True,
        timelines=(attrs.evolve(late_detach_timeline(), standby=((10.0, 12.6),)),),
    )
    path = tmp_path / "p.png"
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    with pytest.raises(RuntimeError, match="matplotlib"):
        plot_results([result, standby], str(path))
    monkeypatch.undo()
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib (the bench extra)")
    plot_results([result, standby], str(path))
    assert path.read_bytes()[:4] == b"\x89PNG"


class _Sink:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
