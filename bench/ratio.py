"""RDS layer versus the bare verbs exchange it rides on, measured back to back.

``python -m bench.ratio [--seconds 10] [--tasks 7] [--size 4096] [--repeat 2] [--verbs-kind K]``

Alternates, ``--repeat`` times, in one process under trio's real clock:

* **verbs**: :func:`bench.verbs_pingpong.sim_pingpong` with signaled SENDs
  (what rdsx's paths post): ``tasks`` ping-pong pairs of ``size``-byte RC
  SENDs on the sim fabric; one exchange = a request SEND and its reply SEND.
  No tool at all: no task loops, ledger or verification.
* **tool+verbs**: rdsx-stress's own tasks, ledger and verification over bare
  RC SENDs on the same sim fabric (``bench.baselines verbs``, see
  :mod:`bench.verbs_baseline`), ``-t tasks -q size -a size``: the same tool
  and traffic as the rdsx run with the RDS layer taken out. Every SEND is
  signaled; ``--verbs-kind verbs-batch`` posts them in batches as rdsx's path
  does (one signaled SEND per post).
* **rdsx**: rdsx-stress over rdsx on the same sim fabric, ``-t tasks -q size
  -a size``, both sides sending; one exchange = a request and its ack. Counted
  over both sides (every acked request), as for tool+verbs.

For each it prints exchanges per wall second and per CPU second of this
process (``time.process_time``; the machine may be shared, so the CPU figure
is the steadier one) and the CPU µs per exchange, keeps the best of the
repeats and prints two ratios, each X ÷ rdsx (1.0 = the RDS layer costs
nothing): against the bare ping-pong (which also charges the tool to the RDS
layer) and against tool+verbs (what the RDS layer alone adds).
"""

from __future__ import annotations

import argparse
import functools
import io
import math
import os
import time
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from .baselines import run_baseline
from .options import Options
from .stress import Outcome, run_in_process
from .verbs_pingpong import sim_pingpong

__all__ = ["Measurement", "main"]


@attrs.frozen(slots=True)
class Measurement:
    """Exchanges completed, wall seconds and process CPU seconds of one run."""

    exchanges: int
    wall: float
    cpu: float

    @property
    def per_wall_s(self) -> float:
        """Exchanges per wall-clock second."""
        return self.exchanges / self.wall if self.wall > 0 else 0.0

    @property
    def per_cpu_s(self) -> float:
        """Exchanges per CPU second of this process."""
        return self.exchanges / self.cpu if self.cpu > 0 else 0.0

    @property
    def cpu_us(self) -> float:
        """CPU microseconds of this process per exchange (infinite if none completed)."""
        # A starved run (a loaded machine, a very short --seconds) must print, not crash.
        return self.cpu / self.exchanges * 1e6 if self.exchanges else math.inf


async def _measure(run: Callable[[], Awaitable[int]]) -> Measurement:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    n = await run()
    return Measurement(n, time.perf_counter() - wall0, time.process_time() - cpu0)


async def _verbs(seconds: float, tasks: int, size: int) -> int:
    return await sim_pingpong(seconds, tasks, size, True)


def _exchanges(outcome: Outcome, what: str) -> int:
    if not outcome.tally.ok:
        raise RuntimeError(f"rdsx-stress over {what}: verification failed: {outcome.tally}")
    # Every acked request of both sides, as in the ping-pong's round-trip count.
    return outcome.tally.requests_sent - outcome.tally.unanswered


def _stress_options(seconds: float, tasks: int, size: int) -> Options:
    return Options(tasks=tasks, req_bytes=size, ack_bytes=size, time=seconds, summary_only=True)


async def _tool_verbs(seconds: float, tasks: int, size: int, kind: str = "verbs") -> int:
    opts = _stress_options(seconds, tasks, size)
    return _exchanges(await run_baseline(kind, opts, out=io.StringIO()), "bare verbs")


async def _rdsx(seconds: float, tasks: int, size: int) -> int:
    opts = _stress_options(seconds, tasks, size)
    return _exchanges(await run_in_process(opts, out=io.StringIO()), "rdsx")


def _ratio_line(name: str, base: Measurement, rdsx: Measurement, what: str) -> str:
    if not (rdsx.per_wall_s and rdsx.per_cpu_s):
        return f"ratio {name}/rdsx: n/a, rdsx completed no exchange  ({what})"
    return (
        f"ratio {name}/rdsx: {base.per_wall_s / rdsx.per_wall_s:.2f}x wall, "
        f"{base.per_cpu_s / rdsx.per_cpu_s:.2f}x CPU  ({what})"
    )


async def _main(
    seconds: float, tasks: int, size: int, repeat: int, verbs_kind: str = "verbs"
) -> dict[str, Measurement]:
    runs: tuple[tuple[str, Callable[[float, int, int], Awaitable[int]]], ...] = (
        ("verbs", _verbs),
        ("tool+verbs", functools.partial(_tool_verbs, kind=verbs_kind)),
        ("rdsx", _rdsx),
    )
    best: dict[str, Measurement] = {}
    # The machine may be shared: the load beside the figures says how much to trust them.
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    for i in range(repeat):
        for name, fn in runs:
            m = await _measure(lambda fn=fn: fn(seconds, tasks, size))  # type: ignore[misc]
            print(
                f"run {i + 1} {name:>10}: {m.exchanges:8d} exchanges in {m.wall:6.2f} s wall, "
                f"{m.cpu:6.2f} s CPU: {m.per_wall_s:9.1f}/s wall {m.per_cpu_s:9.1f}/CPU-s "
                f"{m.cpu_us:6.1f} CPU us/exchange",
                flush=True,
            )
            if name not in best or m.per_cpu_s > best[name].per_cpu_s:
                best[name] = m
    for name, _ in runs:
        m = best[name]
        print(
            f"best {name + ':':11} {m.per_wall_s:.1f}/s wall, {m.per_cpu_s:.1f}/CPU-s, "
            f"{m.cpu_us:.1f} CPU us/exchange"
        )
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    r = best["rdsx"]
    print(_ratio_line("verbs", best["verbs"], r, "bare ping-pong, no tool"))
    what = f"same tool over bare verbs ({verbs_kind}): RDS alone"
    print(_ratio_line("tool+verbs", best["tool+verbs"], r, what))
    return best


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench.ratio``: see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m bench.ratio", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--tasks", type=int, default=7)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument(
        "--verbs-kind",
        choices=("verbs", "verbs-batch"),
        default="verbs",
        help="the tool+verbs baseline: every SEND signaled, or posted in batches as rdsx does",
    )
    ns = p.parse_args(argv)
    trio.run(_main, ns.seconds, ns.tasks, ns.size, ns.repeat, ns.verbs_kind)


if __name__ == "__main__":
    main()
