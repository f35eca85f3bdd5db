"""Hostile peers: garbage, truncation, oversize lengths, slow drips, floods.

Each must be rejected or reset and counted, never crash the device, and never
cost an established QP its data.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgpack
import trio
from _tcp_helpers import ALL, End, bring_up, make_end, pair, wait_wcs

from rdsx.verbs import QpAttr, QpDest, QpState
from transports.tcp import TcpDevice, TcpNetwork
from transports.tcp._auth import _LABEL_C
from transports.tcp._frames import (
    Control,
    Frame,
    FrameDecoder,
    FrameType,
    encode_control,
    encode_read_req,
)
from transports.tcp._link import HIGH_WATER
from transports.tcp.harness import TEST_SECRET

MAX_HANDSHAKES = 8
OPTIONS = {"frame_timeout": 0.2, "handshake_timeout": 0.5, "max_handshakes": MAX_HANDSHAKES}


@asynccontextmanager
async def established(**options: object) -> AsyncIterator[tuple[TcpNetwork, TcpDevice, End, End]]:
    """A network whose devices already carry one working QP pair (the bystander)."""
    async with pair(**{**OPTIONS, **options}) as (net, da, db):
        a, b = await make_end(da), await make_end(db)
        bring_up(a, b)
        b.post_recvs(200)
        a.send(0, b"warm-up")
        await wait_wcs(a.cq, 1)
        await wait_wcs(b.cq, 1)
        yield net, db, a, b


async def bystander_still_works(a: End, b: End, count: int = 20) -> None:
    for i in range(1, count + 1):
        a.send(i, f"still-{i}".encode(), offset=16 * (i % 64))
    sends = await wait_wcs(a.cq, count)
    assert all(wc.status.name == "SUCCESS" for wc in sends)
    recvs = await wait_wcs(b.cq, count)
    assert [wc.wr_id for wc in recvs] == list(range(1, count + 1))


async def _until_closed(stream: trio.SocketStream) -> None:
    """Read until the device closes (or resets) the connection."""
    try:
        while await stream.receive_some(65536):
            pass
    except trio.BrokenResourceError:
        pass


async def test_random_bytes_are_reset_and_counted() -> None:
    rng = random.Random(7)
    with trio.fail_after(5):
        async with established() as (_net, dev, a, b):
            for _ in range(5):
                stream = await trio.open_tcp_stream(dev.address, dev.port)
                await stream.send_all(rng.randbytes(rng.randrange(1, 2000)))
                await _until_closed(stream)
            assert dev.counters.tcp_protocol_errors + dev.counters.tcp_frame_timeouts == 5
            assert dev.counters.tcp_conn_reset >= 5
            await bystander_still_works(a, b)


async def test_oversize_length_is_refused_before_any_allocation() -> None:
    with trio.fail_after(5):
        async with established() as (_net, dev, a, b):
            stream = await trio.open_tcp_stream(dev.address, dev.port)
            await stream.send_all(struct.pack("!IB", 0xFFFF_FFFF, FrameType.CONTROL))
            await _until_closed(stream)
            assert dev.counters.tcp_protocol_errors == 1
            await bystander_still_works(a, b)


async def test_truncated_frame_then_eof() -> None:
    with trio.fail_after(5):
        async with established() as (_net, dev, a, b):
            hello = encode_control("hello", v=1, n=bytes(32), mf=1 << 20)
            stream = await trio.open_tcp_stream(dev.address, dev.port)
            await stream.send_all(hello[: len(hello) // 2])
            await stream.send_eof()
            await _until_closed(stream)
            assert dev.counters.tcp_protocol_errors == 1
            await bystander_still_works(a, b)


async def test_slow_drip_peer_is_timed_out() -> None:
    with trio.fail_after(5):
        async with established() as (_net, dev, a, b):
            hello = encode_control("hello", v=1, n=bytes(32), mf=1 << 20)
            stream = await trio.open_tcp_stream(dev.address, dev.port)
            closed = trio.Event()

            async def drip() -> None:
                try:
                    for byte in hello:
                        await stream.send_all(bytes([byte]))
                        await trio.sleep(0.05)  # the attack is being slow
                except trio.BrokenResourceError:
                    closed.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(drip)
                await bystander_still_works(a, b)
                await closed.wait()
            assert dev.counters.tcp_frame_timeouts == 1
            assert dev.counters.tcp_conn_reset >= 1


async def test_silent_peer_hits_the_handshake_timeout() -> None:
    with trio.fail_after(5):
        async with established() as (_net, dev, a, b):
            stream = await trio.open_tcp_stream(dev.address, dev.port)
            await _until_closed(stream)
            assert dev.counters.tcp_handshake_timeouts == 1
            await bystander_still_works(a, b)


async def test_connection_flood_does_not_starve_established_qps() -> None:
    with trio.fail_after(5):
        async with established() as (_net, dev, a, b):
            streams = []
            for _ in range(60):
                streams.append(await trio.open_tcp_stream(dev.address, dev.port))
            await bystander_still_works(a, b, count=100)
            assert dev.counters.tcp_conn_flood_drops >= 60 - MAX_HANDSHAKES
            for stream in streams:
                await stream.aclose()


async def test_garbage_on_an_authenticated_qp_stream_resets_only_that_qp() -> None:
    with trio.fail_after(5):
        async with established() as (net, dev, a, b):
            da = a.device
            c, d = await make_end(da), await make_end(dev)
            bring_up(c, d)
            d.post_recvs(4)
            c.send(1, b"ok")
            await wait_wcs(c.cq, 1)
            # Reach into c's live stream and send what no QP may send.
            qp = c.qp
            link = qp._link  # type: ignore[attr-defined]
            link.send(struct.pack("!IB", 2, 99) + b"x")
            while dev.counters.tcp_protocol_errors == 0:
                await trio.sleep(0.005)  # until the peer has read and refused the frame
            assert dev.counters.tcp_protocol_errors == 1
            c.send(2, b"after")
            assert (await wait_wcs(c.cq, 1))[0].status.name == "RETRY_EXC_ERR"
            await bystander_still_works(a, b)
            assert net.statistics().tcp_protocol_errors == 1


async def _raw_qp_stream(dev: TcpDevice, request: dict[str, object]) -> trio.SocketStream:
    """Authenticate as a peer that knows the secret and open a QP stream by hand."""
    nonce_c = bytes(range(32))
    stream = await trio.open_tcp_stream(dev.address, dev.port)
    await stream.send_all(encode_control("hello", v=1, n=nonce_c, mf=1 << 25))
    decoder = FrameDecoder(4096)
    frames: list[Frame] = []
    while not frames:
        frames = decoder.feed(await stream.receive_some(4096))
    challenge = frames[0]
    assert isinstance(challenge, Control)
    body = msgpack.packb(request, use_bin_type=True)
    mac = hmac.new(TEST_SECRET, _LABEL_C + nonce_c + challenge.fields["n"] + body, hashlib.sha256)
    await stream.send_all(encode_control("auth", m=mac.digest(), r=body))
    frames = []
    while not frames:
        frames = decoder.feed(await stream.receive_some(4096))
    assert isinstance(frames[0], Control) and frames[0].kind == "ok"
    return stream


async def test_a_peer_that_reads_nothing_back_is_slowed_by_tcp_not_our_memory() -> None:
    with trio.fail_after(10):
        async with established() as (_net, dev, a, b):
            target = await make_end(dev, size=1 << 20)
            fake_loc, fake_qpn = "127.0.0.9:9", 77
            target.qp.modify(QpAttr(QpState.INIT, access_flags=ALL))
            target.qp.modify(
                QpAttr(
                    QpState.RTR,
                    dest=QpDest(fake_loc, fake_qpn),
                    path_mtu=4096,
                    rq_psn=0,
                    min_rnr_timer=0.001,
                )
            )
            stream = await _raw_qp_stream(
                dev, {"t": "qp", "dst": target.qp.qp_num, "qpn": fake_qpn, "loc": fake_loc}
            )
            link = target.qp._link  # type: ignore[attr-defined]
            # 200 reads of 1 MiB each, and never a byte read back.
            flood = b"".join(
                encode_read_req(psn, target.mr.addr, target.mr.rkey, 1 << 20) for psn in range(200)
            )
            with trio.move_on_after(1.0):
                await stream.send_all(flood)
            assert link._unsent <= HIGH_WATER + (1 << 21)
            await bystander_still_works(a, b)
            await stream.aclose()
