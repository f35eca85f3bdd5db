"""Completions the shim makes itself (not the device's) follow the contract's ``byte_len``:
the length for a SUCCESS, 0 for a failure or a flush, as sim and tcp report it."""

from __future__ import annotations

import pytest
import trio
from shim_world import open_world, take

from rdsx.errors import PeerResumeTimeout
from rdsx.shim import ShimConfig
from rdsx.shim.qp import Hold, VirtualQP
from rdsx.verbs import QpAttr, QpState, WcStatus, WorkCompletion


def flushed(wcs: list[WorkCompletion]) -> list[tuple[WcStatus, int]]:
    return [(wc.status, wc.byte_len) for wc in wcs]


async def test_sends_flushed_by_a_resume_timeout_report_no_bytes(
    autojump_clock: trio.abc.Clock,
) -> None:
    """B's sends held while A is away flush after the resume bound with byte_len 0; so do
    its receives and a send posted once the QP has given up."""
    with trio.fail_after(60):
        async with open_world(seed=21, config=ShimConfig(resume_timeout=1.0), recvs=3) as world:
            a, b = world.a, world.b
            await world.fabric.detach(a.vm, grace=1.0)
            for payload in (b"x" * 5, b"y" * 17, b"z" * 40):
                b.send(payload)  # held: the peer is suspended
            assert b.cm is not None
            with pytest.raises(PeerResumeTimeout):
                await b.cm.next_event()
            assert b.qp.state is QpState.ERR
            assert flushed(await take(b.scq, 3)) == [(WcStatus.WR_FLUSH_ERR, 0)] * 3
            assert flushed(await take(b.rcq, 3)) == [(WcStatus.WR_FLUSH_ERR, 0)] * 3
            b.send(b"after-the-end")
            assert flushed(await take(b.scq, 1)) == [(WcStatus.WR_FLUSH_ERR, 0)]


async def test_sends_flushed_while_the_device_is_away_report_no_bytes(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A moves its QP to ERR while it has no device: the held sends flush with byte_len 0."""
    with trio.fail_after(60):
        async with open_world(seed=22) as world:
            a = world.a
            await world.fabric.detach(a.vm, grace=1.0)
            assert isinstance(a.qp, VirtualQP) and a.qp.held is Hold.LOCAL
            a.send(b"held-" * 8)
            a.qp.modify(QpAttr(state=QpState.ERR))
            assert flushed(await take(a.scq, 1)) == [(WcStatus.WR_FLUSH_ERR, 0)]
