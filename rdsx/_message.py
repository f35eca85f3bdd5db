"""What a node remembers of one message between ``send`` and its end.

A message ends exactly once: acknowledged by the peer (``ACKED``), cancelled by
its socket (``CANCELED``), or dropped on a reset because it carried RDMA
(``DROPPED``). Only then are its send-buffer bytes released (rds.md §1.3).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

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


class OutMessage:
    """A message a socket sent and the peer has not yet acknowledged.

    A plain slotted class, not attrs: one is made per message sent, and attrs'
    keyword-only ``__init__`` cost twice this one (internal, never compared).

    Attributes:
        socket: the sending socket.
        dest: ``(address, port)`` it goes to.
        payload: its bytes.
        rdma: the RDMA it carries, if any.
        nbytes: payload bytes counted against SNDBUF.
        handle: the RDMA book's operation for it (``None`` without RDMA).
        rdma_status: set by the path when the RDMA itself failed.
        ended: set once the message has ended.
    """

    __slots__ = ("dest", "ended", "handle", "nbytes", "payload", "rdma", "rdma_status", "socket")

    def __init__(
        self,
        socket: Socket,
        dest: tuple[str, int],
        payload: bytes,
        rdma: RdmaArgs | None = None,
    ) -> None:
        self.socket = socket
        self.dest = dest
        self.payload = payload
        self.rdma = rdma
        self.nbytes = len(payload)
        self.handle: object = None
        self.rdma_status: RdmaStatus | None = None
        self.ended: MessageEnd | None = None

    def __repr__(self) -> str:
        return f"<OutMessage to {self.dest} {self.nbytes} bytes ended={self.ended}>"
