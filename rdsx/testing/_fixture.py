"""What the conformance checks share: two nodes, RC links, and bounded observations.

Everything here uses the verbs contract only. Waits are bounded by
:data:`WAIT` and turn into an ``AssertionError`` that says what was awaited;
"nothing must happen" is observed for :data:`QUIET` seconds of trio's clock
(free in virtual time, short in real time).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator, Iterator, Sequence

import attrs
import trio

from ..errors import VerbsError
from ..verbs import (
    CQ,
    MR,
    PD,
    QP,
    REQ_PRIVATE_DATA,
    Access,
    AsyncEvent,
    AsyncEventType,
    Context,
    Device,
    DeviceAttr,
    Opcode,
    PortAttr,
    QpAttr,
    QpCap,
    QpDest,
    QpState,
    RecvWR,
    SendWR,
    Sge,
    WcOpcode,
    WcStatus,
    WorkCompletion,
)
from ._harness import Harness

#: Size of each node's scratch memory region.
BUF = 1 << 16
#: How long "nothing more happens" is watched, in seconds.
QUIET = 0.2
#: How long one expected completion, event or call may take, in seconds.
WAIT = 5.0
#: The RC timing every link uses unless a check needs otherwise (seconds).
ACK_TIMEOUT = 0.05
RNR_TIMER = 0.002

FULL_ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ


@attrs.define(eq=False)
class Node:
    """One side of the pair: an open context, a PD and a scratch MR over :attr:`buf`."""

    device: Device
    ctx: Context
    pd: PD
    port: PortAttr
    attr: DeviceAttr
    buf: bytearray
    mr: MR
    _used: int = 0
    #: The most private data its CM carries (:attr:`Harness.cm_private_data`).
    cm_private_data: int = REQ_PRIVATE_DATA

    @classmethod
    def open(cls, device: Device, ctx: Context) -> Node:
        """Allocate the PD and the scratch MR on ``ctx``."""
        pd = ctx.alloc_pd()
        buf = bytearray(BUF)
        mr = pd.reg_mr(buf, FULL_ACCESS)
        return cls(device, ctx, pd, ctx.query_port(), ctx.query_device(), buf, mr)

    def alloc(self, length: int) -> int:
        """Reserve ``length`` fresh bytes of the scratch MR; return their offset."""
        if self._used + length > len(self.buf):
            raise RuntimeError("conformance suite bug: scratch MR exhausted")
        offset = self._used
        self._used += length
        return offset

    def sge(self, offset: int, length: int) -> Sge:
        """An SGE for ``length`` bytes at ``offset`` of the scratch MR."""
        return Sge(self.mr.addr + offset, length, self.mr.lkey)

    def put(self, offset: int, data: bytes) -> None:
        """Write ``data`` into the scratch MR at ``offset``."""
        self.buf[offset : offset + len(data)] = data

    def get(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes of the scratch MR at ``offset``."""
        return bytes(self.buf[offset : offset + length])

    def end(self, cap: QpCap | None = None, *, sq_sig_all: bool = False) -> End:
        """A new QP in RESET with its own send and receive CQs."""
        scq = self.ctx.create_cq()
        rcq = self.ctx.create_cq()
        qp = self.pd.create_qp(scq, rcq, cap, sq_sig_all=sq_sig_all)
        return End(self, qp, scq, rcq)


@attrs.define(eq=False)
class End:
    """One QP of a link and the two CQs only it uses."""

    node: Node
    qp: QP
    scq: CQ
    rcq: CQ

    def dest(self) -> QpDest:
        """Where a peer QP sends to reach this one."""
        return QpDest(self.node.port.address, self.qp.qp_num)


def init_attr(access: Access = FULL_ACCESS) -> QpAttr:
    """RESET -> INIT allowing ``access`` (by default every access a link needs)."""
    return QpAttr(state=QpState.INIT, access_flags=access, port_num=1, pkey_index=0)


def rtr_attr(node: Node, dest: QpDest, *, min_rnr_timer: float = RNR_TIMER) -> QpAttr:
    """INIT -> RTR towards ``dest``."""
    return QpAttr(
        state=QpState.RTR,
        dest=dest,
        path_mtu=node.port.active_mtu,
        rq_psn=0,
        max_dest_rd_atomic=16,
        min_rnr_timer=min_rnr_timer,
    )


def rts_attr(*, timeout: float = ACK_TIMEOUT, retry_cnt: int = 7, rnr_retry: int = 7) -> QpAttr:
    """RTR -> RTS with the given retry policy."""
    return QpAttr(
        state=QpState.RTS,
        sq_psn=0,
        timeout=timeout,
        retry_cnt=retry_cnt,
        rnr_retry=rnr_retry,
        max_rd_atomic=16,
    )


def connect(
    a: End,
    b: End,
    *,
    timeout: float = ACK_TIMEOUT,
    retry_cnt: int = 7,
    rnr_retry: int = 7,
    min_rnr_timer: float = RNR_TIMER,
    access_b: Access = FULL_ACCESS,
) -> None:
    """Bring ``a`` and ``b`` to RTS towards each other, by hand (no CM).

    ``access_b`` is the remote access ``b``'s QP allows (its ``access_flags``).
    """
    a.qp.modify(init_attr())
    b.qp.modify(init_attr(access_b))
    a.qp.modify(rtr_attr(a.node, b.dest(), min_rnr_timer=min_rnr_timer))
    b.qp.modify(rtr_attr(b.node, a.dest(), min_rnr_timer=min_rnr_timer))
    for end in (a, b):
        end.qp.modify(rts_attr(timeout=timeout, retry_cnt=retry_cnt, rnr_retry=rnr_retry))


def link(
    a: Node,
    b: Node,
    *,
    cap: QpCap | None = None,
    sq_sig_all: bool = False,
    timeout: float = ACK_TIMEOUT,
    retry_cnt: int = 7,
    rnr_retry: int = 7,
    min_rnr_timer: float = RNR_TIMER,
    access_b: Access = FULL_ACCESS,
) -> tuple[End, End]:
    """A fresh RC QP on each node, connected to each other and in RTS."""
    ea, eb = a.end(cap, sq_sig_all=sq_sig_all), b.end(cap, sq_sig_all=sq_sig_all)
    connect(
        ea,
        eb,
        timeout=timeout,
        retry_cnt=retry_cnt,
        rnr_retry=rnr_retry,
        min_rnr_timer=min_rnr_timer,
        access_b=access_b,
    )
    return ea, eb


def close_quietly(*resources: Context | PD | CQ | QP) -> None:
    """Close resources at teardown; a zombie or already-closed one is fine here."""
    for resource in resources:
        with contextlib.suppress(VerbsError):
            resource.close()


@contextlib.asynccontextmanager
async def open_nodes(harness: Harness) -> AsyncIterator[tuple[Node, Node]]:
    """The harness's device pair, each opened as a :class:`Node`."""
    async with harness.open_pair() as (dev_a, dev_b):
        ctx_a = await dev_a.open()
        try:
            ctx_b = await dev_b.open()
            try:
                a, b = Node.open(dev_a, ctx_a), Node.open(dev_b, ctx_b)
                a.cm_private_data = b.cm_private_data = harness.cm_private_data
                yield a, b
            finally:
                close_quietly(ctx_b)
        finally:
            close_quietly(ctx_a)


# --------------------------------------------------------------------------- observations


async def take(cq: CQ, n: int, what: str) -> list[WorkCompletion]:
    """Wait for exactly ``n`` completions on ``cq`` (at most :data:`WAIT` seconds)."""
    got: list[WorkCompletion] = []
    with trio.move_on_after(WAIT):
        while len(got) < n:
            batch = await cq.wait(n - len(got))
            if not batch or len(batch) > n - len(got):
                raise AssertionError(
                    f"cq.wait(max_entries={n - len(got)}) returned {len(batch)} completions"
                )
            got.extend(batch)
    if len(got) < n:
        raise AssertionError(f"{what}: only {len(got)} of {n} completions in {WAIT}s: {got}")
    return got


async def take_one(cq: CQ, what: str) -> WorkCompletion:
    """Wait for one completion on ``cq``."""
    return (await take(cq, 1, what))[0]


async def quiet(cqs: Sequence[CQ], what: str, *, seconds: float = QUIET) -> None:
    """Let ``seconds`` pass and require that none of ``cqs`` got a completion."""
    await trio.sleep(seconds)
    for cq in cqs:
        extra = cq.poll()
        if extra:
            raise AssertionError(f"{what}: unexpected completions {extra}")


def expect_wc(
    wc: WorkCompletion,
    what: str,
    *,
    wr_id: int | None = None,
    status: WcStatus = WcStatus.SUCCESS,
    opcode: WcOpcode | None = None,
    byte_len: int | None = None,
) -> None:
    """Require the fields of ``wc`` that are given."""
    if wr_id is not None and wc.wr_id != wr_id:
        raise AssertionError(f"{what}: expected wr_id {wr_id}, got {wc}")
    if wc.status is not status:
        raise AssertionError(f"{what}: expected status {status.name}, got {wc}")
    if opcode is not None and wc.opcode is not opcode:
        raise AssertionError(f"{what}: expected opcode {opcode.name}, got {wc}")
    if byte_len is not None and wc.byte_len != byte_len:
        raise AssertionError(f"{what}: expected byte_len {byte_len}, got {wc}")


async def exchange(
    src: End,
    dst: End,
    rng: random.Random,
    what: str,
    *,
    size: int = 32,
    room: int | None = None,
    wr_ids: tuple[int, int] = (1, 2),
) -> None:
    """One SEND of ``size`` random bytes from ``src`` to ``dst`` must arrive intact.

    Args:
        room: the receive buffer's size (default ``size``); a larger one checks
            that the completion reports the message's length, not the buffer's.
        wr_ids: the receive's and the send's ``wr_id``; on a QP with a past, ones it
            never used, so a stale completion cannot pass for the new one.
    """
    recv_id, send_id = wr_ids
    off, roff = src.node.alloc(size), dst.node.alloc(room or size)
    data = rng.randbytes(size)
    src.node.put(off, data)
    dst.qp.post_recv(RecvWR(recv_id, (dst.node.sge(roff, room or size),)))
    src.qp.post_send(SendWR(send_id, Opcode.SEND, (src.node.sge(off, size),)))
    expect_wc(await take_one(src.scq, what), f"{what} (send)", wr_id=send_id)
    expect_wc(
        await take_one(dst.rcq, what),
        f"{what} (receive)",
        wr_id=recv_id,
        opcode=WcOpcode.RECV,
        byte_len=size,
    )
    if dst.node.get(roff, size) != data:
        raise AssertionError(f"{what}: the data arrived corrupt")


@contextlib.contextmanager
def expect_raises(
    exc: type[BaseException] | tuple[type[BaseException], ...], what: str
) -> Iterator[None]:
    """Require the block to raise ``exc`` (anything else, or nothing, breaks ``what``)."""
    names = " or ".join(e.__name__ for e in exc) if isinstance(exc, tuple) else exc.__name__
    try:
        yield
    except exc:
        return
    except Exception as other:
        raise AssertionError(
            f"{what}: expected {names}, got {type(other).__name__}: {other}"
        ) from other
    raise AssertionError(f"{what}: expected {names}, nothing was raised")


async def wait_event(
    ctx: Context, kind: AsyncEventType, what: str, *, qp_num: int | None = None
) -> AsyncEvent:
    """Read async events until one of ``kind`` (for ``qp_num``, if given) arrives."""
    seen: list[AsyncEvent] = []
    with trio.move_on_after(WAIT):
        while True:
            event = await ctx.get_async_event()
            if event.type is kind and (qp_num is None or event.qp_num == qp_num):
                return event
            seen.append(event)
    raise AssertionError(f"{what}: no {kind.name} event within {WAIT}s (saw {seen})")


def expect_state(qp: QP, state: QpState, what: str) -> None:
    """Require ``qp`` to be in ``state``."""
    if qp.state is not state:
        raise AssertionError(f"{what}: QP should be in {state.name}, is in {qp.state.name}")
