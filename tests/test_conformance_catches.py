"""The suite can fail: sim wrapped so that it breaks one rule must fail the check of that rule.

Each fault wraps the sim's verbs objects in thin proxies (everything delegates,
one behaviour is broken), so a passing suite on the real sim means something.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import attrs
import pytest
import trio

from rdsx.errors import DeviceRemoved, InvalidHandle, InvalidState
from rdsx.testing import CHECKS, Harness, check_transport
from rdsx.verbs import AsyncEventType, Device, QpAttr, QpState, WcStatus, WorkCompletion
from transports.sim.harness import SimHarness


def _unwrap(value: Any) -> Any:
    return value._inner if isinstance(value, _Proxy) else value


class _Proxy:
    """Delegates every attribute to the wrapped object; subclasses break one thing."""

    def __init__(self, inner: Any, fault: str) -> None:
        self._inner = inner
        self._fault = fault

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


#: fault -> (status a transport reports, status the broken one reports instead)
_REWRITES = {
    "rem-access-as-success": (WcStatus.REM_ACCESS_ERR, WcStatus.SUCCESS),
    "flush-as-general-error": (WcStatus.WR_FLUSH_ERR, WcStatus.GENERAL_ERR),
    "rnr-as-retry-exceeded": (WcStatus.RNR_RETRY_EXC_ERR, WcStatus.RETRY_EXC_ERR),
}


class _CQ(_Proxy):
    seen = 0
    held: WorkCompletion | None = None

    def _filter(self, wcs: list[WorkCompletion]) -> list[WorkCompletion]:
        out = []
        for wc in wcs:
            self.seen += 1
            if self._fault == "drop-5th-completion" and self.seen % 5 == 0:
                continue
            if self._fault in _REWRITES and wc.status is _REWRITES[self._fault][0]:
                wc = attrs.evolve(wc, status=_REWRITES[self._fault][1])
            if self._fault == "byte-len-on-failure" and wc.status is not WcStatus.SUCCESS:
                wc = attrs.evolve(wc, byte_len=wc.byte_len or 16)
            if self._fault == "lose-imm-data":
                wc = attrs.evolve(wc, imm_data=None)
            if self._fault == "swap-two-completions" and self.seen == 5:
                self.held = wc
                continue
            out.append(wc)
            if self.held is not None and self.seen == 6:
                out.append(self.held)
                self.held = None
            if self._fault == "duplicate-completion" and self.seen == 7:
                out.append(wc)
        return out

    def poll(self, max_entries: int = 64) -> list[WorkCompletion]:
        if self._fault == "zombie-poll-returns-empty":
            try:
                return self._inner.poll(max_entries)  # type: ignore[no-any-return]
            except DeviceRemoved:
                return []
        return self._filter(self._inner.poll(max_entries))[:max_entries]

    async def wait(self, max_entries: int = 64) -> list[WorkCompletion]:
        while True:
            try:
                batch = await self._inner.wait(max_entries)
            except DeviceRemoved:
                if self._fault != "wait-survives-removal":
                    raise
                await trio.sleep_forever()
            if self._fault == "lossy-cancelled-wait":
                await trio.sleep(1e-6)  # a checkpoint after taking: cancelling here loses them
            got = self._filter(batch)[:max_entries]
            if got:
                return got


class _QP(_Proxy):
    def modify(self, attr: Any) -> None:
        try:
            self._inner.modify(attr)
        except InvalidState:
            if self._fault != "allow-illegal-transition":
                raise

    def post_send(self, wrs: Any) -> None:
        if self._fault == "send-in-reset" and self._inner.state is QpState.RESET:
            return
        self._inner.post_send(wrs)


class _MR(_Proxy):
    def close(self) -> None:
        try:
            self._inner.close()
        except InvalidHandle:
            if self._fault != "double-dereg-ok":
                raise


class _PD(_Proxy):
    def reg_mr(self, *args: Any, **kwargs: Any) -> Any:
        return _MR(self._inner.reg_mr(*args, **kwargs), self._fault)

    def create_qp(self, send_cq: Any, recv_cq: Any, *args: Any, **kwargs: Any) -> Any:
        qp = self._inner.create_qp(_unwrap(send_cq), _unwrap(recv_cq), *args, **kwargs)
        return _QP(qp, self._fault)


def _cm_takes(qp: Any, fault: str) -> Any:
    """The QP the (broken) CM gets: one handed over in INIT loses its receives."""
    inner = _unwrap(qp)
    if fault == "cm-drops-init-receives" and inner.state is QpState.INIT:
        inner.modify(QpAttr(state=QpState.RESET))
    return inner


class _Context(_Proxy):
    async def get_async_event(self) -> Any:
        while True:
            event = await self._inner.get_async_event()
            if self._fault == "no-sq-drained" and event.type is AsyncEventType.SQ_DRAINED:
                continue
            if self._fault == "no-qp-fatal" and event.type is AsyncEventType.QP_FATAL:
                continue
            if self._fault == "removal-without-deadline":
                event = attrs.evolve(event, deadline=None)
            return event

    def alloc_pd(self) -> Any:
        return _PD(self._inner.alloc_pd(), self._fault)

    def create_cq(self, *args: Any, **kwargs: Any) -> Any:
        return _CQ(self._inner.create_cq(*args, **kwargs), self._fault)

    async def cm_connect(self, qp: Any, *args: Any, **kwargs: Any) -> Any:
        cm_id = await self._inner.cm_connect(_cm_takes(qp, self._fault), *args, **kwargs)
        return _CmId(cm_id, self._fault) if self._fault == "cm-message-lost" else cm_id

    async def cm_listen(self, *args: Any, **kwargs: Any) -> Any:
        return _Listener(await self._inner.cm_listen(*args, **kwargs), self._fault)


class _CmId(_Proxy):
    async def send_message(self, private_data: bytes) -> None:
        await trio.lowlevel.checkpoint()  # says it sent, sends nothing


class _Listener(_Proxy):
    async def get_request(self) -> Any:
        return _Request(await self._inner.get_request(), self._fault)


class _Request(_Proxy):
    async def accept(self, qp: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._inner.accept(_cm_takes(qp, self._fault), *args, **kwargs)


class _Device(_Proxy):
    async def open(self) -> Any:
        return _Context(await self._inner.open(), self._fault)


class BrokenSim(Harness):
    """SimHarness whose verbs objects break the rule named by ``fault``."""

    name = "broken-sim"
    virtual_time = True

    def __init__(self, fault: str) -> None:
        self.fault = fault
        self.sim = SimHarness()

    @asynccontextmanager
    async def _pair(self) -> AsyncIterator[tuple[Device, Device]]:
        async with self.sim.open_pair() as (a, b):
            yield _Device(a, self.fault), _Device(b, self.fault)  # type: ignore[misc]

    def open_pair(self):  # type: ignore[no-untyped-def]
        return self._pair()

    async def remove(self, device: Device, grace: float | None) -> None:
        await self.sim.remove(_unwrap(device), grace)

    @contextmanager
    def _partition(self, a: Device, b: Device) -> Iterator[None]:
        with self.sim.partition(_unwrap(a), _unwrap(b)):
            yield

    def partition(self, a: Device, b: Device):  # type: ignore[no-untyped-def]
        return self._partition(a, b)


@pytest.mark.parametrize(
    ("fault", "check", "rule"),
    [
        ("drop-5th-completion", "send-order-exactly-once", "completions in"),
        ("duplicate-completion", "send-order-exactly-once", "expected wr_id"),
        ("allow-illegal-transition", "qp-state-table", "is illegal"),
        ("send-in-reset", "qp-post-by-state", "post_send in RESET"),
        ("double-dereg-ok", "handles-after-close", "deregistering an MR twice"),
        ("swap-two-completions", "send-order-exactly-once", "expected wr_id"),
        ("rem-access-as-success", "rdma-remote-access-errors", "expected status REM_ACCESS"),
        ("flush-as-general-error", "flush-on-err", "expected status WR_FLUSH_ERR"),
        ("rnr-as-retry-exceeded", "rnr-retry-exhausted", "expected status RNR_RETRY_EXC"),
        ("byte-len-on-failure", "failed-completion-byte-len", "byte_len 0, got"),
        ("lose-imm-data", "immediate-data", "imm_data"),
        ("no-sq-drained", "sqd-drain", "no SQ_DRAINED event"),
        ("removal-without-deadline", "remove-grace-released", "must carry deadline"),
        ("zombie-poll-returns-empty", "remove-surprise", "cq.poll on a zombie"),
        ("wait-survives-removal", "remove-surprise", "did not end in"),
        ("no-qp-fatal", "qp-fatal-event", "no QP_FATAL event"),
        ("lossy-cancelled-wait", "cq-wait-cancellation", "a cancelled wait lost"),
        ("cm-drops-init-receives", "cm-preposted-receives", "right after .* of 1 completions"),
        ("cm-message-lost", "cm-messages", "no MESSAGE CM event"),
    ],
)
async def test_suite_catches(fault: str, check: str, rule: str, autojump_clock: object) -> None:
    with pytest.raises(AssertionError, match=rf"^\[{check}\] broken-sim: .*{rule}"):
        await check_transport(BrokenSim(fault), only=[check])


async def test_unbroken_wrapper_passes(autojump_clock: object) -> None:
    # The proxies themselves are faithful: without a fault the whole suite passes (add the
    # sim's own known gaps here if SIM_GAPS in test_conformance_sim.py ever lists one).
    await check_transport(BrokenSim("none"), only=list(CHECKS))
