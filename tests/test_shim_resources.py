"""The shim refuses the same resource arguments as a transport, with or without a device."""

from __future__ import annotations

import pytest
import trio
from shim_world import ACCESS, open_world

from rdsx.errors import InvalidArgument
from rdsx.shim.resources import VirtualContext
from rdsx.verbs import PD, Access, Context, QpCap


def _refusals(ctx: Context, pd: PD) -> None:
    """Every argument the contract refuses at ``create_cq``, ``reg_mr`` and ``create_qp``."""
    limits = ctx.query_device()
    for cqe in (0, limits.max_cqe + 1):
        with pytest.raises(InvalidArgument):
            ctx.create_cq(cqe)
    for buffer, access in (
        (memoryview(bytes(64)), Access.LOCAL_WRITE),
        (bytearray(0), Access.LOCAL_WRITE),
        (bytearray(64), Access.REMOTE_WRITE),
    ):
        with pytest.raises(InvalidArgument):
            pd.reg_mr(buffer, access)
    base = 1 << 40
    pd.reg_mr(bytearray(4096), ACCESS, iova=base)
    for iova in (base + 4095, base - 1, -1):
        with pytest.raises(InvalidArgument):
            pd.reg_mr(bytearray(64), ACCESS, iova=iova)
    cq = ctx.create_cq()
    for cap in (
        QpCap(max_send_wr=0),
        QpCap(max_recv_wr=limits.max_qp_wr + 1),
        QpCap(max_send_sge=limits.max_sge + 1),
        QpCap(max_recv_sge=-1),
    ):
        with pytest.raises(InvalidArgument):
            pd.create_qp(cq, cq, cap)


@pytest.mark.parametrize("device", ["present", "gone"])
async def test_shim_refuses_what_the_contract_refuses(
    autojump_clock: trio.abc.Clock, device: str
) -> None:
    with trio.fail_after(60):
        async with open_world(seed=4) as world:
            ctx = world.a.ctx
            assert isinstance(ctx, VirtualContext)
            if device == "gone":
                await world.fabric.detach(world.a.vm, 1.0)
            # Without a device no physical call would refuse anything: the shim must.
            assert (ctx.physical is None) == (device == "gone")
            _refusals(ctx, ctx.alloc_pd())
