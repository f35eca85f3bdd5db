"""Work-request rules of the contract that every transport applies the same way.

What each send opcode completes as, which opcodes carry immediate data, and the
argument checks of :meth:`~rdsx.verbs.QP.post_send` and
:meth:`~rdsx.verbs.QP.post_recv` on each WR (the queue-depth and state checks
stay with the QP, which knows its queues). ``sim``, ``tcp`` and the transparent
shim all call these, so they cannot disagree on what a valid WR is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import InvalidArgument
from ._types import Opcode, RecvWR, SendWR, WcOpcode

__all__ = ["WC_OPCODE", "WITH_IMM", "check_recv_wrs", "check_send_wrs"]

#: The opcode of the completion a send WR of each opcode produces.
#: (A plain dict behind a read-only type: looked up once per completion.)
WC_OPCODE: Mapping[Opcode, WcOpcode] = {
    Opcode.SEND: WcOpcode.SEND,
    Opcode.SEND_WITH_IMM: WcOpcode.SEND,
    Opcode.RDMA_WRITE: WcOpcode.RDMA_WRITE,
    Opcode.RDMA_WRITE_WITH_IMM: WcOpcode.RDMA_WRITE,
    Opcode.RDMA_READ: WcOpcode.RDMA_READ,
}
#: Opcodes that must carry ``imm_data``.
WITH_IMM: frozenset[Opcode] = frozenset({Opcode.SEND_WITH_IMM, Opcode.RDMA_WRITE_WITH_IMM})
# Identity, not Enum hashing: these checks run on every posted WR.
_WITH_IMM_IDS = frozenset(map(id, WITH_IMM))


def check_send_wrs(wrs: Sequence[SendWR], max_sge: int, max_msg_sz: int) -> None:
    """Check each WR of a ``post_send`` batch.

    Raises:
        InvalidArgument: more SGEs than ``max_sge``, a negative SGE length, a
            message longer than ``max_msg_sz``, a ``*_WITH_IMM`` without
            ``imm_data``, an ``imm_data`` outside 32 bits.
    """
    for wr in wrs:
        sg_list = wr.sg_list
        if len(sg_list) > max_sge:
            raise InvalidArgument(f"{len(sg_list)} SGEs > max_send_sge {max_sge}")
        total = 0
        for sge in sg_list:
            if sge.length < 0:
                raise InvalidArgument("negative SGE length")
            total += sge.length
        if total > max_msg_sz:
            raise InvalidArgument(f"message of {total} bytes > max_msg_sz {max_msg_sz}")
        imm = wr.imm_data
        if imm is None:
            if id(wr.opcode) in _WITH_IMM_IDS:
                raise InvalidArgument(f"{wr.opcode.name} needs imm_data")
        elif not 0 <= imm < 1 << 32:
            raise InvalidArgument(f"imm_data {imm} does not fit 32 bits")


def check_recv_wrs(wrs: Sequence[RecvWR], max_sge: int) -> None:
    """Check each WR of a ``post_recv`` batch.

    Raises:
        InvalidArgument: more SGEs than ``max_sge``, a negative SGE length.
    """
    for wr in wrs:
        sg_list = wr.sg_list
        if len(sg_list) > max_sge:
            raise InvalidArgument(f"{len(sg_list)} SGEs > max_recv_sge {max_sge}")
        for sge in sg_list:
            if sge.length < 0:
                raise InvalidArgument("negative SGE length")
