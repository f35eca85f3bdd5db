"""The control connection of a two-process rdsx-stress run (``--transport tcp``).

As in rds-stress, the passive side (no ``-s``) listens on TCP ``-r ADDR``:``-p
PORT``; the active side connects and tells it the options; both print
``negotiated options, tasks will start in 2 seconds``. Unlike rds-stress the
messages are msgpack maps, and the connection stays up for the whole run: it
carries the start barrier, the "drained" handshake at the end and the ledger
snapshots, so each side can report the whole run's lost, duplicated and
reordered counts. Messages (field ``type``):

* ``options``: active → passive, the shared options (:data:`SHARED`).
* ``ready``: both ways, tasks are bound; traffic starts when both have it.
* ``drained``: both ways, with ``ok``: this side has no request outstanding
  (or gave up after ``--drain-timeout``); keep answering until the peer's.
* ``ledgers``: both ways, the ledger snapshots and send-error count.
"""

from __future__ import annotations

from typing import Any

import attrs
import msgpack
import trio

from rdsx.errors import RemoteProtocolError

from .options import Options
from .verify import LedgerSnapshot

__all__ = ["SHARED", "Control", "accept_control", "connect_control", "shared_options"]

#: Options the active side decides for both.
SHARED = (
    "req_bytes",
    "ack_bytes",
    "rdma_bytes",
    "depth",
    "tasks",
    "time",
    "rate",
    "verify_payload",
    "one_way",
    "drain_timeout",
    "port",
)

_MAX_MESSAGE = 64 << 20


class Control:
    """A msgpack message stream over one TCP connection; also the run's :class:`Remote`."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._stream = stream
        self._unpacker = msgpack.Unpacker(max_buffer_size=_MAX_MESSAGE, raw=False)

    async def send(self, message: dict[str, Any]) -> None:
        """Send one message."""
        await self._stream.send_all(msgpack.packb(message))

    async def receive(self, expected: str) -> dict[str, Any]:
        """Receive the next message; it must be of type ``expected``.

        Raises:
            RemoteProtocolError: the peer closed, or sent something else.
        """
        while True:
            for message in self._unpacker:
                if not isinstance(message, dict) or message.get("type") != expected:
                    raise RemoteProtocolError(f"expected a {expected!r} message, got {message!r}")
                return message
            data = await self._stream.receive_some(1 << 16)
            if not data:
                raise RemoteProtocolError(
                    f"peer closed the control connection (awaiting {expected})"
                )
            self._unpacker.feed(data)

    async def start(self) -> None:
        """The start barrier: say ready, wait for the peer's ready."""
        await self.send({"type": "ready"})
        await self.receive("ready")

    async def finish(self, drained: bool) -> bool:
        """Say whether this side drained; return whether the peer did."""
        await self.send({"type": "drained", "ok": drained})
        return bool((await self.receive("drained")).get("ok"))

    async def exchange(
        self, ledgers: list[LedgerSnapshot], errors: int
    ) -> tuple[list[LedgerSnapshot], int]:
        """Swap ledger snapshots and send-error counts.

        Raises:
            RemoteProtocolError: the peer's snapshots do not parse.
        """
        await self.send(
            {"type": "ledgers", "ledgers": [lg.to_wire() for lg in ledgers], "errors": errors}
        )
        reply = await self.receive("ledgers")
        try:
            theirs = [LedgerSnapshot.from_wire(d) for d in reply["ledgers"]]
            return theirs, int(reply["errors"])
        except (KeyError, TypeError, ValueError) as exc:
            raise RemoteProtocolError(f"bad ledgers message: {exc}") from None

    async def aclose(self) -> None:
        """Close the connection."""
        await self._stream.aclose()


def shared_options(opts: Options) -> dict[str, Any]:
    """The options message the active side sends."""
    return {"type": "options", "version": 1, **{k: getattr(opts, k) for k in SHARED}}


def adopt_options(local: Options, message: dict[str, Any], active_addr: str) -> Options:
    """The passive side's options: its own, with the active side's shared ones.

    Raises:
        RemoteProtocolError: a shared option is missing or of the wrong type.
    """
    try:
        values = {k: message[k] for k in SHARED}
    except KeyError as exc:
        raise RemoteProtocolError(f"options message lacks {exc}") from None
    try:
        return attrs.evolve(local, send_addr=active_addr, **values)
    except (TypeError, ValueError) as exc:
        raise RemoteProtocolError(f"bad options message: {exc}") from None


async def connect_control(
    host: str, port: int, local: str | None, retries: int, out: Any
) -> Control:
    """Connect to the passive side, retrying once a second (rds-stress's log lines).

    Raises:
        OSError: still refused after ``retries`` retries.
    """
    out.write(f"connecting to {host}:{port}")
    out.flush()
    attempt = 0
    while True:
        try:
            stream = await trio.open_tcp_stream(host, port, local_address=local)
            break
        except OSError as exc:
            if attempt == 0:
                out.write(f": {exc.strerror or exc}")
            if attempt >= retries:
                out.write("\n")
                raise
            out.write(" - retrying" if attempt == 0 else "")
            out.write(".")
            out.flush()
            attempt += 1
            await trio.sleep(1.0)
    out.write("\n")
    return Control(stream)


async def accept_control(host: str, port: int, out: Any) -> Control:
    """Listen on ``host:port`` for the one active side and accept it."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    out.write(f"waiting for incoming connection on {host}:{port}\n")
    out.flush()
    try:
        stream = await listeners[0].accept()
    finally:
        for listener in listeners:
            await listener.aclose()
    peer = stream.socket.getpeername()
    here = stream.socket.getsockname()
    out.write(f"accepted connection from {peer[0]}:{peer[1]} on {here[0]}:{here[1]}\n")
    out.flush()
    return Control(stream)
