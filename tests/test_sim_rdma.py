"""RDMA WRITE, WRITE_WITH_IMM and READ: data placement and key enforcement."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from sim_support import End, vf_pair

from rdsx.verbs import Access, Opcode, QpState, SendWR, Sge, WcOpcode, WcStatus
from transports.sim import chaos, open_fabric


def _rdma(
    end: End, wr_id: int, opcode: Opcode, offset: int, length: int, rkey: int, raddr: int, **kw: int
) -> None:
    end.qp.post_send(
        SendWR(wr_id, opcode, (end.sge(offset, length),), remote_addr=raddr, rkey=rkey, **kw)
    )


@pytest.mark.parametrize("seed", [0, 5])
async def test_write_and_read(seed: int, autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric(seed=seed, mtu=1024) as fabric:
        a, b = await vf_pair(fabric)
        if seed:
            fabric.route_packet = chaos(fabric, drop=0.2, duplicate=0.2, delay=0.3)
        a.buf[:10000] = bytes(range(200)) * 50
        _rdma(a, 1, Opcode.RDMA_WRITE, 0, 10000, b.mr.rkey, b.mr.addr + 100)
        (wc,) = await a.completions(1)
        assert (wc.status, wc.opcode, wc.byte_len) == (WcStatus.SUCCESS, WcOpcode.RDMA_WRITE, 10000)
        assert b.buf[100:10100] == a.buf[:10000]
        b.buf[30000:37000] = bytes(range(100, 170)) * 100
        _rdma(a, 2, Opcode.RDMA_READ, 20000, 7000, b.mr.rkey, b.mr.addr + 30000)
        (wc,) = await a.completions(1)
        assert (wc.status, wc.opcode, wc.byte_len) == (WcStatus.SUCCESS, WcOpcode.RDMA_READ, 7000)
        assert a.buf[20000:27000] == b.buf[30000:37000]
        assert b.cq.poll() == []  # plain RDMA is invisible to the target's CPU


async def test_write_with_imm_consumes_a_receive(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        b.post_recv(77, 0, 0)
        a.buf[:6] = b"abcdef"
        _rdma(a, 3, Opcode.RDMA_WRITE_WITH_IMM, 0, 6, b.mr.rkey, b.mr.addr + 500, imm_data=0xBEEF)
        (recv,) = await b.completions(1)
        assert (recv.wr_id, recv.opcode, recv.byte_len, recv.imm_data) == (
            77,
            WcOpcode.RECV_RDMA_WITH_IMM,
            6,
            0xBEEF,
        )
        assert b.buf[500:506] == b"abcdef"
        (sent,) = await a.completions(1)
        assert sent.status is WcStatus.SUCCESS


async def test_reads_and_sends_complete_in_order(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric(mtu=256) as fabric:
        a, b = await vf_pair(fabric)
        b.post_recv(1)
        b.post_recv(2)
        a.send(10, 0, 100)
        _rdma(a, 11, Opcode.RDMA_READ, 1000, 2000, b.mr.rkey, b.mr.addr)
        a.send(12, 0, 100)
        assert [wc.wr_id for wc in await a.completions(3)] == [10, 11, 12]


@pytest.mark.parametrize("case", ["wrong", "stale", "rights", "range"])
async def test_bad_rkey_is_remote_access_error(
    case: str, autojump_clock: trio.testing.MockClock
) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        rkey, raddr, opcode = b.mr.rkey, b.mr.addr, Opcode.RDMA_WRITE
        if case == "wrong":
            rkey ^= 0x100
        elif case == "stale":
            stale = b.pd.reg_mr(bytearray(64), Access.LOCAL_WRITE | Access.REMOTE_WRITE)
            rkey, raddr = stale.rkey, stale.addr
            stale.close()
        elif case == "rights":
            ro = b.pd.reg_mr(bytearray(64), Access.REMOTE_READ)
            rkey, raddr = ro.rkey, ro.addr
        else:
            raddr = b.mr.addr + b.mr.length - 8
        _rdma(a, 1, opcode, 0, 16, rkey, raddr)
        a.send(2, 0, 16)
        first, second = await a.completions(2)
        assert (first.wr_id, first.status) == (1, WcStatus.REM_ACCESS_ERR)
        assert (second.wr_id, second.status) == (2, WcStatus.WR_FLUSH_ERR)
        assert a.qp.state is QpState.ERR


async def test_read_needs_remote_read_and_local_write(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        wo = b.pd.reg_mr(bytearray(64), Access.LOCAL_WRITE | Access.REMOTE_WRITE)
        _rdma(a, 1, Opcode.RDMA_READ, 0, 16, wo.rkey, wo.addr)
        (wc,) = await a.completions(1)
        assert wc.status is WcStatus.REM_ACCESS_ERR
    async with open_fabric() as fabric:
        a, b = await vf_pair(fabric)
        local_ro = a.pd.reg_mr(bytearray(64), Access.NONE)
        a.qp.post_send(
            SendWR(
                1,
                Opcode.RDMA_READ,
                (Sge(local_ro.addr, 16, local_ro.lkey),),
                remote_addr=b.mr.addr,
                rkey=b.mr.rkey,
            )
        )
        (wc,) = await a.completions(1)
        assert wc.status is WcStatus.LOC_PROT_ERR
