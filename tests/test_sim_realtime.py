"""The real-clock fast lane gives the same results as the packet path (not timed)."""

from __future__ import annotations

import pytest
import trio
from sim_support import vf_pair

from rdsx.verbs import Opcode, RecvWR, SendWR, WcOpcode, WcStatus
from transports.sim import open_fabric

pytestmark = pytest.mark.trio  # real clock: no autojump_clock fixture here


@pytest.mark.parametrize("trace", [False, True])
async def test_mixed_sends_under_the_real_clock(trace: bool) -> None:
    with trio.fail_after(20):
        async with open_fabric(mtu=1024, trace=trace) as fabric:
            assert fabric.fast_lane is not trace
            a, b = await vf_pair(fabric)
            sizes = [0, 1, 100, 1024, 1025, 3000, 7, 512]
            for round_ in range(30):
                for i, size in enumerate(sizes):
                    wr_id = round_ * 100 + i
                    a.buf[:size] = bytes([(wr_id + k) % 251 for k in range(size)])
                    if i % 3 == 2:  # two SGEs on the receive: the packet path
                        half = size // 2
                        b.qp.post_recv(
                            RecvWR(wr_id, (b.sge(8192, half), b.sge(16384, size - half + 1)))
                        )
                    else:
                        b.post_recv(wr_id, 8192, 4096)
                    opcode = Opcode.SEND_WITH_IMM if i % 2 else Opcode.SEND
                    a.send(
                        wr_id,
                        0,
                        size,
                        opcode=opcode,
                        imm_data=wr_id if i % 2 else None,
                        signaled=bool(i % 4),
                    )
                    (recv,) = await b.completions(1)
                    assert (recv.wr_id, recv.status, recv.opcode, recv.byte_len) == (
                        wr_id,
                        WcStatus.SUCCESS,
                        WcOpcode.RECV,
                        size,
                    )
                    assert recv.imm_data == (wr_id if i % 2 else None)
                    if i % 3 == 2:
                        half = size // 2
                        got = bytes(b.buf[8192 : 8192 + half] + b.buf[16384 : 16384 + size - half])
                    else:
                        got = bytes(b.buf[8192 : 8192 + size])
                    assert got == bytes(a.buf[:size])
                    if i % 4:
                        (sent,) = await a.completions(1)
                        assert (sent.wr_id, sent.status) == (wr_id, WcStatus.SUCCESS)
            assert a.cq.poll() == [] and b.cq.poll() == []
            stats = fabric.statistics()
            assert stats.packets_dropped == 0 and stats.packets_delivered >= 2 * 30 * len(sizes)
            # one-packet SENDs into one-SGE receives took the fast lane, unless tracing
            assert (a.qp.fast_sends > 0) is not trace


async def test_receiver_not_ready_under_the_real_clock() -> None:
    with trio.fail_after(20):
        async with open_fabric() as fabric:
            a, b = await vf_pair(fabric)
            a.qp.post_send(SendWR(1, Opcode.SEND, (a.sge(0, 10),)))
            await trio.sleep(0.01)
            assert a.cq.poll() == [] and a.qp.rnr_naks > 0
            b.post_recv(2)
            (sent,) = await a.completions(1)
            assert sent.status is WcStatus.SUCCESS


async def test_multi_packet_sends_take_the_fast_lane() -> None:
    with trio.fail_after(20):
        async with open_fabric(mtu=1024) as fabric:
            a, b = await vf_pair(fabric)
            for i, size in enumerate([3000, 1025, 4096, 2048]):
                b.post_recv(i, 8192, 4096)
                a.buf[:size] = bytes([(i + k) % 251 for k in range(size)])
                before = a.qp.fast_sends
                a.send(i, 0, size, signaled=True)
                (recv,) = await b.completions(1)
                assert (recv.wr_id, recv.status, recv.byte_len) == (i, WcStatus.SUCCESS, size)
                assert bytes(b.buf[8192 : 8192 + size]) == bytes(a.buf[:size])
                (sent,) = await a.completions(1)
                assert (sent.wr_id, sent.status) == (i, WcStatus.SUCCESS)
                assert a.qp.fast_sends == before + 1
            # The fast lane advanced the PSNs by whole packets: a SEND the packet path
            # carries (two receive SGEs) still lines up with the responder's expected PSN.
            b.qp.post_recv(RecvWR(9, (b.sge(8192, 100), b.sge(16384, 100))))
            a.buf[:150] = bytes(range(150))
            a.send(9, 0, 150, signaled=True)
            (recv,) = await b.completions(1)
            assert (recv.wr_id, recv.status, recv.byte_len) == (9, WcStatus.SUCCESS, 150)
            assert bytes(b.buf[8192:8292] + b.buf[16384:16434]) == bytes(range(150))
            assert fabric.statistics().packets_dropped == 0
