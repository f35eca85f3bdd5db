"""Helpers shared by the sim tests: open two ends and connect their QPs through the CM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import trio

from rdsx.verbs import Access, CmId, Context, Device, QpCap, RecvWR, SendWR, Sge, WorkCompletion
from transports.sim import Fabric
from transports.sim.timeline import Stage, Strategy, Timeline

ALL_ACCESS = Access.LOCAL_WRITE | Access.REMOTE_WRITE | Access.REMOTE_READ


@attrs.define
class End:
    """One side of a connection: context, PD, one CQ for both queues, QP, one MR."""

    ctx: Context
    pd: Any
    cq: Any
    qp: Any
    mr: Any
    buf: bytearray
    cm_id: CmId | None = None

    def sge(self, offset: int, length: int) -> Sge:
        return Sge(self.mr.addr + offset, length, self.mr.lkey)

    def post_recv(self, wr_id: int, offset: int = 0, length: int = 4096) -> None:
        self.qp.post_recv(RecvWR(wr_id, (self.sge(offset, length),)))

    def send(self, wr_id: int, offset: int, length: int, **kw: Any) -> None:
        from rdsx.verbs import Opcode

        opcode = kw.pop("opcode", Opcode.SEND)
        self.qp.post_send(SendWR(wr_id, opcode, (self.sge(offset, length),), **kw))

    async def completions(self, count: int) -> list[WorkCompletion]:
        out: list[WorkCompletion] = []
        while len(out) < count:
            out.extend(await self.cq.wait())
        return out


async def open_end(device: Device, size: int = 1 << 16, cap: QpCap | None = None) -> End:
    ctx = await device.open()
    pd = ctx.alloc_pd()
    cq = ctx.create_cq()
    qp = pd.create_qp(cq, cq, cap)
    buf = bytearray(size)
    mr = pd.reg_mr(buf, ALL_ACCESS)
    return End(ctx, pd, cq, qp, mr, buf)


async def vf_pair(fabric: Fabric, size: int = 1 << 16) -> tuple[End, End]:
    """Hosts ``a`` and ``b`` with one VF each, VMs ``va`` (127.0.0.1) and ``vb`` (127.0.0.2)
    on them, and an end of ``size`` bytes on each VF, connected (``va``'s end active)."""
    a, b = fabric.add_host("a", num_vfs=1), fabric.add_host("b", num_vfs=1)
    da = await fabric.attach(fabric.create_vm("va", address="127.0.0.1"), a)
    db = await fabric.attach(fabric.create_vm("vb", address="127.0.0.2"), b)
    return await connect(da, db, size=size)


async def connect(
    dev_a: Device, dev_b: Device, port: int = 7000, cap: QpCap | None = None, size: int = 1 << 16
) -> tuple[End, End]:
    """A (active, on dev_a) and B (passive, on dev_b), connected through the CM."""
    a = await open_end(dev_a, size, cap)
    b = await open_end(dev_b, size, cap)
    listener = await b.ctx.cm_listen(port)

    async def passive() -> None:
        request = await listener.get_request()
        b.cm_id = await request.accept(b.qp, b"welcome")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(passive)
        a.cm_id = await a.ctx.cm_connect(a.qp, dev_b.address, port, b"hello")
    listener.close()
    return a, b


def small_profile(tmp_path: Path) -> str:
    """The seed timing profile with an 8 MiB VM, written under ``tmp_path``; returns its path.

    A short pre-copy keeps migration runs fast; every other figure is the seed's.
    """
    source = Path(__file__).parents[1] / "transports/sim/profiles/seed-cx2-xen.json"
    data = json.loads(source.read_text())
    data["name"] = "small"
    data["figures"]["vm_memory"]["value"] = 8 * 2**20
    path = tmp_path / "small.json"
    path.write_text(json.dumps(data))
    return str(path)


def fast_profile(memory: int = 2**20) -> Any:
    """The seed timing profile with a ``memory``-byte guest and short hot-plug figures, as
    a loaded :class:`~transports.sim.profile.TimingProfile` (no file needed).

    The pause (stop-and-copy + restore) and every QP/SA/standby figure are the seed's; the
    pre-copy and the hot-plug stages are short, so a migration under load stays cheap.
    """
    from transports.sim.profile import TimingProfile

    source = Path(__file__).parents[1] / "transports/sim/profiles/seed-cx2-xen.json"
    data = json.loads(source.read_text())
    data["name"] = "fast"
    for key, value in (
        ("vm_memory", memory),
        ("hotplug_detach", 0.01),
        ("hotplug_attach", 0.01),
        ("sm_reaction", 0.005),
    ):
        data["figures"][key]["value"] = value
    return TimingProfile.from_dict(data)


def late_detach_timeline(*, surprise: bool = False) -> Timeline:
    """A hand-made late-detach Timeline for the downtime and table tests.

    Notice at 10 s, the VF released at 10.2 (at 10 for a surprise removal), the guest
    paused 10.7..12.5 (the attach at its end), the new VF ready at 12.6.
    """
    stages = (
        Stage(name="pre-copy", round=1, start=5.0, end=10.0),
        Stage(name="detach", start=10.0, end=10.0 if surprise else 10.7),
        Stage(name="stop-and-copy", start=10.7, end=10.9),
        Stage(name="restore", start=10.9, end=11.0),
        Stage(name="attach", start=11.0, end=12.5, paused=True),
        Stage(name="sm-update", start=12.5, end=12.7),
    )
    return Timeline(
        vm="vm",
        source="a",
        destination="b",
        strategy=Strategy.LATE_DETACH,
        port_model="vswitch",
        profile="p",
        stages=stages,
        start=5.0,
        end=12.7,
        device_ready=12.6,
        released=10.0 if surprise else 10.2,
        surprise=surprise,
    )
