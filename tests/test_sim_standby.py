"""The standby (emulated) device: a VM keeps a device while its VF is away (issue 4).

Fabric-level: frozen endpoints drop, the resync recovers in one round trip, the QPs
survive a vSwitch migration and are re-created under the shared port model, the VF is
always preferred. Node-level: two nodes streaming both ways through a migration with
a standby device, both modes, strategies, port models, graceful and surprise.
"""

from __future__ import annotations

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


async def standby_of(a: Vm) -> StandbyDevice:
    """Take the VF, pull it by surprise and return what the stream offers next."""
    vf = await a.devices.next_device()
    assert isinstance(vf, SimDevice) and not isinstance(vf, StandbyDevice)
    await a.fabric.detach(a, None)
    device = await a.devices.next_device()
    assert isinstance(device, StandbyDevice)
    return device


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


def _profile(tmp_path: Path) -> str:
    return small_profile(tmp_path)


@pytest.mark.parametrize("strategy", ["three-stage", "late-detach"])
async def test_vswitch_standby_qps_survive_the_migration(
    autojump_clock: trio.abc.Clock, tmp_path: Path, strategy: str
) -> None:
    with trio.fail_after(30):
        async with pair("vswitch") as (fabric, a, b):
            vf_b = await b.devices.next_device()
            await a.devices.next_device()
            vmm = VMM(fabric, _profile(tmp_path))
            async with trio.open_nursery() as nursery:
                result: list[object] = []

                async def migrate() -> None:
                    result.append(await vmm.migrate(a, "h2", strategy=strategy, grace=0))

                nursery.start_soon(migrate)
                device = await a.devices.next_device()
                assert isinstance(device, StandbyDevice)
                sa, sbb = await connect(device, vf_b)
                qpn, lid, peer_qpn = sa.qp.qp_num, device.lid, sbb.qp.qp_num
                await exchange(sa, sbb, 1)
                # Send into the pause: dropped, then resynced at the resume.
                while not a.backend.frozen:
                    await trio.sleep(0.001)
                sa.post_recv(2, 0, 64)
                sbb.send(2, 0, 64)
                sbb.post_recv(3, 128, 64)
                sa.send(3, 128, 64)
            (timeline,) = result
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
            vmm = VMM(fabric, _profile(tmp_path))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: vmm.migrate(a, "h2", strategy="late-detach", grace=0))
                old = await a.devices.next_device()
                assert isinstance(old, StandbyDevice)
                sa, _ = await connect(old, vf_b)
                new = await a.devices.next_device()
                assert isinstance(new, StandbyDevice) and new is not old
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
