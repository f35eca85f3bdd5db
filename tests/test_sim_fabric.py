"""Port models, the subnet manager's accounting, the transport and the harness."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from sim_support import connect

from rdsx.errors import AddressInUse, InvalidArgument, ResourceExhausted
from rdsx.registry import load_transport
from rdsx.verbs import PortState
from transports.sim import PortModel, SimTransport, open_fabric
from transports.sim.fabric import QP_CREATE_SHARE
from transports.sim.harness import SimHarness
from transports.sim.sm import UNICAST_LIDS, SubnetManager


async def test_shared_model_vfs_share_lid_and_qpn_space(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fabric(port_model="shared") as fabric:
        host = fabric.add_host("h", num_vfs=2)
        vm1 = fabric.create_vm("v1", address="127.0.0.1")
        vm2 = fabric.create_vm("v2", address="127.0.0.2")
        d1 = await fabric.attach(vm1, host)
        d2 = await fabric.attach(vm2, host)
        assert d1.lid == d2.lid == host.hca.port.lid  # type: ignore[union-attr]
        assert d1.guid != d2.guid
        c1, c2 = await d1.open(), await d2.open()
        qpns = set()
        for ctx in (c1, c2, c1, c2):
            cq = ctx.create_cq()
            qpns.add(ctx.alloc_pd().create_qp(cq, cq).qp_num)
        assert len(qpns) == 4  # one HCA-wide QPN space
        port = c1.query_port()
        assert (port.lid, port.address, port.state) == (d1.lid, str(d1.lid), PortState.ACTIVE)


async def test_vswitch_model_own_lid_and_qpn_space(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric(port_model="vswitch") as fabric:
        host = fabric.add_host("h", num_vfs=2)
        d1 = await fabric.attach(fabric.create_vm("v1", address="127.0.0.1"), host)
        d2 = await fabric.attach(fabric.create_vm("v2", address="127.0.0.2"), host)
        assert len({d1.lid, d2.lid, host.hca.port.lid}) == 3  # type: ignore[union-attr]
        c1, c2 = await d1.open(), await d2.open()
        cq1, cq2 = c1.create_cq(), c2.create_cq()
        q1 = c1.alloc_pd().create_qp(cq1, cq1)
        q2 = c2.alloc_pd().create_qp(cq2, cq2)
        assert q1.qp_num == q2.qp_num  # each VF has its own QPN space


async def test_new_vf_gets_new_vguid_and_shared_destination_lid(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with open_fabric(port_model="shared") as fabric:
        a, b = fabric.add_host("a", num_vfs=1), fabric.add_host("b", num_vfs=1)
        vm = fabric.create_vm("v", address="127.0.0.1")
        first = await fabric.attach(vm, a)
        await fabric.detach(vm, grace=1.0)
        second = await fabric.attach(vm, b)
        assert second.guid != first.guid
        assert second.lid == b.hca.port.lid != a.hca.port.lid  # type: ignore[union-attr]
        assert vm.host is b and vm.device is second


async def test_vswitch_lid_can_follow_the_vm(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric(port_model="vswitch", switches=3) as fabric:
        a, b = fabric.add_host("a", num_vfs=1), fabric.add_host("b", num_vfs=1)
        assert a.switch != b.switch
        vm = fabric.create_vm("v", address="127.0.0.1")
        first = await fabric.attach(vm, a)
        lid = first.lid
        await fabric.detach(vm, grace=None)
        before = fabric.sm.lft_blocks_written
        second = await fabric.attach(vm, b, lid=lid)
        assert second.lid == lid
        # only the spine and the two leaves whose route changed are rewritten
        assert fabric.sm.lft_blocks_written - before == 3
        assert fabric.sm.lft(0)[lid] == f"switch:{b.switch}"


async def test_sm_accounting_shared_versus_vswitch(autojump_clock: trio.testing.MockClock) -> None:
    spent = {}
    for model in PortModel:
        async with open_fabric(port_model=model, switches=5) as fabric:
            host = fabric.add_host("h", num_vfs=1)
            vm = fabric.create_vm("v", address="127.0.0.1")
            before = fabric.sm.smps_sent
            await fabric.attach(vm, host)
            spent[model] = fabric.sm.smps_sent - before
    # shared: one GUIDInfo set; vswitch: plus PortInfo and one LFT block on each of 5 switches
    assert spent == {PortModel.SHARED: 1, PortModel.VSWITCH: 1 + 1 + 5}


def test_lid_space_is_enforced() -> None:
    sm = SubnetManager(1, lambda switch, where: "p")
    lids = {sm.assign_lid(("x", i)) for i in range(UNICAST_LIDS)}
    assert lids == set(range(0x0001, 0xC000))
    with pytest.raises(ResourceExhausted, match="49151"):
        sm.assign_lid(("x", -1))
    with pytest.raises(InvalidArgument):
        sm.assign_lid(("x", -1), 0xC000)
    sm.release_lid(7)
    assert sm.assign_lid(("x", 7)) == 7
    # one block write per incremental assignment; the re-assigned LID 7 still
    # had its (stale) LFT entry pointing the same way, so it cost none
    assert sm.lft_blocks_written == UNICAST_LIDS


async def test_vswitch_fabric_runs_out_of_lids(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric(port_model="vswitch") as fabric:
        host = fabric.add_host("h", num_vfs=3)
        for lid in range(fabric.sm.lids_in_use + 1, UNICAST_LIDS + 1):
            fabric.sm.assign_lid(("filler", lid))
        with pytest.raises(ResourceExhausted):
            await fabric.attach(fabric.create_vm("v", address="127.0.0.1"), host)


async def test_sa_queries_counted_per_connect(autojump_clock: trio.testing.MockClock) -> None:
    async with open_fabric() as fabric:
        a, b = fabric.add_host("a"), fabric.add_host("b")
        da = await fabric.attach(fabric.create_vm("va", address="127.0.0.1"), a)
        db = await fabric.attach(fabric.create_vm("vb", address="127.0.0.2"), b)
        await connect(da, db, port=1)
        await connect(da, db, port=2)
        assert fabric.sm.sa_queries == 2


async def test_transport_network(autojump_clock: trio.testing.MockClock) -> None:
    transport = load_transport("sim")
    assert isinstance(transport, SimTransport)
    async with transport.open_network(port_model="shared", seed=3) as net:
        devices = await net.add_node("127.0.0.1")
        device = await devices.next_device()
        assert device.address == "127.0.0.1"
        assert net.fabric.port_model is PortModel.SHARED
        with pytest.raises(AddressInUse):
            await net.add_node("127.0.0.1")


@pytest.mark.parametrize("model", ["shared", "vswitch"])
async def test_harness_pair_and_removal(model: str, autojump_clock: trio.testing.MockClock) -> None:
    harness = SimHarness(port_model=model)
    async with harness.open_pair() as (dev_a, dev_b):
        a, b = await connect(dev_a, dev_b)
        b.post_recv(1)
        a.send(2, 0, 100)
        await b.completions(1)
        a.ctx.close()
        await harness.remove(dev_a, grace=1.0)
        assert dev_a.removed and not dev_b.removed


async def test_profile_costs_are_charged_by_the_cm(autojump_clock: trio.testing.MockClock) -> None:
    from transports.sim.profile import load_profile

    profile = load_profile("seed-cx2-xen")
    elapsed = {}
    for name, options in (("free", {}), ("profiled", {"profile": "seed-cx2-xen"})):
        async with SimTransport().open_network(**options) as net:
            da = await (await net.add_node("127.0.0.1")).next_device()
            db = await (await net.add_node("127.0.0.2")).next_device()
            start = trio.current_time()
            await connect(da, db)
            elapsed[name] = trio.current_time() - start
    # Both QPs are created together before the connect: their creations (half a setup
    # each) overlap each other and the active side's SA query; then the passive side's
    # RTR/RTS before its REP, and the active side's after it.
    create = profile["qp_create"] * QP_CREATE_SHARE
    rtr_rts = profile["qp_create"] - create
    charged = max(profile["sa_query"], create) + 2 * rtr_rts
    assert elapsed["free"] < 1e-4
    assert elapsed["profiled"] - elapsed["free"] == pytest.approx(charged, rel=1e-6)
