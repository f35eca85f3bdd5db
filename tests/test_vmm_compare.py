"""rdsx-stress's migration experiment: option split, and one run under load in virtual time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
from sim_support import small_profile

from bench.compare import (
    DEFAULT_RATE,
    format_results,
    parse,
    run_migration,
    wants_migration,
)


def _argv(text: str) -> list[str]:
    return text.split()


def test_the_migration_flags_are_split_from_rdsx_stress_options() -> None:
    opts, mig = parse(
        _argv("--compare --migrate-at 1.5 --migration three-stage --profile modern")
        + _argv("--rate 50 --port-model shared -T 9")
    )
    assert (mig.compare, mig.migrate_at, mig.strategy, mig.profile) == (
        True,
        (1.5,),
        "three-stage",
        "modern",
    )
    assert (opts.rate, opts.port_model, opts.time, opts.virtual_time) == (50, "shared", 9, True)
    opts, mig = parse(["--migrate-at=3"])
    assert mig.virtual and opts.rate == DEFAULT_RATE and mig.strategy == "late-detach"
    opts, mig = parse(["--migrate-at", "3", "--clock", "real"])
    assert not mig.virtual and opts.rate is None and not opts.virtual_time
    with pytest.raises(SystemExit):
        parse(["--migrate-at", "1", "--transport", "tcp"])
    with pytest.raises(SystemExit):
        parse(["--migrate-at", "-1"])
    with pytest.raises(SystemExit):
        parse(["--compare", "--profile", "no-such-profile"])


def test_compare_runs_both_devices_unless_told_which() -> None:
    assert parse(["--compare"])[1].devices == (False, True)
    opts, mig = parse(["--compare", "--standby"])
    assert mig.devices == (True,) and opts.standby
    opts, mig = parse(["--compare", "--no-standby"])
    assert mig.devices == (False,) and not opts.standby
    with pytest.raises(SystemExit):
        parse(["--compare", "--standby", "--no-standby"])
    with pytest.raises(SystemExit):
        parse(["--migrate-at", "1", "--no-standby"])  # a single run has no standby anyway


def test_only_migration_flags_select_the_experiment() -> None:
    assert wants_migration(["-T", "5", "--compare"])
    assert wants_migration(["--migrate-at=2"])
    assert wants_migration(["--no-standby"])
    assert not wants_migration(["-T", "5", "--rate", "10", "--port-model", "shared"])


@pytest.mark.parametrize(
    ("mode", "strategy"), [("reconnect", "three-stage"), ("transparent", "late-detach")]
)
async def test_a_migration_under_load_loses_nothing_and_is_measured(
    autojump_clock: trio.abc.Clock, tmp_path: Path, mode: str, strategy: str
) -> None:
    opts, mig = parse(
        _argv(f"--rate 100 -T 3 --mode {mode} --grace 1 -z --migrate-at 0.5")
        + _argv(f"--migration {strategy} --profile {small_profile(tmp_path)}")
    )
    with trio.fail_after(60):
        result = await run_migration(opts, mig, out=_Sink())
    assert result.ok, result.error
    tl, d = result.timeline, result.downtime
    assert tl is not None and d is not None
    assert tl.strategy.value == strategy and tl.outcome == "migrated"
    assert result.outcome is not None
    assert d.recovered and result.outcome.tally.lost == 0
    # The run's SM spend includes the migration's own.
    assert result.smps is not None and result.smps >= tl.smps >= 1
    assert result.sa_queries is not None and result.sa_queries >= tl.sa_queries
    # Nothing can be delivered while the active node has no device...
    gap = tl.device_gap
    assert gap is not None
    assert d.service_downtime >= gap[1] - gap[0]
    # ...and the worst gap is the migration's, so it covers the detach and the attach.
    assert d.breakdown["detach"] > 0 and d.breakdown["attach"] > 0
    assert d.added_downtime == pytest.approx(d.service_downtime - tl.pause)
    assert sum(d.breakdown.values()) == pytest.approx(d.service_downtime)
    # Every socket's first delivery after the gap was queued backlog (send times recorded),
    # so the edge-exact outage is the device gap plus the stack's cost, within the gap.
    assert d.edge_exact and d.edge is not None and d.edge.backlog
    assert d.edge_service == pytest.approx(d.device_gap + d.stack)
    assert d.edge_service <= d.service_downtime
    assert d.edge_resolution < 1e-3 < d.resolution
    table = format_results([result])
    assert strategy in table and "ok" in table
    assert result.to_dict()["downtime"]["worst"] == d.worst


async def test_with_a_standby_device_the_outage_is_the_pause_and_has_no_stack_split(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    opts, mig = parse(
        _argv("--rate 100 -T 3 --mode transparent --standby -z --migrate-at 0.5")
        + _argv(f"--profile {small_profile(tmp_path)}")
    )
    with trio.fail_after(60):
        result = await run_migration(opts, mig, out=_Sink())
    assert result.ok, result.error
    tl, d = result.timeline, result.downtime
    assert tl is not None and d is not None and d.edge is not None
    assert result.standby and result.device == "VF+standby" and tl.standby
    assert result.rds_reconnects == 0
    # Deliveries went on while the VF was away, so the outage starts at the guest's pause.
    assert d.edge.start_by == "pause" and d.edge_service < d.device_gap
    assert d.edge_added == pytest.approx(d.edge_service - tl.pause)
    row = format_results([result]).splitlines()[1].split()
    assert row[:4] == ["transparent", "late-detach", "vswitch", "VF+standby"]
    assert row[13:16] == ["-", "-", "-"]  # stack, quiesce, resume: n/a
    summary = result.to_dict()
    assert summary["label"] == "transparent/late-detach/vswitch/VF+standby"
    assert summary["downtime"]["stack_s"] is None and summary["downtimes"][0]["resume_s"] is None
    assert summary["downtime"]["added_s"] == pytest.approx(d.edge_added)


class _Sink:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


async def test_a_crashed_combination_is_a_row_not_an_abort(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import bench.compare as compare

    async def broken(*args: object, **kwargs: object) -> None:
        raise ExceptionGroup("nursery", [ExceptionGroup("inner", [RuntimeError("closed")])])

    monkeypatch.setattr(compare, "run_migration", broken)
    opts, mig = parse(["--compare"])
    results = await compare.run_compare(opts, mig)
    combos = {(r.mode, r.strategy, r.port_model, r.standby) for r in results}
    assert len(results) == len(combos) == len({r.label for r in results}) == 16
    assert all(r.error == "crashed: RuntimeError: closed" and not r.ok for r in results)
    assert format_results(results).count("crashed") == 16
    json.dumps([r.to_dict() for r in results])
    opts, mig = parse(["--compare", "--no-standby"])
    assert {r.device for r in await compare.run_compare(opts, mig)} == {"VF"}
