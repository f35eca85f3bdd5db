"""Values and enums of the verbs contract (libibverbs/librdmacm in Python terms).

Every value is a frozen, slotted attrs class; every enum is an :class:`enum.Enum`.
Field names follow libibverbs (``wr_id``, ``sg_list``, ``byte_len``, ``qp_num``)
so a reader who knows verbs can follow the code.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "Access",
    "AsyncEvent",
    "AsyncEventType",
    "CmEvent",
    "CmEventType",
    "DeviceAttr",
    "Opcode",
    "PortAttr",
    "PortState",
    "QpAttr",
    "QpCap",
    "QpDest",
    "QpState",
    "RecvWR",
    "SendWR",
    "Sge",
    "WcOpcode",
    "WcStatus",
    "WorkCompletion",
]

MTU_VALUES = (256, 512, 1024, 2048, 4096)


class PortState(enum.Enum):
    """Logical state of an HCA port (``ibv_port_state``)."""

    DOWN = "down"
    INIT = "init"
    ARMED = "armed"
    ACTIVE = "active"


class AsyncEventType(enum.Enum):
    """Events on a context's async event stream (``ibv_event_type``)."""

    PORT_ACTIVE = "port_active"
    PORT_ERR = "port_err"
    DEVICE_FATAL = "device_fatal"
    #: The device is being removed; :attr:`AsyncEvent.deadline` says by when every
    #: resource of the context must be released, or the removal fails (DeviceBusy).
    DEVICE_REMOVAL = "device_removal"
    #: A QP entered SQD and its outstanding sends have all completed.
    SQ_DRAINED = "sq_drained"
    #: A QP went to ERR on its own (retry or RNR exhaustion, remote error, CQ overrun).
    QP_FATAL = "qp_fatal"
    #: A CQ overran (a completion arrived while it held ``cqe``): it is in error for good.
    CQ_ERR = "cq_err"


class Access(enum.Flag):
    """Memory-region access flags (``ibv_access_flags``). Local read is implicit."""

    NONE = 0
    LOCAL_WRITE = enum.auto()
    REMOTE_WRITE = enum.auto()
    REMOTE_READ = enum.auto()


class QpState(enum.Enum):
    """RC queue-pair states (``ibv_qp_state``)."""

    RESET = "reset"
    INIT = "init"
    RTR = "rtr"
    RTS = "rts"
    SQD = "sqd"
    SQE = "sqe"
    ERR = "err"


class Opcode(enum.Enum):
    """Send work-request opcodes (``ibv_wr_opcode``)."""

    SEND = "send"
    SEND_WITH_IMM = "send_with_imm"
    RDMA_WRITE = "rdma_write"
    RDMA_WRITE_WITH_IMM = "rdma_write_with_imm"
    RDMA_READ = "rdma_read"


class WcOpcode(enum.Enum):
    """Completion opcodes (``ibv_wc_opcode``)."""

    SEND = "send"
    RDMA_WRITE = "rdma_write"
    RDMA_READ = "rdma_read"
    RECV = "recv"
    RECV_RDMA_WITH_IMM = "recv_rdma_with_imm"


class WcStatus(enum.Enum):
    """Completion statuses (``ibv_wc_status``)."""

    SUCCESS = "success"
    LOC_LEN_ERR = "loc_len_err"
    LOC_QP_OP_ERR = "loc_qp_op_err"
    LOC_PROT_ERR = "loc_prot_err"
    WR_FLUSH_ERR = "wr_flush_err"
    REM_INV_REQ_ERR = "rem_inv_req_err"
    REM_ACCESS_ERR = "rem_access_err"
    REM_OP_ERR = "rem_op_err"
    RETRY_EXC_ERR = "retry_exc_err"
    RNR_RETRY_EXC_ERR = "rnr_retry_exc_err"
    GENERAL_ERR = "general_err"


class CmEventType(enum.Enum):
    """Connection-manager events on an established :class:`~rdsx.verbs.CmId`."""

    ESTABLISHED = "established"
    REJECTED = "rejected"
    DISCONNECTED = "disconnected"
    DEVICE_REMOVAL = "device_removal"
    TIMEWAIT_EXIT = "timewait_exit"
    #: A peer's :meth:`~rdsx.verbs.CmId.send_message` (its bytes in ``private_data``).
    MESSAGE = "message"


@attrs.frozen(slots=True)
class DeviceAttr:
    """What ``query_device`` returns (a subset of ``ibv_device_attr``)."""

    node_guid: int
    vendor: str
    max_qp: int
    max_qp_wr: int
    max_sge: int
    max_cq: int
    max_cqe: int
    max_mr: int
    max_mr_size: int
    max_pd: int


@attrs.frozen(slots=True)
class PortAttr:
    """What ``query_port`` returns.

    Attributes:
        state: logical port state.
        lid: the port's LID on ``sim`` (0 where the transport has none).
        address: the transport's locator of this port, used in :class:`QpDest`
            (``sim``: the LID as text; ``tcp``: ``"host:port"``).
        port_guid: the (v)GUID the subnet manager assigned to this port/VF.
        active_mtu: path MTU in bytes (256 … 4096).
        max_msg_sz: largest message one work request may carry.
    """

    state: PortState
    lid: int
    address: str
    port_guid: int
    active_mtu: int
    max_msg_sz: int


@attrs.frozen(slots=True)
class AsyncEvent:
    """One event from :meth:`~rdsx.verbs.Context.get_async_event`.

    Attributes:
        type: what happened.
        deadline: for ``DEVICE_REMOVAL``, the ``trio.current_time()`` by which every
            resource must be released (``None`` for a surprise removal: too late).
        qp_num: the QP concerned, for QP events.
        info: a human-readable detail.
    """

    type: AsyncEventType
    deadline: float | None = None
    qp_num: int | None = None
    info: str = ""


@attrs.frozen(slots=True)
class Sge:
    """One scatter/gather element: ``length`` bytes at ``addr`` inside the MR of ``lkey``."""

    addr: int
    length: int
    lkey: int


@attrs.frozen(slots=True)
class SendWR:
    """A send-queue work request (``ibv_send_wr``).

    ``remote_addr``/``rkey`` are used by the RDMA opcodes; ``imm_data`` (32-bit)
    by the ``*_WITH_IMM`` opcodes. An unsignaled WR produces a completion only on
    error (unless the QP was created with ``sq_sig_all``).
    """

    wr_id: int
    opcode: Opcode
    sg_list: tuple[Sge, ...] = ()
    imm_data: int | None = None
    remote_addr: int = 0
    rkey: int = 0
    signaled: bool = True


@attrs.frozen(slots=True)
class RecvWR:
    """A receive-queue work request (``ibv_recv_wr``)."""

    wr_id: int
    sg_list: tuple[Sge, ...] = ()


@attrs.frozen(slots=True)
class WorkCompletion:
    """One completion (``ibv_wc``).

    Attributes:
        wr_id: the work request's id.
        status: ``SUCCESS`` or why it failed.
        opcode: what completed.
        byte_len: for a ``SUCCESS``, the bytes received (receives) or transferred
            (sends, RDMA). Any other status (a failure, a flush) reports 0:
            ibverbs leaves it undefined then, the contract pins it so that
            every transport and the shim agree.
        qp_num: the local QP.
        imm_data: immediate data, for receives of ``*_WITH_IMM``.
        message: for an error status, what was wrong, in words.
    """

    wr_id: int
    status: WcStatus
    opcode: WcOpcode
    byte_len: int = 0
    qp_num: int = 0
    imm_data: int | None = None
    message: str = ""


@attrs.frozen(slots=True)
class QpCap:
    """Queue capacities (``ibv_qp_cap``)."""

    max_send_wr: int = 256
    max_recv_wr: int = 1024
    max_send_sge: int = 4
    max_recv_sge: int = 4


@attrs.frozen(slots=True)
class QpDest:
    """Where an RC QP sends: the peer port's locator and the peer QP number."""

    port_address: str
    qpn: int


@attrs.frozen(slots=True)
class QpAttr:
    """Attributes for :meth:`~rdsx.verbs.QP.modify` (``ibv_qp_attr`` + mask).

    ``state`` is the target state; every other field left ``None`` is not
    modified. Required fields per transition are those of Linux
    ``ib_modify_qp_is_ok`` for RC (see :func:`rdsx.verbs.check_modify`).
    Times are in seconds of ``trio.current_time()``; ``retry_cnt`` and
    ``rnr_retry`` are 0–7, ``rnr_retry == 7`` meaning "retry forever".
    """

    state: QpState
    access_flags: Access | None = None
    port_num: int | None = None
    pkey_index: int | None = None
    dest: QpDest | None = None
    path_mtu: int | None = None
    rq_psn: int | None = None
    sq_psn: int | None = None
    max_dest_rd_atomic: int | None = None
    max_rd_atomic: int | None = None
    min_rnr_timer: float | None = None
    timeout: float | None = None
    retry_cnt: int | None = None
    rnr_retry: int | None = None
    en_sqd_async_notify: bool | None = None


@attrs.frozen(slots=True)
class CmEvent:
    """One connection-manager event on a :class:`~rdsx.verbs.CmId`."""

    type: CmEventType
    private_data: bytes = b""
    info: str = ""
