"""Argument rules of the contract's resource calls that every transport applies the same way.

The checks of :meth:`~rdsx.verbs.Context.create_cq`, :meth:`~rdsx.verbs.PD.reg_mr`
and :meth:`~rdsx.verbs.PD.create_qp` that depend only on the arguments and the
device limits. What needs the transport's own objects (whose context a CQ
belongs to, how many MRs a device holds, where a fresh iova goes) stays with the
transport. ``sim`` and ``tcp`` both call these, so they cannot disagree on what
a valid argument is.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import InvalidArgument
from ._abc import MR
from ._types import Access, QpCap

__all__ = ["check_cqe", "check_iova", "check_mr_buffer", "check_qp_cap"]


def check_cqe(cqe: int, max_cqe: int) -> None:
    """Check the size asked of ``create_cq``.

    Raises:
        InvalidArgument: ``cqe`` outside ``1..max_cqe``.
    """
    if not 1 <= cqe <= max_cqe:
        raise InvalidArgument(f"cqe must be 1..{max_cqe}")


def check_mr_buffer(buffer: bytearray | memoryview, access: Access) -> memoryview:
    """Check the buffer and access of ``reg_mr``.

    Returns:
        ``buffer`` as a flat byte view (what the MR aliases).

    Raises:
        InvalidArgument: a read-only or empty buffer, REMOTE_WRITE without LOCAL_WRITE.
    """
    view = memoryview(buffer).cast("B")
    if view.readonly:
        raise InvalidArgument("cannot register a read-only buffer")
    if len(view) == 0:
        raise InvalidArgument("cannot register an empty buffer")
    if Access.REMOTE_WRITE in access and Access.LOCAL_WRITE not in access:
        raise InvalidArgument("REMOTE_WRITE requires LOCAL_WRITE")
    return view


def check_iova(iova: int, length: int, mrs: Iterable[MR]) -> None:
    """Check an ``iova`` the caller of ``reg_mr`` chose for ``length`` bytes.

    Args:
        iova: the address asked for.
        length: the region's size.
        mrs: the MRs already in the PD.

    Raises:
        InvalidArgument: a negative ``iova``, or one that overlaps an MR of ``mrs``.
    """
    if iova < 0:
        raise InvalidArgument(f"iova {iova} is negative")
    for mr in mrs:
        if iova < mr.addr + mr.length and mr.addr < iova + length:
            raise InvalidArgument(f"iova {iova:#x}+{length} overlaps another MR of this PD")


def check_qp_cap(cap: QpCap, max_qp_wr: int, max_sge: int) -> None:
    """Check the capacities asked of ``create_qp`` against the device limits.

    Raises:
        InvalidArgument: a work queue depth outside ``1..max_qp_wr``, an SGE
            count outside ``0..max_sge``.
    """
    if not (1 <= cap.max_send_wr <= max_qp_wr and 1 <= cap.max_recv_wr <= max_qp_wr):
        raise InvalidArgument(f"work queue depths must be 1..{max_qp_wr}")
    if not (0 <= cap.max_send_sge <= max_sge and 0 <= cap.max_recv_sge <= max_sge):
        raise InvalidArgument(f"SGE counts must be 0..{max_sge}")
