"""Random traffic through random VMM migrations, both modes (issue 4).

The property: whatever the VMM does (three-stage or late detach, shared port or
vSwitch, graceful, short or surprise removal, with or without a standby device,
one or two migrations, maybe overlapping), every (source socket, destination
socket) pair receives exactly the sequence it sent, in order; in transparent mode
no node's RDS layer sees a reconnect. The only refusal allowed is the VMM's own:
a second migration of a VM already migrating (``MigrationInProgress``).
"""

from __future__ import annotations

import faulthandler
import os
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from sim_support import fast_profile, open_end

import rdsx
from rdsx.config import NodeConfig
from rdsx.errors import MigrationInProgress
from transports.sim import Packet, chaos, open_fabric
from transports.sim.cm import CM_RETRY, Rtu
from transports.sim.transport import SimTransport
from transports.sim.vmm import VMM

#: 0 bytes, one fragment, exactly one fragment (4096), just over, several.
SIZES = (0, 1, 40, 4096, 4097, 9000)
PORTS = (100, 101)
#: ``HYPOTHESIS_MIGRATION_EXAMPLES=500`` runs the offline sweep (bench/RESULTS.md).
EXAMPLES = int(os.environ.get("HYPOTHESIS_MIGRATION_EXAMPLES", "40"))
#: ``HYPOTHESIS_MIGRATION_SHRINK=0`` reports a failure as found (offline: shrinking is slow).
SHRINK = os.environ.get("HYPOTHESIS_MIGRATION_SHRINK", "1") != "0"
#: ``HYPOTHESIS_MIGRATION_SEED=n`` draws another set of cases (the suite's is derandomized).
SEED = os.environ.get("HYPOTHESIS_MIGRATION_SEED")

Send = tuple[int, int, int, int, int]  # source node, socket; destination node, socket; size
Move = tuple[float, int, str, float]  # at, which VM, strategy, grace (0 = surprise)
Key = tuple[tuple[str, int], int, int]  # (source address, port), destination node, socket


def payload(k: int, size: int) -> bytes:
    """Message ``k`` of ``size`` bytes: its number repeated, so every byte is checked."""
    stamp = b"%d." % k
    return (stamp * (size // len(stamp) + 1))[:size]


async def _scenario(
    seed: int,
    mode: str,
    model: str,
    standby: bool,
    plan: list[Send],
    moves: list[Move],
    loss: float,
    interval: float,
    rcvbuf: int,
) -> list[str]:
    n = 1 + max(max(s[0], s[2]) for s in plan)
    n = max(n, 2)
    profile = fast_profile()
    outcomes: list[str] = []
    async with (
        SimTransport().open_network(seed=seed, port_model=model, profile=profile) as net,
        AsyncExitStack() as stack,
    ):
        fabric = net.fabric
        addresses = [f"127.0.0.{i + 1}" for i in range(n)]
        sources = [await net.add_node(a, standby=standby) for a in addresses]
        vms = [fabric.vm_at(a) for a in addresses]
        spare = [fabric.add_host(f"spare{i}", num_vfs=4) for i in range(2)]
        nodes = [
            await stack.enter_async_context(
                rdsx.open_node(a, src, mode=mode, config=NodeConfig(seed=seed * 10 + i))  # type: ignore[arg-type]
            )
            for i, (a, src) in enumerate(zip(addresses, sources, strict=True))
        ]
        socks = [[node.socket(rcvbuf=rcvbuf) for _ in PORTS] for node in nodes]
        for pair in socks:
            for port, s in zip(PORTS, pair, strict=True):
                s.bind(port)
        if loss:
            fabric.route_packet = chaos(fabric, drop=loss, duplicate=loss, delay=loss * 4)
        vmm = VMM(fabric, profile)
        expected: dict[tuple[int, int], int] = {}
        sent: dict[Key, list[bytes]] = {}
        for k, (sn, ss, dn, ds, size) in enumerate(plan):
            expected[(dn, ds)] = expected.get((dn, ds), 0) + 1
            sent.setdefault(((addresses[sn], PORTS[ss]), dn, ds), []).append(payload(k, size))
        received: dict[Key, list[bytes]] = {}

        async def sender(sn: int, ss: int) -> None:
            for k, (n_, s_, dn, ds, size) in enumerate(plan):
                if (n_, s_) == (sn, ss):
                    await socks[sn][ss].sendto(payload(k, size), (addresses[dn], PORTS[ds]))
                    await trio.sleep(interval)

        async def receiver(dn: int, ds: int) -> None:
            for _ in range(expected.get((dn, ds), 0)):
                data, src = await socks[dn][ds].recvfrom()
                received.setdefault((src, dn, ds), []).append(data)

        async def migrate(at: float, who: int, strategy: str, grace: float) -> None:
            await trio.sleep(at)
            vm = vms[who % n]
            assert vm is not None
            dest = spare[0] if vm.host is not spare[0] else spare[1]
            try:
                timeline = await vmm.migrate(vm, dest, strategy=strategy, grace=grace)
            except MigrationInProgress:
                outcomes.append("in-progress")
            else:
                outcomes.append(timeline.outcome)

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for move in moves:
                    nursery.start_soon(migrate, *move)
                for sn in range(n):
                    for ss in range(len(PORTS)):
                        nursery.start_soon(sender, sn, ss)
                async with trio.open_nursery() as receivers:
                    for dn in range(n):
                        for ds in range(len(PORTS)):
                            receivers.start_soon(receiver, dn, ds)
        assert received == sent
        resets = [node.statistics().conn_reset for node in nodes]
        if mode == "transparent":
            assert resets == [0] * n, resets
    assert len(outcomes) == len(moves)
    assert "migrated" in outcomes and set(outcomes) <= {"migrated", "in-progress"}, outcomes
    return outcomes


def run_case(
    seed: int,
    mode: str,
    model: str,
    standby: bool,
    plan: list[Send],
    moves: list[Move],
    loss: float = 0.0,
    interval: float = 0.002,
    rcvbuf: int = 1 << 22,
) -> list[str]:
    """Run one case in virtual time; return the migrations' outcomes."""
    # A livelock would not advance virtual time, so fail_after could not catch it.
    faulthandler.dump_traceback_later(120, exit=True)
    try:
        args: tuple[Any, ...] = (seed, mode, model, standby, plan, moves, loss, interval, rcvbuf)
        return trio.run(_scenario, *args, clock=trio.testing.MockClock(autojump_threshold=0))
    finally:
        faulthandler.cancel_dump_traceback_later()


sends = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.integers(0, 1),
        st.integers(0, 2),
        st.integers(0, 1),
        st.sampled_from(SIZES),
    ),
    min_size=1,
    max_size=40,
)
moves = st.lists(
    st.tuples(
        st.floats(0.0, 1.0),  # when, as a fraction of the traffic's span
        st.integers(0, 2),
        st.sampled_from(["three-stage", "late-detach"]),
        st.sampled_from([1.0, 0.01, 0.0]),
    ),
    min_size=1,
    max_size=2,
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=SEED is None,
    phases=list(Phase) if SHRINK else [Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@hypothesis_seed(int(SEED or 0))
@given(
    seed=st.integers(0, 1000),
    mode=st.sampled_from(["reconnect", "transparent"]),
    model=st.sampled_from(["shared", "vswitch"]),
    standby=st.booleans(),
    plan=sends,
    moves=moves,
    repeat=st.sampled_from([1, 4, 16]),
    loss=st.sampled_from([0.0, 0.0, 0.01]),
    interval=st.sampled_from([0.0005, 0.002, 0.005]),
    rcvbuf=st.sampled_from([8192, 1 << 22]),
)
def test_every_pair_gets_exactly_its_sequence_through_vmm_migrations(
    seed: int,
    mode: str,
    model: str,
    standby: bool,
    plan: list[Send],
    moves: list[Move],
    repeat: int,
    loss: float,
    interval: float,
    rcvbuf: int,
) -> None:
    plan = [entry for entry in plan for _ in range(repeat)]  # bursts keep moves mid-traffic
    per_sender: dict[tuple[int, int], int] = {}
    for sn, ss, *_ in plan:
        per_sender[(sn, ss)] = per_sender.get((sn, ss), 0) + 1
    span = max(per_sender.values()) * interval  # each sender's pacing, without the waits
    moves = [(at * span, *rest) for at, *rest in moves]
    run_case(seed, mode, model, standby, plan, moves, loss, interval, rcvbuf)


#: Found by the property test: node .1 runs on its standby from the start (three-stage
#: at t=0, so its first connections are made there); when the new VF retires the
#: standby its QPs reconnect while the test's end closes node .3. The connection ended
#: under the reconnect's await, on either side (the reconnecting QP's peer is cleared by
#: .3's Close; .3's QP by its own close), and bind() asserted a peer that was gone.
CLOSE_UNDER_RECONNECT: list[Send] = [(0, 0, 0, 0, 0)] * 7 + [
    (0, 0, 1, 0, 0),
    (2, 0, 1, 0, 0),
    (2, 0, 0, 0, 0),
]


@pytest.mark.parametrize("model", ["shared", "vswitch"])
def test_a_connection_ended_under_a_reconnect_is_not_resumed(model: str) -> None:
    outcomes = run_case(
        0,
        "transparent",
        model,
        True,
        CLOSE_UNDER_RECONNECT,
        [(0.0, 0, "three-stage", 1.0)],
        interval=0.0005,
        rcvbuf=8192,
    )
    assert outcomes == ["migrated"]


#: Found by the property test: the RTU of .1's connect to .2 was lost (chaos), .1 sent
#: over the connection for 32 ms, then .2's VF got its removal notice (late detach) and
#: its accept, still waiting for the RTU, failed: .2 never knew the connection, .1's shim
#: held it for a reconnect that never came and RDS reset it after resume_timeout.
LOST_RTU: list[Send] = [
    (0, 0, 0, 1, 9000),
    (0, 1, 1, 1, 1),
    (1, 1, 2, 1, 4096),
    (2, 1, 1, 1, 40),
    (2, 1, 2, 0, 40),
    (1, 1, 1, 1, 9000),
]


def test_a_lost_rtu_under_a_removal_costs_no_reconnect() -> None:
    outcomes = run_case(
        500,
        "transparent",
        "vswitch",
        True,
        LOST_RTU,
        [(0.025501965888243834, 1, "late-detach", 1.0)],
        loss=0.01,
        interval=0.0005,
    )
    assert outcomes == ["migrated"]


#: Found by the property test: the acceptor's VF went (a removal notice with 10 ms of
#: grace, or a surprise) after its REP and before the RTU. Its shim failed the accept
#: while the peer counted the connection as made: the peer held it for a reconnect
#: that never came and RDS reset it (30 s later, or when the acceptor connected anew).
ACCEPT_UNDER_REMOVAL: list[tuple[Any, ...]] = [
    (
        1000,
        False,
        [
            (1, 1, 2, 1, 4097),
            (0, 1, 1, 1, 0),
            (0, 0, 0, 1, 40),
            (1, 0, 2, 1, 4097),
            (0, 0, 1, 0, 0),
        ],
        [(0.1, 2, "three-stage", 0.01), (0.0015799238917552309, 1, "three-stage", 0.01)],
        0.0,
        0.005,
    ),
    (
        64,
        True,
        [
            (1, 0, 1, 0, 0),
            (1, 0, 0, 0, 9000),
            (2, 0, 0, 0, 40),
            (1, 1, 2, 1, 4097),
            (2, 1, 1, 0, 9000),
        ],
        [(0.0015392863268237859, 2, "three-stage", 0.0)],
        0.01,
        0.0005,
    ),
]


@pytest.mark.parametrize("case", ACCEPT_UNDER_REMOVAL, ids=["graceful-10ms", "surprise-standby"])
def test_an_accept_cut_by_a_removal_after_the_rep_is_resumed(case: tuple[Any, ...]) -> None:
    seed, standby, plan, moves_, loss, interval = case
    plan = [entry for entry in plan for _ in range(16 if not standby else 4)]
    outcomes = run_case(
        seed,
        "transparent",
        "vswitch",
        standby,
        plan,
        moves_,
        loss,
        interval,
        8192 if standby else 1 << 22,
    )
    assert set(outcomes) == {"migrated"}


def test_an_accept_cut_before_its_rep_went_out_is_not_resumed() -> None:
    """The other side of the same coin: .1's VF pulled while it set up the QP for .3's
    connect, before the REP left. .3 never counted it as made, so keeping it would make
    .1 resume a connection .3 does not know of ("no longer knows it": a reset)."""
    outcomes = run_case(
        151,
        "transparent",
        "shared",
        True,
        [(2, 0, 0, 0, 0), (2, 0, 0, 0, 0)],
        [(0.00058, 0, "three-stage", 0.0)],
        interval=0.0005,
    )
    assert outcomes == ["migrated"]


def test_an_accept_whose_rep_was_lost_before_a_removal_is_not_resumed() -> None:
    """.1's REP to .2 is lost (chaos) and .1's VF gets its removal notice before the
    REP's resend. Keeping the connection because the REP went out would resume one .2
    never had (refused: a reset); the accept waits for the resume's answer instead."""
    run_case(
        290,
        "transparent",
        "shared",
        False,
        [(1, 0, 0, 1, 1), (1, 0, 0, 1, 1)],
        [(0.0011551057041214066, 0, "late-detach", 0.01)],
        loss=0.01,
        interval=0.002,
        rcvbuf=8192,
    )


def test_a_resume_asked_before_the_peers_connect_returned_waits() -> None:
    """.2's VF is pulled between its REP to .3 and .3's RTU; .2's standby is there at
    once, so .2 asks .3 to resume before .3's connect has returned (its QP setup takes
    0.5 ms after the REP). .3 answers BUSY (ask again) rather than UNKNOWN (a reset)."""
    outcomes = run_case(
        295,
        "transparent",
        "vswitch",
        True,
        [(0, 1, 2, 1, 4096), (2, 1, 1, 1, 1), (1, 0, 1, 0, 9000), (2, 0, 2, 1, 40)],
        [(0.0016324, 1, "three-stage", 0.0)],
        interval=0.002,
        rcvbuf=8192,
    )
    assert outcomes == ["migrated"]


async def test_the_first_packet_establishes_a_passive_side_whose_rtu_was_lost(
    autojump_clock: trio.abc.Clock,
) -> None:
    """IB's COMM_EST: the passive side's accept returns at the active side's first
    packet, not at its REP's resend CM_RETRY later."""
    async with open_fabric(seed=1) as fabric:
        a, b = fabric.add_host("a", num_vfs=1), fabric.add_host("b", num_vfs=1)
        da = await fabric.attach(fabric.create_vm("va", address="127.0.0.1"), a)
        db = await fabric.attach(fabric.create_vm("vb", address="127.0.0.2"), b)
        ea, eb = await open_end(da), await open_end(db)
        deliver = fabric.route_packet
        lost: list[Packet] = []

        def lose_the_rtu(packet: Packet) -> None:
            if isinstance(getattr(packet, "msg", None), Rtu) and not lost:
                lost.append(packet)
                fabric.drop_packet(packet, "test: the RTU is lost")
                return
            deliver(packet)

        fabric.route_packet = lose_the_rtu
        listener = await eb.ctx.cm_listen(7000)
        accepted: list[float] = []

        async def passive() -> None:
            request = await listener.get_request()
            eb.cm_id = await request.accept(eb.qp, b"")
            accepted.append(trio.current_time())
            eb.post_recv(1)  # the send met an RNR NAK until now: it keeps retrying

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(passive)
                ea.cm_id = await ea.ctx.cm_connect(ea.qp, db.address, 7000, b"")
                connected = trio.current_time()
                ea.send(1, 0, 64)
                assert [wc.status.name for wc in await ea.completions(1)] == ["SUCCESS"]
        assert lost
        (at,) = accepted
        assert at - connected < CM_RETRY / 10
        assert [wc.status.name for wc in await eb.completions(1)] == ["SUCCESS"]
