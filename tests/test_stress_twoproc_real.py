"""Two real rdsx-stress processes over the tcp transport on loopback (passive, then active)."""

import os
import subprocess
import sys
from pathlib import Path

from _ports import free_port


def test_two_processes_over_tcp(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(os.urandom(24).hex().encode())
    control, devices = free_port("127.0.0.2"), free_port("127.0.0.1", "127.0.0.2")
    common = [
        sys.executable,
        "-m",
        "bench.stress",
        "--transport",
        "tcp",
        "-p",
        str(control),
        "--secret-file",
        str(secret),
        "--transport-port",
        str(devices),
    ]
    passive = subprocess.Popen(
        [*common, "-r", "127.0.0.2"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        wanted = ["-t", "2", "-d", "2", "-T", "1", "--connect-retries", "20"]
        report = ["--json", str(tmp_path / "active.json")]
        active = subprocess.run(
            [*common, "-r", "127.0.0.1", "-s", "127.0.0.2", *wanted, *report],
            capture_output=True,
            text=True,
            timeout=120,
        )
        p_out, _ = passive.communicate(timeout=60)
    finally:
        passive.kill()
    a_out = active.stdout
    assert active.returncode == 0, a_out + active.stderr
    assert passive.returncode == 0, p_out
    assert f"waiting for incoming connection on 127.0.0.2:{control}" in p_out
    for out in (a_out, p_out):
        assert "  (average)" in out
        assert ": 0 lost, 0 duplicated, 0 reordered, 0 errors" in out
    assert (tmp_path / "active.json").exists()


async def test_both_ends_in_one_process_over_tcp() -> None:
    import io

    import trio

    from bench.options import Options
    from bench.stress import run_in_process

    opts = Options(transport="tcp", tasks=2, depth=2, time=0.5, req_bytes=4096, ack_bytes=4096)
    with trio.fail_after(60):
        outcome = await run_in_process(opts, out=io.StringIO())
    assert outcome.tally.ok and outcome.tally.requests_sent > 0
    assert outcome.report["drained"] is True
