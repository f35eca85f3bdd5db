"""rdsx-stress output: rds-stress's header, rows, summary and histogram byte for byte; JSON."""

import json

import pytest

from bench.options import Options
from bench.report import (
    HEADER,
    JSON_KEYS,
    Counters,
    RttHistogram,
    build_json,
    cpu_percent,
    format_histogram,
    format_row,
    format_summary,
    make_row,
    percentile,
)
from bench.verify import Tally

ROW = "   7   1000    990   15920.00       0.00       0.00   12.50   250.25 -1.00"


def _delta() -> Counters:
    return Counters(
        req_tx=1000,
        req_rx=990,
        ack_tx=990,
        ack_rx=1000,
        req_tx_bytes=1000 * 4096,
        req_rx_bytes=990 * 4096,
        ack_tx_bytes=990 * 4096,
        ack_rx_bytes=1000 * 4096,
        send_calls=1990,
        send_usecs=1990 * 12.5,
        rtt_count=1000,
        rtt_usecs=1000 * 250.25,
    )


def test_header_is_rds_stress_header() -> None:
    assert HEADER == "tsks   tx/s   rx/s  tx+rx K/s    mbi K/s    mbo K/s tx us/c   rtt us cpu %"


def test_row_format_byte_for_byte() -> None:
    assert format_row(make_row(_delta(), 1.0, 7, -1.0)) == ROW


def test_row_is_scaled_by_the_measured_interval() -> None:
    row = make_row(_delta(), 2.0, 7, 37.5)
    assert (row.tx_per_s, row.rx_per_s, row.kib_per_s) == (500, 495, 7960.0)
    # Means per call and per RTT do not depend on the interval.
    assert (row.tx_us_per_call, row.rtt_us) == (12.5, 250.25)
    assert format_row(row).endswith("37.50")


def test_summary_has_45_dashes_and_average() -> None:
    row = make_row(_delta(), 1.0, 7, -1.0)
    assert format_summary(row) == "-" * 45 + "\n" + ROW + "  (average)\n"
    assert format_summary(row, summary_only=True) == ROW + "  (average)\n"


def test_empty_interval_prints_zeros() -> None:
    row = make_row(Counters(), 1.0, 1, -1.0)
    zeros = "   1      0      0       0.00       0.00       0.00    0.00     0.00 -1.00"
    assert format_row(row) == zeros


def test_counters_add_and_subtract() -> None:
    a, b = _delta(), Counters(req_tx=1, rtt_usecs=0.5)
    assert (a + b).req_tx == 1001 and (a + b - b) == a
    assert Counters.total([a, b, b]).req_tx == 1002


def test_histogram_buckets_and_format() -> None:
    h = RttHistogram()
    for us in (0.3, 1.0, 1.9, 2.0, 3.99, 100.0, 1e9):
        h.add(us)
    assert h.counts[0] == 3 and h.counts[1] == 2 and h.counts[6] == 1 and h.counts[15] == 1
    text = format_histogram(h.counts)
    lines = text.split("\n")
    assert lines[:3] == ["", "RTT histogram", "RTT (us)        \t\t    Count"]
    assert lines[3] == "[     1 -      2] \t\t        3 \t\t (42.86%)"
    assert lines[18] == "[ 32768 -  65536] \t\t        1 \t\t (14.29%)"
    assert len(lines) == 3 + 16 + 1 and text.endswith("\n")


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 50), percentile(values, 99), percentile(values, 100)) == (
        50.0,
        99.0,
        100.0,
    )
    assert percentile([], 50) == 0.0


def test_cpu_percent() -> None:
    assert cpu_percent(1.0, 1.5, 10.0, 11.0) == 50.0
    assert cpu_percent(1.0, 1.5, 10.0, 10.0) == 0.0


def test_json_schema() -> None:
    row = make_row(_delta(), 1.0, 7, -1.0)
    tally = Tally(sent=10, received=10, requests_sent=5)
    report = build_json(
        options=Options(tasks=7),
        summary=row,
        rows=[(1.0, row), (2.0, row)],
        tally=tally,
        rtt_us=[3.0, 1.0, 2.0],
        histogram=[0] * 16,
        duration=2.0,
        max_gap=0.001,
        extra={"passive": {}},
    )
    assert set(JSON_KEYS) <= set(report) and "passive" in report
    for key in ("sent", "received", "lost", "duplicated", "reordered", "errors"):
        assert isinstance(report[key], int)
    assert report["tx_per_s"] == 1000 and report["kib_per_s"] == pytest.approx(15920.0)
    assert report["rtt_us"]["mean"] == 2.0 and report["rtt_us"]["p50"] == 2.0
    assert report["rtt_us"]["p99"] == 3.0
    assert report["rows"][1]["t"] == 2.0 and report["rows"][0]["rtt_us"] == 250.25
    assert report["options"]["tasks"] == 7 and report["ok"] is True
    assert len(report["histogram"]) == 16 and report["histogram"][0]["lo_us"] == 1
    json.dumps(report)  # serialisable as is


def test_show_params_block() -> None:
    from bench.report import format_params

    assert format_params(Options(tasks=7, req_bytes=4096, ack_bytes=4096)) == (
        "Options:\n"
        "  Tasks      7      \n"
        "  Req size   4096   \n"
        "  ACK size   4096   \n"
        "  RDMA size  0      \n"
        "  RDMA opts  (defaults)\n"
        "\n"
    )


def test_perfdata_lines() -> None:
    from bench.report import format_perfdata, format_perfdata_header

    assert format_perfdata_header(["conn_reset", "send_queued"]) == (
        "::nr_tasks:count,req_size:bytes,ack_size:bytes,rdma_size:bytes,req_sent:count,"
        "thruput:kB/s,thruput_rdma:kB/s,tx_delay:microseconds,rtt:microseconds,cpu:percent,"
        "conn_reset:count,send_queued:count"
    )
    row = make_row(_delta(), 1.0, 7, -1.0)
    line = format_perfdata(Options(tasks=7, req_bytes=4096, ack_bytes=4096), _delta(), row, [0, 9])
    assert line == (
        "::7,4096,4096,0,1000,15920.000000,0.000000,0.000000,12.500000,250.250000,0.000000,0,9"
    )
