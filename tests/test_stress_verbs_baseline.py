"""The ``verbs`` baseline carries rdsx-stress's traffic exactly, and bench.ratio measures it."""

import io
from collections.abc import Sequence

import pytest
import trio

from bench import ratio
from bench.baselines import main as baselines_main
from bench.baselines import run_baseline
from bench.options import Options
from bench.stress import run_stress
from bench.verbs_baseline import open_verbs_pair
from rdsx.errors import InvalidArgument, MessageTooLarge
from rdsx.verbs import SendWR


@pytest.mark.parametrize("kind", ["verbs", "verbs-batch"])
async def test_verbs_baseline_carries_the_closed_loop_exactly(kind: str) -> None:
    opts = Options(tasks=2, depth=2, time=0.3, req_bytes=4096, ack_bytes=64)
    out = io.StringIO()
    with trio.fail_after(20):
        outcome = await run_baseline(kind, opts, out=out)
    assert outcome.tally.ok and outcome.tally.requests_sent > 0
    assert outcome.tally.lost == outcome.tally.duplicated == outcome.tally.reordered == 0
    assert outcome.report["drained"] is True and outcome.exit_status == 0
    assert out.getvalue().count("  (average)") == 1


@pytest.mark.parametrize("post_max", [None, 1, 8])
async def test_tiny_rings_make_senders_wait_and_lose_nothing(
    autojump_clock: trio.abc.Clock, post_max: int | None
) -> None:
    # Two slots per ring against a closed loop of 3 tasks x 3 peers x depth 2 on both
    # sides: most sends wait in the backlog for a send completion to free a slot.
    # Virtual time passes only by the fabric's modelled delays.
    opts = Options(tasks=3, depth=2, time=0.003, req_bytes=1024, ack_bytes=512)
    with trio.fail_after(60):
        async with open_verbs_pair(
            opts.recv_addr, opts.send_addr, max_message=1024, slots=2, post_max=post_max
        ) as (a, b):
            outcome = await run_stress(opts, a, b, out=io.StringIO())
    assert a.backlogged > 0 and b.backlogged > 0
    assert outcome.tally.ok and outcome.tally.requests_sent > 2 * 3 * 3 * 2
    assert outcome.tally.lost == outcome.tally.duplicated == outcome.tally.reordered == 0


async def test_batched_posts_signal_only_their_last_send(autojump_clock: trio.abc.Clock) -> None:
    # Eight sends in one scheduler pass with one already outstanding: the flusher
    # posts the other seven in one post_send, and only its last SEND is signaled.
    posts: list[list[bool]] = []
    with trio.fail_after(10):
        async with open_verbs_pair(
            "127.0.0.1", "127.0.0.2", max_message=64, slots=16, post_max=8
        ) as (a, b):
            post_send = a.qp.post_send

            def spy(wrs: SendWR | Sequence[SendWR]) -> None:
                batch = [wrs] if isinstance(wrs, SendWR) else list(wrs)
                posts.append([wr.signaled for wr in batch])
                post_send(wrs)

            a.qp.post_send = spy  # type: ignore[method-assign]
            sock, peer = a.socket(sndbuf=0, rcvbuf=0), b.socket(sndbuf=0, rcvbuf=0)
            sock.bind(5)
            peer.bind(6)
            for i in range(8):
                sock.sendto_nowait(bytes([i]), ("127.0.0.2", 6))
            got = [(await peer.recvfrom())[0] for _ in range(8)]
            assert got == [bytes([i]) for i in range(8)]
            # Every slot comes back: the signaled completion retired the unsignaled ones.
            while len(a._free) < a.slots:
                await trio.sleep(1e-6)
    assert posts == [[True], [False] * 6 + [True]]


async def test_post_max_below_one_is_refused(autojump_clock: trio.abc.Clock) -> None:
    with pytest.raises(InvalidArgument), trio.fail_after(10):
        async with open_verbs_pair("127.0.0.1", "127.0.0.2", post_max=0):
            pass


async def test_a_message_larger_than_a_slot_is_refused(autojump_clock: trio.abc.Clock) -> None:
    with trio.fail_after(10):
        async with open_verbs_pair("127.0.0.1", "127.0.0.2", max_message=100, slots=4) as (a, b):
            sock = a.socket(sndbuf=0, rcvbuf=0)
            sock.bind(5)
            peer = b.socket(sndbuf=0, rcvbuf=0)
            peer.bind(6)
            with pytest.raises(MessageTooLarge):
                sock.sendto_nowait(bytes(101), ("127.0.0.2", 6))
            sock.sendto_nowait(bytes(range(100)), ("127.0.0.2", 6))
            assert await peer.recvfrom() == (bytes(range(100)), ("127.0.0.1", 5))


def test_baselines_main_runs_verbs_in_virtual_time() -> None:
    args = ["verbs", "-t", "2", "-T", "0.5", "--rate", "100", "--virtual-time", "-z"]
    assert baselines_main(args) == 0
    assert baselines_main(["tcp", *args[1:]]) == 2
    assert baselines_main(["nonesuch"]) == 2


@pytest.mark.parametrize("verbs_kind", ["verbs", "verbs-batch"])
async def test_ratio_measures_all_three_and_prints_both_ratios(
    capsys: pytest.CaptureFixture[str], verbs_kind: str
) -> None:
    with trio.fail_after(30):
        # Real clock: long enough that even a loaded CI machine completes exchanges.
        best = await ratio._main(1.0, 2, 256, 1, verbs_kind)
    assert set(best) == {"verbs", "tool+verbs", "rdsx"}
    assert all(m.exchanges > 0 and m.cpu > 0 for m in best.values())
    text = capsys.readouterr().out
    assert "ratio verbs/rdsx:" in text and "ratio tool+verbs/rdsx:" in text
    assert f"bare verbs ({verbs_kind})" in text
    assert text.count("run 1 ") == 3


def test_ratio_survives_a_run_with_no_exchange() -> None:
    starved = ratio.Measurement(0, 0.2, 0.0)
    assert starved.cpu_us == float("inf") and starved.per_cpu_s == 0.0
    line = ratio._ratio_line("verbs", ratio.Measurement(10, 1.0, 0.5), starved, "x")
    assert "n/a" in line
