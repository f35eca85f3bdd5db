"""The registry of named conformance checks and the guard every check runs under.

A check is ``async def check(harness, rng) -> None`` that raises
:class:`AssertionError` naming the rule the transport broke. :func:`check`
registers one under a name and wraps it so that

* it is bounded (``trio.fail_after``): a transport that hangs fails, it never
  hangs the suite;
* whatever else escapes (an unexpected typed error from the transport, an
  exception group from a nursery) still surfaces as one ``AssertionError``
  whose message starts with the check's name.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import trio

from ._harness import Harness

__all__ = ["CHECKS", "Check", "check"]

Check = Callable[[Harness, random.Random], Awaitable[None]]

#: name -> check, in registration (= reading) order.
CHECKS: dict[str, Check] = {}

#: Default bound of one check, in seconds of trio's clock. Generous for real
#: time; free under ``MockClock(autojump_threshold=0)``.
DEFAULT_BOUND = 60.0


def _first_assertion(group: BaseExceptionGroup[BaseException]) -> AssertionError | None:
    for exc in group.exceptions:
        if isinstance(exc, AssertionError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_assertion(exc)
            if found is not None:
                return found
    return None


def check(name: str, *, bound: float = DEFAULT_BOUND) -> Callable[[Check], Check]:
    """Register the decorated coroutine function as the check ``name``.

    Args:
        name: the check's id (also its pytest id); must be unique.
        bound: the longest the whole check may take, in seconds of trio's clock.

    Returns:
        A decorator that returns the guarded check (also stored in :data:`CHECKS`).
    """

    def decorate(fn: Check) -> Check:
        if name in CHECKS:
            raise ValueError(f"conformance check {name!r} registered twice")

        async def guarded(harness: Harness, rng: random.Random) -> None:
            where = f"[{name}] {getattr(harness, 'name', type(harness).__name__)}"
            try:
                with trio.fail_after(bound):
                    await fn(harness, rng)
            except trio.TooSlowError:
                raise AssertionError(
                    f"{where}: did not finish within {bound}s (the transport hangs)"
                ) from None
            except AssertionError as exc:
                raise AssertionError(f"{where}: {exc}") from exc
            except BaseExceptionGroup as group:
                # A nursery wraps a failing task's AssertionError; unwrap the first.
                found = _first_assertion(group)
                if found is not None:
                    raise AssertionError(f"{where}: {found}") from group
                if not isinstance(group, ExceptionGroup):
                    raise  # cancellation from outside: not ours to judge
                raise AssertionError(f"{where}: unexpected {group!r}") from group
            except Exception as exc:
                raise AssertionError(f"{where}: unexpected {type(exc).__name__}: {exc}") from exc

        guarded.__name__ = fn.__name__
        guarded.__qualname__ = fn.__qualname__
        guarded.__doc__ = fn.__doc__
        CHECKS[name] = guarded
        return guarded

    return decorate
