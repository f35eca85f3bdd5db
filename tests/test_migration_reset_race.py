"""Issue 4: the second RDS reset right after a reconnect (real clock, now in virtual time).

Under the real clock the sim fabric's pump fires every timer due within
``REALTIME_SLACK`` of the pass it is running, before its due time, with
``fabric.now()`` at the pass's start. The RC timers judged themselves by the
clock, so such a timer looked early: the RNR timer gave up without clearing
``rnr_until``, the go-back-N window never sent again and the QP failed with
RETRY_EXC_ERR after retry_cnt ACK timeouts (8 x 67 ms); the ACK timer re-armed
itself for the same instant and fired again at once, forever. In the
``--clock real`` migration run this was a reconnect whose first SEND met an RNR
NAK (before the receive ring was pre-posted, 70a5666): the new connection reset
again about 0.55 s later.

The tests make the pump's early firing deterministic: every timer the fabric is
asked for fires ``REALTIME_SLACK`` before its due time, under the MockClock.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

import pytest
import trio
import trio.testing
from sim_support import vf_pair

from rdsx.verbs import QpAttr, QpState, WcStatus
from transports.sim import open_fabric
from transports.sim.fabric import REALTIME_SLACK, Fabric

#: A timer re-armed this often for one instant is looping (each round fires at once).
_LOOPING = 1000


def _fire_timers_early(fabric: Fabric) -> None:
    """Fire every fabric timer ``REALTIME_SLACK`` early, as the real-clock pump may.

    A timer set again and again for the same instant raises instead of hanging the
    pump (which never yields while it loops).
    """
    call_at = fabric.call_at
    armed: collections.Counter[float] = collections.Counter()

    def early(when: float, callback: Callable[[], None]) -> None:
        armed[when] += 1
        if armed[when] > _LOOPING:
            raise AssertionError(f"a timer was re-armed {_LOOPING} times for {when}")
        call_at(when - REALTIME_SLACK, callback)

    fabric.call_at = early  # type: ignore[method-assign]


async def test_rnr_wait_ends_when_its_timer_fires_early(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(30):
        async with open_fabric() as fabric:
            a, b = await vf_pair(fabric)
            _fire_timers_early(fabric)
            a.send(1, 0, 10)  # b has no receive posted: RNR NAK
            await trio.sleep(0.005)
            assert a.qp.rnr_naks > 1  # the RNR wait ended and the SEND was retried
            b.post_recv(9)
            posted = trio.current_time()
            (wc,) = await a.completions(1)
            assert wc.status is WcStatus.SUCCESS
            # The next RNR retry finds the receive: well within one ACK timeout.
            assert trio.current_time() - posted < a.qp.timeout
            (recv,) = await b.completions(1)
            assert (recv.wr_id, recv.status) == (9, WcStatus.SUCCESS)


@pytest.mark.parametrize("retry_cnt", [0, 3])
async def test_ack_timeouts_count_down_when_their_timer_fires_early(
    retry_cnt: int, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(30):
        async with open_fabric() as fabric:
            a, b = await vf_pair(fabric)
            a.qp.modify(QpAttr(state=QpState.RTS, retry_cnt=retry_cnt))
            b.qp.modify(QpAttr(state=QpState.ERR))  # never ACKs
            _fire_timers_early(fabric)
            start = trio.current_time()
            a.send(1, 0, 10)
            (wc,) = await a.completions(1)
            assert wc.status is WcStatus.RETRY_EXC_ERR
            assert a.qp.retransmits == retry_cnt
            # One ACK timeout per try, each cut short by at most the slack.
            tries = retry_cnt + 1
            elapsed = trio.current_time() - start
            assert tries * (a.qp.timeout - REALTIME_SLACK) <= elapsed
            assert elapsed <= tries * a.qp.timeout + REALTIME_SLACK
