"""Run the conformance suite from a shell, without pytest.

``python -m rdsx.testing package.module:HarnessClass [--seed N] [--only NAME ...]``

Imports the harness class, instantiates it without arguments, and runs every
check (or those named), one line per check. A harness with ``virtual_time``
runs under ``MockClock(autojump_threshold=0)``. Exit status 0 when every check
passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import time
from collections.abc import Sequence

import trio
import trio.testing

from ._conformance import CHECKS, check_rng
from ._harness import Harness


def _load(spec: str) -> Harness:
    module_name, _, attr = spec.partition(":")
    factory = getattr(importlib.import_module(module_name), attr)
    harness = factory()
    if not isinstance(harness, Harness):
        raise SystemExit(f"{spec} did not make an rdsx.testing.Harness")
    return harness


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite as the command line says; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m rdsx.testing", description=__doc__)
    parser.add_argument("harness", help="the Harness class, as package.module:Class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", choices=list(CHECKS), metavar="NAME")
    args = parser.parse_args(argv)
    failed = 0
    for name in args.only or list(CHECKS):
        harness = _load(args.harness)
        clock = trio.testing.MockClock(autojump_threshold=0) if harness.virtual_time else None
        started = time.perf_counter()
        try:
            trio.run(CHECKS[name], harness, check_rng(args.seed, name), clock=clock)
        except AssertionError as exc:
            failed += 1
            print(f"FAIL {name}: {exc}")
        else:
            print(f"ok   {name} ({time.perf_counter() - started:.2f}s)")
    print(f"{len(args.only or CHECKS) - failed} passed, {failed} failed (seed {args.seed})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
