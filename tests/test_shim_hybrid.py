"""The hybrid: when the shim gives a peer up, the RDS node above reconnects on its own."""

from __future__ import annotations

import trio
from node_world import mode_pair, recv_n, send_numbered

from rdsx.shim import ShimConfig, TransparentDeviceSource


async def test_a_peer_gone_longer_than_the_bound_falls_back_to_rds(
    autojump_clock: trio.abc.Clock,
) -> None:
    """B is away longer than the shim's resume bound: RDS reconnects, nothing lost or doubled."""
    outage = ShimConfig().resume_timeout + 10.0
    with trio.fail_after(outage + 120):
        async with mode_pair("transparent", seed=3) as w:
            fabric, vms, spare = w.fabric, w.vms, w.spare
            a, b = w.nodes
            sa, sb = a.socket(), b.socket()
            sa.bind(11)
            sb.bind(22)
            n = 60
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send_numbered, sa, n, ("127.0.0.2", 22), 0.05)
                await trio.sleep(0.5)
                await fabric.detach(vms[1], grace=1.0)  # B suspends A's side...
                await trio.sleep(outage)  # ...and stays away past the bound
                await fabric.attach(vms[1], spare[0])
                got = await recv_n(sb, n, timeout=120.0)
            assert [int(data) for data, _ in got] == list(range(n))
            stats = a.statistics()
            assert stats.device_removal == 0  # the shim still hid the device removal
            assert stats.conn_reset >= 1  # but RDS itself had to reconnect
            shim = TransparentDeviceSource.over(vms[0].devices)
            assert shim is not None and shim.statistics().resume_timeouts >= 1
