"""The hybrid: when the shim gives a peer up, the RDS node above reconnects on its own."""

from __future__ import annotations

import trio
from node_world import mode_pair, numbered_across_a_move

from rdsx.shim import ShimConfig, TransparentDeviceSource


async def test_a_peer_gone_longer_than_the_bound_falls_back_to_rds(
    autojump_clock: trio.abc.Clock,
) -> None:
    """B is away longer than the shim's resume bound: RDS reconnects, nothing lost or doubled."""
    outage = ShimConfig().resume_timeout + 10.0
    with trio.fail_after(outage + 120):
        async with mode_pair("transparent", seed=3) as w:
            n = 60
            # B suspends A's side, then stays away past the bound.
            got = await numbered_across_a_move(
                w, n, interval=0.05, move_at=0.5, vm=1, grace=1.0, away=outage, timeout=120.0
            )
            assert got == list(range(n))
            stats = w.nodes[0].statistics()
            assert stats.device_removal == 0  # the shim still hid the device removal
            assert stats.conn_reset >= 1  # but RDS itself had to reconnect
            shim = TransparentDeviceSource.over(w.vms[0].devices)
            assert shim is not None and shim.statistics().resume_timeouts >= 1
