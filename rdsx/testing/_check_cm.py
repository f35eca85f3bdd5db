"""Checks of the connection manager: listen/connect/accept with private data both ways,
reject, unreachable ports, argument checks, disconnect, what closing an id or its
context tells the peer, and the optional messages on an established id."""

from __future__ import annotations

import random

import trio

from ..errors import (
    AddressInUse,
    ConnectionRejected,
    ConnectTimeout,
    InvalidArgument,
    InvalidState,
    NotSupported,
    Unreachable,
)
from ..verbs import (
    MSG_PRIVATE_DATA,
    REQ_PRIVATE_DATA,
    CmEvent,
    CmEventType,
    CmId,
    Opcode,
    QpAttr,
    QpState,
    RecvWR,
    SendWR,
    WcStatus,
)
from ._fixture import (
    WAIT,
    End,
    Node,
    close_quietly,
    exchange,
    expect_raises,
    expect_state,
    expect_wc,
    init_attr,
    open_nodes,
    take_one,
)
from ._harness import Harness
from ._registry import check

#: How long accepting an abandoned request may take to fail (the CM's own RTU timeout).
ABANDONED_ACCEPT_BOUND = 20.0
#: Seconds between resends of an unseen CM message (the sim CM's own REQ retry).
MESSAGE_RESEND = 0.25
#: IB REQ private data limit the contract enforces (librdmacm's 196 bytes for RC).
MAX_PRIVATE_DATA = REQ_PRIVATE_DATA


def cm_port(rng: random.Random) -> int:
    """A CM port the seed picks, away from well-known ones."""
    return rng.randrange(20000, 60000)


async def cm_pair(
    a: Node, b: Node, rng: random.Random
) -> tuple[CmId, CmId, End, End, bytes, bytes]:
    """Connect a fresh QP of ``a`` to a fresh QP of ``b`` through the CM.

    Returns:
        (active id, passive id, active end, passive end, active's data, passive's data).
    """
    port = cm_port(rng)
    listener = await b.ctx.cm_listen(port)
    ea, eb = a.end(), b.end()
    limit = min(a.cm_private_data, b.cm_private_data)
    data_a = rng.randbytes(rng.randrange(1, limit + 1))
    data_b = rng.randbytes(rng.randrange(1, limit + 1))
    passive: list[CmId] = []

    async def serve() -> None:
        request = await listener.get_request()
        if request.private_data != data_a:
            raise AssertionError("the connect request must carry the active side's private data")
        if request.source != a.device.address:
            raise AssertionError(f"request.source {request.source!r} must be {a.device.address!r}")
        passive.append(await request.accept(eb.qp, data_b))
        with expect_raises(InvalidState, "accepting a request that was already answered"):
            await request.accept(b.end().qp)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            active = await a.ctx.cm_connect(ea.qp, b.device.address, port, data_a)
    finally:
        listener.close()
    return active, passive[0], ea, eb, data_a, data_b


async def next_cm_event(cm_id: CmId, kind: CmEventType, what: str) -> CmEvent:
    """The next CM event of ``cm_id`` other than ESTABLISHED must be ``kind``."""
    with trio.move_on_after(WAIT):
        while True:
            event = await cm_id.next_event()
            if event.type is CmEventType.ESTABLISHED:
                continue
            if event.type is not kind:
                raise AssertionError(f"{what}: expected a {kind.name} CM event, got {event}")
            return event
    raise AssertionError(f"{what}: no {kind.name} CM event within {WAIT}s")


@check("cm-connect-accept")
async def check_cm_connect(harness: Harness, rng: random.Random) -> None:
    """listen/connect/accept exchange private data both ways and leave both QPs in RTS."""
    async with open_nodes(harness) as (a, b):
        active, passive, ea, eb, data_a, data_b = await cm_pair(a, b, rng)
        if active.private_data != data_b:
            raise AssertionError("the active CmId must hold the passive side's private data")
        if passive.private_data != data_a:
            raise AssertionError("the passive CmId must hold the active side's private data")
        if active.peer_address != b.device.address or passive.peer_address != a.device.address:
            raise AssertionError(
                f"peer_address wrong: {active.peer_address!r}, {passive.peer_address!r}"
            )
        if active.qp.qp_num != ea.qp.qp_num or passive.qp.qp_num != eb.qp.qp_num:
            raise AssertionError("CmId.qp must be the QP that was connected/accepted")
        expect_state(ea.qp, QpState.RTS, "the CM moves the active QP to RTS")
        expect_state(eb.qp, QpState.RTS, "the CM moves the passive QP to RTS")
        await exchange(ea, eb, rng, "active -> passive over a CM connection")
        await exchange(eb, ea, rng, "passive -> active over a CM connection")


@check("cm-preposted-receives")
async def check_cm_preposted(harness: Harness, rng: random.Random) -> None:
    """cm_connect and accept take a QP in INIT and keep the receives posted on it (as after
    rdma_create_qp): each side sends the moment its call returns, before posting anything
    more, and the SEND lands in the receive the peer posted before the handshake."""
    async with open_nodes(harness) as (a, b):
        port = cm_port(rng)
        listener = await b.ctx.cm_listen(port)
        ea, eb = a.end(), b.end()
        size = rng.randrange(1, 257)
        landing: dict[int, int] = {}
        for end in (ea, eb):
            end.qp.modify(init_attr())
            expect_state(end.qp, QpState.INIT, "the QP moved to INIT by hand")
            landing[id(end)] = end.node.alloc(size)
            end.qp.post_recv(RecvWR(31, (end.node.sge(landing[id(end)], size),)))

        async def first_send(src: End, dst: End, what: str) -> None:
            off = src.node.alloc(size)
            data = rng.randbytes(size)
            src.node.put(off, data)
            src.qp.post_send(SendWR(32, Opcode.SEND, (src.node.sge(off, size),)))
            expect_wc(await take_one(src.scq, what), f"{what} (send)", wr_id=32)
            wc = await take_one(dst.rcq, what)
            expect_wc(wc, f"{what}: the receive posted in INIT", wr_id=31, byte_len=size)
            if dst.node.get(landing[id(dst)], size) != data:
                raise AssertionError(f"{what}: the data arrived corrupt")

        async def serve() -> None:
            request = await listener.get_request()
            await request.accept(eb.qp, b"passive")
            expect_state(eb.qp, QpState.RTS, "accept of a QP in INIT")
            await first_send(eb, ea, "passive -> active, right after accept")

        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                active = await a.ctx.cm_connect(ea.qp, b.device.address, port, b"active")
                expect_state(ea.qp, QpState.RTS, "cm_connect of a QP in INIT")
                if active.private_data != b"passive":
                    raise AssertionError("cm_connect of a QP in INIT lost the peer's data")
                await first_send(ea, eb, "active -> passive, right after cm_connect")
        finally:
            listener.close()
        await exchange(ea, eb, rng, "active -> passive after the pre-posted receives")


@check("cm-reject")
async def check_cm_reject(harness: Harness, rng: random.Random) -> None:
    """A rejected connect raises ConnectionRejected carrying the rejecter's private data."""
    async with open_nodes(harness) as (a, b):
        port = cm_port(rng)
        listener = await b.ctx.cm_listen(port)
        reason = rng.randbytes(rng.randrange(1, 100))

        async def refuse() -> None:
            await (await listener.get_request()).reject(reason)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(refuse)
            try:
                await a.ctx.cm_connect(a.end().qp, b.device.address, port, b"hello")
            except ConnectionRejected as exc:
                if exc.private_data != reason:
                    raise AssertionError(
                        "ConnectionRejected must carry the reject's private data"
                    ) from exc
            else:
                raise AssertionError("a rejected connect must raise ConnectionRejected")
        listener.close()


@check("cm-unreachable")
async def check_cm_unreachable(harness: Harness, rng: random.Random) -> None:
    """Connecting where nobody listens (never, or no longer) raises Unreachable."""
    async with open_nodes(harness) as (a, b):
        port = cm_port(rng)
        with expect_raises(Unreachable, "cm_connect to a port nobody listens on"):
            await a.ctx.cm_connect(a.end().qp, b.device.address, port)
        listener = await b.ctx.cm_listen(port)
        listener.close()
        listener.close()  # idempotent
        with expect_raises(Unreachable, "cm_connect to a port whose listener was closed"):
            await a.ctx.cm_connect(a.end().qp, b.device.address, port)


@check("cm-arguments")
async def check_cm_arguments(harness: Harness, rng: random.Random) -> None:
    """A taken port is AddressInUse; oversize private data InvalidArgument; a QP in neither
    RESET nor INIT InvalidState (connect and accept); a closed context frees its listeners."""
    async with open_nodes(harness) as (a, b):
        port = cm_port(rng)
        listener = await b.ctx.cm_listen(port)
        with expect_raises(AddressInUse, "a second listener on the same port"):
            await b.ctx.cm_listen(port)
        second = await b.device.open()
        with expect_raises(AddressInUse, "a listener on the same port from another context"):
            await second.cm_listen(port)
        second.close()
        (await a.ctx.cm_listen(port)).close()  # another address: the same port is free there
        for size in sorted({MAX_PRIVATE_DATA + 1, a.cm_private_data + 1}):
            with expect_raises(InvalidArgument, f"{size} bytes of private data"):
                await a.ctx.cm_connect(a.end().qp, b.device.address, port, bytes(size))
        end = a.end()
        end.qp.modify(init_attr())
        end.qp.modify(QpAttr(state=QpState.ERR))
        with expect_raises(InvalidState, "cm_connect with a QP in ERR"):
            await a.ctx.cm_connect(end.qp, b.device.address, port)

        async def answer() -> None:
            request = await listener.get_request()
            busy = b.end()
            busy.qp.modify(init_attr())
            busy.qp.modify(QpAttr(state=QpState.ERR))
            with expect_raises(InvalidState, "accept with a QP in ERR"):
                await request.accept(busy.qp)
            await request.reject(b"after a refused accept")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(answer)
            with expect_raises(ConnectionRejected, "reject after a refused accept"):
                await a.ctx.cm_connect(a.end().qp, b.device.address, port)
        listener.close()

        # Closing a context releases its listeners: the port is free and unreachable.
        ctx = await b.device.open()
        await ctx.cm_listen(port)
        ctx.close()
        with expect_raises(Unreachable, "cm_connect to a listener of a closed context"):
            await a.ctx.cm_connect(a.end().qp, b.device.address, port)
        (await b.ctx.cm_listen(port)).close()


@check("cm-disconnect")
async def check_cm_disconnect(harness: Harness, rng: random.Random) -> None:
    """disconnect: DISCONNECTED then TIMEWAIT_EXIT on both sides, both QPs in ERR."""
    async with open_nodes(harness) as (a, b):
        active, passive, ea, eb, _, _ = await cm_pair(a, b, rng)
        closer, other = (active, passive) if rng.random() < 0.5 else (passive, active)
        await closer.disconnect()
        for side, cm_id in (("disconnecting", closer), ("remote", other)):
            await next_cm_event(cm_id, CmEventType.DISCONNECTED, f"disconnect: {side} side")
            await next_cm_event(cm_id, CmEventType.TIMEWAIT_EXIT, f"disconnect: {side} side")
        expect_state(ea.qp, QpState.ERR, "after a disconnect (active QP)")
        expect_state(eb.qp, QpState.ERR, "after a disconnect (passive QP)")
        active.close()
        passive.close()
        active.close()  # idempotent


@check("cm-messages")
async def check_cm_messages(harness: Harness, rng: random.Random) -> None:
    """``CmId.send_message`` is optional: it raises NotSupported, or the bytes reach the
    peer's id as a MESSAGE event, both ways (resent while unseen: like a MAD it may be
    lost), and more than MSG_PRIVATE_DATA are refused."""
    async with open_nodes(harness) as (a, b):
        active, passive, _, _, _, _ = await cm_pair(a, b, rng)
        for sender, receiver, what in ((active, passive, "active"), (passive, active, "passive")):
            data = rng.randbytes(rng.randrange(1, MSG_PRIVATE_DATA + 1))
            try:
                await sender.send_message(data)
            except NotSupported:
                return  # the transport's CM carries none: callers take another way
            event = await _next_message(sender, receiver, data, f"{what} side's message")
            if event.private_data != data:
                raise AssertionError(f"{what} side's CM message arrived changed")
        with expect_raises(InvalidArgument, f"a CM message over {MSG_PRIVATE_DATA} bytes"):
            await active.send_message(bytes(MSG_PRIVATE_DATA + 1))
        active.close()
        passive.close()


async def _next_message(sender: CmId, receiver: CmId, data: bytes, what: str) -> CmEvent:
    """The MESSAGE ``receiver`` gets, ``data`` resent by ``sender`` every quarter second."""
    with trio.move_on_after(WAIT):
        while True:
            with trio.move_on_after(MESSAGE_RESEND):
                while True:
                    event = await receiver.next_event()
                    if event.type is CmEventType.MESSAGE:
                        return event
                    if event.type is not CmEventType.ESTABLISHED:
                        raise AssertionError(f"{what}: expected a MESSAGE CM event, got {event}")
            await sender.send_message(data)
    raise AssertionError(f"{what}: no MESSAGE CM event within {WAIT}s")


async def _peer_sees_close(cm_id: CmId, end: End, wr_id: int, what: str) -> None:
    """``cm_id``'s peer closed: DISCONNECTED, TIMEWAIT_EXIT, ``end``'s QP in ERR and the
    receive ``wr_id`` it had posted flushed."""
    await next_cm_event(cm_id, CmEventType.DISCONNECTED, what)
    await next_cm_event(cm_id, CmEventType.TIMEWAIT_EXIT, what)
    expect_state(end.qp, QpState.ERR, f"{what}: the peer's QP")
    wc = await take_one(end.rcq, what)
    expect_wc(wc, f"{what}: the peer's posted receive", wr_id=wr_id, status=WcStatus.WR_FLUSH_ERR)


@check("cm-close-disconnects")
async def check_cm_close(harness: Harness, rng: random.Random) -> None:
    """Closing an established CmId, or the context holding it, while the device works sends
    a DREQ (rdma_destroy_id): the peer's id sees DISCONNECTED then TIMEWAIT_EXIT and the
    peer's QP goes to ERR, flushing its posted receives."""
    async with open_nodes(harness) as (a, b):
        active, passive, ea, eb, _, _ = await cm_pair(a, b, rng)
        closer, other, other_end = (
            (active, passive, eb) if rng.random() < 0.5 else (passive, active, ea)
        )
        other_end.qp.post_recv(RecvWR(7, (other_end.node.sge(other_end.node.alloc(16), 16),)))
        closer.close()
        closer.close()  # idempotent
        await _peer_sees_close(other, other_end, 7, "the peer of a closed CmId")
        other.close()

        # A second context of a: connect through it, then close the whole context.
        ctx = await a.device.open()
        try:
            c = Node.open(a.device, ctx)
            if rng.random() < 0.5:
                _, peer_id, _, peer_end, _, _ = await cm_pair(c, b, rng)
            else:
                peer_id, _, peer_end, _, _, _ = await cm_pair(b, c, rng)
            peer_end.qp.post_recv(RecvWR(8, (b.sge(b.alloc(16), 16),)))
            ctx.close()
            await _peer_sees_close(peer_id, peer_end, 8, "the peer of a closed context's CmId")
            peer_id.close()
        finally:
            close_quietly(ctx)


@check("cm-connect-timeout")
async def check_cm_timeout(harness: Harness, rng: random.Random) -> None:
    """A listener that never answers, or a partition: cm_connect raises ConnectTimeout after
    ``timeout``; accepting the abandoned request raises ConnectTimeout too."""
    async with open_nodes(harness) as (a, b):
        port = cm_port(rng)
        listener = await b.ctx.cm_listen(port)
        timeout = rng.choice((0.2, 0.5))
        start = trio.current_time()
        with expect_raises(ConnectTimeout, "a connect request nobody answers"):
            await a.ctx.cm_connect(a.end().qp, b.device.address, port, timeout=timeout)
        waited = trio.current_time() - start
        if waited < timeout:
            raise AssertionError(f"ConnectTimeout after {waited:.3f}s, before timeout={timeout}")
        with trio.move_on_after(WAIT) as bound:
            request = await listener.get_request()
        if bound.cancelled_caught:
            raise AssertionError("the abandoned connect request never reached the listener")
        with trio.move_on_after(ABANDONED_ACCEPT_BOUND) as bound:
            with expect_raises(ConnectTimeout, "accepting a request whose active side gave up"):
                await request.accept(b.end().qp)
        if bound.cancelled_caught:
            raise AssertionError(
                f"accepting an abandoned request neither failed nor returned in "
                f"{ABANDONED_ACCEPT_BOUND}s"
            )
        with (
            harness.partition(a.device, b.device),
            expect_raises(ConnectTimeout, "a connect across a partition"),
        ):
            await a.ctx.cm_connect(a.end().qp, b.device.address, port, timeout=timeout)
        listener.close()
