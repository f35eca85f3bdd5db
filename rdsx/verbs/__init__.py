"""The verbs contract (libibverbs + librdmacm in trio terms) that transports implement.

See :mod:`rdsx.verbs._abc` for the objects and what each call returns and
raises, :mod:`rdsx.verbs._types` for the values, and :mod:`rdsx.verbs._state`
for the RC QP state table every transport enforces, :mod:`rdsx.verbs._wr` for
the work-request rules they share, :mod:`rdsx.verbs._resources` for the
argument rules of the PD, MR and CQ calls, :mod:`rdsx.verbs._cm` for what the
CM does to the QP it connects.
"""

from ._abc import CQ as CQ
from ._abc import MR as MR
from ._abc import PD as PD
from ._abc import QP as QP
from ._abc import CmId as CmId
from ._abc import CmListener as CmListener
from ._abc import CmRequest as CmRequest
from ._abc import Context as Context
from ._abc import Device as Device
from ._abc import DeviceSource as DeviceSource
from ._cm import CM_ACCESS as CM_ACCESS
from ._cm import CM_QP_STATES as CM_QP_STATES
from ._cm import MSG_PRIVATE_DATA as MSG_PRIVATE_DATA
from ._cm import REJ_PRIVATE_DATA as REJ_PRIVATE_DATA
from ._cm import REP_PRIVATE_DATA as REP_PRIVATE_DATA
from ._cm import REQ_PRIVATE_DATA as REQ_PRIVATE_DATA
from ._cm import cm_init as cm_init
from ._cm import cm_to_rts as cm_to_rts
from ._resources import check_cqe as check_cqe
from ._resources import check_iova as check_iova
from ._resources import check_mr_buffer as check_mr_buffer
from ._resources import check_qp_cap as check_qp_cap
from ._state import LEGAL_TRANSITIONS as LEGAL_TRANSITIONS
from ._state import RECV_STATES as RECV_STATES
from ._state import REQUIRED_ATTRS as REQUIRED_ATTRS
from ._state import SEND_STATES as SEND_STATES
from ._state import check_modify as check_modify
from ._transport import Network as Network
from ._transport import Transport as Transport
from ._types import MTU_VALUES as MTU_VALUES
from ._types import Access as Access
from ._types import AsyncEvent as AsyncEvent
from ._types import AsyncEventType as AsyncEventType
from ._types import CmEvent as CmEvent
from ._types import CmEventType as CmEventType
from ._types import DeviceAttr as DeviceAttr
from ._types import Opcode as Opcode
from ._types import PortAttr as PortAttr
from ._types import PortState as PortState
from ._types import QpAttr as QpAttr
from ._types import QpCap as QpCap
from ._types import QpDest as QpDest
from ._types import QpState as QpState
from ._types import RecvWR as RecvWR
from ._types import SendWR as SendWR
from ._types import Sge as Sge
from ._types import WcOpcode as WcOpcode
from ._types import WcStatus as WcStatus
from ._types import WorkCompletion as WorkCompletion
from ._wr import WC_OPCODE as WC_OPCODE
from ._wr import WITH_IMM as WITH_IMM
from ._wr import check_recv_wrs as check_recv_wrs
from ._wr import check_send_wrs as check_send_wrs
