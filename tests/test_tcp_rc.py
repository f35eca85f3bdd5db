"""RC semantics of the tcp transport over real loopback sockets."""

from __future__ import annotations

import pytest
import trio
from _tcp_helpers import bring_up, make_end, pair, wait_wcs

from rdsx.errors import InvalidState
from rdsx.verbs import (
    Access,
    AsyncEventType,
    Opcode,
    QpAttr,
    QpDest,
    QpState,
    SendWR,
    WcOpcode,
    WcStatus,
)


async def test_two_devices_exchange_sends_in_order() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b)
            b.post_recvs(64)
            a.post_recvs(64)
            for i in range(50):
                a.send(i, f"msg-{i}".encode(), offset=i * 16)
            sends = await wait_wcs(a.cq, 50)
            assert [wc.wr_id for wc in sends] == list(range(50))
            assert all(wc.status is WcStatus.SUCCESS and wc.opcode is WcOpcode.SEND for wc in sends)
            recvs = await wait_wcs(b.cq, 50)
            assert [wc.wr_id for wc in recvs] == list(range(50))
            for wc in recvs:
                data = bytes(b.mr.buffer[wc.wr_id * 256 : wc.wr_id * 256 + wc.byte_len])
                assert data == f"msg-{wc.wr_id}".encode()
            b.send(7, b"back")
            assert (await wait_wcs(a.cq, 1))[0].byte_len == 4
            assert (await wait_wcs(b.cq, 1))[0].wr_id == 7


async def test_send_completes_only_when_the_responder_placed_it() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b, rnr_retry=7, min_rnr_timer=0.005)
            a.send(1, b"hello")
            # Wait for b's first RNR NAK: the bytes have then reached b, and without a
            # posted receive the send is still not complete.
            while da.counters.tcp_rnr_naks_rx == 0:
                await trio.sleep(0.005)
            assert a.cq.poll() == []
            b.post_recvs(1)
            (wc,) = await wait_wcs(a.cq, 1)
            assert wc.status is WcStatus.SUCCESS and wc.wr_id == 1
            (rwc,) = await wait_wcs(b.cq, 1)
            assert bytes(b.mr.buffer[: rwc.byte_len]) == b"hello"


async def test_rnr_retry_exhausted() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b, rnr_retry=2, min_rnr_timer=0.002)
            a.send(1, b"nobody listens")
            a.send(2, b"flushed")
            first, second = await wait_wcs(a.cq, 2)
            assert first.status is WcStatus.RNR_RETRY_EXC_ERR and first.wr_id == 1
            assert second.status is WcStatus.WR_FLUSH_ERR and second.wr_id == 2
            assert a.qp.state is QpState.ERR
            assert da.counters.tcp_rnr_naks_rx == 3


async def test_retry_exhausted_when_the_peer_is_killed() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b)
            b.post_recvs(4)
            a.send(1, b"before")
            assert (await wait_wcs(a.cq, 1))[0].status is WcStatus.SUCCESS
            await db.detach(None)  # surprise removal: b's sockets die without a goodbye
            await trio.sleep(0.05)
            a.send(2, b"after")
            (wc,) = await wait_wcs(a.cq, 1)
            assert wc.status is WcStatus.RETRY_EXC_ERR and wc.wr_id == 2
            assert a.qp.state is QpState.ERR


async def test_retry_exhausted_across_a_partition() -> None:
    with trio.fail_after(5):
        async with pair() as (net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b, timeout=0.02, retry_cnt=3)
            b.post_recvs(4)
            a.send(1, b"through")
            await wait_wcs(a.cq, 1)
            with net.partition(da.address, db.address):
                start = trio.current_time()
                a.send(2, b"lost")
                (wc,) = await wait_wcs(a.cq, 1)
                elapsed = trio.current_time() - start
            assert wc.status is WcStatus.RETRY_EXC_ERR
            assert elapsed >= 0.02 * 4 * 0.9
            assert da.counters.tcp_retransmits == 3
            assert da.counters.tcp_fault_drops >= 4


async def test_partition_heals_before_retries_run_out() -> None:
    with trio.fail_after(5):
        async with pair() as (net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b, timeout=0.02, retry_cnt=7)
            b.post_recvs(8)
            a.send(0, b"m0")
            await wait_wcs(a.cq, 1)  # the stream is up
            with net.partition(da.address, db.address):
                for i in range(1, 6):
                    a.send(i, f"m{i}".encode(), offset=8 * i)
                await trio.sleep(0.05)
            sends = await wait_wcs(a.cq, 5)
            assert [wc.status for wc in sends] == [WcStatus.SUCCESS] * 5
            recvs = await wait_wcs(b.cq, 6)
            assert [wc.wr_id for wc in recvs] == list(range(6))  # exactly once, in order
            await trio.sleep(0.05)
            assert b.cq.poll() == []


async def test_err_flushes_everything() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b, rnr_retry=7)
            a.post_recvs(3)
            a.send(1, b"stuck")  # b has no receive: RNR forever
            await trio.sleep(0.02)
            a.qp.modify(QpAttr(QpState.ERR))
            wcs = await wait_wcs(a.cq, 4)
            assert all(wc.status is WcStatus.WR_FLUSH_ERR for wc in wcs)
            assert sorted(wc.opcode.name for wc in wcs) == ["RECV", "RECV", "RECV", "SEND"]
            a.send(2, b"late")
            (late,) = await wait_wcs(a.cq, 1)
            assert late.status is WcStatus.WR_FLUSH_ERR and late.wr_id == 2


async def test_sqd_drains_then_notifies() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b, rnr_retry=7, min_rnr_timer=0.01)
            a.send(1, b"in flight")  # RNR until b posts a receive
            await trio.sleep(0.02)
            a.qp.modify(QpAttr(QpState.SQD, en_sqd_async_notify=True))
            assert a.qp.sq_draining
            a.send(2, b"queued in SQD", offset=64)
            with pytest.raises(InvalidState):
                a.qp.modify(QpAttr(QpState.RTS))
            b.post_recvs(2)
            (wc,) = await wait_wcs(a.cq, 1)
            assert wc.wr_id == 1
            event = await a.ctx.get_async_event()
            assert event.type is AsyncEventType.SQ_DRAINED and event.qp_num == a.qp.qp_num
            assert not a.qp.sq_draining
            await trio.sleep(0.02)
            assert a.cq.poll() == []  # SQD starts nothing new
            a.qp.modify(QpAttr(QpState.RTS))
            assert (await wait_wcs(a.cq, 1))[0].wr_id == 2


async def test_rdma_write_read_and_bad_keys() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b)
            b.post_recvs(1)
            a.mr.buffer[0:5] = b"write"
            a.qp.post_send(
                SendWR(
                    1,
                    Opcode.RDMA_WRITE_WITH_IMM,
                    (a.sge(0, 5),),
                    imm_data=9,
                    remote_addr=b.mr.addr + 100,
                    rkey=b.mr.rkey,
                )
            )
            assert (await wait_wcs(a.cq, 1))[0].status is WcStatus.SUCCESS
            (imm,) = await wait_wcs(b.cq, 1)
            assert imm.opcode is WcOpcode.RECV_RDMA_WITH_IMM and imm.imm_data == 9
            assert bytes(b.mr.buffer[100:105]) == b"write"
            b.mr.buffer[200:204] = b"read"
            a.qp.post_send(
                SendWR(
                    2,
                    Opcode.RDMA_READ,
                    (a.sge(300, 4),),
                    remote_addr=b.mr.addr + 200,
                    rkey=b.mr.rkey,
                )
            )
            (rd,) = await wait_wcs(a.cq, 1)
            assert rd.opcode is WcOpcode.RDMA_READ and rd.byte_len == 4
            assert bytes(a.mr.buffer[300:304]) == b"read"
            a.qp.post_send(
                SendWR(
                    3,
                    Opcode.RDMA_WRITE,
                    (a.sge(0, 5),),
                    remote_addr=b.mr.addr + len(b.mr.buffer) - 2,
                    rkey=b.mr.rkey,
                )
            )
            (bad,) = await wait_wcs(a.cq, 1)
            assert bad.status is WcStatus.REM_ACCESS_ERR
            assert a.qp.state is QpState.ERR


@pytest.mark.parametrize("how", ["unknown-rkey", "no-remote-read", "closed-mr"])
async def test_rdma_read_key_checks(how: str) -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b)
            rkey, addr = b.mr.rkey, b.mr.addr
            if how == "unknown-rkey":
                rkey ^= 0x5A5A
            elif how == "no-remote-read":
                local_only = b.pd.reg_mr(bytearray(64), Access.LOCAL_WRITE)
                rkey, addr = local_only.rkey, local_only.addr
            else:
                b.mr.close()
            a.qp.post_send(SendWR(1, Opcode.RDMA_READ, (a.sge(0, 8),), remote_addr=addr, rkey=rkey))
            (wc,) = await wait_wcs(a.cq, 1)
            assert wc.status is WcStatus.REM_ACCESS_ERR


async def test_path_change_while_draining_resends_to_the_new_peer() -> None:
    with trio.fail_after(5):
        async with pair() as (net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b, timeout=0.1, retry_cnt=7)
            b.post_recvs(8)
            a.send(0, b"to b")
            await wait_wcs(a.cq, 1)
            with net.partition(da.address, db.address):
                for i in range(1, 4):
                    a.send(i, f"moved-{i}".encode(), offset=16 * i)
                a.qp.modify(QpAttr(QpState.SQD, en_sqd_async_notify=True))
                assert a.qp.sq_draining  # b never acknowledges them
                dc = (await net.add_node("127.0.0.3")).device
                assert dc is not None
                c = await make_end(dc)
                c.qp.modify(QpAttr(QpState.INIT, access_flags=Access.LOCAL_WRITE))
                c.qp.modify(
                    QpAttr(
                        QpState.RTR,
                        dest=QpDest(a.ctx.query_port().address, a.qp.qp_num),
                        path_mtu=4096,
                        rq_psn=500,
                        min_rnr_timer=0.001,
                    )
                )
                c.post_recvs(8)
                a.qp.modify(QpAttr(QpState.SQD, dest=QpDest(dc.locator, c.qp.qp_num), sq_psn=500))
                sends = await wait_wcs(a.cq, 3)
                assert [(wc.wr_id, wc.status) for wc in sends] == [
                    (i, WcStatus.SUCCESS) for i in range(1, 4)
                ]
                event = await a.ctx.get_async_event()
                assert event.type is AsyncEventType.SQ_DRAINED
            recvs = await wait_wcs(c.cq, 3)
            assert [
                bytes(c.mr.buffer[wc.wr_id * 256 : wc.wr_id * 256 + wc.byte_len]) for wc in recvs
            ] == [f"moved-{i}".encode() for i in range(1, 4)]
            assert len(await wait_wcs(b.cq, 1)) == 1 and b.cq.poll() == []  # b got only "to b"


async def test_rnr_probes_with_one_request_not_the_whole_window() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            bring_up(a, b, rnr_retry=7, min_rnr_timer=0.005)
            for i in range(50):
                a.send(i, f"w{i}".encode(), offset=8 * i)
            while da.counters.tcp_rnr_naks_rx < 3:  # RNR rounds with nobody receiving
                await trio.sleep(0.005)
            rounds = da.counters.tcp_rnr_naks_rx
            assert da.counters.tcp_retransmits <= rounds  # one probe per round, not 50
            b.post_recvs(50)
            sends = await wait_wcs(a.cq, 50)
            assert [wc.wr_id for wc in sends] == list(range(50))
            recvs = await wait_wcs(b.cq, 50)
            assert [
                bytes(b.mr.buffer[wc.wr_id * 256 : wc.wr_id * 256 + wc.byte_len]) for wc in recvs
            ] == [f"w{i}".encode() for i in range(50)]
