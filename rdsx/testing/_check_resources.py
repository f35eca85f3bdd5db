"""Checks of resource creation, handle life cycle and work-request validation.

Post-time refusals (``InvalidArgument``, ``QueueFull``) are what
:meth:`rdsx.verbs.QP.post_send` / ``post_recv`` list; a local key that does not
cover the SGE is not a post-time error but a ``LOC_PROT_ERR`` completion, as on
hardware, and nothing reaches the peer.
"""

from __future__ import annotations

import random

from ..errors import InvalidArgument, InvalidHandle, QueueFull
from ..verbs import (
    MR,
    MTU_VALUES,
    Access,
    Opcode,
    PortState,
    QpAttr,
    QpCap,
    QpState,
    RecvWR,
    SendWR,
    Sge,
    WcStatus,
)
from ._fixture import (
    FULL_ACCESS,
    close_quietly,
    exchange,
    expect_raises,
    expect_state,
    expect_wc,
    link,
    open_nodes,
    quiet,
    take,
    take_one,
)
from ._harness import Harness
from ._registry import check


@check("device-basics")
async def check_device_basics(harness: Harness, rng: random.Random) -> None:
    """Two reachable devices: active ports, sane limits, distinct locators."""
    async with open_nodes(harness) as (a, b):
        for node in (a, b):
            what = f"device {node.device.name!r}"
            if node.device.removed:
                raise AssertionError(f"{what}: removed is True on a fresh device")
            if node.port.state is not PortState.ACTIVE:
                raise AssertionError(f"{what}: port should be ACTIVE, is {node.port.state}")
            if node.port.active_mtu not in MTU_VALUES:
                raise AssertionError(f"{what}: active_mtu {node.port.active_mtu} is not an IB MTU")
            limits = node.attr
            for name in ("max_qp", "max_qp_wr", "max_sge", "max_cq", "max_cqe", "max_mr", "max_pd"):
                if getattr(limits, name) < 1:
                    raise AssertionError(f"{what}: {name} must be >= 1, got {limits}")
            if node.port.max_msg_sz < 4096:
                raise AssertionError(f"{what}: max_msg_sz {node.port.max_msg_sz} < 4096")
        if a.device.address == b.device.address:
            raise AssertionError("the pair's devices must be on two nodes (same address)")
        if a.port.address == b.port.address:
            raise AssertionError("the pair's ports must have distinct locators")


@check("mr-and-cq-arguments")
async def check_registration(harness: Harness, rng: random.Random) -> None:
    """reg_mr, create_cq and create_qp refuse what ibv_* refuses, with InvalidArgument."""
    async with open_nodes(harness) as (a, b):
        pd = a.pd
        with expect_raises(InvalidArgument, "reg_mr with REMOTE_WRITE but not LOCAL_WRITE"):
            pd.reg_mr(bytearray(64), Access.REMOTE_WRITE)
        with expect_raises(InvalidArgument, "reg_mr of an empty buffer"):
            pd.reg_mr(bytearray(), Access.LOCAL_WRITE)
        with expect_raises(InvalidArgument, "reg_mr of a read-only buffer"):
            pd.reg_mr(memoryview(bytes(64)), Access.NONE)
        iova = (1 << 40) + rng.randrange(1 << 16) * 4096
        if a.mr.addr < iova + 128 and iova < a.mr.addr + a.mr.length:
            iova += 1 << 32
        buf = bytearray(64)
        mr = pd.reg_mr(buf, FULL_ACCESS, iova=iova)
        if (mr.addr, mr.length) != (iova, 64):
            raise AssertionError(f"reg_mr(iova={iova:#x}) gave addr {mr.addr:#x} len {mr.length}")
        if mr.lkey == a.mr.lkey or mr.rkey == a.mr.rkey:
            raise AssertionError("two live MRs share a key")
        buf[0:4] = b"\x01\x02\x03\x04"
        if bytes(mr.buffer[0:4]) != b"\x01\x02\x03\x04":
            raise AssertionError("the MR must alias the registered buffer, not copy it")
        with expect_raises(InvalidArgument, "reg_mr with an iova overlapping another MR"):
            pd.reg_mr(bytearray(64), Access.LOCAL_WRITE, iova=iova + 32)
        pd.reg_mr(bytearray(64), Access.LOCAL_WRITE, iova=iova + 64).close()
        mr.close()

        with expect_raises(InvalidArgument, "create_cq(0)"):
            a.ctx.create_cq(0)
        with expect_raises(InvalidArgument, "create_cq above max_cqe"):
            a.ctx.create_cq(a.attr.max_cqe + 1)
        cq = a.ctx.create_cq()
        try:
            for cap, what in [
                (QpCap(max_send_sge=a.attr.max_sge + 1), "max_send_sge above max_sge"),
                (QpCap(max_recv_sge=a.attr.max_sge + 1), "max_recv_sge above max_sge"),
                (QpCap(max_send_wr=a.attr.max_qp_wr + 1), "max_send_wr above max_qp_wr"),
                (QpCap(max_recv_wr=a.attr.max_qp_wr + 1), "max_recv_wr above max_qp_wr"),
            ]:
                with expect_raises(InvalidArgument, f"create_qp with {what}"):
                    pd.create_qp(cq, cq, cap)
            foreign = b.ctx.create_cq()
            with expect_raises(InvalidArgument, "create_qp with a CQ of another context"):
                pd.create_qp(cq, foreign)
        finally:
            close_quietly(cq)


@check("handles-after-close")
async def check_handles(harness: Harness, rng: random.Random) -> None:
    """Double deregistration and every use of a destroyed handle raise InvalidHandle."""
    async with open_nodes(harness) as (a, _b):
        mr = a.pd.reg_mr(bytearray(64), Access.LOCAL_WRITE)
        mr.close()
        with expect_raises(InvalidHandle, "deregistering an MR twice"):
            mr.close()

        end = a.end()
        end.qp.close()
        sge = a.sge(0, 8)
        with expect_raises(InvalidHandle, "post_send on a destroyed QP"):
            end.qp.post_send(SendWR(1, Opcode.SEND, (sge,)))
        with expect_raises(InvalidHandle, "post_recv on a destroyed QP"):
            end.qp.post_recv(RecvWR(1, (sge,)))
        with expect_raises(InvalidHandle, "modify of a destroyed QP"):
            end.qp.modify(QpAttr(state=QpState.INIT, access_flags=FULL_ACCESS))
        end.scq.close()
        end.scq.close()  # idempotent
        with expect_raises(InvalidHandle, "poll of a destroyed CQ"):
            end.scq.poll()
        with expect_raises(InvalidHandle, "wait on a destroyed CQ"):
            await end.scq.wait()

        ctx = await a.device.open()
        pd = ctx.alloc_pd()
        cq = ctx.create_cq()
        qp = pd.create_qp(cq, cq)
        pd.close()
        pd.close()  # idempotent
        with expect_raises(InvalidHandle, "reg_mr on a deallocated PD"):
            pd.reg_mr(bytearray(64), Access.LOCAL_WRITE)
        with expect_raises(InvalidHandle, "create_qp on a deallocated PD"):
            pd.create_qp(cq, cq)
        with expect_raises(InvalidHandle, "modify of a QP of a deallocated PD"):
            qp.modify(QpAttr(state=QpState.INIT, access_flags=FULL_ACCESS))
        pd2 = ctx.alloc_pd()
        ctx.close()
        ctx.close()  # idempotent
        with expect_raises(InvalidHandle, "alloc_pd on a closed context"):
            ctx.alloc_pd()
        with expect_raises(InvalidHandle, "create_cq on a closed context"):
            ctx.create_cq()
        with expect_raises(InvalidHandle, "reg_mr on a PD of a closed context"):
            pd2.reg_mr(bytearray(64), Access.LOCAL_WRITE)
        with expect_raises(InvalidHandle, "poll of a CQ of a closed context"):
            cq.poll()


@check("wr-validation")
async def check_wr_validation(harness: Harness, rng: random.Random) -> None:
    """Malformed WRs are refused at post time and leave the QP working."""
    async with open_nodes(harness) as (a, b):
        cap = QpCap(max_send_sge=2, max_recv_sge=2)
        ea, eb = link(a, b, cap=cap)
        off = a.alloc(64)
        three = tuple(a.sge(off + 8 * i, 8) for i in range(3))
        huge = a.port.max_msg_sz + 1
        for wr, what in [
            (SendWR(1, Opcode.SEND, three), "3 SGEs with max_send_sge=2"),
            (SendWR(2, Opcode.SEND, (a.sge(off, huge),)), "a message above max_msg_sz"),
            (
                SendWR(3, Opcode.SEND, (a.sge(off, huge // 2 + 1), a.sge(off, huge // 2 + 1))),
                "two SGEs that sum above max_msg_sz",
            ),
            (SendWR(4, Opcode.SEND, (Sge(a.mr.addr, -1, a.mr.lkey),)), "a negative length"),
            (SendWR(5, Opcode.SEND_WITH_IMM, (a.sge(off, 8),)), "SEND_WITH_IMM without imm"),
            (
                SendWR(6, Opcode.RDMA_WRITE_WITH_IMM, (a.sge(off, 8),), None, b.mr.addr, b.mr.rkey),
                "RDMA_WRITE_WITH_IMM without imm",
            ),
        ]:
            with expect_raises(InvalidArgument, f"post_send of {what}"):
                ea.qp.post_send(wr)
        with expect_raises(InvalidArgument, "post_recv of 3 SGEs with max_recv_sge=2"):
            eb.qp.post_recv(RecvWR(7, tuple(b.sge(8 * i, 8) for i in range(3))))
        expect_state(ea.qp, QpState.RTS, "a refused post must not break the QP")
        await exchange(ea, eb, rng, "a send after refused posts", room=64, wr_ids=(8, 9))


@check("queue-full")
async def check_queue_full(harness: Harness, rng: random.Random) -> None:
    """More than max_send_wr / max_recv_wr outstanding is QueueFull; completion frees slots."""
    async with open_nodes(harness) as (a, b):
        cap = QpCap(max_send_wr=4, max_recv_wr=4)
        ea, eb = link(a, b, cap=cap, rnr_retry=7)
        off = a.alloc(16)
        # No receive at b yet: the sends stay outstanding (RNR, retried forever).
        ea.qp.post_send([SendWR(i, Opcode.SEND, (a.sge(off, 16),)) for i in range(4)])
        with expect_raises(QueueFull, "a 5th send with max_send_wr=4 outstanding"):
            ea.qp.post_send(SendWR(4, Opcode.SEND, (a.sge(off, 16),)))
        ea.qp.post_recv([RecvWR(10 + i, (a.sge(off, 16),)) for i in range(4)])
        with expect_raises(QueueFull, "a 5th receive with max_recv_wr=4 outstanding"):
            ea.qp.post_recv(RecvWR(14, (a.sge(off, 16),)))
        roff = b.alloc(64)
        eb.qp.post_recv([RecvWR(20 + i, (b.sge(roff + 16 * i, 16),)) for i in range(4)])
        wcs = await take(ea.scq, 4, "the 4 sends once receives are posted")
        for i, wc in enumerate(wcs):
            expect_wc(wc, "send completing after RNR", wr_id=i)
        ea.qp.post_send(SendWR(5, Opcode.SEND, (a.sge(off, 16),)))  # a slot is free again
        eb.qp.post_recv(RecvWR(24, (b.sge(roff, 16),)))
        expect_wc(await take_one(ea.scq, "send into a freed slot"), "freed slot", wr_id=5)


#: case -> what is wrong with the send's SGE
_BAD_LOCAL = {
    "beyond": "runs past the end of its MR",
    "unknown": "names an unknown lkey",
    "deregistered": "names a deregistered MR",
    # "MRs and QPs of one PD may reference each other only"
    "other-pd": "names an MR of another PD",
}


async def _bad_local_send(harness: Harness, rng: random.Random, case: str) -> None:
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        roff = b.alloc(64)
        eb.qp.post_recv(RecvWR(1, (b.sge(roff, 64),)))
        if case == "beyond":
            sge = Sge(a.mr.addr + a.mr.length - 8, 16, a.mr.lkey)
        elif case == "unknown":
            known = {a.mr.lkey, b.mr.lkey}
            key = (a.mr.lkey + 0x9E3779B1) & 0xFFFFFFFF
            while key in known:
                key = (key + 1) & 0xFFFFFFFF
            sge = Sge(a.mr.addr, 16, key)
        elif case == "deregistered":
            stale = a.pd.reg_mr(bytearray(64), Access.LOCAL_WRITE)
            sge = Sge(stale.addr, 16, stale.lkey)
            stale.close()
        else:
            other = a.ctx.alloc_pd().reg_mr(bytearray(64), Access.LOCAL_WRITE)
            sge = Sge(other.addr, 16, other.lkey)
        ea.qp.post_send(SendWR(2, Opcode.SEND, (sge,)))
        rule = f"a send whose SGE {_BAD_LOCAL[case]}"
        expect_wc(await take_one(ea.scq, rule), rule, wr_id=2, status=WcStatus.LOC_PROT_ERR)
        await quiet([eb.rcq], f"{rule}: nothing may reach the peer")
        expect_state(ea.qp, QpState.ERR, f"{rule}: after an error completion")


@check("local-key-errors")
async def check_local_keys(harness: Harness, rng: random.Random) -> None:
    """An SGE outside its MR, an unknown or deregistered lkey, an MR of another PD:
    LOC_PROT_ERR, nothing sent. An RDMA READ into an MR without LOCAL_WRITE: LOC_PROT_ERR,
    nothing written."""
    for case in _BAD_LOCAL:
        await _bad_local_send(harness, rng, case)
    async with open_nodes(harness) as (a, b):
        ea, _eb = link(a, b)
        source = b.alloc(16)
        b.put(source, rng.randbytes(16))
        landing = bytearray(16)
        readonly = a.pd.reg_mr(landing, Access.NONE)
        ea.qp.post_send(
            SendWR(
                1,
                Opcode.RDMA_READ,
                (Sge(readonly.addr, 16, readonly.lkey),),
                remote_addr=b.mr.addr + source,
                rkey=b.mr.rkey,
            )
        )
        rule = "an RDMA READ into an MR without LOCAL_WRITE"
        expect_wc(await take_one(ea.scq, rule), rule, wr_id=1, status=WcStatus.LOC_PROT_ERR)
        if landing != bytearray(16):
            raise AssertionError(f"{rule}: the read-only memory was written")


@check("receive-side-errors")
async def check_receive_errors(harness: Harness, rng: random.Random) -> None:
    """A receive too small (LOC_LEN_ERR), outside its MR, in an MR without LOCAL_WRITE or
    deregistered after the post (LOC_PROT_ERR) fails both ends, writes nothing read-only."""
    cases = ("too small", "outside its MR", "in an MR without LOCAL_WRITE", "deregistered")
    for case in cases:
        async with open_nodes(harness) as (a, b):
            ea, eb = link(a, b)
            off = a.alloc(32)
            readonly: MR | None = None
            if case == "too small":
                sge, status = b.sge(b.alloc(8), 8), WcStatus.LOC_LEN_ERR
            elif case == "outside its MR":
                sge, status = Sge(b.mr.addr + b.mr.length - 8, 32, b.mr.lkey), WcStatus.LOC_PROT_ERR
            elif case == "deregistered":
                stale = b.pd.reg_mr(bytearray(32), Access.LOCAL_WRITE)
                sge, status = Sge(stale.addr, 32, stale.lkey), WcStatus.LOC_PROT_ERR
            else:
                readonly = b.pd.reg_mr(bytearray(32), Access.NONE)
                sge, status = Sge(readonly.addr, 32, readonly.lkey), WcStatus.LOC_PROT_ERR
            a.put(off, rng.randbytes(32))
            eb.qp.post_recv(RecvWR(1, (sge,)))
            if case == "deregistered":
                stale.close()  # after the post: the key is checked when the message lands
            ea.qp.post_send(SendWR(2, Opcode.SEND, (a.sge(off, 32),)))
            rule = f"a 32-byte send into a receive {case}"
            expect_wc(await take_one(eb.rcq, rule), f"{rule} (responder)", wr_id=1, status=status)
            wc = await take_one(ea.scq, rule)
            if wc.status is WcStatus.SUCCESS or wc.wr_id != 2:
                raise AssertionError(f"{rule}: the requester must see an error, got {wc}")
            if readonly is not None and bytes(readonly.buffer) != bytes(32):
                raise AssertionError(f"{rule}: the read-only memory was written")


@check("imm-data-range")
async def check_imm_range(harness: Harness, rng: random.Random) -> None:
    """imm_data is a 32-bit field: a value outside 0 .. 2**32 - 1 is refused at post time."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        off = a.alloc(8)
        eb.qp.post_recv([RecvWR(i, (b.sge(b.alloc(8), 8),)) for i in range(2)])
        for value in (1 << 32, -1):
            for opcode in (Opcode.SEND_WITH_IMM, Opcode.RDMA_WRITE_WITH_IMM):
                wr = SendWR(
                    1,
                    opcode,
                    (a.sge(off, 8),),
                    imm_data=value,
                    remote_addr=b.mr.addr,
                    rkey=b.mr.rkey,
                )
                with expect_raises(InvalidArgument, f"{opcode.name} with imm_data={value}"):
                    ea.qp.post_send(wr)
        top = (1 << 32) - 1
        ea.qp.post_send(SendWR(2, Opcode.SEND_WITH_IMM, (a.sge(off, 8),), imm_data=top))
        wc = await take_one(eb.rcq, "imm_data = 2**32 - 1")
        if wc.imm_data != top:
            raise AssertionError(f"imm_data 2**32 - 1 arrived as {wc.imm_data}")
