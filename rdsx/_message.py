"""What a node remembers of one message between ``send`` and its end.

A message ends exactly once: acknowledged by the peer (``ACKED``), cancelled by
its socket (``CANCELED``), or dropped on a reset because it carried RDMA
(``DROPPED``). Only then are its send-buffer bytes released (rds.md §1.3).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

import attrs

from .rdma import RdmaArgs, RdmaStatus

if TYPE_CHECKING:
    from .socket import Socket

__all__ = ["MessageEnd", "OutMessage"]


class MessageEnd(enum.Enum):
    """How a message left its socket's send accounting."""

    ACKED = "acked"
    CANCELED = "canceled"
    DROPPED = "dropped"
    REMOTE_ERROR = "remote_error"


@attrs.define(slots=True, eq=False, kw_only=True)
class OutMessage:
    """A message a socket sent and the peer has not yet acknowledged.

    Attributes:
        socket: the sending socket.
        dest: ``(address, port)`` it goes to.
        payload: its bytes.
        rdma: the RDMA it carries, if any.
        seq: the sequence number the connection gave it (0 until queued).
        handle: the connection's own reference to it (engine-specific).
        rdma_status: set by the path when the RDMA itself failed.
        ended: set once the message has ended.
    """

    socket: Socket
    dest: tuple[str, int]
    payload: bytes
    rdma: RdmaArgs | None = None
    seq: int = 0
    handle: object = None
    rdma_status: RdmaStatus | None = None
    ended: MessageEnd | None = None

    @property
    def nbytes(self) -> int:
        """Payload bytes counted against SNDBUF."""
        return len(self.payload)
