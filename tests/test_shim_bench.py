"""bench.shim_migration runs and its figures hold together (small load, virtual time)."""

from __future__ import annotations

import trio

from bench.shim_migration import run_one


async def test_one_migration_row(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(600):
        row = await run_one("modern", "late-detach", 2.0, rate=200.0, seed=0)
    assert row["exact"] is True
    release, resume, gap, pause = row["release"], row["resume"], row["gap"], row["pause"]
    assert isinstance(release, float) and 0 <= release < 2.0
    assert isinstance(resume, float) and resume >= 0
    assert isinstance(gap, float) and isinstance(pause, float) and gap >= pause > 0
    assert row["resent"] == 0  # graceful: everything drained before the detach
    # The peer accepted with the QP it made ahead: the guest's QP (create, then RTR/RTS)
    # and the peer's RTR/RTS are all that is left (the profile's qp_create is 0.3 ms).
    assert row["presetup"] is True
    assert 1.5 * 0.0003 <= resume < 1.5 * 0.0003 + 1e-4
