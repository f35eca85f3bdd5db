"""Frozen attrs values built on the data path without their generated ``__init__``.

A frozen attrs class's ``__init__`` sets each slot through ``object.__setattr__``
by name; for :class:`~rdsx.verbs.WorkCompletion` (seven fields, two per message)
and the decoder's :class:`~._frames.Send` that is a fifth of a message's cost on
this transport. ``object.__new__`` plus the slot descriptors' own ``__set__``
does the same for about two thirds of the price, and the result is the very same
class: equal, hashable and frozen like any other instance. Cold paths keep
calling the classes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from rdsx.verbs import WorkCompletion

__all__ = ["WC_SETTERS", "new", "slot_setters"]

#: ``object.__new__``: an instance whose slots are not set yet.
new = object.__new__

Setter = Callable[[Any, Any], None]


def slot_setters(cls: type, *names: str) -> tuple[Setter, ...]:
    """Return the slot setters of ``cls``'s attrs fields ``names``, in that order.

    Raises:
        ValueError: ``names`` are not exactly the class's fields, in field order
            (a changed value class must not leave a slot unset).
    """
    fields = tuple(field.name for field in attrs.fields(cls))
    if names != fields:
        raise ValueError(f"{cls.__name__} fields are {fields}, not {names}")
    return tuple(getattr(cls, name).__set__ for name in names)


#: ``WorkCompletion``'s setters: wr_id, status, opcode, byte_len, qp_num, imm_data, message.
WC_SETTERS = slot_setters(
    WorkCompletion, "wr_id", "status", "opcode", "byte_len", "qp_num", "imm_data", "message"
)
