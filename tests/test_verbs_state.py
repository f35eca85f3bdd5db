"""The RC QP state table and its attribute checks, independent of any transport."""

import pytest

from rdsx.errors import InvalidArgument, InvalidState
from rdsx.verbs import LEGAL_TRANSITIONS, Access, QpAttr, QpDest, QpState, check_modify

S = QpState
ALL = list(QpState)

FULL = {
    (S.RESET, S.INIT): QpAttr(state=S.INIT, access_flags=Access.LOCAL_WRITE),
    (S.INIT, S.RTR): QpAttr(
        state=S.RTR, dest=QpDest("1", 5), path_mtu=4096, rq_psn=0, min_rnr_timer=0.001
    ),
    (S.RTR, S.RTS): QpAttr(state=S.RTS, sq_psn=0, timeout=0.01, retry_cnt=7, rnr_retry=7),
}


@pytest.mark.parametrize("current", ALL)
@pytest.mark.parametrize("target", ALL)
def test_table_is_enforced(current: QpState, target: QpState) -> None:
    attr = FULL.get((current, target), QpAttr(state=target))
    legal = target in LEGAL_TRANSITIONS[current] and target is not S.SQE
    if legal:
        check_modify(current, attr)
    else:
        with pytest.raises(InvalidState):
            check_modify(current, attr)


@pytest.mark.parametrize("edge", list(FULL))
def test_required_attributes(edge: tuple[QpState, QpState]) -> None:
    with pytest.raises(InvalidArgument, match="requires"):
        check_modify(edge[0], QpAttr(state=edge[1]))


def test_path_change_only_while_quiesced() -> None:
    check_modify(S.SQD, QpAttr(state=S.SQD, dest=QpDest("7", 9)))
    with pytest.raises(InvalidArgument):
        check_modify(S.RTS, QpAttr(state=S.RTS, dest=QpDest("7", 9)))


@pytest.mark.parametrize(
    "attr",
    [
        QpAttr(state=S.RTS, retry_cnt=8),
        QpAttr(state=S.RTS, timeout=-1.0),
        QpAttr(state=S.RTS, sq_psn=1 << 24),
    ],
)
def test_ranges(attr: QpAttr) -> None:
    with pytest.raises(InvalidArgument):
        check_modify(S.RTS, attr)
