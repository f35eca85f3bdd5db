"""RDS layer versus the bare verbs exchange it rides on, measured back to back.

``python -m bench.ratio [--seconds 10] [--tasks 7] [--size 4096] [--repeat 2]``

Alternates, ``--repeat`` times, in one process under trio's real clock:

* **verbs**: :func:`bench.verbs_pingpong.sim_pingpong` with signaled SENDs
  (what rdsx's paths post): ``tasks`` ping-pong pairs of ``size``-byte RC
  SENDs on the sim fabric; one exchange = a request SEND and its reply SEND.
* **rdsx**: rdsx-stress over rdsx on the same sim fabric, ``-t tasks -q size
  -a size``, both sides sending; one exchange = a request and its ack. Counted
  over both sides (every acked request).

For each it prints exchanges per wall second and per CPU second of this
process (``time.process_time``; the machine may be shared, so the CPU figure
is the steadier one), keeps the best of the repeats and prints the ratios
verbs ÷ rdsx (1.0 = the RDS layer costs nothing on top of the verbs exchange).
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Awaitable, Callable, Sequence

import attrs
import trio

from .options import Options
from .stress import run_in_process
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
        return self.exchanges / self.wall

    @property
    def per_cpu_s(self) -> float:
        """Exchanges per CPU second of this process."""
        return self.exchanges / self.cpu


async def _measure(run: Callable[[], Awaitable[int]]) -> Measurement:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    n = await run()
    return Measurement(n, time.perf_counter() - wall0, time.process_time() - cpu0)


async def _verbs(seconds: float, tasks: int, size: int) -> int:
    return await sim_pingpong(seconds, tasks, size, True)


async def _rdsx(seconds: float, tasks: int, size: int) -> int:
    opts = Options(tasks=tasks, req_bytes=size, ack_bytes=size, time=seconds, summary_only=True)
    outcome = await run_in_process(opts, out=io.StringIO())
    if not outcome.tally.ok:
        raise RuntimeError(f"rdsx-stress verification failed: {outcome.tally}")
    # Every acked request of both sides, as in the ping-pong's round-trip count.
    return outcome.tally.requests_sent - outcome.tally.unanswered


async def _main(seconds: float, tasks: int, size: int, repeat: int) -> None:
    best: dict[str, Measurement] = {}
    for i in range(repeat):
        for name, fn in (("verbs", _verbs), ("rdsx", _rdsx)):
            m = await _measure(lambda fn=fn: fn(seconds, tasks, size))  # type: ignore[misc]
            print(
                f"run {i + 1} {name:>5}: {m.exchanges:8d} exchanges in {m.wall:6.2f} s wall, "
                f"{m.cpu:6.2f} s CPU: {m.per_wall_s:9.1f}/s wall {m.per_cpu_s:9.1f}/CPU-s",
                flush=True,
            )
            if name not in best or m.per_cpu_s > best[name].per_cpu_s:
                best[name] = m
    v, r = best["verbs"], best["rdsx"]
    print(f"best verbs: {v.per_wall_s:.1f}/s wall, {v.per_cpu_s:.1f}/CPU-s")
    print(f"best rdsx:  {r.per_wall_s:.1f}/s wall, {r.per_cpu_s:.1f}/CPU-s")
    print(
        f"ratio verbs/rdsx: {v.per_wall_s / r.per_wall_s:.2f}x wall, "
        f"{v.per_cpu_s / r.per_cpu_s:.2f}x CPU"
    )


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m bench.ratio``: see the module docstring."""
    p = argparse.ArgumentParser(prog="python -m bench.ratio", description=__doc__)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--tasks", type=int, default=7)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=2)
    ns = p.parse_args(argv)
    trio.run(_main, ns.seconds, ns.tasks, ns.size, ns.repeat)


if __name__ == "__main__":
    main()
