"""The CM's active side opens the QP stream alongside its exchange, not after it."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import msgpack
import pytest
import trio
from _tcp_helpers import End, make_end, pair, wait_wcs

from rdsx.errors import ConnectionRejected, Unreachable
from rdsx.verbs import CmId, WcStatus
from transports.tcp import TcpDevice, _device
from transports.tcp._auth import _LABEL_C, Handshake
from transports.tcp._frames import Control, Frame, FrameDecoder, encode_control
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

            async def no_early_stream(
                self: TcpDevice, locator: str, request: dict[str, Any]
            ) -> Link:
                refused.append(request)
                raise Unreachable("refused by the test")

            monkeypatch.setattr(TcpDevice, "open_stream", no_early_stream)
            await _connect(a, b, 4102)
            await _ping_both_ways(a, b)
            assert len(refused) == 1


async def test_the_early_stream_spends_the_cm_handshakes_ticket() -> None:
    """The stream presents the ticket its CM handshake left (no second challenge)."""
    with trio.fail_after(5):
        async with pair() as (_net, da, db):
            a, b = await make_end(da), await make_end(db)
            issued: list[bytes] = []
            issue = db.tickets.issue

            def recording_issue(ticket_id: bytes, ticket: bytes) -> None:
                issued.append(ticket_id)
                issue(ticket_id, ticket)

            db.tickets.issue = recording_issue  # type: ignore[method-assign]
            await _connect(a, b, 4103)
            await _ping_both_ways(a, b)
            # One full handshake (the CM's) issued a stream ticket and a spare ...
            assert len(issued) == 2
            assert db.tickets.redeem(issued[0]) is None  # ... the stream spent the first
            assert da.node.spares.take(db.locator) is not None  # ... a keeps the spare
            assert da.counters.tcp_auth_failures == db.counters.tcp_auth_failures == 0


async def _present_ticket(dev: TcpDevice, ticket_id: bytes, key: bytes) -> Control:
    """Open a raw connection with a TICKET for a QP stream and return the answer."""
    nonce = bytes(32)
    body = msgpack.packb({"t": "qp", "qpn": 7, "loc": "127.0.0.9:9"}, use_bin_type=True)
    mac = hmac.new(key, _LABEL_C + nonce + body, hashlib.sha256).digest()
    stream = await trio.open_tcp_stream(dev.address, dev.port)
    async with stream:
        frame = encode_control("ticket", v=1, id=ticket_id, n=nonce, m=mac, r=body, mf=1 << 20)
        await stream.send_all(frame)
        decoder = FrameDecoder(4096)
        frames: list[Frame] = []
        while not frames:
            frames = decoder.feed(await stream.receive_some(4096))
    answer = frames[0]
    assert isinstance(answer, Control)
    return answer


async def test_a_ticket_is_good_once_and_only_with_its_key() -> None:
    """A replayed (spent) ticket is refused as stale; a forged one is denied and counted."""
    with trio.fail_after(5):
        async with pair(park_timeout=0.1) as (_net, _da, db):
            ticket_id, key = bytes(range(32)), bytes(range(32, 64))
            db.tickets.issue(ticket_id, key)
            first = await _present_ticket(db, ticket_id, key)
            # Accepted (then refused for want of such a QP: no QP 7 waits for it).
            assert first.kind == "rej"
            assert db.counters.tcp_auth_failures == 0
            replay = await _present_ticket(db, ticket_id, key)
            assert (replay.kind, replay.fields.get("why")) == ("rej", "stale ticket")
            assert db.counters.tcp_auth_failures == 0  # proves nothing either way
            db.tickets.issue(ticket_id, key)
            forged = await _present_ticket(db, ticket_id, bytes(32))
            assert forged.kind == "deny"
            assert db.tickets.redeem(ticket_id) is None  # a forgery spends it too
            assert db.counters.tcp_auth_failures == 1


async def test_a_new_device_reaches_a_known_peer_with_a_spare_ticket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the connector's device is replaced, its next CM exchange needs no challenge;
    a spare the listener forgot costs only the fallback to the full handshake."""
    full: list[str] = []
    handshake = _device.connect_handshake

    async def counting(
        link: Link, secret: bytes, max_frame: int, request: dict[str, Any]
    ) -> Handshake:
        full.append(str(request.get("t")))
        return await handshake(link, secret, max_frame, request)

    monkeypatch.setattr(_device, "connect_handshake", counting)
    with trio.fail_after(10):
        async with pair() as (_net, da, db):
            b = await make_end(db)
            listener = await b.ctx.cm_listen(4104)
            node = da.node
            for attempt in ("first", "after a new device", "after the peer forgot"):
                if attempt != "first":
                    await da.detach(None)
                    da = await node.attach()
                if attempt == "after the peer forgot":
                    db.tickets._issued.clear()
                a = await make_end(da)
                b.qp.close()
                b.qp = b.pd.create_qp(b.cq, b.cq)

                async def accept() -> None:
                    await (await listener.get_request()).accept(b.qp)

                full.clear()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(accept)
                    await a.ctx.cm_connect(a.qp, db.address, 4104)
                await _ping_both_ways(a, b)
                expected = {
                    "first": ["cm"],
                    "after a new device": [],
                    "after the peer forgot": ["cm"],
                }
                assert full == expected[attempt], attempt
            assert da.counters.tcp_auth_failures == db.counters.tcp_auth_failures == 0
