"""CM private data through the shim: up to PRIVATE_DATA_MAX bytes, and resumable; one byte
more is refused at connect/accept time, never a connection that breaks at its first migration."""

from __future__ import annotations

import attrs
import pytest
import trio
from shim_world import PORT, World, cm_link, migrate, ok, open_world, take

from rdsx.errors import InvalidArgument
from rdsx.shim import PRIVATE_DATA_MAX
from rdsx.shim.protocol import CM_PRIVATE_DATA_MAX, HEADER_RESERVE
from rdsx.shim.qp import VirtualQP
from rdsx.shim.resources import VirtualMR
from rdsx.verbs import QP, CmId, QpState


def test_the_limit_is_the_cm_limit_less_the_header() -> None:
    assert PRIVATE_DATA_MAX == CM_PRIVATE_DATA_MAX - HEADER_RESERVE == 176


def _fresh_qp(world: World, side: str) -> QP:
    end = world.a if side == "a" else world.b
    return end.ctx.alloc_pd().create_qp(end.scq, end.rcq)  # it only connects here


async def test_connect_with_too_much_private_data_is_refused_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    """cm_connect with PRIVATE_DATA_MAX + 1 bytes raises InvalidArgument naming the limit,
    and the peer never hears of it."""
    with trio.fail_after(30):
        async with open_world(seed=41) as world:
            listener = await world.b.ctx.cm_listen(PORT + 1)
            qp = _fresh_qp(world, "a")
            with pytest.raises(InvalidArgument, match=rf"\b{PRIVATE_DATA_MAX}\b"):
                await world.a.ctx.cm_connect(
                    qp, world.b.vm.address, PORT + 1, bytes(PRIVATE_DATA_MAX + 1)
                )
            assert qp.state is QpState.RESET
            with trio.move_on_after(1.0):
                request = await listener.get_request()
                raise AssertionError(f"the peer got a request: {request.private_data!r}")
            listener.close()


async def test_accept_with_too_much_private_data_is_refused_at_once(
    autojump_clock: trio.abc.Clock,
) -> None:
    """accept with PRIVATE_DATA_MAX + 1 bytes raises InvalidArgument naming the limit; the
    request is still open, and accepting it within the limit connects."""
    with trio.fail_after(30):
        async with open_world(seed=42) as world:
            listener = await world.b.ctx.cm_listen(PORT + 1)
            qp_a, qp_b = _fresh_qp(world, "a"), _fresh_qp(world, "b")
            passive: list[CmId] = []

            async def serve() -> None:
                request = await listener.get_request()
                with pytest.raises(InvalidArgument, match=rf"\b{PRIVATE_DATA_MAX}\b"):
                    await request.accept(qp_b, bytes(PRIVATE_DATA_MAX + 1))
                assert qp_b.state is QpState.RESET
                passive.append(await request.accept(qp_b, b"b" * PRIVATE_DATA_MAX))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                active = await world.a.ctx.cm_connect(qp_a, world.b.vm.address, PORT + 1)
            assert active.private_data == b"b" * PRIVATE_DATA_MAX
            assert passive[0].qp is qp_b and qp_b.state is QpState.RTS
            listener.close()


async def test_the_most_private_data_still_migrates(autojump_clock: trio.abc.Clock) -> None:
    """A connection made with PRIVATE_DATA_MAX bytes each way resumes after a migration."""
    with trio.fail_after(60):
        async with open_world(seed=43) as world:
            data_a, data_b = b"a" * PRIVATE_DATA_MAX, b"b" * PRIVATE_DATA_MAX
            # A second link beside the world's, on the same PDs and MRs, fresh CQs.
            a, b = (
                attrs.evolve(end, scq=end.ctx.create_cq(), rcq=end.ctx.create_cq())
                for end in (world.a, world.b)
            )
            for end in (a, b):
                assert isinstance(end.mr, VirtualMR)
                end.qp = end.mr.pd.create_qp(end.scq, end.rcq)
            a.cm, b.cm = await cm_link(a, a.qp, b, b.qp, PORT + 1, data_a, data_b)
            assert (a.cm.private_data, b.cm.private_data) == (data_b, data_a)
            a.post_recvs(4)
            b.post_recvs(4)
            await migrate(world, a.vm, "C")
            a.send(b"after-the-move")
            b.send(b"and-back")
            (to_b,) = await take(b.rcq, 1)
            (to_a,) = await take(a.rcq, 1)
            assert ok([to_a, to_b])
            assert (b.received(to_b), a.received(to_a)) == (b"after-the-move", b"and-back")
            assert isinstance(a.qp, VirtualQP) and a.qp.peer is not None  # resumable
            assert a.shim.statistics().resume_timeouts == 0
