"""The data path's slot-by-slot construction of frozen values (transports/tcp/_build.py)."""

from __future__ import annotations

import attrs
import pytest

from rdsx.verbs import WcOpcode, WcStatus, WorkCompletion
from transports.tcp._build import WC_SETTERS, new, slot_setters
from transports.tcp._frames import Send


def test_a_completion_built_by_slots_is_an_ordinary_work_completion() -> None:
    wc = new(WorkCompletion)
    values = (7, WcStatus.SUCCESS, WcOpcode.RECV, 4096, 0x1234, 99, "")
    for setter, value in zip(WC_SETTERS, values, strict=True):
        setter(wc, value)
    expected = WorkCompletion(*values)
    assert type(wc) is WorkCompletion
    assert wc == expected and hash(wc) == hash(expected) and repr(wc) == repr(expected)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        wc.byte_len = 1  # type: ignore[misc]


def test_setters_must_name_every_field_in_order() -> None:
    with pytest.raises(ValueError, match="fields are"):
        slot_setters(Send, "psn", "payload", "imm")
    with pytest.raises(ValueError, match="fields are"):
        slot_setters(Send, "psn", "imm")
