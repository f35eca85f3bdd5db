"""Shared scaffolding of the shim tests: two shimmed VMs on a sim fabric, one RC link."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import attrs
import trio

from rdsx.shim import ShimConfig, TransparentDeviceSource
from rdsx.verbs import (
    CQ,
    MR,
    QP,
    Access,
    CmId,
    Context,
    Opcode,
    RecvWR,
    SendWR,
    Sge,
    WcStatus,
    WorkCompletion,
)
from transports.sim import Fabric, Host, Vm, open_fabric

PORT = 7000
SLOT = 64
SLOTS = 64
ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ


@attrs.define(eq=False)
class End:
    """One node's side of the link: shim, context, MR, CQs, QP, CM id."""

    vm: Vm
    shim: TransparentDeviceSource
    ctx: Context
    mr: MR
    buf: bytearray
    scq: CQ
    rcq: CQ
    qp: QP
    cm: CmId | None = None
    sent: int = 0
    next_recv: int = 0

    def post_recvs(self, count: int) -> None:
        """Post ``count`` receive slots (wr_id = slot number)."""
        wrs = []
        for _ in range(count):
            slot = self.next_recv % SLOTS
            sge = Sge(self.mr.addr + slot * SLOT, SLOT, self.mr.lkey)
            wrs.append(RecvWR(self.next_recv, (sge,)))
            self.next_recv += 1
        self.qp.post_recv(wrs)

    def send(self, payload: bytes, *, opcode: Opcode = Opcode.SEND) -> int:
        """Send ``payload`` from the second half of the buffer; return its wr_id."""
        wr_id = self.sent
        slot = SLOTS + wr_id % SLOTS
        offset = slot * SLOT
        self.buf[offset : offset + len(payload)] = payload
        imm = wr_id if opcode is Opcode.SEND_WITH_IMM else None
        self.qp.post_send(
            SendWR(wr_id, opcode, (Sge(self.mr.addr + offset, len(payload), self.mr.lkey),), imm)
        )
        self.sent += 1
        return wr_id

    def received(self, wc: WorkCompletion) -> bytes:
        """The payload of a receive completion."""
        slot = wc.wr_id % SLOTS
        return bytes(self.buf[slot * SLOT : slot * SLOT + wc.byte_len])

    def rdma_write(self, wr_id: int, payload: bytes, remote_addr: int, rkey: int) -> SendWR:
        """Stage ``payload`` at the start of the buffer; the RDMA WRITE that sends it there."""
        self.buf[0 : len(payload)] = payload
        sge = Sge(self.mr.addr, len(payload), self.mr.lkey)
        return SendWR(wr_id, Opcode.RDMA_WRITE, (sge,), remote_addr=remote_addr, rkey=rkey)

    def rdma_read(
        self, wr_id: int, offset: int, length: int, remote_addr: int, rkey: int
    ) -> SendWR:
        """The RDMA READ of ``length`` bytes at ``remote_addr`` into the buffer at ``offset``."""
        sge = Sge(self.mr.addr + offset, length, self.mr.lkey)
        return SendWR(wr_id, Opcode.RDMA_READ, (sge,), remote_addr=remote_addr, rkey=rkey)


@attrs.define(eq=False)
class World:
    """A fabric with hosts A, B, C; VM a on A and VM b on B, both shimmed."""

    fabric: Fabric
    hosts: dict[str, Host]
    a: End
    b: End


async def _open_end(vm: Vm, shim: TransparentDeviceSource) -> End:
    device = await shim.next_device()
    ctx = await device.open()
    pd = ctx.alloc_pd()
    buf = bytearray(SLOT * SLOTS * 2)
    mr = pd.reg_mr(buf, ACCESS)
    scq, rcq = ctx.create_cq(), ctx.create_cq()
    qp = pd.create_qp(scq, rcq)
    return End(vm, shim, ctx, mr, buf, scq, rcq, qp)


@contextlib.asynccontextmanager
async def open_world(
    *, port_model: str = "vswitch", seed: int = 0, config: ShimConfig | None = None, recvs: int = 32
) -> AsyncIterator[World]:
    """Two shimmed VMs connected through the (virtual) CM, receives posted."""
    config = config or ShimConfig(resume_timeout=5.0)
    async with open_fabric(port_model=port_model, seed=seed) as fabric:
        hosts = {name: fabric.add_host(f"host{name}", num_vfs=4) for name in "ABC"}
        vm_a = fabric.create_vm("vmA", address="127.0.0.1")
        vm_b = fabric.create_vm("vmB", address="127.0.0.2")
        await fabric.attach(vm_a, hosts["A"])
        await fabric.attach(vm_b, hosts["B"])
        async with (
            TransparentDeviceSource(vm_a.devices, config) as shim_a,
            TransparentDeviceSource(vm_b.devices, config) as shim_b,
        ):
            a = await _open_end(vm_a, shim_a)
            b = await _open_end(vm_b, shim_b)
            a.cm, b.cm = await cm_link(a, a.qp, b, b.qp, PORT, b"a", b"b")
            a.post_recvs(recvs)
            b.post_recvs(recvs)
            try:
                yield World(fabric, hosts, a, b)
            finally:
                for end in (a, b):
                    end.ctx.close()


async def cm_link(
    a: End, qp_a: QP, b: End, qp_b: QP, port: int, data_a: bytes = b"", data_b: bytes = b""
) -> tuple[CmId, CmId]:
    """Connect A's ``qp_a`` to B's ``qp_b`` through the CM: B listens on ``port`` (closed
    again once connected) and accepts with ``data_b``; A connects with ``data_a``.

    Returns:
        A's and B's CM ids.
    """
    listener = await b.ctx.cm_listen(port)
    accepted: list[CmId] = []
    async with trio.open_nursery() as nursery:

        async def serve() -> None:
            request = await listener.get_request()
            accepted.append(await request.accept(qp_b, data_b))

        nursery.start_soon(serve)
        active = await a.ctx.cm_connect(qp_a, b.vm.address, port, data_a)
    listener.close()
    return active, accepted[0]


async def take(cq: CQ, count: int) -> list[WorkCompletion]:
    """Exactly ``count`` completions from ``cq`` (waiting as long as needed)."""
    out: list[WorkCompletion] = []
    while len(out) < count:
        out.extend(await cq.wait(count - len(out)))
    return out


async def migrate(world: World, vm: Vm, host: str, grace: float | None = 1.0) -> None:
    """Detach ``vm``'s VF (gracefully or by surprise) and attach one on ``host``."""
    await world.fabric.detach(vm, grace)
    await world.fabric.attach(vm, world.hosts[host])


def ok(wcs: list[WorkCompletion]) -> bool:
    """Every completion succeeded."""
    return all(wc.status is WcStatus.SUCCESS for wc in wcs)


async def rdma_write_with_old_rkey(world: World, rkey: int, addr: int, payload: bytes) -> None:
    """B RDMA-writes ``payload`` into A's MR at ``addr + 4096``, named by A's pre-migration
    (virtual) ``rkey`` and ``addr``; the write succeeds and lands."""
    a, b = world.a, world.b
    b.qp.post_send(b.rdma_write(99, payload, addr + 4096, rkey))
    (wc,) = await take(b.scq, 1)
    assert wc.status is WcStatus.SUCCESS, wc
    assert bytes(a.buf[4096 : 4096 + len(payload)]) == payload
