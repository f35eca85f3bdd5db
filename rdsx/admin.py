"""The node's local admin socket: rds-info's tables for another process to read.

Linux exposes its RDS tables through ``getsockopt(SOL_RDS, RDS_INFO_*)``; an rdsx
node lives in one process, so ``rdsx-info`` asks it over a Unix stream socket
instead. It is opt-in (``NodeConfig(admin_socket=PATH)``), created owner-only
(mode 0600: the tables name every peer and queue), served by a task in the
node's nursery and removed when the node closes.

Protocol: a stream of msgpack maps. A request is ``{"op": NAME}``; the answer is
``{"ok": True, "result": ...}`` or ``{"ok": False, "error": TEXT}``. Operations:

* ``node``: ``{"address", "mode", "device"}``;
* ``info``: the :class:`~rdsx.NodeInfo` tables as maps (``sockets``,
  ``connections``, ``recv_queue``, ``send_queue``, ``retransmit_queue``);
* ``counters``: ``{"node": {...}, "transport": {...}}`` in rds-info order;
* ``transport_connections``: the transport's own connection rows
  (``rds-info -T``), or ``None`` if the transport has no such table.

A request that is not a map with a known ``op`` gets an error answer and the
connection stays usable; bytes that are not msgpack (or a request over 64 KiB)
get an error answer and the connection is closed. Neither affects the node.
"""

from __future__ import annotations

import logging
import os
import socket as pysocket
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import msgpack
import trio

if TYPE_CHECKING:
    from .node import Node

__all__ = ["MAX_REQUEST", "serve_admin", "transport_connections"]

log = logging.getLogger("rdsx.admin")

#: Largest request accepted; the requests are a few bytes.
MAX_REQUEST = 64 * 1024


def _physical_device(node: Node) -> Any:
    """The transport's own device under the node (through the transparent shim too)."""
    device: Any = node.device
    core = getattr(device, "_core", None)  # rdsx.shim.VirtualDevice
    if core is not None:
        session = getattr(core, "session", None)
        device = getattr(session, "device", None)
    return device


def transport_connections(node: Node) -> list[dict[str, Any]] | None:
    """The rows of ``rds-info -T`` for a node on the tcp transport.

    One row per QP with a live TCP connection: its local and remote TCP
    endpoints; ``hdr_remain`` (bytes of a frame received in part),
    ``data_remain`` (bytes queued and not yet written), ``sent_nxt`` (next
    PSN to send), ``expect_una`` (oldest unacknowledged PSN) and ``seen_una``
    (next PSN expected from the peer): rdsx's counterparts of the kernel's
    columns.

    Returns:
        The rows, or ``None`` when the current device is not a tcp device.
    """
    device = _physical_device(node)
    qps = getattr(device, "qps", None)
    if device is None or not type(device).__module__.startswith("transports.tcp") or qps is None:
        return None
    rows: list[dict[str, Any]] = []
    for qp in list(qps.values()):
        link = getattr(qp, "_link", None)
        sock = getattr(getattr(link, "stream", None), "socket", None)
        if link is None or sock is None or getattr(link, "closed", False):
            continue
        try:
            local = sock.getsockname()
            remote = sock.getpeername()
        except OSError:
            continue
        outstanding = getattr(qp, "_outstanding", ())
        next_psn = int(getattr(qp, "_next_psn", 0))
        decoder = getattr(link, "decoder", None)
        rows.append(
            {
                "local_addr": local[0],
                "local_port": local[1],
                "remote_addr": remote[0],
                "remote_port": remote[1],
                "hdr_remain": len(getattr(decoder, "_buf", b"")),
                "data_remain": int(getattr(link, "_unsent", 0)),
                "sent_nxt": next_psn,
                "expect_una": outstanding[0].psn if outstanding else next_psn,
                "seen_una": int(getattr(qp, "_epsn", 0)),
            }
        )
    return rows


def _transport_counters(node: Node) -> dict[str, int]:
    device = _physical_device(node)
    statistics = getattr(getattr(device, "node", None), "statistics", None)
    if not callable(statistics):
        return {}
    stats = statistics()
    if not attrs.has(type(stats)):
        return {}
    return {k: v for k, v in attrs.asdict(stats).items() if isinstance(v, int)}


def _op_node(node: Node) -> Any:
    device = node.device
    return {
        "address": node.address,
        "mode": node.mode,
        "device": None if device is None else device.name,
    }


def _op_info(node: Node) -> Any:
    return attrs.asdict(node.info())


def _op_counters(node: Node) -> Any:
    return {"node": dict(node.statistics()), "transport": _transport_counters(node)}


_OPS: dict[str, Callable[[Node], Any]] = {
    "node": _op_node,
    "info": _op_info,
    "counters": _op_counters,
    "transport_connections": transport_connections,
}


def answer(node: Node, request: object) -> dict[str, Any]:
    """The reply to one decoded request (never raises for a bad request)."""
    if not isinstance(request, dict):
        return {"ok": False, "error": "a request is a map {'op': NAME}"}
    op = request.get("op")
    handler = _OPS.get(op) if isinstance(op, str) else None
    if handler is None:
        return {"ok": False, "error": f"unknown op {op!r}; known: {sorted(_OPS)}"}
    try:
        return {"ok": True, "result": handler(node)}
    except Exception as exc:  # a reader must never take the node down
        log.exception("%s: admin op %s failed", node.address, op)
        return {"ok": False, "error": f"{op} failed: {exc!r}"}


async def _serve_client(node: Node, stream: trio.SocketStream) -> None:
    packer = msgpack.Packer()
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=MAX_REQUEST)
    async with stream:
        try:
            while True:
                data = await stream.receive_some(4096)
                if not data:
                    return
                try:
                    unpacker.feed(data)
                    requests = list(unpacker)
                except Exception as exc:  # msgpack's errors share no base class
                    reply = {"ok": False, "error": f"malformed request: {exc!r}"}
                    await stream.send_all(packer.pack(reply))
                    return
                for request in requests:
                    await stream.send_all(packer.pack(answer(node, request)))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except Exception:  # a reader must never take the node down
            log.exception("%s: admin connection failed", node.address)


def _clear_stale(path: str) -> None:
    """Remove a socket file left by a node that died; refuse to touch anything else."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise FileExistsError(f"{path} exists and is not a socket")
    probe = pysocket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError:
        os.unlink(path)  # nobody answers: stale
        return
    finally:
        probe.close()
    raise FileExistsError(f"{path} is in use by a running node")


async def serve_admin(
    node: Node, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve ``node``'s admin socket at ``path`` until cancelled.

    Args:
        node: the node whose tables are served.
        path: the Unix socket's path; created with mode 0600, removed on exit.
        task_status: started once the socket accepts connections.

    Raises:
        FileExistsError: ``path`` is not a socket, or another node serves it.
        OSError: the socket cannot be created there.
    """
    _clear_stale(path)
    sock = trio.socket.socket(pysocket.AF_UNIX, pysocket.SOCK_STREAM)
    try:
        # Linux creates the socket file with the socket inode's mode: no window
        # in which another user could connect.
        os.fchmod(sock.fileno(), 0o600)
        await sock.bind(path)
        os.chmod(path, 0o600)
        sock.listen(16)
    except BaseException:
        sock.close()
        raise
    identity = os.stat(path).st_ino
    listener = trio.SocketListener(sock)
    try:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                stream = await listener.accept()
                nursery.start_soon(_serve_client, node, stream)
    finally:
        sock.close()
        try:
            if os.stat(path).st_ino == identity:
                os.unlink(path)
        except FileNotFoundError:
            pass
