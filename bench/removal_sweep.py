"""Sweep rdsx-stress's device-removal check over modes, grace, timing and seeds.

``python -m bench.removal_sweep [--modes reconnect,transparent] [--graces 1,surprise]
[--at 0.5,1,1.25,2] [--seeds 0,1] [--port-models vswitch,shared] [-t 2] [-T 3] [--rate 200]
[--chaos drop=P,dup=P,delay=P]``

Each combination is one in-process rdsx-stress run on the sim fabric in
virtual time (paced at ``--rate`` requests/s per task): the active node's VF
is removed at ``--at`` seconds and a VF of another host attached 0.1 s later.
One line per run (lost, duplicated, reordered, errors and the longest delivery
gap); the exit status is 1 if any run lost, duplicated or reordered anything,
failed to drain, or crashed.
"""

from __future__ import annotations

import argparse
import io
import itertools
import sys
from collections.abc import Sequence
from typing import Literal, cast

import trio
import trio.testing

from .options import Options, parse_args
from .stress import Outcome, run_in_process

__all__ = ["main"]


def _floats(text: str) -> list[float | None]:
    return [None if part == "surprise" else float(part) for part in text.split(",")]


async def _one(opts: Options) -> Outcome:
    with trio.fail_after(opts.time + opts.drain_timeout + 60):
        return await run_in_process(opts, out=io.StringIO())


def main(argv: Sequence[str] | None = None) -> int:
    """Run the sweep; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m bench.removal_sweep", description=__doc__)
    p.add_argument("--modes", default="reconnect,transparent")
    p.add_argument("--port-models", default="vswitch", help="vswitch,shared")
    p.add_argument("--graces", default="1,surprise")
    p.add_argument("--at", default="0.5,1,1.25,2")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("-t", "--tasks", type=int, default=2)
    p.add_argument("-T", "--time", type=float, default=3.0)
    p.add_argument("--rate", type=float, default=200.0)
    p.add_argument("--chaos", default=None, help="drop=P,dup=P,delay=P on the fabric")
    ns = p.parse_args(argv)
    chaos = parse_args(["--chaos", ns.chaos]).chaos if ns.chaos else None
    modes = [cast(Literal["reconnect", "transparent"], m) for m in ns.modes.split(",")]
    port_models = [cast(Literal["vswitch", "shared"], m) for m in ns.port_models.split(",")]
    combos = itertools.product(
        port_models,
        modes,
        _floats(ns.graces),
        [float(a) for a in ns.at.split(",")],
        [int(s) for s in ns.seeds.split(",")],
    )
    bad = 0
    for port_model, mode, grace, at, seed in combos:
        opts = Options(
            tasks=ns.tasks,
            time=ns.time,
            rate=ns.rate,
            remove_at=at,
            grace=grace,
            mode=mode,
            port_model=port_model,
            seed=seed,
            drain_timeout=3.0,
            summary_only=True,
            chaos=chaos,
        )
        how = "surprise" if grace is None else f"{grace:g} s"
        label = f"{port_model:<7} mode={mode:<11} grace={how:<8} at={at:<5} seed={seed}"
        try:
            outcome = trio.run(_one, opts, clock=trio.testing.MockClock(autojump_threshold=0))
        except Exception as exc:
            bad += 1
            print(f"BAD {label}: crashed: {exc!r}"[:300], flush=True)
            continue
        t, rep = outcome.tally, outcome.report
        ok = t.ok and bool(rep["drained"])
        bad += not ok
        print(
            f"{'ok ' if ok else 'BAD'} {label}: lost {t.lost} dup {t.duplicated} "
            f"reord {t.reordered} err {t.errors} of {t.sent}, max gap {rep['max_gap_s']:.3f} s",
            flush=True,
        )
    print(f"{bad} bad run(s)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
