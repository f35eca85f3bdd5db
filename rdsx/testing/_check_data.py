"""Checks of the data path: order, exactly-once, scatter/gather, immediates, CQ behaviour."""

from __future__ import annotations

import random

import trio

from ..verbs import Opcode, QpAttr, QpCap, QpState, RecvWR, SendWR, Sge, WcOpcode, WcStatus
from ._fixture import (
    FULL_ACCESS,
    QUIET,
    WAIT,
    End,
    connect,
    expect_wc,
    link,
    open_nodes,
    quiet,
    take,
    take_one,
)
from ._harness import Harness
from ._registry import check


@check("send-order-exactly-once")
async def check_order(harness: Harness, rng: random.Random) -> None:
    """Many SENDs of random sizes arrive in order, exactly once, with the right byte_len."""
    count, slot, window = 160, 256, 16
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b, cap=QpCap(max_send_wr=window, max_recv_wr=count))
        sizes = [
            rng.choice((0, 1, slot)) if i % 17 == 0 else rng.randrange(1, slot + 1)
            for i in range(count)
        ]
        src, dst = a.alloc(count * slot), b.alloc(count * slot)
        payloads = [rng.randbytes(n) for n in sizes]
        for i, data in enumerate(payloads):
            a.put(src + i * slot, data)
        eb.qp.post_recv([RecvWR(1000 + i, (b.sge(dst + i * slot, slot),)) for i in range(count)])
        for start in range(0, count, window):
            batch = range(start, min(start + window, count))
            ea.qp.post_send(
                [
                    SendWR(i, Opcode.SEND, (a.sge(src + i * slot, sizes[i]),) if sizes[i] else ())
                    for i in batch
                ]
            )
            done = await take(ea.scq, len(batch), "send completions")
            for i, wc in zip(batch, done, strict=True):
                expect_wc(wc, "sends complete in posting order", wr_id=i, opcode=WcOpcode.SEND)
        wcs = await take(eb.rcq, count, f"{count} receives")
        for i, wc in enumerate(wcs):
            expect_wc(
                wc,
                f"message {i} must arrive in order with its length",
                wr_id=1000 + i,
                opcode=WcOpcode.RECV,
                byte_len=sizes[i],
            )
            if b.get(dst + i * slot, sizes[i]) != payloads[i]:
                raise AssertionError(f"message {i}: received bytes differ from the sent ones")
        await quiet([ea.scq, eb.rcq], "every message exactly once (no duplicate completion)")


@check("scatter-gather")
async def check_scatter_gather(harness: Harness, rng: random.Random) -> None:
    """A send gathers its SGEs in order; a receive scatters them over its SGEs in order."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b, cap=QpCap(max_send_sge=4, max_recv_sge=4))
        # Gather from three places (the second one before the first) and a second MR.
        lengths = [rng.randrange(1, 300) for _ in range(3)]
        offs = [a.alloc(n) for n in lengths]
        offs[0], offs[1] = offs[1], offs[0]
        lengths[0], lengths[1] = lengths[1], lengths[0]
        extra = bytearray(rng.randbytes(rng.randrange(1, 100)))
        other = a.pd.reg_mr(extra, a.mr.access)
        parts = [rng.randbytes(n) for n in lengths]
        for off, part in zip(offs, parts, strict=True):
            a.put(off, part)
        sges = [a.sge(off, n) for off, n in zip(offs, lengths, strict=True)]
        sges.append(Sge(other.addr, len(extra), other.lkey))
        message = b"".join(parts) + bytes(extra)
        total = len(message)
        cut1, cut2 = sorted(rng.sample(range(1, total), 2))
        rlens = [cut1, cut2 - cut1, total - cut2 + 5]  # the last one has room to spare
        roffs = [b.alloc(n) for n in rlens]
        eb.qp.post_recv(RecvWR(7, tuple(b.sge(o, n) for o, n in zip(roffs, rlens, strict=True))))
        ea.qp.post_send(SendWR(8, Opcode.SEND, tuple(sges)))
        expect_wc(await take_one(ea.scq, "gathered send"), "gathered send", wr_id=8)
        expect_wc(
            await take_one(eb.rcq, "scattered receive"),
            "scattered receive: byte_len is the whole message",
            wr_id=7,
            opcode=WcOpcode.RECV,
            byte_len=total,
        )
        got = b"".join(b.get(o, n) for o, n in zip(roffs, rlens, strict=True))[:total]
        if got != message:
            raise AssertionError(
                "scatter/gather: the receive SGEs do not hold the sent SGEs in order"
            )


@check("immediate-data")
async def check_immediate(harness: Harness, rng: random.Random) -> None:
    """SEND_WITH_IMM and RDMA_WRITE_WITH_IMM deliver imm_data; plain RDMA_WRITE takes no receive."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        src, dst, target = a.alloc(128), b.alloc(128), b.alloc(128)
        imm1, imm2 = rng.getrandbits(32), rng.getrandbits(32)
        data = rng.randbytes(100)
        a.put(src, data)
        eb.qp.post_recv([RecvWR(i, (b.sge(dst, 128),)) for i in (1, 2, 3)])

        ea.qp.post_send(SendWR(11, Opcode.SEND_WITH_IMM, (a.sge(src, 40),), imm_data=imm1))
        expect_wc(
            await take_one(ea.scq, "SEND_WITH_IMM"), "SEND_WITH_IMM", wr_id=11, opcode=WcOpcode.SEND
        )
        wc = await take_one(eb.rcq, "receive of SEND_WITH_IMM")
        expect_wc(wc, "receive of SEND_WITH_IMM", wr_id=1, opcode=WcOpcode.RECV, byte_len=40)
        if wc.imm_data != imm1:
            raise AssertionError(f"SEND_WITH_IMM: imm_data {imm1:#x} arrived as {wc.imm_data}")

        ea.qp.post_send(
            SendWR(
                12,
                Opcode.RDMA_WRITE,
                (a.sge(src, 10),),
                remote_addr=b.mr.addr + target,
                rkey=b.mr.rkey,
            )
        )
        expect_wc(
            await take_one(ea.scq, "RDMA_WRITE"), "RDMA_WRITE", wr_id=12, opcode=WcOpcode.RDMA_WRITE
        )
        if eb.rcq.poll():
            raise AssertionError("a plain RDMA_WRITE must not consume a receive")

        ea.qp.post_send(
            SendWR(
                13,
                Opcode.RDMA_WRITE_WITH_IMM,
                (a.sge(src, 100),),
                imm_data=imm2,
                remote_addr=b.mr.addr + target,
                rkey=b.mr.rkey,
            )
        )
        expect_wc(
            await take_one(ea.scq, "RDMA_WRITE_WITH_IMM"),
            "RDMA_WRITE_WITH_IMM",
            wr_id=13,
            opcode=WcOpcode.RDMA_WRITE,
        )
        wc = await take_one(eb.rcq, "receive consumed by RDMA_WRITE_WITH_IMM")
        expect_wc(
            wc,
            "RDMA_WRITE_WITH_IMM consumes the next receive",
            wr_id=2,
            opcode=WcOpcode.RECV_RDMA_WITH_IMM,
            byte_len=100,
        )
        if wc.imm_data != imm2:
            raise AssertionError(
                f"RDMA_WRITE_WITH_IMM: imm_data {imm2:#x} arrived as {wc.imm_data}"
            )
        if b.get(target, 100) != data:
            raise AssertionError("RDMA_WRITE_WITH_IMM: the data did not land at remote_addr")
        if b.get(dst + 40, 60) != bytes(60):
            raise AssertionError("RDMA_WRITE_WITH_IMM wrote into the receive buffer")


@check("cq-poll-and-wait")
async def check_cq(harness: Harness, rng: random.Random) -> None:
    """poll never waits ([] when empty); wait blocks until >= 1 and honours max_entries."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        if ea.scq.poll() != [] or eb.rcq.poll(1) != []:
            raise AssertionError("poll on an empty CQ must return []")
        woke: list[int] = []

        async def waiter() -> None:
            woke.append(len(await eb.rcq.wait(3)))

        n = 5
        off, roff = a.alloc(8), b.alloc(8 * n)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(waiter)
            await trio.sleep(QUIET)
            if woke:
                raise AssertionError("cq.wait returned while the CQ was empty")
            eb.qp.post_recv([RecvWR(i, (b.sge(roff + 8 * i, 8),)) for i in range(n)])
            ea.qp.post_send([SendWR(100 + i, Opcode.SEND, (a.sge(off, 8),)) for i in range(n)])
        if not 1 <= woke[0] <= 3:
            raise AssertionError(f"cq.wait(3) must return 1..3 completions, returned {woke[0]}")
        await take(ea.scq, n, "the sends")
        await trio.sleep(QUIET)
        rest = eb.rcq.poll(1)
        if len(rest) > 1:
            raise AssertionError(f"poll(1) returned {len(rest)} completions")
        rest += eb.rcq.poll()
        if woke[0] + len(rest) != n:
            raise AssertionError(f"{n} receives gave {woke[0] + len(rest)} completions in all")
        if eb.rcq.poll() != []:
            raise AssertionError("poll after draining the CQ must return []")


@check("unsignaled-sends")
async def check_unsignaled(harness: Harness, rng: random.Random) -> None:
    """Unsignaled WRs complete silently on success but do complete on error; sq_sig_all wins."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        off, roff = a.alloc(8), b.alloc(64)
        eb.qp.post_recv([RecvWR(i, (b.sge(roff + 8 * i, 8),)) for i in range(4)])
        wrs = [SendWR(i, Opcode.SEND, (a.sge(off, 8),), signaled=(i == 3)) for i in range(4)]
        ea.qp.post_send(wrs)
        expect_wc(
            await take_one(ea.scq, "the signaled send"), "only the signaled send completes", wr_id=3
        )
        await take(eb.rcq, 4, "all four sends arrive")
        await quiet([ea.scq], "unsignaled successful sends produce no completion")

        ea.qp.post_send(
            SendWR(
                9,
                Opcode.RDMA_WRITE,
                (a.sge(off, 8),),
                remote_addr=b.mr.addr,
                rkey=b.mr.rkey ^ 0x5A5A5A5A,
                signaled=False,
            )
        )
        expect_wc(
            await take_one(ea.scq, "an unsignaled WR that fails"),
            "an unsignaled WR completes on error",
            wr_id=9,
            status=WcStatus.REM_ACCESS_ERR,
        )

    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b, sq_sig_all=True)
        off, roff = a.alloc(8), b.alloc(8)
        eb.qp.post_recv(RecvWR(1, (b.sge(roff, 8),)))
        ea.qp.post_send(SendWR(2, Opcode.SEND, (a.sge(off, 8),), signaled=False))
        expect_wc(await take_one(ea.scq, "sq_sig_all QP"), "sq_sig_all signals every WR", wr_id=2)


@check("multi-packet-messages")
async def check_multi_packet(harness: Harness, rng: random.Random) -> None:
    """Messages around and well above the path MTU arrive whole, in order."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        mtu = a.port.active_mtu
        sizes = [mtu - 1, mtu, mtu + 1, 2 * mtu, 3 * mtu + rng.randrange(1, mtu)]
        rng.shuffle(sizes)
        slot = 4 * mtu
        src_buf, dst_buf = bytearray(slot * len(sizes)), bytearray(slot * len(sizes))
        src = a.pd.reg_mr(src_buf, FULL_ACCESS)
        dst = b.pd.reg_mr(dst_buf, FULL_ACCESS)
        payloads = [rng.randbytes(n) for n in sizes]
        for i, data in enumerate(payloads):
            src_buf[i * slot : i * slot + len(data)] = data
        eb.qp.post_recv(
            [RecvWR(i, (Sge(dst.addr + i * slot, slot, dst.lkey),)) for i in range(len(sizes))]
        )
        ea.qp.post_send(
            [
                SendWR(i, Opcode.SEND, (Sge(src.addr + i * slot, n, src.lkey),))
                for i, n in enumerate(sizes)
            ]
        )
        await take(ea.scq, len(sizes), "multi-packet sends")
        for i, wc in enumerate(await take(eb.rcq, len(sizes), "multi-packet receives")):
            rule = f"a {sizes[i]}-byte message with a {mtu}-byte MTU"
            expect_wc(wc, rule, wr_id=i, opcode=WcOpcode.RECV, byte_len=sizes[i])
            if bytes(dst_buf[i * slot : i * slot + sizes[i]]) != payloads[i]:
                raise AssertionError(f"{rule}: the data arrived corrupt")


@check("qp-isolation")
async def check_isolation(harness: Harness, rng: random.Random) -> None:
    """QPs between the same two devices keep their traffic apart; an error on one leaves
    the others working."""
    async with open_nodes(harness) as (a, b):
        links = [link(a, b) for _ in range(3)]
        rounds = 4
        off = a.alloc(8 * rounds * len(links))
        roff = b.alloc(8 * rounds * len(links))
        for k, (_, eb) in enumerate(links):
            eb.qp.post_recv(
                [RecvWR(i, (b.sge(roff + 8 * (k * rounds + i), 8),)) for i in range(rounds)]
            )
        order = [(k, i) for i in range(rounds) for k in range(len(links))]
        for k, i in order:
            a.put(off + 8 * (k * rounds + i), bytes([k, i]) * 4)
            links[k][0].qp.post_send(
                SendWR(i, Opcode.SEND, (a.sge(off + 8 * (k * rounds + i), 8),))
            )
        for k, (ea, eb) in enumerate(links):
            await take(ea.scq, rounds, f"sends on QP {k}")
            for i, wc in enumerate(await take(eb.rcq, rounds, f"receives on QP {k}")):
                expect_wc(wc, f"QP {k} receives its own messages in order", wr_id=i)
                if b.get(roff + 8 * (k * rounds + i), 8) != bytes([k, i]) * 4:
                    raise AssertionError(f"QP {k} got another QP's message")
        broken, (ea, eb) = links[0], links[1]
        broken[0].qp.modify(QpAttr(state=QpState.ERR))
        broken[1].qp.post_recv(RecvWR(99, (b.sge(roff, 8),)))
        eb.qp.post_recv(RecvWR(5, (b.sge(roff, 8),)))
        ea.qp.post_send(SendWR(6, Opcode.SEND, (a.sge(off, 8),)))
        expect_wc(await take_one(ea.scq, "a QP next to one in ERR"), "ERR stays per QP", wr_id=6)
        expect_wc(await take_one(eb.rcq, "a QP next to one in ERR"), "ERR stays per QP", wr_id=5)


@check("shared-cq")
async def check_shared_cq(harness: Harness, rng: random.Random) -> None:
    """One CQ for the sends and receives of several QPs: every completion names its QP
    (``qp_num``), and each QP's completions keep their order."""
    async with open_nodes(harness) as (a, b):
        cq_a, cq_b = a.ctx.create_cq(), b.ctx.create_cq()
        qps = rng.randrange(2, 5)
        ends_a = [End(a, a.pd.create_qp(cq_a, cq_a), cq_a, cq_a) for _ in range(qps)]
        ends_b = [End(b, b.pd.create_qp(cq_b, cq_b), cq_b, cq_b) for _ in range(qps)]
        for ea, eb in zip(ends_a, ends_b, strict=True):
            connect(ea, eb)
        rounds = 3
        off, roff = a.alloc(8), b.alloc(8 * qps * rounds)
        for k, eb in enumerate(ends_b):
            eb.qp.post_recv(
                [
                    RecvWR(100 * k + i, (b.sge(roff + 8 * (rounds * k + i), 8),))
                    for i in range(rounds)
                ]
            )
        for i in range(rounds):
            for k, ea in enumerate(ends_a):
                ea.qp.post_send(SendWR(100 * k + i, Opcode.SEND, (a.sge(off, 8),)))
        total = qps * rounds
        for cq, ends, opcode in ((cq_a, ends_a, WcOpcode.SEND), (cq_b, ends_b, WcOpcode.RECV)):
            seen: dict[int, list[int]] = {}
            for wc in await take(cq, total, f"{total} completions on one shared CQ"):
                k = wc.wr_id // 100
                expect_wc(wc, "a completion on a shared CQ", opcode=opcode)
                if not 0 <= k < qps or wc.qp_num != ends[k].qp.qp_num:
                    raise AssertionError(f"a shared-CQ completion names the wrong QP: {wc}")
                seen.setdefault(k, []).append(wc.wr_id % 100)
            for k, order in seen.items():
                if order != list(range(rounds)):
                    raise AssertionError(f"QP {k}'s completions on a shared CQ: order {order}")
        await quiet([cq_a, cq_b], "a shared CQ holds each completion once")


@check("write-imm-needs-receive")
async def check_write_imm_receive(harness: Harness, rng: random.Random) -> None:
    """RDMA_WRITE_WITH_IMM consumes a receive (an empty one will do): with none posted it is
    RNR-NAKed like a SEND (finite rnr_retry: RNR_RETRY_EXC_ERR; infinite: waits)."""
    async with open_nodes(harness) as (a, b):
        off, target = a.alloc(64), b.alloc(64)
        a.put(off, rng.randbytes(64))
        imm = rng.getrandbits(32)

        def wr() -> SendWR:
            return SendWR(
                1,
                Opcode.RDMA_WRITE_WITH_IMM,
                (a.sge(off, 64),),
                imm_data=imm,
                remote_addr=b.mr.addr + target,
                rkey=b.mr.rkey,
            )

        ea, _ = link(a, b, rnr_retry=1)
        ea.qp.post_send(wr())
        rule = "RDMA_WRITE_WITH_IMM without a receive, rnr_retry=1"
        expect_wc(await take_one(ea.scq, rule), rule, wr_id=1, status=WcStatus.RNR_RETRY_EXC_ERR)

        ea, eb = link(a, b, rnr_retry=7)
        ea.qp.post_send(wr())
        await quiet([ea.scq], "RDMA_WRITE_WITH_IMM must wait for a receive (rnr_retry=7)")
        eb.qp.post_recv(RecvWR(2, ()))
        rule = "RDMA_WRITE_WITH_IMM into a late, empty receive"
        expect_wc(await take_one(ea.scq, rule), rule, wr_id=1, opcode=WcOpcode.RDMA_WRITE)
        wc = await take_one(eb.rcq, rule)
        expect_wc(wc, rule, wr_id=2, opcode=WcOpcode.RECV_RDMA_WITH_IMM, byte_len=64)
        if wc.imm_data != imm or b.get(target, 64) != a.get(off, 64):
            raise AssertionError(f"{rule}: imm_data or data wrong ({wc})")


@check("cq-wait-cancellation")
async def check_wait_cancellation(harness: Harness, rng: random.Random) -> None:
    """A cq.wait() cancelled (timed out) while completions arrive loses none of them."""
    async with open_nodes(harness) as (a, b):
        count = 40
        ea, eb = link(a, b, cap=QpCap(max_send_wr=count, max_recv_wr=count))
        off, roff = a.alloc(8), b.alloc(8 * count)
        eb.qp.post_recv([RecvWR(i, (b.sge(roff + 8 * i, 8),)) for i in range(count)])
        ea.qp.post_send([SendWR(i, Opcode.SEND, (a.sge(off, 8),)) for i in range(count)])
        got: list[int] = []
        for _ in range(200):  # many short waits, most cut off around an arrival
            if len(got) >= count:
                break
            with trio.move_on_after(rng.choice((0.0, 1e-7, 1e-6, 5e-6, 2e-5))):
                got += [wc.wr_id for wc in await eb.rcq.wait(rng.randrange(1, 4))]
        with trio.move_on_after(WAIT):  # then whatever is left, without cancellation
            while len(got) < count:
                got += [wc.wr_id for wc in await eb.rcq.wait(count - len(got))]
        got += [wc.wr_id for wc in eb.rcq.poll(count)]
        if got != list(range(count)):
            raise AssertionError(
                f"{count} receives read by cq.wait() calls under short timeouts gave {got}: "
                "a cancelled wait lost or duplicated completions"
            )
