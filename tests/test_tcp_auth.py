"""Authentication of tcp connections: the cluster secret, wrong secrets, replays."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import msgpack
import pytest
import trio
from _tcp_helpers import make_end, pair

from rdsx.errors import AuthenticationFailed, SecretNotConfigured
from transports.tcp import TcpTransport, load_secret
from transports.tcp._auth import _LABEL_C
from transports.tcp._frames import Control, FrameDecoder, encode_control
from transports.tcp.harness import TEST_SECRET


def test_load_secret_needs_a_file_or_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("RDSX_SECRET", raising=False)
    with pytest.raises(SecretNotConfigured):
        load_secret()
    monkeypatch.setenv("RDSX_SECRET", "short")
    with pytest.raises(SecretNotConfigured):
        load_secret()
    monkeypatch.setenv("RDSX_SECRET", "from-the-environment-42")
    assert load_secret() == b"from-the-environment-42"
    path = tmp_path / "secret"
    path.write_bytes(b"from-a-file-0123456789\n")
    assert load_secret(path) == b"from-a-file-0123456789"
    with pytest.raises(SecretNotConfigured):
        load_secret(tmp_path / "missing")


async def test_open_network_refuses_to_run_without_a_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RDSX_SECRET", raising=False)
    with pytest.raises(SecretNotConfigured):
        async with TcpTransport().open_network(port=0):
            pass  # pragma: no cover


async def test_wrong_secret_is_rejected_and_counted_on_both_sides() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, good, _b):
            ctx = await good.open()
            listener = await ctx.cm_listen(7)
            async with TcpTransport().open_network(
                secret=b"another-cluster-secret!", port=good.port
            ) as other:
                node = await other.add_node("127.0.0.3")
                intruder = node.device
                assert intruder is not None
                end = await make_end(intruder)
                with pytest.raises(AuthenticationFailed):
                    await end.ctx.cm_connect(end.qp, good.address, 7, b"let me in")
                assert intruder.counters.tcp_auth_failures == 1
            assert good.counters.tcp_auth_failures == 1
            assert good.qps == {}  # nothing was created for the intruder
            with trio.move_on_after(0.05):
                await listener.get_request()
                raise AssertionError("an unauthenticated request reached the listener")


async def _read_control(stream: trio.SocketStream, decoder: FrameDecoder) -> Control:
    while True:
        data = await stream.receive_some(4096)
        assert data, "listener closed"
        frames = decoder.feed(data)
        if frames:
            assert isinstance(frames[0], Control)
            return frames[0]


async def test_a_replayed_handshake_is_rejected() -> None:
    with trio.fail_after(5):
        async with pair() as (_net, dev, _b):
            ctx = await dev.open()
            listener = await ctx.cm_listen(9)
            request = msgpack.packb(
                {
                    "t": "cm",
                    "port": 9,
                    "qpn": 5,
                    "loc": "127.0.0.9:1",
                    "psn": 1,
                    "pd": b"",
                    "src": "127.0.0.9",
                },
                use_bin_type=True,
            )
            nonce_c = bytes(range(32))
            hello = encode_control("hello", v=1, n=nonce_c, mf=1 << 20)
            # A genuine session (we know the secret): it is accepted.
            stream = await trio.open_tcp_stream(dev.address, dev.port)
            await stream.send_all(hello)
            challenge = await _read_control(stream, FrameDecoder(4096))
            mac = hmac.new(
                TEST_SECRET, _LABEL_C + nonce_c + challenge.fields["n"] + request, hashlib.sha256
            ).digest()
            auth = encode_control("auth", m=mac, r=request)
            await stream.send_all(auth)
            first = await listener.get_request()
            assert first.source == "127.0.0.9"
            await stream.aclose()
            # The recording replayed: the listener's fresh nonce makes the old MAC worthless.
            before = dev.counters.tcp_auth_failures
            replay = await trio.open_tcp_stream(dev.address, dev.port)
            await replay.send_all(hello)
            decoder = FrameDecoder(4096)
            assert (await _read_control(replay, decoder)).kind == "challenge"
            await replay.send_all(auth)
            assert (await _read_control(replay, decoder)).kind == "deny"
            assert await replay.receive_some(4096) == b""
            assert dev.counters.tcp_auth_failures == before + 1
            with trio.move_on_after(0.05):
                await listener.get_request()
                raise AssertionError("a replayed request reached the listener")
