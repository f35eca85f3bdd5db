"""The handshake every tcp connection starts with: mutual HMAC-SHA256 challenge–response.

Theory of operation::

    connector                                   listener
    HELLO      {v, n: nonce_c, mf}      ->
               <- CHALLENGE {n: nonce_s, m: HMAC(k, "S" | nonce_c | nonce_s), mf}
    AUTH       {m: HMAC(k, "C" | nonce_c | nonce_s | request), r: request}  ->

Both nonces are fresh 32-byte random values, so a recorded handshake replayed
later fails: the listener's new ``nonce_s`` is not in the old MAC. The labels
``S``/``C`` stop a reflected MAC from passing as the other side's. The request
(what the connection is for: a CM request or a QP stream) is bound into the
connector's MAC. A side that finds the other's MAC wrong sends ``DENY`` and
closes, so both ends count the failure. Nothing is allocated for a QP before the
listener has checked the connector's MAC.

What it does not do: encrypt, or protect frames after the handshake. On a
hostile network run the transport over a VPN (WireGuard, IPsec).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

import msgpack

from rdsx.errors import AuthenticationFailed, RemoteProtocolError

from ._frames import Control, encode_control
from ._link import Link

__all__ = ["VERSION", "accept_handshake", "connect_handshake", "expect_control"]

VERSION = 1
_NONCE = 32
_LABEL_S = b"rdsx-tcp/1 listener\0"
_LABEL_C = b"rdsx-tcp/1 connector\0"
_MIN_FRAME = 4096
_MAX_FRAME = 1 << 31


def _mac(secret: bytes, label: bytes, *parts: bytes) -> bytes:
    return hmac.new(secret, label + b"".join(parts), hashlib.sha256).digest()


def _request_bytes(request: dict[str, Any]) -> bytes:
    data: bytes = msgpack.packb(request, use_bin_type=True)
    return data


async def expect_control(link: Link, *kinds: str) -> Control:
    """Read the next frame and check it is a control frame of one of ``kinds``.

    Raises:
        AuthenticationFailed: the peer sent ``DENY`` (and ``deny`` is not expected).
        RemoteProtocolError: anything else arrived.
    """
    frame = await link.next_frame()
    if not isinstance(frame, Control):
        raise RemoteProtocolError(f"expected {'/'.join(kinds)}, got {type(frame).__name__}")
    if frame.kind == "deny" and "deny" not in kinds:
        raise AuthenticationFailed(f"peer {link.peer} denied: {frame.fields.get('why', '')!r}")
    if frame.kind not in kinds:
        raise RemoteProtocolError(f"expected {'/'.join(kinds)}, got {frame.kind!r}")
    return frame


def _field(frame: Control, name: str, kind: type[Any]) -> Any:
    value = frame.fields.get(name)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise RemoteProtocolError(f"{frame.kind}.{name} missing or not {kind.__name__}")
    return value


def _nonce(frame: Control) -> bytes:
    nonce: bytes = _field(frame, "n", bytes)
    if len(nonce) != _NONCE:
        raise RemoteProtocolError(f"{frame.kind} nonce is {len(nonce)} bytes")
    return nonce


def _max_frame(frame: Control) -> int:
    value: int = _field(frame, "mf", int)
    if not _MIN_FRAME <= value <= _MAX_FRAME:
        raise RemoteProtocolError(f"{frame.kind} max frame {value} out of range")
    return value


async def _deny(link: Link, why: str) -> None:
    link.send(encode_control("deny", why=why))
    await link.flush()


async def connect_handshake(
    link: Link, secret: bytes, max_frame: int, request: dict[str, Any]
) -> int:
    """Authenticate to the listener at the other end of ``link`` and send ``request``.

    Returns:
        The largest frame the listener accepts.

    Raises:
        AuthenticationFailed: the listener does not know the secret, or denied ours.
        RemoteProtocolError: it does not speak the protocol.
    """
    nonce_c = secrets.token_bytes(_NONCE)
    link.send(encode_control("hello", v=VERSION, n=nonce_c, mf=max_frame))
    await link.flush()
    challenge = await expect_control(link, "challenge")
    nonce_s = _nonce(challenge)
    peer_max = link.peer_max_frame = _max_frame(challenge)
    their_mac: bytes = _field(challenge, "m", bytes)
    if not hmac.compare_digest(their_mac, _mac(secret, _LABEL_S, nonce_c, nonce_s)):
        link.counters.tcp_auth_failures += 1
        await _deny(link, "listener failed the challenge")
        raise AuthenticationFailed(f"{link.peer} does not know the cluster secret")
    body = _request_bytes(request)
    link.send(encode_control("auth", m=_mac(secret, _LABEL_C, nonce_c, nonce_s, body), r=body))
    await link.flush()
    link.decoder.max_frame = max_frame
    return peer_max


async def accept_handshake(link: Link, secret: bytes, max_frame: int) -> dict[str, Any]:
    """Challenge the connector at the other end of ``link``.

    Returns:
        The connector's authenticated request (a map; its fields are unchecked).

    Raises:
        AuthenticationFailed: a wrong MAC or a DENY (counted in ``tcp_auth_failures``).
        RemoteProtocolError: it does not speak the protocol.
    """
    try:
        hello = await expect_control(link, "hello")
        if _field(hello, "v", int) != VERSION:
            await _deny(link, f"protocol version {VERSION} only")
            raise RemoteProtocolError(f"unsupported version {hello.fields['v']!r}")
        nonce_c = _nonce(hello)
        link.peer_max_frame = _max_frame(hello)
        nonce_s = secrets.token_bytes(_NONCE)
        link.send(
            encode_control(
                "challenge", n=nonce_s, m=_mac(secret, _LABEL_S, nonce_c, nonce_s), mf=max_frame
            )
        )
        await link.flush()
        auth = await expect_control(link, "auth")
        body: bytes = _field(auth, "r", bytes)
        their_mac: bytes = _field(auth, "m", bytes)
        if not hmac.compare_digest(their_mac, _mac(secret, _LABEL_C, nonce_c, nonce_s, body)):
            await _deny(link, "connector failed the challenge")
            raise AuthenticationFailed(f"{link.peer} failed the challenge")
    except AuthenticationFailed:
        link.counters.tcp_auth_failures += 1
        raise
    link.decoder.max_frame = max_frame
    try:
        request = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise RemoteProtocolError(f"request is not msgpack: {exc}") from None
    if not isinstance(request, dict):
        raise RemoteProtocolError("request is not a map")
    return request
