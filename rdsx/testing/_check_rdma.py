"""Checks of RDMA WRITE and READ: data lands/returns with good keys; a wrong, stale or
insufficient key or an out-of-range address is ``REM_ACCESS_ERR`` and touches nothing."""

from __future__ import annotations

import random

from ..verbs import Access, Opcode, QpState, RecvWR, SendWR, WcOpcode, WcStatus
from ._fixture import FULL_ACCESS, expect_state, expect_wc, link, open_nodes, quiet, take_one
from ._harness import Harness
from ._registry import check


@check("rdma-write")
async def check_rdma_write(harness: Harness, rng: random.Random) -> None:
    """RDMA WRITE (gathered from two SGEs, over several MTUs) lands exactly at remote_addr."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        n1, n2 = rng.randrange(1, 5000), rng.randrange(1, 5000)
        data = rng.randbytes(n1 + n2)
        s1, s2 = a.alloc(n1), a.alloc(n2)
        a.put(s1, data[:n1])
        a.put(s2, data[n1:])
        target = b.alloc(n1 + n2 + 32) + 16
        before = bytes(b.buf)
        ea.qp.post_send(
            SendWR(
                5,
                Opcode.RDMA_WRITE,
                (a.sge(s1, n1), a.sge(s2, n2)),
                remote_addr=b.mr.addr + target,
                rkey=b.mr.rkey,
            )
        )
        expect_wc(
            await take_one(ea.scq, "RDMA_WRITE"), "RDMA_WRITE", wr_id=5, opcode=WcOpcode.RDMA_WRITE
        )
        after = bytes(b.buf)
        if after[target : target + n1 + n2] != data:
            raise AssertionError("RDMA_WRITE: the data did not land at remote_addr")
        if (
            after[:target] != before[:target]
            or after[target + n1 + n2 :] != before[target + n1 + n2 :]
        ):
            raise AssertionError("RDMA_WRITE touched memory outside [remote_addr, +length)")
        await quiet([eb.rcq], "RDMA_WRITE consumes no receive")


@check("rdma-read")
async def check_rdma_read(harness: Harness, rng: random.Random) -> None:
    """RDMA READ returns the remote bytes, scattered over two local SGEs."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        n1, n2 = rng.randrange(1, 5000), rng.randrange(1, 5000)
        data = rng.randbytes(n1 + n2)
        source = b.alloc(n1 + n2)
        b.put(source, data)
        d1, d2 = a.alloc(n1), a.alloc(n2)
        ea.qp.post_send(
            SendWR(
                6,
                Opcode.RDMA_READ,
                (a.sge(d1, n1), a.sge(d2, n2)),
                remote_addr=b.mr.addr + source,
                rkey=b.mr.rkey,
            )
        )
        expect_wc(
            await take_one(ea.scq, "RDMA_READ"), "RDMA_READ", wr_id=6, opcode=WcOpcode.RDMA_READ
        )
        if a.get(d1, n1) + a.get(d2, n2) != data:
            raise AssertionError("RDMA_READ: the local SGEs do not hold the remote bytes")
        await quiet([eb.rcq], "RDMA_READ consumes no receive")


#: (case name, opcode, access of the remote MR, how the WR misses it)
_BAD_CASES = [
    ("WRITE with a wrong rkey", Opcode.RDMA_WRITE, FULL_ACCESS, "wrong-key"),
    ("WRITE to a deregistered MR", Opcode.RDMA_WRITE, FULL_ACCESS, "stale"),
    (
        "WRITE to an MR without REMOTE_WRITE",
        Opcode.RDMA_WRITE,
        Access.LOCAL_WRITE | Access.REMOTE_READ,
        "ok",
    ),
    ("WRITE past the end of the MR", Opcode.RDMA_WRITE, FULL_ACCESS, "past-end"),
    ("WRITE before the start of the MR", Opcode.RDMA_WRITE, FULL_ACCESS, "before-start"),
    ("READ with a wrong rkey", Opcode.RDMA_READ, FULL_ACCESS, "wrong-key"),
    ("READ from a deregistered MR", Opcode.RDMA_READ, FULL_ACCESS, "stale"),
    (
        "READ from an MR without REMOTE_READ",
        Opcode.RDMA_READ,
        Access.LOCAL_WRITE | Access.REMOTE_WRITE,
        "ok",
    ),
    ("READ past the end of the MR", Opcode.RDMA_READ, FULL_ACCESS, "past-end"),
    ("WRITE to an MR of another PD", Opcode.RDMA_WRITE, FULL_ACCESS, "other-pd"),
    ("READ from an MR of another PD", Opcode.RDMA_READ, FULL_ACCESS, "other-pd"),
    ("WRITE through a QP without REMOTE_WRITE", Opcode.RDMA_WRITE, FULL_ACCESS, "qp-no-write"),
    ("READ through a QP without REMOTE_READ", Opcode.RDMA_READ, FULL_ACCESS, "qp-no-read"),
]

#: The responder QP's access_flags per case (the MR allows everything in these).
_QP_ACCESS = {
    "qp-no-write": Access.LOCAL_WRITE | Access.REMOTE_READ,
    "qp-no-read": Access.LOCAL_WRITE | Access.REMOTE_WRITE,
}


@check("rdma-remote-access-errors")
async def check_rdma_access(harness: Harness, rng: random.Random) -> None:
    """Each bad RDMA completes with REM_ACCESS_ERR, leaves both memories intact, QP in ERR."""
    size, length = 256, 32
    for case, opcode, access, how in _BAD_CASES:
        async with open_nodes(harness) as (a, b):
            ea, _eb = link(a, b, access_b=_QP_ACCESS.get(how, FULL_ACCESS))
            remote = bytearray(rng.randbytes(size))
            pd = b.ctx.alloc_pd() if how == "other-pd" else b.pd
            mr = pd.reg_mr(remote, access)
            remote_addr, rkey = mr.addr + rng.randrange(size - length), mr.rkey
            if how == "wrong-key":
                live = {mr.rkey, b.mr.rkey}
                rkey = mr.rkey ^ 0x00A5A5A5
                while rkey in live:
                    rkey = (rkey + 1) & 0xFFFFFFFF
            elif how == "stale":
                mr.close()
            elif how == "past-end":
                remote_addr = mr.addr + size - length // 2
            elif how == "before-start":
                remote_addr = mr.addr - length // 2
                if remote_addr < 0:
                    continue
            local = a.alloc(length)
            a.put(local, rng.randbytes(length))
            remote_before, local_before = bytes(remote), bytes(a.buf)
            ea.qp.post_send(
                SendWR(1, opcode, (a.sge(local, length),), remote_addr=remote_addr, rkey=rkey)
            )
            rule = f"RDMA {case}"
            wc = await take_one(ea.scq, rule)
            expect_wc(wc, rule, wr_id=1, status=WcStatus.REM_ACCESS_ERR)
            if bytes(remote) != remote_before:
                raise AssertionError(f"{rule}: the remote memory was modified")
            if bytes(a.buf) != local_before:
                raise AssertionError(f"{rule}: the local memory was modified")
            expect_state(ea.qp, QpState.ERR, f"{rule}: the requester after REM_ACCESS_ERR")


@check("rdma-ordering")
async def check_rdma_ordering(harness: Harness, rng: random.Random) -> None:
    """RC keeps operations of one QP in order: a SEND after an RDMA WRITE finds the written
    data in place when it arrives; a READ after a WRITE reads what was written."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        n = rng.randrange(1000, 8000)
        data = rng.randbytes(n)
        src, back, note = a.alloc(n), a.alloc(n), a.alloc(8)
        target, roff = b.alloc(n), b.alloc(8)
        a.put(src, data)
        eb.qp.post_recv(RecvWR(1, (b.sge(roff, 8),)))
        ea.qp.post_send(
            [
                SendWR(
                    2,
                    Opcode.RDMA_WRITE,
                    (a.sge(src, n),),
                    remote_addr=b.mr.addr + target,
                    rkey=b.mr.rkey,
                    signaled=False,
                ),
                SendWR(3, Opcode.SEND, (a.sge(note, 8),), signaled=False),
                SendWR(
                    4,
                    Opcode.RDMA_READ,
                    (a.sge(back, n),),
                    remote_addr=b.mr.addr + target,
                    rkey=b.mr.rkey,
                ),
            ]
        )
        expect_wc(await take_one(eb.rcq, "the SEND after a WRITE"), "SEND after WRITE", wr_id=1)
        if b.get(target, n) != data:
            raise AssertionError("a SEND arrived before the RDMA WRITE posted ahead of it landed")
        expect_wc(
            await take_one(ea.scq, "the READ after a WRITE"),
            "READ after WRITE",
            wr_id=4,
            opcode=WcOpcode.RDMA_READ,
        )
        if a.get(back, n) != data:
            raise AssertionError("an RDMA READ after an RDMA WRITE did not read the written data")
