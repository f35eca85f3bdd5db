"""The tcp connection manager: private data, reject, unreachable, disconnect."""

from __future__ import annotations

import pytest
import trio
from _tcp_helpers import make_end, pair, wait_wcs

from rdsx.errors import ConnectionRejected, ConnectTimeout, Unreachable
from rdsx.verbs import CmEventType, QpState, WcStatus


async def test_connect_accept_with_private_data_then_send() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            listener = await b.ctx.cm_listen(4000)
            results = {}

            async def passive() -> None:
                request = await listener.get_request()
                assert request.private_data == b"hello from a"
                assert request.source == da.address
                results["b"] = await request.accept(b.qp, b"welcome")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(passive)
                results["a"] = await a.ctx.cm_connect(a.qp, db.address, 4000, b"hello from a")
            assert results["a"].private_data == b"welcome"
            assert results["a"].peer_address == db.address
            assert a.qp.state is QpState.RTS and b.qp.state is QpState.RTS
            b.post_recvs(4)
            a.send(1, b"over the CM")
            assert (await wait_wcs(a.cq, 1))[0].status is WcStatus.SUCCESS
            (rwc,) = await wait_wcs(b.cq, 1)
            assert bytes(b.mr.buffer[: rwc.byte_len]) == b"over the CM"
            await results["a"].disconnect()
            event = await results["b"].next_event()
            assert event.type is CmEventType.DISCONNECTED
            assert b.qp.state is QpState.ERR


async def test_reject_carries_private_data() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            listener = await b.ctx.cm_listen(4001)

            async def passive() -> None:
                await (await listener.get_request()).reject(b"go away")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(passive)
                with pytest.raises(ConnectionRejected) as info:
                    await a.ctx.cm_connect(a.qp, db.address, 4001)
            assert info.value.private_data == b"go away"
            assert a.qp.state is QpState.RESET


async def test_unreachable_port_and_unreachable_address() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a = await make_end(da)
            with pytest.raises(Unreachable):
                await a.ctx.cm_connect(a.qp, db.address, 4002)  # nobody listens there
            with pytest.raises(Unreachable):
                await a.ctx.cm_connect(a.qp, "127.0.0.77", 4002)  # no such node
            assert a.qp.state is QpState.RESET


async def test_connect_times_out_across_a_partition() -> None:
    with trio.fail_after(5):
        async with pair() as (net, da, db):
            a, b = await make_end(da), await make_end(db)
            await b.ctx.cm_listen(4003)
            with net.partition(da.address, db.address), pytest.raises(ConnectTimeout):
                await a.ctx.cm_connect(a.qp, db.address, 4003, timeout=0.2)


async def test_a_disconnect_during_a_partition_arrives_when_it_heals() -> None:
    with trio.fail_after(5):
        async with pair() as (net, da, db):
            a, b = await make_end(da), await make_end(db)
            listener = await b.ctx.cm_listen(4004)
            passive = []

            async def accept() -> None:
                passive.append(await (await listener.get_request()).accept(b.qp))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(accept)
                active = await a.ctx.cm_connect(a.qp, db.address, 4004)
            with net.partition(da.address, db.address):
                await active.disconnect()
                with trio.move_on_after(0.1):
                    await passive[0].next_event()
                    raise AssertionError("DREQ crossed the partition")
            assert (await passive[0].next_event()).type is CmEventType.DISCONNECTED
            assert b.qp.state is QpState.ERR
