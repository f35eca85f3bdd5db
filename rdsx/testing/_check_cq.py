"""Checks of CQ capacity: ``create_cq(cqe)`` is enforced, and an overrun breaks the CQ as on
InfiniBand (``CQ_ERR``, the QP whose completion was lost goes to ERR with ``QP_FATAL``)."""

from __future__ import annotations

import random

from ..verbs import AsyncEventType, Opcode, QpState, RecvWR, SendWR, WcStatus
from ._fixture import (
    End,
    connect,
    expect_state,
    expect_wc,
    open_nodes,
    quiet,
    take,
    wait_event,
)
from ._harness import Harness
from ._registry import check


@check("cq-overrun")
async def check_cq_overrun(harness: Harness, rng: random.Random) -> None:
    """More unpolled completions than ``cqe``: the first ``cqe`` stay pollable, the rest are
    lost, the context gets CQ_ERR and the QP QP_FATAL and ERR; the broken CQ stays broken."""
    async with open_nodes(harness) as (a, b):
        cqe = rng.randrange(1, 4)
        scq, rcq = a.ctx.create_cq(cqe), a.ctx.create_cq()
        ea, eb = End(a, a.pd.create_qp(scq, rcq), scq, rcq), b.end()
        connect(ea, eb)
        count = cqe + 2
        off, roff = a.alloc(16), b.alloc(16 * count)
        eb.qp.post_recv([RecvWR(100 + i, (b.sge(roff + 16 * i, 16),)) for i in range(count)])
        ea.qp.post_send([SendWR(i, Opcode.SEND, (a.sge(off, 16),)) for i in range(count)])
        await wait_event(a.ctx, AsyncEventType.CQ_ERR, "a send CQ overrun")
        await wait_event(
            a.ctx, AsyncEventType.QP_FATAL, "the QP of a lost completion", qp_num=ea.qp.qp_num
        )
        expect_state(ea.qp, QpState.ERR, "after its completion was lost to a CQ overrun")
        kept = scq.poll(count)
        if [wc.wr_id for wc in kept] != list(range(cqe)):
            raise AssertionError(
                f"a CQ of {cqe} entries must keep exactly the first {cqe} completions, kept {kept}"
            )
        for wc in kept:
            expect_wc(wc, "a completion that fit before the overrun", status=WcStatus.SUCCESS)
        # Broken for good: with room again, a flushed WR still completes nowhere.
        ea.qp.post_send(SendWR(99, Opcode.SEND, (a.sge(off, 16),)))
        await quiet([scq], "a CQ after its overrun")
        # The responder got every message; its own CQ is not involved.
        got = await take(eb.rcq, cqe + 1, "the receives at the peer")
        for wc in got:
            expect_wc(wc, "a receive at the peer", status=WcStatus.SUCCESS, byte_len=16)
