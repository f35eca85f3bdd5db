"""rdsx-stress's task loops over an in-memory fake of the socket API, in virtual time."""

import io
from collections.abc import Callable

import pytest
import trio
from _stress_fake import Address, FakeNet

from bench.header import Op
from bench.options import Options
from bench.report import HEADER
from bench.stress import Outcome, run_stress

A, B = "127.0.0.1", "127.0.0.2"


async def _run(opts: Options, net: FakeNet) -> tuple[Outcome, str]:
    out = io.StringIO()
    with trio.fail_after(opts.time + opts.drain_timeout + 5):
        outcome = await run_stress(opts, net.node(A), net.node(B), out=out)
    return outcome, out.getvalue()


async def test_closed_loop_runs_and_verifies(autojump_clock: trio.abc.Clock) -> None:
    opts = Options(tasks=2, depth=2, time=2, req_bytes=1024, ack_bytes=256)
    outcome, text = await _run(opts, FakeNet(latency=1e-3))
    lines = text.splitlines()
    assert lines[:2] == ["Starting up....", HEADER]
    assert len(outcome.rows) == 2 and lines[4] == "-" * 45 and lines[5].endswith("  (average)")
    t = outcome.tally
    assert (t.lost, t.duplicated, t.reordered, t.errors, t.unanswered) == (0, 0, 0, 0, 0)
    assert outcome.exit_status == 0 and outcome.report["drained"] is True
    # 2x2 task pairs each with 2 outstanding and a 2 ms round trip: 4000 req/s sent
    # by each side; the active side sends its own and receives the passive side's.
    assert outcome.summary.tx_per_s == pytest.approx(4000, rel=0.01)
    assert outcome.summary.rx_per_s == pytest.approx(4000, rel=0.01)
    assert outcome.summary.rtt_us == pytest.approx(2000.0, rel=0.01)
    assert t.requests_sent * 2 == t.sent


async def test_open_loop_paces_requests(autojump_clock: trio.abc.Clock) -> None:
    opts = Options(tasks=2, time=2, rate=500.0, req_bytes=4096, ack_bytes=4096)
    outcome, _text = await _run(opts, FakeNet(latency=1e-3))
    assert [row.tx_per_s for _, row in outcome.rows] == [1000, 1000]
    assert outcome.summary.rtt_us == pytest.approx(2000.0)
    assert outcome.tally.ok and outcome.tally.requests_sent == 2 * 2 * 1000
    rep = outcome.report
    assert rep["rtt_us"]["p50"] == pytest.approx(2000.0) and rep["max_gap_s"] < 0.01


async def test_summary_only_and_histogram(autojump_clock: trio.abc.Clock) -> None:
    opts = Options(time=1, rate=100.0, summary_only=True, show_histogram=True)
    _outcome, text = await _run(opts, FakeNet(latency=100e-6))
    lines = text.splitlines()
    assert lines[0] == "Starting up...." and lines[1].endswith("  (average)")
    assert "RTT histogram" in lines and HEADER not in lines
    assert "[   128 -    256] \t\t      100 \t\t (100.00%)" in lines


def _fault(kind: str, nth: int) -> Callable[[Address, Address, bytes], list[bytes]]:
    """Break the nth request from the active side's task 0."""
    seen = 0
    held: list[bytes] = []

    def route(src: Address, dst: Address, data: bytes) -> list[bytes]:
        nonlocal seen
        if src != (A, 4001) or data[2] != Op.REQUEST:
            return [data]
        seen += 1
        if seen == nth:
            if kind == "drop":
                return []
            if kind == "dup":
                return [data, data]
            held.append(data)  # overtaken by the next request
            return []
        if held:
            return [data, held.pop()]
        return [data]

    return route


@pytest.mark.parametrize(
    ("kind", "expect"),
    [("drop", (1, 0, 0)), ("dup", (0, 1, 0)), ("reorder", (0, 0, 1))],
)
async def test_faults_are_caught_and_fail_the_run(
    autojump_clock: trio.abc.Clock, kind: str, expect: tuple[int, int, int]
) -> None:
    net = FakeNet(latency=1e-3)
    net.route = _fault(kind, 10)
    opts = Options(time=1, rate=100.0, drain_timeout=1.0)
    outcome, text = await _run(opts, net)
    t = outcome.tally
    assert (t.lost, t.duplicated, t.reordered) == expect and t.errors == 0
    assert outcome.exit_status == 1 and not outcome.report["ok"]
    assert "didn't contain the fields we expected:" in text
    assert f"{expect[0]} lost, {expect[1]} duplicated, {expect[2]} reordered" in text
    if kind == "drop":
        assert outcome.report["drained"] is False and t.unanswered == 1


def test_passive_summary_uses_the_passive_counters() -> None:
    from bench.report import Counters
    from bench.stress import _summary_row

    first = (0.0, Counters(), 0.0, 0.0, Counters())
    last = (2.0, Counters(req_tx=10), 0.0, 2.0, Counters(req_tx=30))
    opts = Options(tasks=1)
    assert _summary_row(opts, first, last).tx_per_s == 5
    assert _summary_row(opts, first, last, shown=False).tx_per_s == 15


@pytest.mark.parametrize("writes", [True, False], ids=["written", "not-written"])
async def test_rdma_region_is_checked_on_ack(autojump_clock: trio.abc.Clock, writes: bool) -> None:
    net = FakeNet(latency=1e-3)
    net.rdma_writes = writes
    opts = Options(time=1, rate=50.0, rdma_bytes=100, max_reports=1)
    outcome, text = await _run(opts, net)
    if writes:
        assert outcome.tally.ok and outcome.summary.mbi_kib_per_s == pytest.approx(50 * 100 / 1024)
        assert net.regions == {}  # every region was freed on its ack
    else:
        assert outcome.tally.errors == 2 * 50 and outcome.exit_status == 1
        assert "RDMA data for request 0 to task 0 did not arrive before its ack" in text
        assert outcome.summary.mbi_kib_per_s == 0.0


async def test_perfdata_replaces_rows(autojump_clock: trio.abc.Clock) -> None:
    opts = Options(time=2, rate=100.0, show_perfdata=True, show_params=True)
    _outcome, text = await _run(opts, FakeNet(latency=1e-3))
    lines = text.splitlines()
    assert lines[0] == "Options:" and "Starting up...." in lines
    perf = [line for line in lines if line.startswith("::")]
    assert len(perf) == 3 and perf[0].startswith("::nr_tasks:count,")
    assert perf[1].startswith("::1,1024,48,0,100,") and HEADER not in lines


async def test_one_way_only_the_active_side_requests(autojump_clock: trio.abc.Clock) -> None:
    opts = Options(tasks=2, time=2, rate=100.0, one_way=True)
    outcome, _text = await _run(opts, FakeNet(latency=1e-3))
    assert outcome.tally.ok and outcome.summary.rx_per_s == 0
    assert outcome.summary.tx_per_s == 200 and outcome.report["passive"]["tx_per_s"] == 0
    assert outcome.tally.requests_sent * 2 == outcome.tally.sent  # every request acked


def test_one_way_is_negotiated_in_two_process_runs() -> None:
    from bench.control import adopt_options, shared_options

    message = shared_options(Options(one_way=True, tasks=3))
    passive = adopt_options(Options(role="passive"), message, "127.0.0.1")
    assert passive.one_way and passive.tasks == 3 and passive.send_addr == "127.0.0.1"
