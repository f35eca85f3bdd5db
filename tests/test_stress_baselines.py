"""The baselines carry rdsx-stress's traffic correctly (real loopback, no timing asserted)."""

import importlib.util
import io

import pytest
import trio

from bench.baselines import open_memory_pair, open_tcp_pair, open_zmq_pair
from bench.options import Options
from bench.stress import run_stress

NO_ZMQ = importlib.util.find_spec("zmq") is None


@pytest.mark.parametrize(
    "kind",
    [
        "tcp",
        pytest.param(
            "zmq", marks=pytest.mark.skipif(NO_ZMQ, reason="pyzmq is in the optional bench extra")
        ),
        "memory",
    ],
)
async def test_baseline_carries_verified_traffic(kind: str) -> None:
    opener = {"tcp": open_tcp_pair, "zmq": open_zmq_pair, "memory": open_memory_pair}[kind]
    opts = Options(tasks=2, depth=2, time=0.3, req_bytes=2048, ack_bytes=64)
    out = io.StringIO()
    with trio.fail_after(20):
        async with opener(opts.recv_addr, opts.send_addr) as (a, b):
            outcome = await run_stress(opts, a, b, out=out)
    assert outcome.tally.ok and outcome.tally.requests_sent > 0
    assert outcome.report["drained"] is True and outcome.exit_status == 0
    assert out.getvalue().count("  (average)") == 1
