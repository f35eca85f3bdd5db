"""examples/tcp_pair.py: two real processes, one shared secret, every echo once and in order."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "tcp_pair.py"


def test_tcp_pair_runs_as_a_script() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[1].endswith("echoed all 20, once each and in order")
    assert lines[2] == "first: 'MESSAGE 0', last: 'MESSAGE 19'"
    assert lines[-1] == "peer exited with status 0"
    # Two different processes took part.
    first_pid, peer_pid = lines[0].split()[1], lines[1].split()[1]
    assert first_pid != peer_pid


def test_peer_without_the_secret_is_refused() -> None:
    """The second process alone, with no secret: it must not start a node."""
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE), "--peer", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode != 0
    assert "SecretNotConfigured" in done.stderr
    assert "ready" not in done.stdout
