"""The pre-copy model: how many rounds a live migration takes and what it leaves to stop-and-copy.

Pure arithmetic, no trio. Round 1 sends the whole memory while the guest runs;
every later round sends what the guest dirtied during the previous one. Dirty
bytes grow with the dirty rate but saturate at the writable working set, since a
page rewritten twice is sent once. Pre-copy stops, as Xen's ``xc_domain_save``
does, when one of these holds before the next round would start:

* ``converged`` — what is left is at or below the stop threshold;
* ``max-rounds`` — the round limit is reached;
* ``max-sent`` — the next round would push the total past ``max_sent_factor`` ×
  memory;
* ``not-converging`` — the guest dirtied at least as much as the last round sent.

What is left is copied during stop-and-copy, with the guest paused.
"""

from __future__ import annotations

import math

import attrs

from rdsx.errors import InvalidArgument

__all__ = ["PrecopyPlan", "Round", "plan_precopy"]


@attrs.frozen(slots=True, kw_only=True)
class Round:
    """One pre-copy round.

    Attributes:
        index: 1 for the first (full) copy, then 2, 3, ...
        bytes: bytes sent in the round (whole pages).
        duration: seconds the round takes at the migration bandwidth.
    """

    index: int
    bytes: int
    duration: float


@attrs.frozen(slots=True, kw_only=True)
class PrecopyPlan:
    """The rounds of a pre-copy and the remainder for stop-and-copy.

    Attributes:
        rounds: the pre-copy rounds, in order.
        final_bytes: dirty bytes left for stop-and-copy.
        final_copy: seconds to send them (the guest is paused meanwhile).
        reason: why pre-copy stopped: ``converged``, ``max-rounds``,
            ``max-sent`` or ``not-converging``.
    """

    rounds: tuple[Round, ...]
    final_bytes: int
    final_copy: float
    reason: str

    @property
    def precopy_time(self) -> float:
        """Seconds spent in pre-copy rounds (the guest keeps running)."""
        return math.fsum(r.duration for r in self.rounds)

    @property
    def total_bytes(self) -> int:
        """Bytes sent in all, pre-copy and stop-and-copy."""
        return sum(r.bytes for r in self.rounds) + self.final_bytes


def plan_precopy(
    *,
    memory: int,
    dirty_rate: float,
    working_set: int,
    bandwidth: float,
    page_size: int,
    max_rounds: int,
    stop_threshold: float,
    max_sent_factor: float,
) -> PrecopyPlan:
    """Plan the pre-copy rounds of one migration.

    Args:
        memory: guest memory in bytes.
        dirty_rate: bytes the guest dirties per second while it runs.
        working_set: dirty bytes saturate here (capped at ``memory``).
        bandwidth: migration bandwidth in bytes per second.
        page_size: dirty-tracking granularity; byte counts round up to pages.
        max_rounds: pre-copy rounds at most (round 1 included).
        stop_threshold: stop once at most this many bytes are left.
        max_sent_factor: stop before the total sent exceeds this × memory.

    Returns:
        The plan; deterministic in its arguments.

    Raises:
        InvalidArgument: a size or rate is negative, or bandwidth, page size or
            round limit is not positive.
    """
    if bandwidth <= 0 or page_size <= 0 or max_rounds < 1:
        raise InvalidArgument("bandwidth, page_size and max_rounds must be positive")
    if min(memory, dirty_rate, working_set, stop_threshold, max_sent_factor) < 0:
        raise InvalidArgument("memory, dirty rate, working set and thresholds must be >= 0")

    def pages(nbytes: float) -> int:
        return math.ceil(nbytes / page_size) * page_size

    cap = min(pages(memory), pages(working_set))
    rounds: list[Round] = []
    send = pages(memory)
    total = 0
    while True:
        duration = send / bandwidth
        rounds.append(Round(index=len(rounds) + 1, bytes=send, duration=duration))
        total += send
        dirty = min(cap, pages(dirty_rate * duration))
        if dirty <= stop_threshold:
            reason = "converged"
        elif len(rounds) >= max_rounds:
            reason = "max-rounds"
        elif total + dirty > max_sent_factor * memory:
            reason = "max-sent"
        elif len(rounds) > 1 and dirty >= send:
            reason = "not-converging"
        else:
            send = dirty
            continue
        return PrecopyPlan(
            rounds=tuple(rounds), final_bytes=dirty, final_copy=dirty / bandwidth, reason=reason
        )
