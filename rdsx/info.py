"""The rds-info tables as frozen values (reference/rds.md §4).

:meth:`rdsx.Node.info` returns a :class:`NodeInfo`: the sockets table
(``rds-info -k``), the connections table (``-n``) and the receive, send and
retransmit message queues (``-r``, ``-s``, ``-t``).
"""

from __future__ import annotations

import attrs

__all__ = ["ConnectionInfo", "MessageInfo", "NodeInfo", "SocketInfo"]


@attrs.frozen(slots=True, kw_only=True)
class SocketInfo:
    """One row of ``RDS Sockets:``.

    Attributes:
        bound_addr: the address the socket is bound to (``""`` if unbound).
        bound_port: its port (0 if unbound).
        conn_addr: the default destination set by ``connect`` (``""`` if none).
        conn_port: its port (0 if none).
        sndbuf: the socket's send buffer, bytes.
        rcvbuf: the socket's receive buffer, bytes.
        snd_bytes: payload bytes sent and not yet acknowledged.
        rcv_bytes: payload bytes queued for ``recv``.
        inode: a per-node socket number (Linux prints the inode).
    """

    bound_addr: str
    bound_port: int
    conn_addr: str
    conn_port: int
    sndbuf: int
    rcvbuf: int
    snd_bytes: int
    rcv_bytes: int
    inode: int


@attrs.frozen(slots=True, kw_only=True)
class ConnectionInfo:
    """One row of ``RDS Connections:``.

    Attributes:
        local_addr: this node's address.
        remote_addr: the peer's address.
        next_tx_seq: the sequence number the next message will get.
        next_rx_seq: the sequence number expected next from the peer.
        state: the connection state's name (``"UP"``, ``"DOWN"``, ...).
        flags: rds-info's flag letters: ``s`` sending, ``c`` connecting,
            ``C`` connected, ``E`` error; ``-`` for each that is not set.
        loopback: True for the node's connection to itself.
    """

    local_addr: str
    remote_addr: str
    next_tx_seq: int
    next_rx_seq: int
    state: str
    flags: str
    loopback: bool = False


@attrs.frozen(slots=True, kw_only=True)
class MessageInfo:
    """One row of the ``Receive``/``Send``/``Retransmit Message Queue:`` tables.

    Attributes:
        local_addr: this node's address.
        local_port: the local socket's port.
        remote_addr: the peer's address.
        remote_port: the peer's port.
        seq: the message's sequence number (0 if not yet assigned).
        bytes: its payload length.
    """

    local_addr: str
    local_port: int
    remote_addr: str
    remote_port: int
    seq: int
    bytes: int


@attrs.frozen(slots=True, kw_only=True)
class NodeInfo:
    """Every rds-info table of one node at one instant.

    Attributes:
        sockets: ``rds-info -k``.
        connections: ``rds-info -n``.
        recv_queue: ``rds-info -r``: messages waiting in sockets for ``recv``.
        send_queue: ``rds-info -s``: messages queued and not yet transmitted.
        retransmit_queue: ``rds-info -t``: messages transmitted, not yet acked.
    """

    sockets: tuple[SocketInfo, ...]
    connections: tuple[ConnectionInfo, ...]
    recv_queue: tuple[MessageInfo, ...]
    send_queue: tuple[MessageInfo, ...]
    retransmit_queue: tuple[MessageInfo, ...]

    def format(self) -> str:
        """Render the tables as ``rds-info -k -n -r -s -t`` prints them.

        Returns:
            The text, one table after another, each under rds-info's header line.
        """
        lines = ["", "RDS Sockets:"]
        lines.append(
            f"{'BoundAddr':>15} {'BPort':>5} {'ConnAddr':>15} {'CPort':>5} "
            f"{'SndBuf':>10} {'RcvBuf':>10} {'Inode':>10}"
        )
        for k in self.sockets:
            lines.append(
                f"{k.bound_addr or '0.0.0.0':>15} {k.bound_port:>5} "
                f"{k.conn_addr or '0.0.0.0':>15} {k.conn_port:>5} "
                f"{k.sndbuf:>10} {k.rcvbuf:>10} {k.inode:>10}"
            )
        lines += ["", "RDS Connections:"]
        lines.append(
            f"{'LocalAddr':>15} {'RemoteAddr':>15} {'Tos':>4} "
            f"{'NextTX':>20} {'NextRX':>20} {'Flgs':>4}"
        )
        for c in self.connections:
            lines.append(
                f"{c.local_addr:>15} {c.remote_addr:>15} {0:>4} "
                f"{c.next_tx_seq:>20} {c.next_rx_seq:>20} {c.flags:>4}"
            )
        for title, rows in (
            ("Receive Message Queue:", self.recv_queue),
            ("Send Message Queue:", self.send_queue),
            ("Retransmit Message Queue:", self.retransmit_queue),
        ):
            lines += ["", title]
            lines.append(
                f"{'LocalAddr':>15} {'LPort':>5} {'RemoteAddr':>15} {'RPort':>5} "
                f"{'Tos':>4} {'Seq':>20} {'Bytes':>10}"
            )
            for m in rows:
                lines.append(
                    f"{m.local_addr:>15} {m.local_port:>5} {m.remote_addr:>15} "
                    f"{m.remote_port:>5} {0:>4} {m.seq:>20} {m.bytes:>10}"
                )
        return "\n".join(lines[1:]) + "\n"
