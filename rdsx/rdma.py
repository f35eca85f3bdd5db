"""RDMA through the socket API (reference/rds.md §3): cookies, arguments, notifications.

A socket registers memory with :meth:`rdsx.Socket.get_mr` and gets a
**cookie**: the region's R_Key in the low 32 bits and its address (iova) in the
high 32 bits, as RDS's ``key | offset << 32``. The application hands the
cookie to a peer inside a message. The peer sends a message carrying
:class:`RdmaArgs`; its node performs a real RDMA WRITE or READ on the QP
*before* the message itself goes out, so the two succeed or fail together.
The outcome comes back as an :class:`RdmaNotification`.
"""

from __future__ import annotations

import enum
from typing import Any

import attrs

from .config import MAX_MESSAGE_SIZE
from .errors import MessageTooLarge

__all__ = ["RdmaArgs", "RdmaNotification", "RdmaStatus", "make_cookie", "split_cookie"]


class RdmaStatus(enum.IntEnum):
    """Outcome of an RDMA operation (``RDS_RDMA_*`` status values)."""

    SUCCESS = 0
    #: The peer refused the access: a bad, stale or freed cookie, or out of bounds.
    REMOTE_ERROR = 1
    #: The socket cancelled the message (close, ``cancel_sent_to``) before it was acked.
    CANCELED = 2
    #: The connection was reset while the message was unacknowledged; RDMA is never
    #: retransmitted.
    DROPPED = 3
    OTHER_ERROR = 4


def make_cookie(rkey: int, addr: int) -> int:
    """Build a cookie from an R_Key and a region address (both 32-bit).

    Raises:
        ValueError: a value does not fit 32 bits.
    """
    if not (0 <= rkey < 1 << 32 and 0 <= addr < 1 << 32):
        raise ValueError(f"rkey {rkey:#x} and addr {addr:#x} must fit 32 bits")
    return rkey | addr << 32


def split_cookie(cookie: int) -> tuple[int, int]:
    """Return ``(rkey, addr)`` of a cookie.

    Raises:
        ValueError: the cookie is not a 64-bit unsigned integer.
    """
    if not 0 <= cookie < 1 << 64:
        raise ValueError(f"cookie {cookie:#x} is not a u64")
    return cookie & 0xFFFF_FFFF, cookie >> 32


def _check_local(instance: RdmaArgs, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, (bytearray, memoryview)):
        raise TypeError("RdmaArgs.local must be a bytearray or a writable memoryview")
    if isinstance(value, memoryview) and value.readonly:
        raise TypeError("RdmaArgs.local must be writable")


@attrs.frozen(slots=True, kw_only=True)
class RdmaArgs:
    """An RDMA operation carried by a message (``RDS_CMSG_RDMA_ARGS``).

    Attributes:
        cookie: the peer's cookie (from its :meth:`~rdsx.Socket.get_mr`).
        local: the local buffer: the source of a write, the destination of a read.
        write: True for RDMA WRITE (local -> peer), False for RDMA READ (peer -> local).
        remote_offset: byte offset inside the peer's region.
        length: bytes to move; ``None`` means ``len(local)``.
        notify: deliver a notification on success too (``RDS_RDMA_NOTIFY_ME``);
            failures are always notified.
        token: the ``user_token`` echoed in the notification.
    """

    cookie: int
    local: bytearray | memoryview = attrs.field(validator=_check_local)
    write: bool = True
    remote_offset: int = 0
    length: int | None = None
    notify: bool = False
    token: int = 0

    @property
    def nbytes(self) -> int:
        """How many bytes the operation moves."""
        return len(self.local) if self.length is None else self.length

    def validate(self) -> None:
        """Check sizes; called by the socket before the message is queued.

        Raises:
            MessageTooLarge: more than 1 MiB.
            ValueError: a negative offset, an empty transfer, or a length beyond ``local``.
        """
        if self.nbytes > MAX_MESSAGE_SIZE:
            raise MessageTooLarge(f"RDMA of {self.nbytes} bytes exceeds {MAX_MESSAGE_SIZE}")
        if self.remote_offset < 0 or self.nbytes <= 0 or self.nbytes > len(self.local):
            raise ValueError("RDMA offset/length out of range of the local buffer")
        split_cookie(self.cookie)


@attrs.frozen(slots=True, kw_only=True)
class RdmaNotification:
    """The outcome of an RDMA operation (``RDS_CMSG_RDMA_STATUS``).

    Attributes:
        token: the ``RdmaArgs.token`` of the message.
        status: what happened.
    """

    token: int
    status: RdmaStatus
