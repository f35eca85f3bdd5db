"""Receives posted in INIT survive the CM: no first SEND waits on a receiver-not-ready NAK.

The sim's RC responder NAKs a SEND that finds no receive (``RcQp._rnr``); the
tests count those NAKs. The contract side is the conformance check
``cm-preposted-receives``; here the cost is visible in virtual time.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import trio
from node_world import mode_pair, numbered_across_a_move

from rdsx.testing._check_cm import cm_port
from rdsx.testing._fixture import End, expect_wc, init_attr, open_nodes, take_one
from rdsx.verbs import Opcode, RecvWR, SendWR
from transports.sim.cm import MIN_RNR_TIMER
from transports.sim.harness import SimHarness
from transports.sim.rc import RcQp


@pytest.fixture
def rnr_naks(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Every PSN the sim's responders RNR-NAK while the test runs."""
    seen: list[int] = []
    original = RcQp._rnr

    def spy(self: RcQp, psn: int) -> None:
        seen.append(psn)
        original(self, psn)

    monkeypatch.setattr(RcQp, "_rnr", spy)
    yield seen


async def _first_send_after_cm(prepost: bool) -> float:
    """Connect two sim QPs through the CM, the passive one with its receive posted in INIT
    (``prepost``) or only once ``accept`` returned; the active side sends as soon as its
    ``cm_connect`` returns. Returns how long that SEND took to complete."""
    rng = random.Random(3)
    async with open_nodes(SimHarness(port_model="vswitch")) as (a, b):
        port = cm_port(rng)
        listener = await b.ctx.cm_listen(port)
        ea, eb = a.end(), b.end()
        recv = RecvWR(1, (eb.node.sge(eb.node.alloc(64), 64),))

        async def serve(end: End) -> None:
            request = await listener.get_request()
            if prepost:
                end.qp.modify(init_attr())
                end.qp.post_recv(recv)
            await request.accept(end.qp)
            if not prepost:
                end.qp.post_recv(recv)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, eb)
            await a.ctx.cm_connect(ea.qp, b.device.address, port)
            start = trio.current_time()
            ea.qp.post_send(SendWR(2, Opcode.SEND, (ea.node.sge(ea.node.alloc(64), 64),)))
            expect_wc(await take_one(ea.scq, "first send"), "first send", wr_id=2)
            took = trio.current_time() - start
        expect_wc(await take_one(eb.rcq, "first receive"), "first receive", wr_id=1)
        listener.close()
        return took


async def test_receive_posted_in_init_takes_the_first_send(
    autojump_clock: trio.abc.Clock, rnr_naks: list[int]
) -> None:
    with trio.fail_after(30):
        took = await _first_send_after_cm(prepost=True)
    assert rnr_naks == []
    assert took < MIN_RNR_TIMER


async def test_receive_posted_after_accept_meets_rnr(
    autojump_clock: trio.abc.Clock, rnr_naks: list[int]
) -> None:
    # The control: what the pre-posted receive saves.
    with trio.fail_after(30):
        took = await _first_send_after_cm(prepost=False)
    assert rnr_naks
    assert took >= MIN_RNR_TIMER


@pytest.mark.parametrize("mode", ["reconnect", "transparent"])
async def test_no_rnr_wait_on_connect_or_after_a_migration(
    autojump_clock: trio.abc.Clock, rnr_naks: list[int], mode: str
) -> None:
    async with mode_pair(mode, seed=5) as w:
        n = 60
        with trio.fail_after(60):
            got = await numbered_across_a_move(w, n, interval=0.001, move_at=0.02, vm=0, grace=2.0)
        assert got == list(range(n))
        assert w.nodes[0].statistics().conn_reset == (1 if mode == "reconnect" else 0)
    assert rnr_naks == [], f"{len(rnr_naks)} RNR NAKs in {mode} mode"
