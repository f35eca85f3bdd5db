"""``check_transport``: the public conformance suite of the verbs contract.

In the spirit of ``trio.testing.check_two_way_stream``: no pytest dependency,
seeded, async, and an ``AssertionError`` naming the broken rule. It drives a
transport only through :mod:`rdsx.verbs` and a :class:`~rdsx.testing.Harness`.

:data:`CHECKS` maps a name to one check (``await CHECKS[name](harness, rng)``),
so a test runner can give every check its own test id; each is bounded by
``trio.fail_after`` so a broken transport fails instead of hanging. The checks
live in ``_check_*.py``, one module per part of the contract:

* ``resources`` — device basics, registration arguments, handles after close, WR
  validation, queue limits, local key errors, receive-side errors;
* ``qp_state`` — the RC state table, required attributes, posts per state;
* ``data`` — order and exactly-once, scatter/gather, immediates, CQ poll/wait,
  unsignaled WRs, multi-packet messages, QP isolation, shared CQs;
* ``reliability`` — RC completion at the responder, RNR, retry exhaustion, flush,
  transient loss repaired, QP destruction, ``QP_FATAL``;
* ``rdma`` — RDMA WRITE/READ, ordering with SENDs, every remote access error;
* ``sqd`` — drain, ``SQ_DRAINED``, path change while quiesced;
* ``cq`` — CQ capacity: an overrun breaks the CQ (``CQ_ERR``) and fails the QP;
* ``cm`` — connect/accept/reject/unreachable/timeout/disconnect/close;
* ``removal`` — graceful removal (every context), ``DeviceBusy``, surprise removal
  and zombies.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

# Imported for their registrations, basics first: the order here is the order checks run in.
# isort: off
from . import _check_resources  # noqa: F401
from . import _check_qp_state  # noqa: F401
from . import _check_data  # noqa: F401
from . import _check_reliability  # noqa: F401
from . import _check_rdma  # noqa: F401
from . import _check_sqd  # noqa: F401
from . import _check_cq  # noqa: F401
from . import _check_cm  # noqa: F401
from . import _check_removal  # noqa: F401

# isort: on
from ._harness import Harness
from ._registry import CHECKS, Check

__all__ = ["CHECKS", "Check", "check_rng", "check_transport"]


def check_rng(seed: int, name: str) -> random.Random:
    """The RNG check ``name`` gets under ``seed`` (the same in every runner, so ids replay)."""
    return random.Random(f"rdsx-conformance/{seed}/{name}")


async def check_transport(
    harness: Harness, *, seed: int = 0, only: Iterable[str] | None = None
) -> None:
    """Run the conformance checks against the transport behind ``harness``.

    Args:
        harness: opens device pairs of the transport and injects its faults.
        seed: seeds every check's ``random.Random``; the same seed replays the same run.
        only: names of the checks to run (default: all of :data:`CHECKS`, in order).

    Raises:
        AssertionError: a check failed; the message starts with ``[check-name]``
            and says which rule of the contract was broken.
        KeyError: ``only`` names a check that does not exist.
    """
    names = list(CHECKS) if only is None else list(only)
    unknown = [name for name in names if name not in CHECKS]
    if unknown:
        raise KeyError(f"no conformance check named {', '.join(unknown)}")
    for name in names:
        await CHECKS[name](harness, check_rng(seed, name))
