"""What librdmacm does to the QP it connects, shared by every transport's CM.

``rdma_connect``/``rdma_accept`` move the QP (RESET -> ) INIT -> RTR -> RTS with
the attributes of ``rdma_init_qp_attr``: every remote access, ``retry_cnt`` 7,
``rnr_retry`` 7 (forever) and 16 RDMA reads outstanding each way. Only the path
(``dest``, MTU), the start PSNs and the timers differ between transports, so
those are the arguments. The private-data limits are the IB CM's.

The QP may come in RESET or already in INIT (``rdma_create_qp`` leaves it in
INIT so receives are posted before the connect); either way the receives
posted stay, so the peer's first SEND never meets a receiver-not-ready NAK.
"""

from __future__ import annotations

from ._abc import QP
from ._types import Access, QpAttr, QpDest, QpState

__all__ = [
    "CM_ACCESS",
    "CM_QP_STATES",
    "MSG_PRIVATE_DATA",
    "REJ_PRIVATE_DATA",
    "REP_PRIVATE_DATA",
    "REQ_PRIVATE_DATA",
    "cm_init",
    "cm_to_rts",
]

#: The access flags the CM gives a QP it connects.
CM_ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ
#: The states a QP may be in when it is handed to ``cm_connect``/``accept``.
CM_QP_STATES = frozenset({QpState.RESET, QpState.INIT})
#: Bytes of private data a REQ (connect), REP (accept) and REJ (reject) carry at most.
REQ_PRIVATE_DATA = 196
REP_PRIVATE_DATA = 196
REJ_PRIVATE_DATA = 148
#: Bytes a CM message on an established connection carries at most (as an APR's).
MSG_PRIVATE_DATA = 148
#: librdmacm's retry counts (7 RNR retries = retry forever) and RDMA read depth.
_RETRY = 7
_RD_ATOMIC = 16


def cm_init(qp: QP) -> None:
    """RESET (or INIT) -> INIT as the CM does it (port 1, P_Key index 0, :data:`CM_ACCESS`).

    INIT -> INIT keeps the receives already posted.
    """
    qp.modify(QpAttr(state=QpState.INIT, access_flags=CM_ACCESS, port_num=1, pkey_index=0))


def cm_to_rts(
    qp: QP,
    dest: QpDest,
    *,
    path_mtu: int,
    rq_psn: int,
    sq_psn: int,
    timeout: float,
    min_rnr_timer: float,
) -> None:
    """INIT -> RTR -> RTS towards ``dest`` as the CM does it, with the transport's timers."""
    qp.modify(
        QpAttr(
            state=QpState.RTR,
            dest=dest,
            path_mtu=path_mtu,
            rq_psn=rq_psn,
            max_dest_rd_atomic=_RD_ATOMIC,
            min_rnr_timer=min_rnr_timer,
        )
    )
    qp.modify(
        QpAttr(
            state=QpState.RTS,
            sq_psn=sq_psn,
            timeout=timeout,
            retry_cnt=_RETRY,
            rnr_retry=_RETRY,
            max_rd_atomic=_RD_ATOMIC,
        )
    )
