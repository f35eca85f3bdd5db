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

Stream tickets (one round trip less for a QP's stream)::

    T = HMAC(k, "ticket" | nonce_c | nonce_s)      both ends of a CM handshake
    TICKET {v, id: nonce_c, n: nonce_t, m: HMAC(T, "C" | nonce_t | request), r: request, mf} ->
               <- OK {m: HMAC(T, "S" | nonce_t)} (or REJ / DENY)

A full handshake for a CM request leaves both ends holding ``T``; the QP stream
the connector opens alongside that exchange presents it instead of a HELLO. A
ticket is good for one connection (the listener forgets it on first use, so a
replayed TICKET fails), only a holder of ``k`` can derive it, and the listener
proves it holds ``T`` too in its OK.

The same handshake leaves a *spare* ticket (``R = HMAC(k, "spare" | nonce_c |
nonce_s)``), which the connector's node keeps across its devices: the next CM
request to that listener (after a migration, a reconnect) is sent inside a
TICKET at once, and the listener answers ``TKOK {m: proof}`` before it serves
it, so a new device reaches its peer in one round trip instead of two. A ticketed
exchange leaves a stream and a spare ticket of its own (from ``R`` and
``nonce_t``). A listener that no longer knows a ticket (spent, or pushed out of
its book) answers ``REJ stale ticket`` and the connector does the full
handshake; a known ticket with a wrong MAC is a forgery (DENY, counted).

What it does not do: encrypt, or protect frames after the handshake. On a
hostile network run the transport over a VPN (WireGuard, IPsec).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import weakref
from collections import OrderedDict
from typing import Any

import attrs
import msgpack

from rdsx.errors import AuthenticationFailed, RemoteProtocolError

from ._frames import Control, encode_control
from ._link import Link

__all__ = [
    "VERSION",
    "Handshake",
    "StaleTicket",
    "TicketBook",
    "accept_handshake",
    "connect_handshake",
    "expect_control",
    "open_with_ticket",
    "send_ticket",
]

VERSION = 1
_NONCE = 32
_LABEL_S = b"rdsx-tcp/1 listener\0"
_LABEL_C = b"rdsx-tcp/1 connector\0"
_LABEL_T = b"rdsx-tcp/1 ticket\0"
_LABEL_R = b"rdsx-tcp/1 spare\0"
#: Tickets a listener keeps unused; the oldest go first (its stream then falls back).
_BOOK_SIZE = 256
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


@attrs.frozen(slots=True)
class Handshake:
    """What a connector's full handshake established.

    Attributes:
        peer_max_frame: the largest frame the listener accepts.
        ticket_id: names the ticket at the listener (our nonce).
        ticket: the ticket key both ends derived.
    """

    peer_max_frame: int
    ticket_id: bytes
    ticket: bytes
    spare: Handshake | None = None


class StaleTicket(AuthenticationFailed):
    """The listener does not know the ticket (spent or forgotten): do the full handshake."""


def _derive(key: bytes, material: bytes, seed: bytes, peer_max: int) -> Handshake:
    """The stream ticket (with its spare) a handshake leaves, from ``key`` and ``material``."""
    spare_id = hashlib.sha256(_LABEL_R + seed).digest()
    spare = Handshake(peer_max, spare_id, _mac(key, _LABEL_R, material))
    return Handshake(peer_max, seed, _mac(key, _LABEL_T, material), spare)


class TicketBook:
    """One device's stream tickets: issued by its listener, kept by its connectors."""

    def __init__(self) -> None:
        self._issued: OrderedDict[bytes, bytes] = OrderedDict()
        self._kept: dict[str, list[Handshake]] = {}
        #: Links authenticated by a ticket -> the proof their OK must carry (ours or theirs).
        self.proofs: weakref.WeakKeyDictionary[Link, bytes] = weakref.WeakKeyDictionary()

    def issue(self, ticket_id: bytes, ticket: bytes) -> None:
        """Listener side: remember a ticket for one stream."""
        self._issued[ticket_id] = ticket
        while len(self._issued) > _BOOK_SIZE:
            self._issued.popitem(last=False)

    def redeem(self, ticket_id: bytes) -> bytes | None:
        """Listener side: the ticket named ``ticket_id``, now spent; None if unknown."""
        return self._issued.pop(ticket_id, None)

    def keep(self, locator: str, handshake: Handshake) -> None:
        """Connector side: a ticket for one stream to the device at ``locator``."""
        kept = self._kept.setdefault(locator, [])
        kept.append(handshake)
        del kept[:-_BOOK_SIZE]

    def take(self, locator: str) -> Handshake | None:
        """Connector side: a ticket for ``locator`` (the newest), or None."""
        kept = self._kept.get(locator)
        if not kept:
            return None
        handshake = kept.pop()
        if not kept:
            del self._kept[locator]
        return handshake


def send_ticket(link: Link, handshake: Handshake, max_frame: int, request: dict[str, Any]) -> bytes:
    """Open ``link`` with a TICKET instead of a HELLO (nothing to wait for).

    Returns:
        The proof the listener's OK must carry.
    """
    nonce_t = secrets.token_bytes(_NONCE)
    body = _request_bytes(request)
    link.send(
        encode_control(
            "ticket",
            v=VERSION,
            id=handshake.ticket_id,
            n=nonce_t,
            m=_mac(handshake.ticket, _LABEL_C, nonce_t, body),
            r=body,
            mf=max_frame,
        )
    )
    link.peer_max_frame = handshake.peer_max_frame
    link.decoder.max_frame = max_frame
    return _mac(handshake.ticket, _LABEL_S, nonce_t)


async def open_with_ticket(
    link: Link, spare: Handshake, max_frame: int, request: dict[str, Any]
) -> Handshake:
    """Send a CM ``request`` inside a TICKET and wait for the listener's TKOK.

    Returns:
        The stream ticket (with its spare) this exchange leaves.

    Raises:
        StaleTicket: the listener does not know the ticket (do the full handshake).
        AuthenticationFailed: it denied the ticket, or failed to prove it holds it.
        RemoteProtocolError: it does not speak the protocol.
    """
    nonce_t = secrets.token_bytes(_NONCE)
    body = _request_bytes(request)
    link.send(
        encode_control(
            "ticket",
            v=VERSION,
            id=spare.ticket_id,
            n=nonce_t,
            m=_mac(spare.ticket, _LABEL_C, nonce_t, body),
            r=body,
            mf=max_frame,
        )
    )
    link.peer_max_frame = spare.peer_max_frame
    await link.flush()
    answer = await expect_control(link, "tkok", "rej")
    if answer.kind == "rej":
        raise StaleTicket(f"{link.peer}: {answer.fields.get('why', '')!r}")
    theirs = answer.fields.get("m")
    if not isinstance(theirs, bytes) or not hmac.compare_digest(
        theirs, _mac(spare.ticket, _LABEL_S, nonce_t)
    ):
        link.counters.tcp_auth_failures += 1
        raise AuthenticationFailed(f"{link.peer} does not hold our ticket")
    link.decoder.max_frame = max_frame
    return _derive(spare.ticket, nonce_t, nonce_t, spare.peer_max_frame)


async def _deny(link: Link, why: str) -> None:
    link.send(encode_control("deny", why=why))
    await link.flush()


async def connect_handshake(
    link: Link, secret: bytes, max_frame: int, request: dict[str, Any]
) -> Handshake:
    """Authenticate to the listener at the other end of ``link`` and send ``request``.

    Returns:
        The largest frame the listener accepts, and the stream ticket.

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
    return _derive(secret, nonce_c + nonce_s, nonce_c, peer_max)


async def accept_handshake(
    link: Link, secret: bytes, max_frame: int, *, tickets: TicketBook | None = None
) -> dict[str, Any]:
    """Challenge the connector at the other end of ``link``.

    With ``tickets``, a full handshake for a CM request issues a stream ticket,
    and a connector may open with a TICKET instead (its OK must then carry
    ``tickets.proofs[link]``).

    Returns:
        The connector's authenticated request (a map; its fields are unchecked).

    Raises:
        AuthenticationFailed: a wrong MAC, an unknown or spent ticket, or a DENY
            (counted in ``tcp_auth_failures``).
        RemoteProtocolError: it does not speak the protocol.
    """
    try:
        hello = await expect_control(link, "hello", *(() if tickets is None else ("ticket",)))
        if hello.kind == "ticket":
            assert tickets is not None
            return await _accept_ticket(link, hello, tickets, max_frame)
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
    except AuthenticationFailed as exc:
        if not isinstance(exc, StaleTicket):
            link.counters.tcp_auth_failures += 1
        raise
    link.decoder.max_frame = max_frame
    request = _unpack_request(body)
    if tickets is not None and request.get("t") == "cm":
        _issue(tickets, _derive(secret, nonce_c + nonce_s, nonce_c, 0))
    return request


def _issue(tickets: TicketBook, handshake: Handshake) -> None:
    tickets.issue(handshake.ticket_id, handshake.ticket)
    if handshake.spare is not None:
        tickets.issue(handshake.spare.ticket_id, handshake.spare.ticket)


async def _accept_ticket(
    link: Link, frame: Control, tickets: TicketBook, max_frame: int
) -> dict[str, Any]:
    if _field(frame, "v", int) != VERSION:
        await _deny(link, f"protocol version {VERSION} only")
        raise RemoteProtocolError(f"unsupported version {frame.fields['v']!r}")
    ticket_id: bytes = _field(frame, "id", bytes)
    nonce_t = _nonce(frame)
    link.peer_max_frame = _max_frame(frame)
    body: bytes = _field(frame, "r", bytes)
    their_mac: bytes = _field(frame, "m", bytes)
    ticket = tickets.redeem(ticket_id)
    if ticket is None:
        # Proves nothing either way (no MAC to check): the connector starts over.
        link.send(encode_control("rej", why="stale ticket"))
        await link.flush()
        raise StaleTicket(f"{link.peer} presented an unknown or spent ticket")
    if not hmac.compare_digest(their_mac, _mac(ticket, _LABEL_C, nonce_t, body)):
        await _deny(link, "forged ticket")
        raise AuthenticationFailed(f"{link.peer} presented a forged ticket")
    link.decoder.max_frame = max_frame
    request = _unpack_request(body)
    proof = _mac(ticket, _LABEL_S, nonce_t)
    if request.get("t") == "cm":
        link.send(encode_control("tkok", m=proof))
        await link.flush()
        _issue(tickets, _derive(ticket, nonce_t, nonce_t, 0))
    else:
        tickets.proofs[link] = proof  # the stream's OK carries it
    return request


def _unpack_request(body: bytes) -> dict[str, Any]:
    try:
        request = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises a zoo of types on garbage
        raise RemoteProtocolError(f"request is not msgpack: {exc}") from None
    if not isinstance(request, dict):
        raise RemoteProtocolError("request is not a map")
    return request
