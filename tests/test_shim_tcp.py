"""The shim over the tcp transport: the same migration, real sockets, real time."""

from __future__ import annotations

import pytest
import trio

from rdsx.shim import ShimConfig, TransparentDeviceSource
from rdsx.verbs import CQ, Access, Opcode, RecvWR, SendWR, Sge, WcStatus, WorkCompletion
from transports.tcp import TcpDevice, TcpTransport
from transports.tcp.harness import TEST_SECRET

SLOT = 64


async def _take(cq: CQ, count: int) -> list[WorkCompletion]:
    got: list[WorkCompletion] = []
    while len(got) < count:
        got.extend(await cq.wait(count - len(got)))
    return got


@pytest.mark.parametrize("grace", [2.0, None], ids=["graceful", "surprise"])
async def test_migration_over_tcp(grace: float | None) -> None:
    config = ShimConfig(resume_timeout=10.0, connect_timeout=1.0)
    options = {"secret": TEST_SECRET, "port": 0, "qp_timeout": 0.05, "park_timeout": 2.0}
    with trio.fail_after(30):
        async with TcpTransport().open_network(**options) as network:
            node_a = await network.add_node("127.0.0.1")
            node_b = await network.add_node("127.0.0.2")
            async with (
                TransparentDeviceSource(node_a, config) as shim_a,
                TransparentDeviceSource(node_b, config) as shim_b,
            ):
                ends = []
                for shim in (shim_a, shim_b):
                    ctx = await (await shim.next_device()).open()
                    pd = ctx.alloc_pd()
                    buf = bytearray(SLOT * 128)
                    mr = pd.reg_mr(buf, Access.LOCAL_WRITE)
                    cq = ctx.create_cq()
                    ends.append((ctx, pd.create_qp(cq, cq), cq, mr, buf))
                (ctx_a, qp_a, cq_a, mr_a, buf_a), (ctx_b, qp_b, cq_b, mr_b, buf_b) = ends
                listener = await ctx_b.cm_listen(7000)
                async with trio.open_nursery() as nursery:

                    async def accept() -> None:
                        await (await listener.get_request()).accept(qp_b)

                    nursery.start_soon(accept)
                    await ctx_a.cm_connect(qp_a, "127.0.0.2", 7000)
                qp_b.post_recv(
                    [RecvWR(i, (Sge(mr_b.addr + i * SLOT, SLOT, mr_b.lkey),)) for i in range(40)]
                )
                for i in range(40):
                    offset = (64 + i) * SLOT
                    buf_a[offset : offset + 8] = i.to_bytes(8, "little")
                    sge = Sge(mr_a.addr + offset, 8, mr_a.lkey)
                    qp_a.post_send(SendWR(i, Opcode.SEND, (sge,)))
                    if i == 19:
                        device = node_a.device
                        assert isinstance(device, TcpDevice)
                        await device.detach(grace)
                        await node_a.attach()
                recvs = await _take(cq_b, 40)
                assert all(wc.status is WcStatus.SUCCESS for wc in recvs)
                got = [
                    int.from_bytes(buf_b[wc.wr_id * SLOT : wc.wr_id * SLOT + 8], "little")
                    for wc in recvs
                ]
                assert got == list(range(40))
                sends = await _take(cq_a, 40)
                assert sorted(wc.wr_id for wc in sends) == list(range(40))
                assert shim_a.statistics().devices == 2
