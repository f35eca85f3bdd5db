"""RDMA through the socket API (rds.md §3): cookies, WRITE/READ carried by a message,
notifications SUCCESS / REMOTE_ERROR / CANCELED / DROPPED."""

from __future__ import annotations

import pytest
import trio
from node_world import world

import rdsx
from rdsx import RdmaArgs, RdmaStatus


async def _pair(w):
    a, b = w.nodes
    sa, sb = a.socket(), b.socket()
    sa.bind(100)
    sb.bind(200)
    return sa, sb


async def test_rdma_write_then_message(autojump_clock: trio.abc.Clock) -> None:
    async with world(2) as w:
        sa, sb = await _pair(w)
        region = bytearray(64 * 1024)
        cookie = sa.get_mr(region)
        await sa.sendto(cookie.to_bytes(8, "big"), ("127.0.0.2", 200))  # hand the cookie over
        peer_cookie = int.from_bytes(await sb.recv(), "big")
        data = bytearray(bytes(range(256)) * 100)  # 25,600 bytes: several MTUs
        await sb.sendto(
            b"written",
            ("127.0.0.1", 100),
            rdma=RdmaArgs(cookie=peer_cookie, local=data, remote_offset=512, notify=True, token=7),
        )
        with trio.fail_after(5):
            assert await sa.recv() == b"written"
            # the RDMA was performed before the message was delivered
            assert region[512 : 512 + len(data)] == data
            note = await sb.recv_notification()
        assert note == rdsx.RdmaNotification(token=7, status=RdmaStatus.SUCCESS)
        stats = w.nodes[1].statistics()
        assert stats.send_rdma == 1 and stats.send_rdma_bytes == len(data)
        assert w.nodes[0].statistics().recv_rdma_bytes == len(data)


async def test_rdma_read(autojump_clock: trio.abc.Clock) -> None:
    async with world(2) as w:
        sa, sb = await _pair(w)
        region = bytearray(b"peer memory!" * 1000)
        cookie = sa.get_mr(region, readwrite=False)
        local = bytearray(len(region))
        await sb.sendto(
            b"read done",
            ("127.0.0.1", 100),
            rdma=RdmaArgs(cookie=cookie, local=local, write=False, notify=True, token=9),
        )
        with trio.fail_after(5):
            note = await sb.recv_notification()
            assert await sa.recv() == b"read done"
        assert note.status is RdmaStatus.SUCCESS and note.token == 9
        assert local == region


async def test_bad_cookie_is_remote_error_and_message_not_delivered(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with world(2) as w:
        sa, sb = await _pair(w)
        ro = sa.get_mr(bytearray(4096), readwrite=False)
        rw = bytearray(4096)
        good = sa.get_mr(rw)
        rkey, addr = rdsx.rdma.split_cookie(good)
        bogus = rdsx.rdma.make_cookie(rkey ^ 0x5A5A, addr)
        # A failed RDMA resets the connection; RDMA messages still unacked then are
        # DROPPED (never resent), so each case waits for the previous outcome.
        for cookie, token in [(bogus, 1), (ro, 2)]:  # a bad key; a write to a read-only region
            await sb.sendto(
                b"msg%d" % token,
                ("127.0.0.1", 100),
                rdma=RdmaArgs(cookie=cookie, local=bytearray(b"z" * 100), token=token),
            )
            with trio.fail_after(10):
                note = await sb.recv_notification()  # failures are notified without notify=True
            assert note == rdsx.RdmaNotification(token=token, status=RdmaStatus.REMOTE_ERROR)
        await sb.sendto(
            b"msg3", ("127.0.0.1", 100), rdma=RdmaArgs(cookie=good, local=bytearray(b"z" * 100))
        )
        with trio.fail_after(10):
            assert await sa.recv() == b"msg3"  # the failed ones were never delivered
        assert rw[:100] == b"z" * 100
        with pytest.raises(rdsx.WouldBlock):
            sa.recv_nowait()
        with pytest.raises(rdsx.WouldBlock):
            sb.recv_notification_nowait()  # success without notify=True is silent
        assert w.nodes[1].statistics().rdma_remote_error == 2
        # the connection recovered: plain traffic flows both ways
        await sb.sendto(b"after", ("127.0.0.1", 100))
        await sa.sendto(b"back", ("127.0.0.2", 200))
        with trio.fail_after(10):
            assert await sa.recv() == b"after"
            assert await sb.recv() == b"back"


async def test_rdma_loopback_and_cancel_and_freed_cookie(autojump_clock: trio.abc.Clock) -> None:
    async with world(2) as w:
        a = w.nodes[0]
        s1, s2 = a.socket(), a.socket()
        s1.bind(1000)
        s2.bind(1001)
        region = bytearray(100)
        cookie = s1.get_mr(region)
        await s2.sendto(
            b"loop",
            ("127.0.0.1", 1000),
            rdma=RdmaArgs(cookie=cookie, local=bytearray(b"L" * 10), notify=True, token=1),
        )
        assert region[:10] == b"L" * 10
        assert s2.recv_notification_nowait().status is RdmaStatus.SUCCESS
        assert s1.recv_nowait() == b"loop"
        s1.free_mr(cookie)
        await s2.sendto(
            b"x", ("127.0.0.1", 1000), rdma=RdmaArgs(cookie=cookie, local=bytearray(1), token=2)
        )
        assert s2.recv_notification_nowait() == rdsx.RdmaNotification(
            token=2, status=RdmaStatus.REMOTE_ERROR
        )
        # canceled before it left: CANCELED
        await w.fabric.detach(w.vms[0], grace=1.0)  # no device: the message waits
        s2.sendto_nowait(
            b"y", ("127.0.0.2", 5), rdma=RdmaArgs(cookie=cookie, local=bytearray(1), token=3)
        )
        assert s2.cancel_sent_to(("127.0.0.2", 5)) == 1
        assert s2.recv_notification_nowait().status is RdmaStatus.CANCELED
        assert s2.snd_bytes == 0
        with pytest.raises(rdsx.NotConnected):
            s1.get_mr(bytearray(10))  # no device to register on


async def test_rdma_dropped_on_reset(autojump_clock: trio.abc.Clock) -> None:
    """An RDMA message unacked at a reset is never resent: DROPPED."""
    async with world(2) as w:
        sa, sb = await _pair(w)
        cookie = sa.get_mr(bytearray(1 << 16))
        await sb.sendto(b"up", ("127.0.0.1", 100))
        assert await sa.recv() == b"up"  # the connection is UP
        # remove the sender by surprise right after the send: the ack cannot come back
        await sb.sendto(
            b"r", ("127.0.0.1", 100), rdma=RdmaArgs(cookie=cookie, local=bytearray(8), token=4)
        )
        await w.fabric.detach(w.vms[1], grace=None)
        await w.fabric.attach(w.vms[1], w.spare[0])
        with trio.fail_after(10):
            note = await sb.recv_notification()
        assert note == rdsx.RdmaNotification(token=4, status=RdmaStatus.DROPPED)
        await sb.sendto(b"plain", ("127.0.0.1", 100))
        with trio.fail_after(10):
            got = [await sa.recv()]
            while got[-1] != b"plain":
                got.append(await sa.recv())
        # DROPPED means "not resent": the peer may or may not have had it, never twice
        assert got in ([b"plain"], [b"r", b"plain"])
