"""The transparent shim's own per-migration figures, at the verbs level (sim, virtual time).

Two shimmed VMs exchange paced SENDs both ways over one CM-connected RC QP
while the sim VMM migrates one of them; for every profile × strategy × removal
kind it prints what :meth:`rdsx.shim.TransparentDeviceSource.statistics`
recorded (removal notice → physical release, new device → every peer resumed,
sends held / resent / found already delivered) and the longest gap between
deliveries at each receiver, with the VM's own stop-and-copy pause beside it::

    .venv/bin/python -m bench.shim_migration [--rate 2000] [--seed 0] [--clock real]
        [--profile seed-cx2-xen|modern ...] [--strategy three-stage|late-detach ...]

Every run checks that each side received exactly what the other sent, in order.
The profile's ``qp_create`` and ``sa_query`` are spent as ``open_network(profile=...)``
spends them (see ``Fabric.qp_setup_time``), so ``resume`` is the shim's reconnect with
its QP setups; ``presetup`` says whether the peer accepted with the QP it made ahead.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence

import trio
import trio.testing

from rdsx.shim import ShimConfig, TransparentDeviceSource
from rdsx.verbs import CQ, QP, Access, Context, Opcode, RecvWR, SendWR, Sge, WcStatus
from transports.sim import open_fabric
from transports.sim.profile import load_profile
from transports.sim.vmm import VMM

SLOT = 64
RING = 256
PORT = 7000


class _Side:
    def __init__(self, ctx: Context, qp: QP, scq: CQ, rcq: CQ, lkey: int, addr: int) -> None:
        self.ctx, self.qp, self.scq, self.rcq = ctx, qp, scq, rcq
        self.lkey, self.addr = lkey, addr
        self.buf = bytearray()
        self.got: list[int] = []
        self.times: list[float] = []
        self.sent = 0

    def recv_slot(self, n: int) -> RecvWR:
        return RecvWR(n, (Sge(self.addr + (n % RING) * SLOT, SLOT, self.lkey),))


async def _open(shim: TransparentDeviceSource) -> _Side:
    device = await shim.next_device()
    ctx = await device.open()
    pd = ctx.alloc_pd()
    buf = bytearray(SLOT * RING * 2)
    mr = pd.reg_mr(buf, Access.LOCAL_WRITE)
    scq, rcq = ctx.create_cq(), ctx.create_cq()
    side = _Side(ctx, pd.create_qp(scq, rcq), scq, rcq, mr.lkey, mr.addr)
    side.buf = buf
    return side


async def _pump(side: _Side, rate: float, stop: trio.Event) -> None:
    """Send a counter every 1/rate s; keep at most RING/2 unacknowledged."""
    outstanding = 0
    while not stop.is_set():
        for wc in side.scq.poll(64):
            assert wc.status is WcStatus.SUCCESS, wc
            outstanding -= 1
        if outstanding < RING // 2:
            offset = (RING + side.sent % RING) * SLOT
            side.buf[offset : offset + 8] = side.sent.to_bytes(8, "little")
            sge = Sge(side.addr + offset, 8, side.lkey)
            side.qp.post_send(SendWR(side.sent, Opcode.SEND, (sge,)))
            side.sent += 1
            outstanding += 1
        await trio.sleep(1 / rate)


async def _drain(side: _Side) -> None:
    posted = RING
    while True:
        for wc in await side.rcq.wait(64):
            assert wc.status is WcStatus.SUCCESS, wc
            offset = (wc.wr_id % RING) * SLOT
            side.got.append(int.from_bytes(side.buf[offset : offset + 8], "little"))
            side.times.append(trio.current_time())
            side.qp.post_recv(side.recv_slot(posted))
            posted += 1


def _gap(times: Sequence[float]) -> float:
    return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


async def run_one(
    profile: str, strategy: str, grace: float | None, rate: float, seed: int
) -> dict[str, object]:
    """One migration under load; returns the row's figures."""
    config = ShimConfig(resume_timeout=30.0)
    async with open_fabric(seed=seed) as fabric:
        figures = load_profile(profile)
        fabric.sa_query_time, fabric.qp_setup_time = figures["sa_query"], figures["qp_create"]
        hosts = [fabric.add_host(f"host{i}", num_vfs=2) for i in range(3)]
        vm_a = fabric.create_vm("vmA", address="127.0.0.1")
        vm_b = fabric.create_vm("vmB", address="127.0.0.2")
        await fabric.attach(vm_a, hosts[0])
        await fabric.attach(vm_b, hosts[1])
        async with (
            TransparentDeviceSource(vm_a.devices, config) as shim_a,
            TransparentDeviceSource(vm_b.devices, config) as shim_b,
        ):
            a, b = await _open(shim_a), await _open(shim_b)
            listener = await b.ctx.cm_listen(PORT)
            async with trio.open_nursery() as nursery:

                async def accept() -> None:
                    request = await listener.get_request()
                    await request.accept(b.qp)

                nursery.start_soon(accept)
                await a.ctx.cm_connect(a.qp, vm_b.address, PORT)
            for side in (a, b):
                side.qp.post_recv([side.recv_slot(n) for n in range(RING)])
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                for side in (a, b):
                    nursery.start_soon(_pump, side, rate, stop)
                    nursery.start_soon(_drain, side)
                await trio.sleep(0.5)
                timeline = await VMM(fabric, profile).migrate(
                    vm_a, hosts[2], strategy=strategy, grace=grace
                )
                await trio.sleep(1.0)
                stop.set()
                await trio.sleep(0.5)
                nursery.cancel_scope.cancel()
            exact = a.got == list(range(b.sent)) and b.got == list(range(a.sent))
            record = shim_a.statistics().migrations[0]
            peer = shim_b.statistics()
            pause = timeline.pause
            return {
                "release": record.release_seconds,
                "resume": record.resume_seconds,
                "held": record.held + peer.held,
                "resent": record.resent + peer.resent,
                "dups": record.duplicates_dropped + peer.duplicates_dropped,
                "gap": max(_gap(a.times), _gap(b.times)),
                "pause": pause,
                "exact": exact,
                "presetup": peer.presetups_used > 0,
            }


def _ms(value: object) -> str:
    return "-" if value is None else f"{float(value) * 1000:.2f}"  # type: ignore[arg-type]


async def _main(rate: float, seed: int, profiles: Sequence[str], strategies: Sequence[str]) -> None:
    print(
        f"{'profile':<13} {'strategy':<12} {'removal':<9} {'release':>8} {'resume':>8} "
        f"{'gap':>9} {'pause':>7} {'held':>5} {'resent':>6} {'dups':>5}  exact  presetup"
    )
    for profile in profiles:
        for strategy in strategies:
            for grace in (2.0, None):
                row = await run_one(profile, strategy, grace, rate, seed)
                kind = "graceful" if grace else "surprise"
                print(
                    f"{profile:<13} {strategy:<12} {kind:<9} {_ms(row['release']):>8} "
                    f"{_ms(row['resume']):>8} {_ms(row['gap']):>9} {_ms(row['pause']):>7} "
                    f"{row['held']:>5} {row['resent']:>6} {row['dups']:>5}  {row['exact']!s:<5}  "
                    f"{row['presetup']}"
                )
    print(
        f"ms; load {rate:g} SENDs/s each way (gap resolution {1000 / rate:.2f} ms); "
        "release = removal notice -> physical release; resume = new device -> every peer resumed"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=("virtual", "real"), default="virtual")
    parser.add_argument("--profile", action="append", choices=("seed-cx2-xen", "modern"))
    parser.add_argument("--strategy", action="append", choices=("three-stage", "late-detach"))
    args = parser.parse_args(argv)
    profiles = args.profile or ["seed-cx2-xen", "modern"]
    strategies = args.strategy or ["three-stage", "late-detach"]
    clock = trio.testing.MockClock(autojump_threshold=0) if args.clock == "virtual" else None
    trio.run(_main, args.rate, args.seed, profiles, strategies, clock=clock)


if __name__ == "__main__":
    main(sys.argv[1:])
