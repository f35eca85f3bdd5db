"""Shared fixtures for the tcp transport tests: two devices, QP pairs, buffers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs

from rdsx.verbs import (
    CQ,
    MR,
    PD,
    QP,
    Access,
    Context,
    Opcode,
    QpAttr,
    QpCap,
    QpDest,
    QpState,
    RecvWR,
    SendWR,
    Sge,
    WorkCompletion,
)
from transports.tcp import TcpDevice, TcpNetwork
from transports.tcp.harness import TcpHarness

ALL = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ


@attrs.define
class End:
    """One side of a connection: context, PD, CQ, QP and a registered buffer."""

    device: TcpDevice
    ctx: Context
    pd: PD
    cq: CQ
    qp: QP
    mr: MR

    def sge(self, offset: int, length: int) -> Sge:
        return Sge(self.mr.addr + offset, length, self.mr.lkey)

    def post_recvs(self, count: int, size: int = 256, start: int = 0) -> None:
        self.qp.post_recv(
            [RecvWR(start + i, (self.sge((start + i) * size, size),)) for i in range(count)]
        )

    def send(self, wr_id: int, data: bytes, offset: int = 0, **kw: Any) -> None:
        self.mr.buffer[offset : offset + len(data)] = data
        opcode = kw.pop("opcode", Opcode.SEND)
        self.qp.post_send(SendWR(wr_id, opcode, (self.sge(offset, len(data)),), **kw))


async def wait_wcs(cq: CQ, count: int) -> list[WorkCompletion]:
    got: list[WorkCompletion] = []
    while len(got) < count:
        got += await cq.wait(count - len(got))
    return got


async def make_end(device: TcpDevice, size: int = 1 << 16, **cap: Any) -> End:
    ctx = await device.open()
    pd = ctx.alloc_pd()
    cq = ctx.create_cq()
    qp = pd.create_qp(cq, cq, QpCap(**cap) if cap else None)
    mr = pd.reg_mr(bytearray(size), ALL)
    return End(device, ctx, pd, cq, qp, mr)


def bring_up(
    a: End,
    b: End,
    *,
    timeout: float = 0.05,
    retry_cnt: int = 7,
    rnr_retry: int = 7,
    min_rnr_timer: float = 0.001,
    access: Access = ALL,
) -> None:
    """Connect a.qp and b.qp by hand (no CM), both to RTS."""
    for me, peer in ((a, b), (b, a)):
        me.qp.modify(QpAttr(QpState.INIT, access_flags=access, port_num=1, pkey_index=0))
        me.qp.modify(
            QpAttr(
                QpState.RTR,
                dest=QpDest(peer.ctx.query_port().address, peer.qp.qp_num),
                path_mtu=4096,
                rq_psn=100,
                min_rnr_timer=min_rnr_timer,
            )
        )
    for me in (a, b):
        me.qp.modify(
            QpAttr(
                QpState.RTS, sq_psn=100, timeout=timeout, retry_cnt=retry_cnt, rnr_retry=rnr_retry
            )
        )


@asynccontextmanager
async def pair(**options: Any) -> AsyncIterator[tuple[TcpNetwork, TcpDevice, TcpDevice]]:
    harness = TcpHarness(**options)
    async with harness.open_pair() as (a, b):
        assert harness.network is not None
        assert isinstance(a, TcpDevice) and isinstance(b, TcpDevice)
        yield harness.network, a, b
