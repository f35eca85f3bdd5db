"""Both modes through the same socket API: top-down sees the removal, transparent does not."""

from __future__ import annotations

import sys

import pytest
import trio
from node_world import mode_pair, numbered_across_a_move, recv_n

import rdsx


@pytest.mark.parametrize("mode", ["reconnect", "transparent"])
@pytest.mark.parametrize("grace", [2.0, None], ids=["graceful", "surprise"])
async def test_migration_in_each_mode(
    autojump_clock: trio.abc.Clock, mode: str, grace: float | None
) -> None:
    async with mode_pair(mode, seed=5) as w:
        n = 100
        got = await numbered_across_a_move(w, n, interval=0.001, move_at=0.03, vm=0, grace=grace)
        assert got == list(range(n))
        stats = w.nodes[0].statistics()
        if mode == "reconnect":
            assert stats.device_removal == 1 and stats.conn_reset >= 1
        else:
            # the shim hid the removal: the node kept one device and its connection
            assert stats.device_removal == 0 and stats.device_arrival == 1
            assert stats.conn_reset == 0


async def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError):
        async with rdsx.open_node("127.0.0.1", None, mode="bogus"):  # type: ignore[arg-type]
            pass


async def test_transparent_without_the_shim_is_a_typed_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "rdsx.shim", None)  # as if it were not installed
    with pytest.raises(rdsx.ModeUnavailable):
        async with rdsx.open_node("127.0.0.1", None, mode="transparent"):  # type: ignore[arg-type]
            pass


@pytest.mark.parametrize(
    ("mode", "status"),
    [("reconnect", rdsx.RdmaStatus.REMOTE_ERROR), ("transparent", rdsx.RdmaStatus.SUCCESS)],
)
async def test_rdma_cookie_across_a_migration(
    autojump_clock: trio.abc.Clock, mode: str, status: rdsx.RdmaStatus
) -> None:
    """Top-down: a cookie belongs to its device and goes stale; the shim keeps it valid."""
    async with mode_pair(mode, seed=5) as w:
        fabric, vms, spare = w.fabric, w.vms, w.spare
        a, b = w.nodes
        sa, sb = a.socket(), b.socket()
        sa.bind(1000)
        sb.bind(2000)
        region = bytearray(100)
        cookie = sb.get_mr(region)
        await fabric.detach(vms[1], grace=1.0)
        await fabric.attach(vms[1], spare[0])
        await sa.sendto(b"ping", ("127.0.0.2", 2000))  # the connection is back up
        assert (await recv_n(sb, 1))[0][0] == b"ping"
        await sa.sendto(
            b"w",
            ("127.0.0.2", 2000),
            rdma=rdsx.RdmaArgs(cookie=cookie, local=bytearray(b"hello"), notify=True, token=1),
        )
        with trio.fail_after(20):
            note = await sa.recv_notification()
        assert note == rdsx.RdmaNotification(token=1, status=status)
        assert (bytes(region[:5]) == b"hello") is (status is rdsx.RdmaStatus.SUCCESS)
        if mode == "reconnect":
            fresh = sb.get_mr(region)  # register again on the new device
            await sa.sendto(
                b"w2",
                ("127.0.0.2", 2000),
                rdma=rdsx.RdmaArgs(cookie=fresh, local=bytearray(b"again"), notify=True),
            )
            with trio.fail_after(20):
                assert (await sa.recv_notification()).status is rdsx.RdmaStatus.SUCCESS
            assert bytes(region[:5]) == b"again"
