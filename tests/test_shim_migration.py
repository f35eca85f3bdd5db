"""The transparent shim across graceful migrations (problems 1-4 end to end)."""

from __future__ import annotations

import trio
from shim_world import migrate, ok, open_world, take

from rdsx.verbs import QpState, WcStatus


async def test_traffic_flows_before_any_migration(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(30):
        async with open_world() as world:
            a, b = world.a, world.b
            for i in range(5):
                a.send(f"m{i}".encode())
            sends = await take(a.scq, 5)
            recvs = await take(b.rcq, 5)
            assert ok(sends) and ok(recvs)
            assert [b.received(wc) for wc in recvs] == [f"m{i}".encode() for i in range(5)]


async def test_graceful_migration_is_a_pause(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(60):
        async with open_world() as world:
            a, b = world.a, world.b
            qpn, lkey, rkey = a.qp.qp_num, a.mr.lkey, a.mr.rkey
            a.send(b"before")
            assert ok(await take(b.rcq, 1))
            await migrate(world, a.vm, "C", grace=1.0)
            a.send(b"after-a")
            b.send(b"after-b")
            recv_b = await take(b.rcq, 1)
            recv_a = await take(a.rcq, 1)
            assert ok(recv_a) and ok(recv_b)
            assert b.received(recv_b[0]) == b"after-a"
            assert a.received(recv_a[0]) == b"after-b"
            assert (a.qp.qp_num, a.mr.lkey, a.mr.rkey) == (qpn, lkey, rkey)
            assert a.qp.state is QpState.RTS and b.qp.state is QpState.RTS
            stats = a.shim.statistics()
            assert stats.devices == 2 and len(stats.migrations) == 1
            record = stats.migrations[0]
            assert record.graceful and record.released_at is not None
            assert record.released_at <= record.removal_at + 1.0
            assert record.resumed_at is not None
            sends = await take(a.scq, 2)
            assert [wc.status for wc in sends] == [WcStatus.SUCCESS] * 2
