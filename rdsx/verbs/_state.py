"""The RC QP state machine: the one table every transport enforces.

Everything that decides whether a ``modify`` is legal lives here, so ``sim``,
``tcp`` and the transparent shim cannot disagree. The table is Linux
``drivers/infiniband/core/verbs.c`` ``qp_state_table`` for RC
(reference/migration.md §6). RC never enters SQE: that row exists for UD/UC
only, so an RC transition *to* SQE is refused.
"""

from __future__ import annotations

from ..errors import InvalidArgument, InvalidState
from ._types import MTU_VALUES, QpAttr, QpState

__all__ = ["LEGAL_TRANSITIONS", "REQUIRED_ATTRS", "SEND_STATES", "check_modify"]

S = QpState

#: from-state -> the set of legal to-states (RC).
LEGAL_TRANSITIONS: dict[QpState, frozenset[QpState]] = {
    S.RESET: frozenset({S.RESET, S.INIT}),
    S.INIT: frozenset({S.RESET, S.ERR, S.INIT, S.RTR}),
    S.RTR: frozenset({S.RESET, S.ERR, S.RTS}),
    S.RTS: frozenset({S.RESET, S.ERR, S.RTS, S.SQD}),
    S.SQD: frozenset({S.RESET, S.ERR, S.RTS, S.SQD}),
    S.SQE: frozenset({S.RESET, S.ERR, S.RTS}),
    S.ERR: frozenset({S.RESET, S.ERR}),
}

#: (from, to) -> attributes that must be given (RC masks of ib_modify_qp_is_ok).
REQUIRED_ATTRS: dict[tuple[QpState, QpState], tuple[str, ...]] = {
    (S.RESET, S.INIT): ("access_flags",),
    (S.INIT, S.RTR): ("dest", "path_mtu", "rq_psn", "min_rnr_timer"),
    (S.RTR, S.RTS): ("sq_psn", "timeout", "retry_cnt", "rnr_retry"),
}

#: States in which ``post_send`` starts new work (ERR accepts posts and flushes them).
SEND_STATES = frozenset({S.RTS})
#: States in which ``post_recv`` is accepted (RESET refuses; ERR flushes).
RECV_STATES = frozenset({S.INIT, S.RTR, S.RTS, S.SQD, S.ERR})


def check_modify(current: QpState, attr: QpAttr) -> None:
    """Validate a ``modify`` of an RC QP in ``current`` state to ``attr``.

    Raises:
        InvalidState: the transition is not in :data:`LEGAL_TRANSITIONS` (RC
            never enters SQE).
        InvalidArgument: a required attribute is missing, or a value is out of
            range (MTU not a power of two in 256..4096, retry counts not 0..7,
            negative timers, PSNs outside 24 bits).
    """
    target = attr.state
    if target is S.SQE or target not in LEGAL_TRANSITIONS[current]:
        raise InvalidState(f"illegal RC QP transition {current.name} -> {target.name}")
    missing = [
        name for name in REQUIRED_ATTRS.get((current, target), ()) if getattr(attr, name) is None
    ]
    if missing:
        raise InvalidArgument(f"{current.name} -> {target.name} requires {', '.join(missing)}")
    if (
        attr.dest is not None
        and current is not S.INIT
        and not (current is S.SQD and target is S.SQD)
    ):
        # A live path change is only legal while quiesced (SQD -> SQD), as in IBTA.
        raise InvalidArgument(
            "dest may change only on INIT -> RTR or SQD -> SQD, "
            f"not {current.name} -> {target.name}"
        )
    if attr.path_mtu is not None and attr.path_mtu not in MTU_VALUES:
        raise InvalidArgument(f"path_mtu {attr.path_mtu} is not one of {MTU_VALUES}")
    for name in ("retry_cnt", "rnr_retry"):
        value = getattr(attr, name)
        if value is not None and not 0 <= value <= 7:
            raise InvalidArgument(f"{name} must be 0..7, got {value}")
    for name in ("timeout", "min_rnr_timer"):
        value = getattr(attr, name)
        if value is not None and value < 0:
            raise InvalidArgument(f"{name} must be >= 0 seconds, got {value}")
    for name in ("rq_psn", "sq_psn"):
        value = getattr(attr, name)
        if value is not None and not 0 <= value < 1 << 24:
            raise InvalidArgument(f"{name} must fit 24 bits, got {value}")
