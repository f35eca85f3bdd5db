"""The standby (emulated) device: a VM keeps a device while its VF is away (issue 4).

Fabric-level: frozen endpoints drop, the resync recovers in one round trip, the QPs
survive a vSwitch migration and are re-created under the shared port model, the VF is
always preferred. Node-level: two nodes streaming both ways through a migration with
a standby device, both modes, strategies, port models, graceful and surprise.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from sim_support import End, connect, small_profile

from rdsx.errors import DeviceRemoved
from transports.sim import Fabric, Vm, open_fabric
from transports.sim import standby as sb
from transports.sim.standby import StandbyDevice
from transports.sim.verbs import SimDevice
from transports.sim.vmm import VMM

LATENCY = 20e-6
MODELS = ["shared", "vswitch"]


@asynccontextmanager
async def pair(model: str, *, seed: int = 0) -> AsyncIterator[tuple[Fabric, Vm, Vm]]:
    """VM ``a`` (with a standby device) on h0 and VM ``b`` on h1; h2 is spare."""
    async with open_fabric(port_model=model, seed=seed) as fabric:
        fabric.standby_latency = LATENCY
        fabric.standby_bandwidth = 1e9
        for i in range(3):
            fabric.add_host(f"h{i}", num_vfs=2)
        a = fabric.create_vm("a", address="127.0.0.1", standby=True)
        b = fabric.create_vm("b", address="127.0.0.2")
        await fabric.attach(a, fabric.hosts["h0"])
        await fabric.attach(b, fabric.hosts["h1"])
        yield fabric, a, b


async def next_standby(vm: Vm) -> StandbyDevice:
    """The next device ``vm``'s stream offers, which must be an incarnation of its standby."""
    device = await vm.devices.next_device()
    assert isinstance(device, StandbyDevice)
    return device


async def standby_of(a: Vm) -> StandbyDevice:
    """Take the VF, pull it by surprise and return what the stream offers next."""
    vf = await a.devices.next_device()
    assert isinstance(vf, SimDevice) and not isinstance(vf, StandbyDevice)
    await a.fabric.detach(a, None)
    return await next_standby(a)


async def paused(vm: Vm) -> None:
    """Return once a migration has paused ``vm`` (its backend is frozen)."""
    while not vm.backend.frozen:
        await trio.sleep(0.001)


async def exchange(src: End, dst: End, wr_id: int, offset: int = 0) -> float:
    """``src`` sends 64 bytes to ``dst``; return when the send completed."""
    dst.post_recv(wr_id, offset, 64)
    src.send(wr_id, offset, 64)
    (wc,) = await src.completions(1)
    assert wc.status.name == "SUCCESS", wc
    (rc,) = await dst.completions(1)
    assert rc.status.name == "SUCCESS" and rc.byte_len == 64
    return trio.current_time()


@pytest.mark.parametrize("model", MODELS)
async def test_the_standby_is_offered_at_the_removal_and_costs_its_latency(
    autojump_clock: trio.abc.Clock, model: str
) -> None:
    with trio.fail_after(10):
        async with pair(model) as (fabric, a, b):
            device = await standby_of(a)
            vf_b = await b.devices.next_device()
            port = fabric.hosts["h0"].hca.port
            assert port is not None
            if model == "shared":
                assert device.lid == port.lid  # the host port's LID, the HCA's QPN space
            else:
                assert device.lid not in (port.lid, 0)
            sa, sbb = await connect(device, vf_b)
            t0 = trio.current_time()
            done = await exchange(sa, sbb, 1)
            # Out through the backend (20 us) and the ACK back in through it (20 us).
            assert 2 * LATENCY <= done - t0 < 2 * LATENCY + 10e-6
            t0 = trio.current_time()
            done = await exchange(sbb, sa, 2, 128)
            assert 2 * LATENCY <= done - t0 < 2 * LATENCY + 10e-6


@pytest.mark.parametrize("direction", ["to", "from"])
async def test_a_frozen_endpoint_drops_and_the_resync_recovers_in_one_round_trip(
    autojump_clock: trio.abc.Clock, direction: str
) -> None:
    with trio.fail_after(10):
        async with pair("vswitch") as (fabric, a, b):
            device = await standby_of(a)
            sa, sbb = await connect(device, await b.devices.next_device())
            await exchange(sa, sbb, 1)
            src, dst = (sbb, sa) if direction == "to" else (sa, sbb)
            sb.freeze(fabric, a)
            dst.post_recv(2, 0, 64)
            src.send(2, 0, 64)
            await trio.sleep(0.03)  # shorter than the 67 ms retransmission timeout
            assert not src.cq.poll() and not dst.cq.poll()
            drops = [r for r in fabric.trace if r.event == "drop" and "frozen" in r.detail]
            assert drops, "the packet to/from the paused VM must be dropped, with the reason"
            thawed = trio.current_time()
            sb.thaw(fabric, a)
            (wc,) = await src.completions(1)
            assert wc.status.name == "SUCCESS"
            (rc,) = await dst.completions(1)
            assert rc.status.name == "SUCCESS"
            # One round trip through the backend (NAK or resend, data, ACK): not a timeout.
            assert trio.current_time() - thawed < 4 * LATENCY


async def test_the_peers_retry_budget_outlasts_a_long_pause(
    autojump_clock: trio.abc.Clock,
) -> None:
    """7 retries of 67.1 ms: a peer sending into a 0.4 s pause does not give up."""
    with trio.fail_after(10):
        async with pair("vswitch") as (fabric, a, b):
            device = await standby_of(a)
            sa, sbb = await connect(device, await b.devices.next_device())
            sb.freeze(fabric, a)
            sa.post_recv(1, 0, 64)
            sbb.send(1, 0, 64)
            await trio.sleep(0.4)
            sb.thaw(fabric, a)
            (wc,) = await sbb.completions(1)
            assert wc.status.name == "SUCCESS"
            assert sbb.qp.retransmits >= 5  # the peer did time out, and kept trying


@pytest.mark.parametrize("strategy", ["three-stage", "late-detach"])
@pytest.mark.parametrize("profile", ["seed-cx2-xen", "modern"])
async def test_vswitch_standby_qps_survive_the_migration(
    autojump_clock: trio.abc.Clock, strategy: str, profile: str
) -> None:
    """Also: the peer's retry budget (timeout 67.1 ms x (retry_cnt 7 + 1)) outlasts either
    profile's pause (seed 50 ms, modern 290 ms): its send into the pause succeeds."""
    with trio.fail_after(120):
        async with pair("vswitch") as (fabric, a, b):
            vf_b = await b.devices.next_device()
            await a.devices.next_device()
            vmm = VMM(fabric, profile)
            async with trio.open_nursery() as nursery:
                result: list[object] = []

                async def migrate() -> None:
                    result.append(await vmm.migrate(a, "h2", strategy=strategy, grace=0))

                nursery.start_soon(migrate)
                device = await next_standby(a)
                sa, sbb = await connect(device, vf_b)
                qpn, lid, peer_qpn = sa.qp.qp_num, device.lid, sbb.qp.qp_num
                await exchange(sa, sbb, 1)
                # Send into the pause: dropped, then resynced at the resume.
                await paused(a)
                sa.post_recv(2, 0, 64)
                sbb.send(2, 0, 64)
                sbb.post_recv(3, 128, 64)
                sa.send(3, 128, 64)
            (timeline,) = result
            assert timeline.pause < (sbb.qp.retry_cnt + 1) * sbb.qp.timeout  # type: ignore[attr-defined]
            assert a.host is fabric.hosts["h2"]
            assert not device.removed and device.function.host is fabric.hosts["h2"]
            assert (sa.qp.qp_num, device.lid, sbb.qp.qp_num) == (qpn, lid, peer_qpn)
            assert sorted(wc.wr_id for wc in await sa.completions(2)) == [2, 3]
            assert sorted(wc.wr_id for wc in await sbb.completions(2)) == [2, 3]
            await exchange(sa, sbb, 4, 256)
            stages = {s.name: s for s in timeline.stages}  # type: ignore[attr-defined]
            assert not stages["attach"].paused  # the standby carried the guest: no paused attach
            assert stages["restore"].smps >= 1  # the standby's LID followed the VM
            (interval,) = timeline.standby  # type: ignore[attr-defined]
            assert interval[0] <= stages["stop-and-copy"].start
            assert interval[1] == timeline.device_ready  # type: ignore[attr-defined]
            # The new VF retires the standby: a graceful notice, removed once released.
            assert device.removal_pending
            sa.ctx.close()
            assert device.removed
            assert isinstance(await a.devices.next_device(), SimDevice)


async def test_shared_standby_is_recreated_on_the_destination(
    autojump_clock: trio.abc.Clock, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        async with pair("shared") as (fabric, a, b):
            vf_b = await b.devices.next_device()
            await a.devices.next_device()
            vmm = VMM(fabric, small_profile(tmp_path))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: vmm.migrate(a, "h2", strategy="late-detach", grace=0))
                old = await next_standby(a)
                sa, _ = await connect(old, vf_b)
                new = await next_standby(a)
                assert new is not old
                assert old.removed and new.function.host is fabric.hosts["h2"]
                port = fabric.hosts["h2"].hca.port
                assert port is not None and new.lid == port.lid
                with pytest.raises(DeviceRemoved):
                    sa.qp.post_send([])
            (first, second) = vmm.history[-1].standby
            assert first[1] == second[0]  # the old one went at the resume, the new one came


async def test_the_vf_is_preferred_to_a_standby_never_taken(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(10):
        async with pair("vswitch") as (fabric, a, _):
            await a.devices.next_device()
            await fabric.detach(a, None)
            standby = a.standby_device
            assert standby is not None
            vf = await fabric.attach(a, fabric.hosts["h2"])
            assert standby.removed  # retired at once: nobody had opened it
            assert await a.devices.next_device() is vf


async def test_a_standby_not_released_is_pulled_at_the_deadline(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(10):
        async with pair("vswitch") as (fabric, a, _):
            fabric.standby_grace = 0.25
            device = await standby_of(a)
            ctx = await device.open()
            t0 = trio.current_time()
            await fabric.attach(a, fabric.hosts["h2"])
            event = await ctx.get_async_event()
            assert event.type.name == "DEVICE_REMOVAL" and event.deadline == t0 + 0.25
            await trio.sleep(0.2)
            assert not device.removed
            await trio.sleep(0.1)
            assert device.removed and a.standby_device is None
            ctx.close()


# ---------------------------------------------------------------------- node level

#: Dense pacing while the standby carries the traffic (one message per 0.1 ms each way,
#: so a gap is known to 0.1 ms), sparse otherwise (1 ms, far below the 50 ms pause). While
#: the VM is paused sparse is enough: what was queued goes out at the resume either way.
DENSE, SPARSE = 1e-4, 1e-3


def _fast_profile(tmp_path: Path) -> str:
    """The seed profile with a 1 MiB guest and short hot-plug figures, so the run stays
    short; the pause (stop-and-copy + restore) and every QP/SA/standby figure are the seed's."""
    import json

    path = Path(small_profile(tmp_path))
    data = json.loads(path.read_text())
    for key, value in (
        ("vm_memory", 2**20),
        ("hotplug_detach", 0.01),
        ("hotplug_attach", 0.01),
        ("sm_reaction", 0.005),
    ):
        data["figures"][key]["value"] = value
    path.write_text(json.dumps(data))
    return str(path)


async def _stream(
    model: str,
    mode: str,
    strategy: str,
    grace: float,
    tmp_path: Path,
    *,
    standby_grace: float = 1.0,
    hold: bool = False,
) -> tuple[dict[str, list[tuple[float, int]]], object, list[object], list[str]]:
    """Nodes .1 (VM a, standby) and .2 stream numbered datagrams both ways while a migrates.

    Returns what each receiving socket got, (time, number), the timeline, the nodes'
    statistics and how the standby incarnations were removed (from the trace). With
    ``hold``, another consumer opens the standby and never closes it.
    """
    from rdsx.config import NodeConfig
    from rdsx.node import open_node
    from transports.sim.profile import load_profile

    profile = load_profile(_fast_profile(tmp_path))
    got: dict[str, list[tuple[float, int]]] = {"a": [], "b": []}
    async with pair(model, seed=3) as (fabric, a, b):
        fabric.sa_query_time, fabric.qp_setup_time = profile["sa_query"], profile["qp_create"]
        fabric.standby_latency = profile["standby_latency"]
        fabric.standby_bandwidth = profile["standby_bandwidth"]
        fabric.standby_qp_create = profile["standby_qp_create"]
        fabric.standby_grace = standby_grace
        async with (
            open_node(a.address, a.devices, mode=mode, config=NodeConfig(seed=1)) as na,  # type: ignore[arg-type]
            open_node(b.address, b.devices, mode=mode, config=NodeConfig(seed=2)) as nb,  # type: ignore[arg-type]
        ):
            sa, sbk = na.socket(), nb.socket()
            sa.bind(11)
            sbk.bind(22)
            timeline: list[object] = []
            sent = {"a": 0, "b": 0}
            stop = trio.Event()

            async def send(sock: object, dest: tuple[str, int], key: str) -> None:
                k = 0
                while not stop.is_set():
                    await sock.sendto(b"%d" % k, dest)  # type: ignore[attr-defined]
                    k += 1
                    sent[key] = k
                    await trio.sleep(
                        SPARSE if a.standby_device is None or a.backend.frozen else DENSE
                    )

            async def recv(sock: object, key: str) -> None:
                while True:
                    data, _ = await sock.recvfrom()  # type: ignore[attr-defined]
                    got[key].append((trio.current_time(), int(data)))

            async def stubborn() -> None:
                while a.standby_device is None:
                    await trio.sleep(0.001)
                await a.standby_device.open()  # and never closed

            async with trio.open_nursery() as nursery:
                if hold:
                    nursery.start_soon(stubborn)
                nursery.start_soon(recv, sa, "a")
                nursery.start_soon(recv, sbk, "b")
                nursery.start_soon(send, sa, (b.address, 22), "b")
                nursery.start_soon(send, sbk, (a.address, 11), "a")
                await trio.sleep(0.005)
                vmm = VMM(fabric, profile)
                timeline.append(await vmm.migrate(a, "h2", strategy=strategy, grace=grace))
                # Past the failback to the new VF (graceful or forced at the deadline).
                while a.standby_device is not None:
                    await trio.sleep(0.001)
                await trio.sleep(0.005)
                stop.set()
                with trio.fail_after(5):
                    while len(got["a"]) < sent["a"] or len(got["b"]) < sent["b"]:
                        await trio.sleep(0.001)
                nursery.cancel_scope.cancel()
            removals = [r.detail for r in fabric.trace if r.event == "standby_removed"]
            return got, timeline[0], [na.statistics(), nb.statistics()], removals


def _exactly_once_in_order(got: dict[str, list[tuple[float, int]]]) -> None:
    for key in ("a", "b"):
        numbers = [n for _, n in got[key]]
        assert len(numbers) > 100
        assert numbers == list(range(len(numbers))), f"{key}: lost, duplicated or reordered"


def _longest_gap(arrivals: list[tuple[float, int]]) -> float:
    times = [t for t, _ in arrivals]
    return max(b - a for a, b in itertools.pairwise(times))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("strategy", ["three-stage", "late-detach"])
@pytest.mark.parametrize("mode", ["transparent", "reconnect"])
@pytest.mark.parametrize("grace", [1.0, 0], ids=["graceful", "surprise"])
async def test_nodes_stream_through_a_migration_on_the_standby(
    autojump_clock: trio.abc.Clock,
    tmp_path: Path,
    model: str,
    strategy: str,
    mode: str,
    grace: float,
) -> None:
    with trio.fail_after(60):
        got, timeline, stats, removals = await _stream(model, mode, strategy, grace, tmp_path)
    _exactly_once_in_order(got)
    assert removals and removals[-1].endswith("retired")  # the node let it go in time
    pause = timeline.pause  # type: ignore[attr-defined]
    assert 0.04 < pause < 0.06  # stop-and-copy + restore only
    budget = 1e-3 if model == "vswitch" else 5e-3
    gaps = {key: _longest_gap(got[key]) for key in ("a", "b")}
    if mode == "transparent":
        assert all(s.conn_reset == 0 for s in stats)  # type: ignore[attr-defined]
        assert max(gaps.values()) < pause + budget, gaps
    else:
        assert any(s.conn_reset >= 1 for s in stats)  # type: ignore[attr-defined]


@pytest.mark.parametrize("mode", ["transparent", "reconnect"])
async def test_a_standby_kept_past_its_deadline_is_pulled_and_nothing_is_lost(
    autojump_clock: trio.abc.Clock, tmp_path: Path, mode: str
) -> None:
    """Someone else keeps a context of the standby open past its 10 ms of grace: it is
    pulled at the deadline, and every message still arrives once."""
    with trio.fail_after(60):
        got, _, stats, removals = await _stream(
            "vswitch", mode, "late-detach", 1.0, tmp_path, standby_grace=0.01, hold=True
        )
    _exactly_once_in_order(got)
    assert removals == ["a/standby1: forced at the deadline"]
    if mode == "transparent":
        assert all(s.conn_reset == 0 for s in stats)  # type: ignore[attr-defined]


async def test_rdsx_stress_standby_option_gives_the_active_vm_a_standby(
    autojump_clock: trio.abc.Clock,
) -> None:
    from bench.options import parse_args
    from transports.sim.transport import SimTransport

    assert parse_args(["--standby"]).standby and not parse_args([]).standby
    with pytest.raises(SystemExit):
        parse_args(["--standby", "--transport", "tcp", "-s", "127.0.0.2", "-T", "1"])
    async with SimTransport().open_network(profile="seed-cx2-xen") as net:
        await net.add_node("127.0.0.1", standby=True)
        await net.add_node("127.0.0.2")
        a, b = net.fabric.vm_at("127.0.0.1"), net.fabric.vm_at("127.0.0.2")
        assert a is not None and a.standby and b is not None and not b.standby
        assert net.fabric.standby_latency == 20e-6 and net.fabric.standby_qp_create == 50e-6


async def test_a_new_removal_while_the_standby_still_retires_offers_a_fresh_one(
    autojump_clock: trio.abc.Clock,
) -> None:
    with trio.fail_after(10):
        async with pair("vswitch") as (fabric, a, _):
            first = await standby_of(a)
            lid = first.lid
            await first.open()  # held: it keeps retiring after the VF comes back
            await fabric.attach(a, fabric.hosts["h2"])
            assert first.removal_pending and not first.removed
            vf = await a.devices.next_device()
            await fabric.detach(a, None)
            second = await next_standby(a)
            assert first.removed and second is not first
            assert second.lid == lid  # vSwitch: the VM's own LID, assigned once
            assert vf.removed and a.standby_device is second


@pytest.mark.parametrize("model", MODELS)
async def test_a_destination_crash_in_the_restore_thaws_the_standby_at_the_source(
    autojump_clock: trio.abc.Clock, tmp_path: Path, model: str
) -> None:
    from rdsx.errors import HostCrashed

    with trio.fail_after(30):
        async with pair(model) as (fabric, a, b):
            vf_b = await b.devices.next_device()
            await a.devices.next_device()
            vmm = VMM(fabric, small_profile(tmp_path))
            dest = fabric.hosts["h2"]
            failed: list[HostCrashed] = []

            async def migrate() -> None:
                try:
                    await vmm.migrate(a, dest, strategy="late-detach", grace=0)
                except HostCrashed as exc:
                    failed.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(migrate)
                device = await next_standby(a)
                sa, sbb = await connect(device, vf_b)
                await paused(a)
                # Past the stop-and-copy (20 ms + the last pages), inside the 30 ms restore.
                await trio.sleep(0.035)
                dest.crash()
            (exc,) = failed
            assert not exc.vm_lost and a.host is fabric.hosts["h0"]
            assert not a.backend.frozen and not device.removed
            assert device.function.host is fabric.hosts["h0"]
            await exchange(sa, sbb, 1)


async def test_a_vm_on_its_standby_dies_with_its_host(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(10):
        async with pair("vswitch") as (fabric, a, _):
            device = await standby_of(a)
            fabric.hosts["h1"].crash()  # another host: nothing happens to a
            assert not a.crashed and not device.removed
            fabric.hosts["h0"].crash()
            assert a.crashed and device.removed and a.standby_device is None
