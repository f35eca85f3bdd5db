"""rdsx.shim's public surface: documented, typed values, statistics frozen."""

from __future__ import annotations

import inspect

import attrs
import pytest

import rdsx.shim
from rdsx.shim import MigrationRecord, ShimConfig, ShimStatistics


def test_every_public_name_is_documented() -> None:
    for name in rdsx.shim.__all__:
        obj = getattr(rdsx.shim, name)
        assert inspect.getdoc(obj), name
        for member_name, member in inspect.getmembers(obj):
            if member_name.startswith("_") or not callable(member):
                continue
            assert inspect.getdoc(member), f"{name}.{member_name}"


def test_values_are_frozen() -> None:
    record = MigrationRecord(graceful=True, removal_at=1.0, deadline=3.0, released_at=1.5)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        record.held = 3  # type: ignore[misc]
    assert record.release_seconds == 0.5 and record.resume_seconds is None
    stats = ShimStatistics(
        devices=1,
        migrations=(record,),
        held=0,
        resent=0,
        duplicates_dropped=0,
        resume_timeouts=0,
        lost=0,
        control_requests=0,
    )
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        stats.devices = 2  # type: ignore[misc]


def test_config_is_validated() -> None:
    with pytest.raises(ValueError):
        ShimConfig(drain_share=1.0)
    assert ShimConfig().control_port != 18634  # not RDS's own CM port
