"""A node's RDMA bookkeeping: operations riding on messages, regions registered for peers.

An RDMA operation travels with a message (``sendmsg`` with ``RDS_CMSG_RDMA_ARGS``):
:meth:`RdmaBook.start` gives it an id carried in the message's ext bytes; the path
asks :meth:`RdmaBook.work_request` for the RDMA WR to post ahead of the message's
first fragment, and reports its completion to :meth:`RdmaBook.done`. The message
ends only once both the message and its RDMA are done. Regions are the user buffers
registered for the peers' RDMA (``RDS_GET_MR``), keyed by rkey; they belong to the
device they were registered on and go with it.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING

import attrs

from ._device import DeviceState, close_quietly
from ._message import MessageEnd, OutMessage
from .counters import CounterSet
from .errors import DeviceRemoved, NotConnected, VerbsError
from .path import KIND_RDMA, RDMA_EXT_TAG
from .rdma import RdmaStatus, make_cookie, split_cookie
from .verbs import MR, Access, Opcode, SendWR, Sge, WcStatus

if TYPE_CHECKING:
    from .path import Path

__all__ = ["RdmaBook", "RdmaOp", "Region"]

log = logging.getLogger("rdsx.node")

_REMOTE_ERRORS = frozenset({WcStatus.REM_ACCESS_ERR, WcStatus.REM_INV_REQ_ERR, WcStatus.REM_OP_ERR})


@attrs.define(slots=True, eq=False)
class RdmaOp:
    """An RDMA operation riding on a message, from send to its work completion."""

    id: int
    msg: OutMessage
    mr: MR | None = None
    path: Path | None = None
    posted: bool = False
    wr_done: bool = False
    end: MessageEnd | None = None  # the message ended before the RDMA completed


@attrs.define(slots=True, eq=False)
class Region:
    """A user memory region registered for the peers' RDMA."""

    buffer: bytearray | memoryview
    mr: MR
    cookie: int
    readwrite: bool
    dev: DeviceState


class RdmaBook:
    """The RDMA operations in flight and the regions registered, of one node.

    Args:
        address: the node's address (for log messages).
        counters: the node's counters (``send_rdma``, ``ib_rdma_mr_alloc``, ...).
    """

    def __init__(self, address: str, counters: CounterSet) -> None:
        self._address = address
        self._counters = counters
        self.ops: dict[int, RdmaOp] = {}
        self._ids = itertools.count(1)
        self.regions: dict[int, Region] = {}

    def start(self, msg: OutMessage) -> bytes:
        """Give ``msg``'s RDMA an operation; return the ext bytes that name it on the wire."""
        assert msg.rdma is not None
        op = RdmaOp(next(self._ids), msg)
        self.ops[op.id] = op
        msg.handle = op
        return (
            bytes((RDMA_EXT_TAG,)) + op.id.to_bytes(8, "big") + msg.rdma.nbytes.to_bytes(4, "big")
        )

    def finish(self, msg: OutMessage, how: MessageEnd) -> bool:
        """The message ended ``how``: True if it may end now, False if its RDMA WR is
        still outstanding (it then ends when :meth:`done` sees the WR's completion)."""
        op = msg.handle
        if isinstance(op, RdmaOp):
            if op.posted and not op.wr_done:
                op.end = how
                return False
            self.ops.pop(op.id, None)
        return True

    def work_request(self, op_id: int, path: Path) -> SendWR | None:
        """The RDMA WR to post ahead of the first fragment of op ``op_id``'s message."""
        op = self.ops.get(op_id)
        if op is None or op.posted:
            return None
        args = op.msg.rdma
        assert args is not None
        try:
            mr = path.reg_local(args.local)
        except DeviceRemoved:
            path.dev.removal(None)
            return None
        except VerbsError as exc:
            log.warning("%s: cannot register an RDMA buffer: %s", self._address, exc)
            op.msg.rdma_status = RdmaStatus.OTHER_ERROR
            return None
        self._counters.inc("ib_rdma_mr_alloc")
        op.mr, op.path, op.posted = mr, path, True
        rkey, addr = split_cookie(args.cookie)
        return SendWR(
            op_id << 2 | KIND_RDMA,
            Opcode.RDMA_WRITE if args.write else Opcode.RDMA_READ,
            (Sge(mr.addr, args.nbytes, mr.lkey),),
            remote_addr=addr + args.remote_offset,
            rkey=rkey,
        )

    def done(self, op_id: int, status: WcStatus) -> None:
        """The RDMA WR of op ``op_id`` completed (or its path is gone: WR_FLUSH_ERR)."""
        op = self.ops.get(op_id)
        if op is None or op.wr_done:
            return
        op.wr_done = True
        if op.mr is not None:
            close_quietly(op.mr)
            op.mr = None
            self._counters.inc("ib_rdma_mr_free")
        args = op.msg.rdma
        assert args is not None
        if status is WcStatus.SUCCESS:
            self._counters.inc("send_rdma")
            self._counters.inc("send_rdma_bytes", args.nbytes)
        elif status in _REMOTE_ERRORS:
            op.msg.rdma_status = RdmaStatus.REMOTE_ERROR
            self._counters.inc("rdma_remote_error")
        elif status is not WcStatus.WR_FLUSH_ERR:
            op.msg.rdma_status = RdmaStatus.OTHER_ERROR
        if op.end is not None:
            self.ops.pop(op.id, None)
            op.msg.socket._message_ended(op.msg, op.end)

    def path_closed(self, path: Path) -> None:
        """A path's QP is destroyed: its RDMA WRs will never complete."""
        for op in list(self.ops.values()):
            if op.path is path and not op.wr_done:
                self.done(op.id, WcStatus.WR_FLUSH_ERR)

    def register(
        self, dev: DeviceState | None, buffer: bytearray | memoryview, *, readwrite: bool
    ) -> int:
        """Register ``buffer`` on ``dev`` for the peers' RDMA; return its cookie.

        Raises:
            NotConnected: no device, or it was removed.
            VerbsError: the device refused the registration.
        """
        if dev is None or dev.gone.is_set():
            raise NotConnected("the node has no device right now; register after one arrives")
        access = Access.LOCAL_WRITE | Access.REMOTE_READ
        if readwrite:
            access |= Access.REMOTE_WRITE
        try:
            mr = dev.reg_cookie_region(buffer, access)
        except DeviceRemoved as exc:
            dev.removal(None)
            raise NotConnected("the device was removed") from exc
        cookie = make_cookie(mr.rkey, mr.addr)
        self.regions[mr.rkey] = Region(buffer, mr, cookie, readwrite, dev)
        self._counters.inc("ib_rdma_mr_alloc")
        return cookie

    def free(self, cookie: int) -> None:
        """Deregister the region of ``cookie`` (nothing if it already went with its device)."""
        rkey, _ = split_cookie(cookie)
        region = self.regions.get(rkey)
        if region is None or region.cookie != cookie:
            return
        del self.regions[rkey]
        region.dev.release_cookie_region(region.mr)
        self._counters.inc("ib_rdma_mr_free")

    def forget_device(self, dev: DeviceState) -> None:
        """``dev`` is gone: its regions with it."""
        for rkey, region in list(self.regions.items()):
            if region.dev is dev:
                del self.regions[rkey]

    def loop_rdma(self, msg: OutMessage) -> RdmaStatus:
        """Perform ``msg``'s RDMA against this node's own regions (the loop transport)."""
        args = msg.rdma
        assert args is not None
        rkey, _ = split_cookie(args.cookie)
        region = self.regions.get(rkey)
        if region is None or region.cookie != args.cookie:
            return RdmaStatus.REMOTE_ERROR
        start = args.remote_offset
        if start + args.nbytes > len(region.buffer):
            return RdmaStatus.REMOTE_ERROR
        remote = memoryview(region.buffer).cast("B")
        local = memoryview(args.local).cast("B")
        n = args.nbytes
        if args.write:
            if not region.readwrite:
                return RdmaStatus.REMOTE_ERROR
            remote[start : start + n] = local[:n]
        else:
            local[:n] = remote[start : start + n]
        self._counters.inc("send_rdma")
        self._counters.inc("send_rdma_bytes", n)
        self._counters.inc("recv_rdma_bytes", n)
        return RdmaStatus.SUCCESS
