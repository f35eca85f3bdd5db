"""Checks of device removal (DESIGN problem 1): the grace deadline, DeviceBusy, and the
zombie handles of a surprise removal."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import trio

from ..errors import DeviceBusy, DeviceRemoved
from ..verbs import (
    Access,
    AsyncEventType,
    CmEventType,
    Device,
    Opcode,
    QpAttr,
    QpState,
    RecvWR,
    SendWR,
    WcStatus,
)
from ._check_cm import cm_pair, cm_port, next_cm_event
from ._fixture import (
    WAIT,
    exchange,
    expect_raises,
    expect_wc,
    link,
    open_nodes,
    take_one,
    wait_event,
)
from ._harness import Harness
from ._registry import check

GRACE = 2.0


async def _remove(harness: Harness, device: Device, grace: float, busy: bool, what: str) -> None:
    """``harness.remove(device, grace)`` with ``what`` holding: DeviceBusy required iff ``busy``."""
    if busy:
        with expect_raises(DeviceBusy, f"remove with {what}"):
            await harness.remove(device, grace)
        return
    try:
        await harness.remove(device, grace)
    except DeviceBusy as exc:
        raise AssertionError(f"remove with {what} raised DeviceBusy: {exc}") from exc


@check("remove-grace-released")
async def check_remove_released(harness: Harness, rng: random.Random) -> None:
    """DEVICE_REMOVAL with a deadline (async and CM event); the device works until released;
    closing the context in time lets ``remove`` succeed; the peer's next send fails."""
    async with open_nodes(harness) as (a, b):
        active, passive, ea, eb, _, _ = await cm_pair(a, b, rng)
        # Remove the active or the passive side's device: the CM event is due on either.
        if rng.random() < 0.5:
            gone, gone_id, mine, peer = a, active, ea, eb
        else:
            gone, gone_id, mine, peer = b, passive, eb, ea

        async with trio.open_nursery() as nursery:
            start = trio.current_time()
            nursery.start_soon(
                _remove, harness, gone.device, GRACE, False, "the holder closed its context in time"
            )
            event = await wait_event(gone.ctx, AsyncEventType.DEVICE_REMOVAL, "graceful removal")
            now = trio.current_time()
            if event.deadline is None or not (
                start + GRACE - 1e-6 <= event.deadline <= now + GRACE + 1e-6
            ):
                raise AssertionError(
                    f"DEVICE_REMOVAL with grace {GRACE}s must carry deadline = start + grace "
                    f"(start {start}, now {now}), got {event.deadline}"
                )
            await next_cm_event(gone_id, CmEventType.DEVICE_REMOVAL, "graceful removal")
            if gone.device.removed:
                raise AssertionError("device.removed must stay False during the grace period")
            await exchange(mine, peer, rng, "the device keeps working during the grace period")
            gone_id.close()
            gone.ctx.close()
        if not gone.device.removed:
            raise AssertionError("device.removed must be True after a successful removal")
        with expect_raises(DeviceRemoved, "device.open() after the removal"):
            await gone.device.open()
        # The peer's QP now talks to nobody: its next send fails (retries exhausted, or
        # flushed if the peer already learnt of the loss and went to ERR), never succeeds.
        off = peer.node.alloc(16)
        peer.qp.post_send(SendWR(9, Opcode.SEND, (peer.node.sge(off, 16),)))
        rule = "a send to a QP whose device was removed"
        wc = await take_one(peer.scq, rule)
        if wc.wr_id != 9 or wc.status not in (WcStatus.RETRY_EXC_ERR, WcStatus.WR_FLUSH_ERR):
            raise AssertionError(f"{rule} must fail (RETRY_EXC_ERR or WR_FLUSH_ERR), got {wc}")


@check("remove-every-context")
async def check_remove_every_context(harness: Harness, rng: random.Random) -> None:
    """Every context of the device gets DEVICE_REMOVAL, and the removal needs all of them
    closed: one left open is DeviceBusy; a second removal with all closed succeeds."""
    async with open_nodes(harness) as (a, _b):
        extra = [await a.device.open() for _ in range(rng.randrange(1, 3))]
        contexts = [a.ctx, *extra]
        keep = rng.choice(contexts)
        grace = 0.5

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _remove, harness, a.device, grace, True, "one of several contexts still open"
            )
            for i, ctx in enumerate(contexts):
                await wait_event(
                    ctx, AsyncEventType.DEVICE_REMOVAL, f"DEVICE_REMOVAL on context {i}"
                )
            for ctx in contexts:
                if ctx is not keep:
                    ctx.close()
        if a.device.removed:
            raise AssertionError("after DeviceBusy the device must stay (removed is False)")
        keep.query_port()  # still a live handle

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _remove, harness, a.device, grace, False, "a second removal, every context closed"
            )
            await wait_event(keep, AsyncEventType.DEVICE_REMOVAL, "the second removal")
            keep.close()
        if not a.device.removed:
            raise AssertionError("device.removed must be True after the second removal")


@check("remove-grace-busy")
async def check_remove_busy(harness: Harness, rng: random.Random) -> None:
    """A holder that keeps its context past the deadline makes ``remove`` raise DeviceBusy;
    the device stays and keeps working."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b)
        grace = rng.choice((0.3, 0.5, 1.0))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _remove, harness, a.device, grace, True, "a context held past the deadline"
            )
            event = await wait_event(a.ctx, AsyncEventType.DEVICE_REMOVAL, "busy removal")
            if event.deadline is None:
                raise AssertionError("a graceful DEVICE_REMOVAL must carry a deadline")
        if trio.current_time() < event.deadline:
            raise AssertionError("remove raised DeviceBusy before the deadline")
        if a.device.removed:
            raise AssertionError("after DeviceBusy the device must stay (removed is False)")
        await exchange(ea, eb, rng, "the device keeps working after DeviceBusy")
        await exchange(eb, ea, rng, "the peer still reaches it after DeviceBusy")
        second = await a.device.open()
        second.close()


async def _expect_zombie(call: Callable[[], object], what: str) -> None:
    with expect_raises(DeviceRemoved, f"{what} on a zombie handle"):
        result = call()
        if isinstance(result, Awaitable):
            with trio.move_on_after(WAIT) as bound:
                await result
            if bound.cancelled_caught:
                raise AssertionError(f"blocked for {WAIT}s")


@check("remove-surprise")
async def check_remove_surprise(harness: Harness, rng: random.Random) -> None:
    """Surprise removal: a blocked cq.wait() and every later call raise DeviceRemoved; the
    peer's sends end in RETRY_EXC_ERR."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b, retry_cnt=2, timeout=0.05)
        off = a.alloc(16)

        async def blocked(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            with expect_raises(DeviceRemoved, "a cq.wait() blocked across a surprise removal"):
                task_status.started()
                await ea.rcq.wait()

        with trio.move_on_after(WAIT) as bound:
            async with trio.open_nursery() as nursery:
                await nursery.start(blocked)
                await harness.remove(a.device, None)
        if bound.cancelled_caught:
            raise AssertionError(
                f"a surprise removal (or the cq.wait() blocked across it) did not end in {WAIT}s"
            )
        if not a.device.removed:
            raise AssertionError("device.removed must be True after a surprise removal")

        sge = a.sge(off, 16)
        calls: list[tuple[Callable[[], object], str]] = [
            (a.ctx.query_device, "ctx.query_device"),
            (a.ctx.query_port, "ctx.query_port"),
            (a.ctx.alloc_pd, "ctx.alloc_pd"),
            (a.ctx.create_cq, "ctx.create_cq"),
            (lambda: a.ctx.cm_listen(cm_port(rng)), "ctx.cm_listen"),
            (lambda: a.pd.reg_mr(bytearray(64), Access.LOCAL_WRITE), "pd.reg_mr"),
            (lambda: a.pd.create_qp(ea.scq, ea.rcq), "pd.create_qp"),
            (lambda: ea.qp.post_send(SendWR(1, Opcode.SEND, (sge,))), "qp.post_send"),
            (lambda: ea.qp.post_recv(RecvWR(2, (sge,))), "qp.post_recv"),
            (lambda: ea.qp.modify(QpAttr(state=QpState.ERR)), "qp.modify"),
            (ea.scq.poll, "cq.poll"),
            (ea.scq.wait, "cq.wait"),
            (a.device.open, "device.open"),
        ]
        rng.shuffle(calls)
        for call, what in calls:
            await _expect_zombie(call, what)

        exhausted = False
        with trio.move_on_after(WAIT):
            try:
                while True:
                    event = await a.ctx.get_async_event()
                    if event.type is AsyncEventType.DEVICE_REMOVAL and event.deadline is not None:
                        raise AssertionError("a surprise DEVICE_REMOVAL has no deadline (None)")
            except DeviceRemoved:
                exhausted = True
        if not exhausted:
            raise AssertionError(
                "get_async_event must raise DeviceRemoved once the device is gone and read out"
            )

        roff = b.alloc(16)
        eb.qp.post_send(SendWR(3, Opcode.SEND, (b.sge(roff, 16),)))
        expect_wc(
            await take_one(eb.scq, "a send to a surprise-removed device"),
            "the peer of a surprise-removed device",
            wr_id=3,
            status=WcStatus.RETRY_EXC_ERR,
        )


@check("remove-open-pending")
async def check_remove_open_pending(harness: Harness, rng: random.Random) -> None:
    """While a removal is pending the device opens no new context (DeviceRemoved at once),
    so one opened in that instant cannot hold the removal up; after a failed removal
    (DeviceBusy) it opens again."""
    async with open_nodes(harness) as (a, _b):
        grace = rng.choice((0.3, 0.5))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_remove, harness, a.device, grace, True, "the first context held")
            await wait_event(a.ctx, AsyncEventType.DEVICE_REMOVAL, "a pending removal")
            with expect_raises(DeviceRemoved, "device.open() while a removal is pending"):
                await a.device.open()
        if a.device.removed:
            raise AssertionError("after DeviceBusy the device must stay (removed is False)")
        again = await a.device.open()
        again.close()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                _remove, harness, a.device, grace, False, "every context closed, none let in"
            )
            await wait_event(a.ctx, AsyncEventType.DEVICE_REMOVAL, "the second removal")
            with expect_raises(DeviceRemoved, "device.open() while the removal is pending"):
                await a.device.open()
            a.ctx.close()
        if not a.device.removed:
            raise AssertionError("device.removed must be True after the removal")
