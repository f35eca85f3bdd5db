"""The connection life cycle: the one table every transition goes through.

Two rules, as in h11's ``_state.py``:

1. Everything that decides whether a state change is legal lives here.
   :class:`~rdsx.engine.Connection` changes ``state`` only through
   :func:`transition`.
2. This module does not know which side initiated; a state is about the
   transport under one node pair, not about roles.

Grand Unified Theory of the connection life cycle (after Linux
``net/rds/threads.c``, extended with what a sans-IO engine needs)::

    DOWN --start_connect / incoming_connect--> CONNECTING
    CONNECTING --transport_up (handshake accepted)--> UP
    UP --incoming_connect (a stale transport is replaced)--> RESETTING
    RESETTING --transport_up on the new transport--> UP
    CONNECTING | UP | RESETTING | ERROR --transport_down--> DISCONNECTING
    DISCONNECTING --queues reset, retransmit queue spliced--> DOWN
    any state but ERROR --a frame did not parse or lied--> ERROR

DISCONNECTING and RESETTING are transient inside one call of the engine, as
they are inside one run of the kernel's shutdown worker; they are states all
the same, so ``info()`` and the illegal-edge checks see them. ERROR is only
left through DISCONNECTING: the node must tear the transport down, which is
what Linux's "no ERROR -> CONNECTING shortcut" fix (rds.md §6) enforces.
"""

from __future__ import annotations

import enum

from ..errors import LocalProtocolError

__all__ = ["LEGAL_TRANSITIONS", "ConnState", "transition"]


class ConnState(enum.Enum):
    """The state of one connection (values as Linux's ``RDS_CONN_*``)."""

    DOWN = 0
    CONNECTING = 1
    DISCONNECTING = 2
    UP = 3
    RESETTING = 4
    ERROR = 5


_S = ConnState

#: from-state -> the set of legal to-states.
LEGAL_TRANSITIONS: dict[ConnState, frozenset[ConnState]] = {
    _S.DOWN: frozenset({_S.CONNECTING, _S.ERROR}),
    _S.CONNECTING: frozenset({_S.UP, _S.DISCONNECTING, _S.ERROR}),
    _S.UP: frozenset({_S.RESETTING, _S.DISCONNECTING, _S.ERROR}),
    _S.RESETTING: frozenset({_S.UP, _S.DISCONNECTING, _S.ERROR}),
    _S.DISCONNECTING: frozenset({_S.DOWN, _S.ERROR}),
    _S.ERROR: frozenset({_S.DISCONNECTING}),
}


def transition(old: ConnState, new: ConnState) -> ConnState:
    """Check the edge ``old -> new`` and return ``new``.

    Raises:
        LocalProtocolError: the edge is not in :data:`LEGAL_TRANSITIONS`
            (the engine was driven out of order).
    """
    if new not in LEGAL_TRANSITIONS[old]:
        raise LocalProtocolError(f"illegal connection transition {old.name} -> {new.name}")
    return new
