"""RC reliability over a hostile route: exactly once, in order, or the right status."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from sim_support import connect, vf_pair

from rdsx.verbs import (
    AsyncEventType,
    Opcode,
    QpAttr,
    QpDest,
    QpState,
    RecvWR,
    SendWR,
    Sge,
    WcOpcode,
    WcStatus,
)
from transports.sim import chaos, open_fabric


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("mtu", [256, 4096])
async def test_exactly_once_in_order_over_chaos(
    seed: int, mtu: int, autojump_clock: trio.testing.MockClock
) -> None:
    count, size = (60 if mtu == 4096 else 25), 1000
    with trio.fail_after(60):
        async with open_fabric(seed=seed, mtu=mtu) as fabric:
            a, b = await vf_pair(fabric, size=count * size)
            fabric.route_packet = chaos(
                fabric, drop=0.15, duplicate=0.15, delay=0.3, max_delay=20e-6
            )
            for i in range(count):
                b.post_recv(i, i * size, size)
            for i in range(count):
                a.buf[i * size : (i + 1) * size] = bytes([i % 251]) * (size - 1 - i) + bytes(i + 1)
                a.send(i, i * size, size - i, opcode=Opcode.SEND_WITH_IMM, imm_data=i)
            received = await b.completions(count)
            sent = await a.completions(count)
            assert [wc.wr_id for wc in received] == list(range(count))
            assert [wc.imm_data for wc in received] == list(range(count))
            assert [wc.byte_len for wc in received] == [size - i for i in range(count)]
            assert all(wc.status is WcStatus.SUCCESS for wc in received + sent)
            assert [wc.wr_id for wc in sent] == list(range(count))
            for i in range(count):
                lo = i * size
                assert b.buf[lo : lo + size - i] == a.buf[lo : lo + size - i]
            await trio.sleep(1)
            assert b.cq.poll() == [] and a.cq.poll() == []
            assert fabric.statistics().packets_dropped > 0
            assert a.qp.retransmits > 0


async def test_segmentation_scatter_gather(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric(mtu=256) as fabric:
        a, b = await vf_pair(fabric, size=1 << 14)
        a.buf[:3000] = bytes(range(250)) * 12
        b.qp.post_recv(RecvWR(1, (b.sge(0, 1000), b.sge(5000, 2000))))
        a.qp.post_send(SendWR(2, Opcode.SEND, (a.sge(0, 1500), a.sge(1500, 1500))))
        (recv,) = await b.completions(1)
        assert recv.byte_len == 3000
        assert b.buf[0:1000] + b.buf[5000:7000] == a.buf[:3000]


async def test_retry_exhaustion(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        a.qp.modify(QpAttr(state=QpState.RTS, timeout=0.01, retry_cnt=3))
        fabric.route_packet = lambda packet: fabric.drop_packet(packet, "black hole")
        b.post_recv(1)
        start = trio.current_time()
        a.send(7, 0, 10)
        a.send(8, 0, 10)
        first, second = await a.completions(2)
        assert (first.wr_id, first.status) == (7, WcStatus.RETRY_EXC_ERR)
        assert (second.wr_id, second.status) == (8, WcStatus.WR_FLUSH_ERR)
        assert trio.current_time() - start == pytest.approx(0.04, rel=0.01)
        assert a.qp.state is QpState.ERR
        event = await a.ctx.get_async_event()
        assert (event.type, event.qp_num) == (AsyncEventType.QP_FATAL, a.qp.qp_num)


@pytest.mark.parametrize("rnr_retry", [0, 3])
async def test_rnr_exhaustion(rnr_retry: int, autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, _b = await vf_pair(fabric)
        a.qp.modify(QpAttr(state=QpState.RTS, rnr_retry=rnr_retry))
        a.send(1, 0, 10)
        (wc,) = await a.completions(1)
        assert wc.status is WcStatus.RNR_RETRY_EXC_ERR
        assert a.qp.rnr_naks == rnr_retry + 1


async def test_rnr_infinite_then_receive_arrives(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        a.send(1, 0, 10)
        await trio.sleep(1.0)
        assert a.cq.poll() == []
        assert a.qp.rnr_naks > 100
        b.post_recv(9)
        (wc,) = await a.completions(1)
        assert wc.status is WcStatus.SUCCESS
        (recv,) = await b.completions(1)
        assert recv.wr_id == 9


async def test_receive_too_small(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        b.post_recv(1, 0, 10)
        b.post_recv(2, 0, 10)
        a.send(3, 0, 100)
        recv = await b.completions(2)
        assert [(wc.wr_id, wc.status) for wc in recv] == [
            (1, WcStatus.LOC_LEN_ERR),
            (2, WcStatus.WR_FLUSH_ERR),
        ]
        (sent,) = await a.completions(1)
        assert sent.status is WcStatus.REM_INV_REQ_ERR
        assert a.qp.state is QpState.ERR and b.qp.state is QpState.ERR


async def test_bad_lkey_is_local_protection_error(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        a.qp.post_send(SendWR(1, Opcode.SEND, (Sge(a.mr.addr, 10, a.mr.lkey + 1),)))
        a.send(2, 0, 10)
        first, second = await a.completions(2)
        assert (first.status, second.status) == (WcStatus.LOC_PROT_ERR, WcStatus.WR_FLUSH_ERR)
        # out of the MR's range is the same error
        c, _ = await connect(b.ctx.device, a.ctx.device, port=9)  # type: ignore[attr-defined]
        c.qp.post_send(SendWR(3, Opcode.SEND, (Sge(c.mr.addr + c.mr.length - 5, 10, c.mr.lkey),)))
        (wc,) = await c.completions(1)
        assert wc.status is WcStatus.LOC_PROT_ERR


async def test_flush_on_err(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        for i in range(3):
            b.post_recv(i)
        fabric.route_packet = lambda packet: fabric.drop_packet(packet, "black hole")
        a.send(10, 0, 10)
        a.send(11, 0, 10, signaled=False)
        a.qp.modify(QpAttr(state=QpState.ERR))
        b.qp.modify(QpAttr(state=QpState.ERR))
        a.send(12, 0, 10)
        b.post_recv(3)
        sent = await a.completions(3)
        assert [(wc.wr_id, wc.status) for wc in sent] == [
            (10, WcStatus.WR_FLUSH_ERR),
            (11, WcStatus.WR_FLUSH_ERR),
            (12, WcStatus.WR_FLUSH_ERR),
        ]
        recv = await b.completions(4)
        assert [wc.wr_id for wc in recv] == [0, 1, 2, 3]
        assert {wc.status for wc in recv} == {WcStatus.WR_FLUSH_ERR}
        assert {wc.opcode for wc in recv} == {WcOpcode.RECV}


async def test_unsignaled_sends_complete_silently(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        for i in range(3):
            b.post_recv(i)
        a.send(1, 0, 10, signaled=False)
        a.send(2, 0, 10, signaled=False)
        a.send(3, 0, 10)
        (wc,) = await a.completions(1)
        assert wc.wr_id == 3
        assert len(await b.completions(3)) == 3


async def test_sqd_drains_then_path_change(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        for i in range(4):
            b.post_recv(i)
        a.send(1, 0, 10)
        a.send(2, 0, 10)
        a.qp.modify(QpAttr(state=QpState.SQD))
        assert a.qp.sq_draining
        a.send(3, 0, 10)  # posted in SQD: queued until RTS
        from rdsx.errors import InvalidState

        with pytest.raises(InvalidState):
            a.qp.modify(QpAttr(state=QpState.RTS))
        event = await a.ctx.get_async_event()
        assert (event.type, event.qp_num) == (AsyncEventType.SQ_DRAINED, a.qp.qp_num)
        assert not a.qp.sq_draining
        assert [wc.wr_id for wc in await a.completions(2)] == [1, 2]
        assert a.cq.poll() == []
        # a second QP on B: SQD -> SQD retargets A's QP to it
        c = b.pd.create_qp(b.cq, b.cq)
        c.modify(QpAttr(state=QpState.INIT, access_flags=b.mr.access))
        c.modify(
            QpAttr(
                state=QpState.RTR,
                dest=QpDest(a.ctx.query_port().address, a.qp.qp_num),
                path_mtu=4096,
                rq_psn=a.qp.next_psn,
                min_rnr_timer=0.001,
            )
        )
        c.post_recv(RecvWR(50, (b.sge(100, 100),)))
        a.qp.modify(QpAttr(state=QpState.SQD, dest=QpDest(b.ctx.query_port().address, c.qp_num)))
        a.qp.modify(QpAttr(state=QpState.RTS))
        (wc,) = await a.completions(1)
        assert (wc.wr_id, wc.status) == (3, WcStatus.SUCCESS)
        *old, recv = await b.completions(3)
        assert [wc.wr_id for wc in old] == [0, 1]
        assert recv.wr_id == 50 and recv.qp_num == c.qp_num


@pytest.mark.parametrize("drop", [0.0, 0.05])
async def test_large_messages_through_the_window(
    drop: float, autojump_clock: trio.testing.MockClock
) -> None:
    size = 1 << 20
    with trio.fail_after(120):
        async with open_fabric(seed=3, mtu=1024) as fabric:
            a, b = await vf_pair(fabric, size=2 * size)
            if drop:
                fabric.route_packet = chaos(fabric, drop=drop, duplicate=drop, delay=drop)
            a.buf[:size] = bytes(range(256)) * (size // 256)
            b.post_recv(1, 0, size)
            a.send(2, 0, size)
            a.qp.post_send(
                SendWR(
                    3,
                    Opcode.RDMA_WRITE,
                    (a.sge(0, size // 2),),
                    remote_addr=b.mr.addr + size,
                    rkey=b.mr.rkey,
                )
            )
            a.qp.post_send(
                SendWR(
                    4,
                    Opcode.RDMA_READ,
                    (a.sge(size, size // 2),),
                    remote_addr=b.mr.addr,
                    rkey=b.mr.rkey,
                )
            )
            sent = await a.completions(3)
            assert [(wc.wr_id, wc.status) for wc in sent] == [
                (2, WcStatus.SUCCESS),
                (3, WcStatus.SUCCESS),
                (4, WcStatus.SUCCESS),
            ]
            (recv,) = await b.completions(1)
            assert recv.byte_len == size
            assert b.buf[:size] == a.buf[:size]
            assert b.buf[size : size + size // 2] == a.buf[: size // 2]
            assert a.buf[size : size + size // 2] == b.buf[: size // 2]
            # 2048 data packets (SEND, WRITE, READ responses) and an ACK per 8; under loss
            # go-back-N resends at most a window per loss, and a READ resumes where it stopped
            data = 2 * size // 1024
            assert fabric.statistics().packets_sent < (16 if drop else 1.2) * data
