"""The CM's active side opens the QP stream alongside its exchange, not after it."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from _tcp_helpers import End, make_end, pair, wait_wcs

from rdsx.errors import ConnectionRejected, Unreachable
from rdsx.verbs import CmId, WcStatus
from transports.tcp import TcpDevice
from transports.tcp._link import Link


async def _connect(a: End, b: End, port: int) -> tuple[CmId, CmId]:
    listener = await b.ctx.cm_listen(port)
    passive: list[CmId] = []

    async def accept() -> None:
        passive.append(await (await listener.get_request()).accept(b.qp))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        active = await a.ctx.cm_connect(a.qp, b.device.address, port)
    return active, passive[0]


async def _ping_both_ways(a: End, b: End) -> None:
    for sender, receiver in ((a, b), (b, a)):
        receiver.post_recvs(1)
        sender.send(1, b"ping")
        assert (await wait_wcs(sender.cq, 1))[0].status is WcStatus.SUCCESS
        (wc,) = await wait_wcs(receiver.cq, 1)
        assert bytes(receiver.mr.buffer[: wc.byte_len]) == b"ping"


async def test_the_active_side_opens_both_connections() -> None:
    """Two connections per exchange (CM + stream), both from the active side."""
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            # Whichever side the address rule would pick: b's QP is the one it names here.
            before = (da.counters.tcp_conn_connected, db.counters.tcp_conn_connected)
            await _connect(b, a, 4100)
            await _ping_both_ways(a, b)
            after = (da.counters.tcp_conn_connected, db.counters.tcp_conn_connected)
            assert (after[0] - before[0], after[1] - before[1]) == (0, 2)
            assert da.expected_streams == {}  # matched, nothing left behind


async def test_a_rejected_exchange_leaves_no_stream_behind() -> None:
    """The stream opened for a rejected exchange is closed; the peer does not hold it."""
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            listener = await b.ctx.cm_listen(4101)
            baseline = len(db.links)

            async def reject() -> None:
                await (await listener.get_request()).reject(b"no")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reject)
                with pytest.raises(ConnectionRejected):
                    await a.ctx.cm_connect(a.qp, db.address, 4101)
            while len(db.links) > baseline or len(da.links) > 0:
                await trio.sleep(0.001)  # the peer sees the stream close and lets it go
            for device in (da, db):
                assert device.counters.tcp_protocol_errors == 0


async def test_if_the_early_stream_fails_the_qp_opens_one_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback: an early stream that cannot be opened is opened again at RTR."""
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            refused: list[dict[str, Any]] = []
            open_link = TcpDevice.open_link

            async def no_early_stream(
                self: TcpDevice, locator: str, request: dict[str, Any]
            ) -> Link:
                if request.get("t") == "qp" and "dst" not in request:
                    refused.append(request)
                    raise Unreachable("refused by the test")
                return await open_link(self, locator, request)

            monkeypatch.setattr(TcpDevice, "open_link", no_early_stream)
            await _connect(a, b, 4102)
            await _ping_both_ways(a, b)
            assert len(refused) == 1
