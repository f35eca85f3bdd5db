"""Checks of the RC QP state machine, driven through real QPs of the transport.

The truth is :data:`rdsx.verbs.LEGAL_TRANSITIONS` and
:data:`rdsx.verbs.REQUIRED_ATTRS` (Linux ``qp_state_table`` for RC): every
legal edge must be taken, every illegal one refused with ``InvalidState``
leaving the QP where it was, a missing or out-of-range attribute refused with
``InvalidArgument``, and posts honour the state (``SEND_STATES``/``RECV_STATES``).
"""

from __future__ import annotations

import random
from typing import Any

import attrs

from ..errors import InvalidArgument, InvalidState, VerbsError
from ..verbs import (
    LEGAL_TRANSITIONS,
    REQUIRED_ATTRS,
    AsyncEventType,
    Opcode,
    QpAttr,
    QpDest,
    QpState,
    RecvWR,
    SendWR,
)
from ._fixture import (
    End,
    Node,
    close_quietly,
    exchange,
    expect_raises,
    expect_state,
    init_attr,
    link,
    open_nodes,
    quiet,
    rtr_attr,
    rts_attr,
    take,
    wait_event,
)
from ._harness import Harness
from ._registry import check

S = QpState

#: How a fresh QP reaches each state the suite can put an RC QP in (never SQE).
_PATHS: dict[QpState, tuple[QpState, ...]] = {
    S.RESET: (),
    S.INIT: (S.INIT,),
    S.RTR: (S.INIT, S.RTR),
    S.RTS: (S.INIT, S.RTR, S.RTS),
    S.SQD: (S.INIT, S.RTR, S.RTS, S.SQD),
    S.ERR: (S.INIT, S.ERR),
}


def _attr(node: Node, peer: QpDest, current: QpState, target: QpState) -> QpAttr:
    """The attributes a correct caller passes for ``current -> target``."""
    if (current, target) == (S.RESET, S.INIT):
        return init_attr()
    if (current, target) == (S.INIT, S.RTR):
        return rtr_attr(node, peer)
    if (current, target) == (S.RTR, S.RTS):
        return rts_attr()
    if target is S.SQD and current is S.RTS:
        return QpAttr(state=S.SQD, en_sqd_async_notify=True)
    return QpAttr(state=target)


def _with(attr: QpAttr, name: str, value: object) -> QpAttr:
    """``attr`` with field ``name`` replaced by ``value`` (which may be out of range)."""
    changes: dict[str, Any] = {name: value}
    return attrs.evolve(attr, **changes)


async def _bring(end: End, peer: QpDest, state: QpState) -> None:
    """Move a fresh QP to ``state`` along :data:`_PATHS` (SQD: until drained)."""
    current = S.RESET
    for step in _PATHS[state]:
        try:
            end.qp.modify(_attr(end.node, peer, current, step))
        except VerbsError as exc:
            raise AssertionError(
                f"legal RC {current.name} -> {step.name} (on the way to {state.name}) "
                f"was refused: {type(exc).__name__}: {exc}"
            ) from exc
        current = step
    if state is S.SQD:
        await wait_event(
            end.node.ctx,
            AsyncEventType.SQ_DRAINED,
            "RTS -> SQD with nothing outstanding must raise SQ_DRAINED",
            qp_num=end.qp.qp_num,
        )
    expect_state(end.qp, state, f"after the legal path to {state.name}")


@check("qp-state-table")
async def check_state_table(harness: Harness, rng: random.Random) -> None:
    """Every (from, to) pair of RC states: legal edges are taken, illegal ones refused."""
    async with open_nodes(harness) as (a, b):
        peer = b.end()
        pairs = [(f, t) for f in _PATHS for t in QpState]
        rng.shuffle(pairs)
        for current, target in pairs:
            end = a.end()
            try:
                await _bring(end, peer.dest(), current)
                rule = f"RC {current.name} -> {target.name}"
                attr = _attr(a, peer.dest(), current, target)
                if target is not S.SQE and target in LEGAL_TRANSITIONS[current]:
                    try:
                        end.qp.modify(attr)
                    except VerbsError as exc:
                        raise AssertionError(
                            f"{rule} is legal but was refused: {type(exc).__name__}: {exc}"
                        ) from exc
                    expect_state(end.qp, target, f"{rule} accepted")
                else:
                    what = f"{rule} is illegal" + (
                        " (RC never enters SQE)" if target is S.SQE else ""
                    )
                    with expect_raises(InvalidState, what):
                        end.qp.modify(attr)
                    expect_state(end.qp, current, f"{rule} refused")
            finally:
                close_quietly(end.qp, end.scq, end.rcq)


@check("qp-required-attrs")
async def check_required_attrs(harness: Harness, rng: random.Random) -> None:
    """A missing required attribute or an out-of-range value is ``InvalidArgument``."""
    async with open_nodes(harness) as (a, b):
        peer = b.end()
        cases: list[tuple[QpState, QpAttr, str]] = []
        for (current, target), names in REQUIRED_ATTRS.items():
            full = _attr(a, peer.dest(), current, target)
            for name in names:
                cases.append(
                    (
                        current,
                        _with(full, name, None),
                        f"RC {current.name} -> {target.name} without {name}",
                    )
                )
        rtr = _attr(a, peer.dest(), S.INIT, S.RTR)
        rts = _attr(a, peer.dest(), S.RTR, S.RTS)
        for field, value in [
            ("path_mtu", 1000),
            ("min_rnr_timer", -0.001),
            ("rq_psn", 1 << 24),
        ]:
            cases.append((S.INIT, _with(rtr, field, value), f"RTR with {field}={value}"))
        for field, value in [
            ("retry_cnt", 8),
            ("rnr_retry", -1),
            ("timeout", -0.5),
            ("sq_psn", -1),
        ]:
            cases.append((S.RTR, _with(rts, field, value), f"RTS with {field}={value}"))
        cases.append(
            (
                S.RTS,
                QpAttr(state=S.RTS, dest=peer.dest()),
                "dest may change only on INIT -> RTR or SQD -> SQD, not RTS -> RTS",
            )
        )
        rng.shuffle(cases)
        for current, attr, rule in cases:
            end = a.end()
            try:
                await _bring(end, peer.dest(), current)
                with expect_raises(InvalidArgument, rule):
                    end.qp.modify(attr)
                expect_state(end.qp, current, f"{rule} refused")
            finally:
                close_quietly(end.qp, end.scq, end.rcq)


@check("qp-post-by-state")
async def check_post_by_state(harness: Harness, rng: random.Random) -> None:
    """Sends are refused in RESET, INIT and RTR; receives in RESET only."""
    async with open_nodes(harness) as (a, b):
        peer = b.end()
        off = a.alloc(64)
        for state in (S.RESET, S.INIT, S.RTR):
            end = a.end()
            try:
                await _bring(end, peer.dest(), state)
                wr = SendWR(rng.getrandbits(32), Opcode.SEND, (a.sge(off, 16),))
                with expect_raises(InvalidState, f"post_send in {state.name}"):
                    end.qp.post_send(wr)
                recv = RecvWR(rng.getrandbits(32), (a.sge(off, 64),))
                if state is S.RESET:
                    with expect_raises(InvalidState, "post_recv in RESET"):
                        end.qp.post_recv(recv)
                else:
                    try:
                        end.qp.post_recv(recv)
                    except VerbsError as exc:
                        raise AssertionError(
                            f"post_recv in {state.name} must be accepted: "
                            f"{type(exc).__name__}: {exc}"
                        ) from exc
                expect_state(end.qp, state, f"a refused post must not move a QP in {state.name}")
            finally:
                close_quietly(end.qp, end.scq, end.rcq)


@check("qp-reset-reuse")
async def check_reset_reuse(harness: Harness, rng: random.Random) -> None:
    """ERR, flushes, RESET, then INIT -> RTR -> RTS towards a new peer QP: the QP works
    again, and nothing from its first life reappears."""
    async with open_nodes(harness) as (a, b):
        ea, eb = link(a, b, rnr_retry=7)
        off = a.alloc(16)
        ea.qp.post_recv(RecvWR(1, (a.sge(off, 16),)))
        ea.qp.post_send(SendWR(2, Opcode.SEND, (a.sge(off, 16),)))  # stuck: no receive at b
        ea.qp.modify(QpAttr(state=S.ERR))
        await take(ea.scq, 1, "flush before RESET")
        await take(ea.rcq, 1, "flush before RESET")
        ea.qp.modify(QpAttr(state=S.RESET))
        expect_state(ea.qp, S.RESET, "ERR -> RESET")
        nb = b.end()
        ea.qp.modify(init_attr())
        nb.qp.modify(init_attr())
        ea.qp.modify(rtr_attr(a, nb.dest()))
        nb.qp.modify(rtr_attr(b, ea.dest()))
        ea.qp.modify(rts_attr())
        nb.qp.modify(rts_attr())
        await exchange(ea, nb, rng, "a reused QP's first SEND", size=16, wr_ids=(3, 4))
        await quiet([ea.scq, ea.rcq, eb.rcq, nb.rcq], "nothing of a QP's first life reappears")
