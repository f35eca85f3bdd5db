"""Timing profiles: the costs the simulator charges, as data with their sources.

A profile is a JSON file in ``transports/sim/profiles/`` (or anywhere, by
path). Every figure carries its value, its unit and either the source it was
taken from or ``"assumption": true`` with a note on how it was chosen, so a
reader can tell a measured cost from a guess::

    {"name": "...", "description": "...",
     "figures": {"hotplug_detach": {"value": 0.5, "unit": "s",
                                    "assumption": true, "note": "..."}, ...}}

Units are SI throughout: seconds, bytes, bytes per second. The loader rejects a
profile with a missing, unknown, unsourced or out-of-range figure, so a typo
fails loudly instead of silently charging zero.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from rdsx.errors import InvalidArgument

__all__ = ["FIGURES", "Figure", "TimingProfile", "available_profiles", "load_profile"]

#: Every figure a profile must give: name -> (unit, what it costs).
FIGURES: Mapping[str, tuple[str, str]] = {
    "hotplug_detach": ("s", "hot-unplug of a VF once the guest released it (PCI + dom0 script)"),
    "hotplug_attach": (
        "s",
        "hot-plug of a new VF, VF driver probe included (late detach: at the end of the restore)",
    ),
    "sm_reaction": ("s", "port-state trap to the subnet manager starting to program it"),
    "smp_rtt": ("s", "one directed-route SMP round trip; the SM sends them one after another"),
    "sa_query": ("s", "one SA PathRecord query round trip"),
    "qp_create": ("s", "creating one RC QP and moving it to RTS (driver + firmware commands)"),
    "standby_latency": (
        "s",
        "extra one-way delay per packet through an emulated (standby) device's software backend",
    ),
    "standby_bandwidth": ("B/s", "bytes per second an emulated device's backend moves"),
    "standby_qp_create": (
        "s",
        "setting up one RC QP of an emulated device (backend software; split as qp_create)",
    ),
    "migration_bandwidth": ("B/s", "bytes per second the VMM copies guest memory at"),
    "page_size": ("B", "guest page size: the dirty-tracking granularity"),
    "max_rounds": ("rounds", "pre-copy rounds at most before forcing stop-and-copy"),
    "stop_threshold": ("B", "dirty bytes at or below which pre-copy stops"),
    "max_sent_factor": ("x", "pre-copy gives up after sending this many times the memory"),
    "suspend": ("s", "fixed cost to suspend the guest at the start of stop-and-copy"),
    "resume": ("s", "fixed cost to restore and unpause the guest on the destination"),
    "vm_memory": ("B", "default guest memory when the VM does not give its own"),
    "vm_dirty_rate": ("B/s", "default guest dirty rate when the VM does not give its own"),
    "vm_working_set": ("B", "default writable working set: dirty bytes saturate at it"),
}

# Figures that count things rather than measure time or size: integers >= 1.
_COUNTS = frozenset({"max_rounds", "page_size"})


@attrs.frozen(slots=True, kw_only=True)
class Figure:
    """One number of a profile with where it comes from.

    Attributes:
        value: the number, in ``unit``.
        unit: SI unit (``s``, ``B``, ``B/s``) or a count (``rounds``, ``x``).
        source: the document the figure was taken from; empty for an assumption.
        assumption: True when the figure is a guess rather than a citation.
        note: how an assumption was chosen, or a remark on the source.
    """

    value: float
    unit: str
    source: str = ""
    assumption: bool = False
    note: str = ""


@attrs.frozen(slots=True, kw_only=True)
class TimingProfile:
    """A validated timing profile.

    Attributes:
        name: the profile's name (``"seed-cx2-xen"``, ``"modern"``).
        description: the testbed the profile models.
        figures: every figure of :data:`FIGURES`, with its source.
    """

    name: str
    description: str
    figures: Mapping[str, Figure]

    def __getitem__(self, key: str) -> float:
        """Return the value of figure ``key`` (seconds, bytes or a count)."""
        return self.figures[key].value

    @property
    def assumptions(self) -> tuple[str, ...]:
        """Names of the figures that are assumptions rather than citations."""
        return tuple(k for k, f in self.figures.items() if f.assumption)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TimingProfile:
        """Build and validate a profile from its JSON shape.

        Raises:
            InvalidArgument: a figure is missing, unknown, unsourced, in the
                wrong unit, or negative (counts: not a positive integer).
        """
        try:
            name = str(data["name"])
            raw = data["figures"]
        except (KeyError, TypeError) as exc:
            raise InvalidArgument(f"profile needs 'name' and 'figures': {exc}") from None
        missing = set(FIGURES) - set(raw)
        unknown = set(raw) - set(FIGURES)
        if missing or unknown:
            raise InvalidArgument(
                f"profile {name!r}: missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        figures = {key: _figure(name, key, raw[key]) for key in FIGURES}
        return cls(name=name, description=str(data.get("description", "")), figures=figures)

    def summary(self) -> str:
        """Return the profile as a table: figure, value, unit, source or assumption."""
        lines = [f"profile {self.name}: {self.description}"]
        for key, fig in self.figures.items():
            origin = f"assumption: {fig.note}" if fig.assumption else fig.source
            lines.append(f"  {key:<20} {fig.value:>14g} {fig.unit:<6} {origin}")
        return "\n".join(lines)


def _figure(profile: str, key: str, raw: Any) -> Figure:
    if not isinstance(raw, Mapping):
        raise InvalidArgument(f"profile {profile!r}: figure {key!r} must be an object")
    unit = FIGURES[key][0]
    try:
        fig = Figure(
            value=float(raw["value"]),
            unit=str(raw["unit"]),
            source=str(raw.get("source", "")),
            assumption=bool(raw.get("assumption", False)),
            note=str(raw.get("note", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidArgument(f"profile {profile!r}: figure {key!r}: {exc!r}") from None
    if fig.unit != unit:
        raise InvalidArgument(f"profile {profile!r}: {key} is in {unit}, not {fig.unit}")
    if not fig.source and not fig.assumption:
        raise InvalidArgument(f"profile {profile!r}: {key} has neither a source nor assumption")
    if fig.value < 0 or (key in _COUNTS and (fig.value < 1 or fig.value != int(fig.value))):
        raise InvalidArgument(f"profile {profile!r}: {key}={fig.value} is out of range")
    return fig


def available_profiles() -> tuple[str, ...]:
    """Return the names of the profiles shipped in ``transports/sim/profiles``."""
    folder = resources.files(__package__ or "transports.sim").joinpath("profiles")
    return tuple(sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json")))


def load_profile(profile: str | Path | TimingProfile = "seed-cx2-xen") -> TimingProfile:
    """Load a profile by shipped name, by path to a JSON file, or pass one through.

    Args:
        profile: a name from :func:`available_profiles`, a path to a ``.json``
            file, or an already loaded :class:`TimingProfile`.

    Raises:
        InvalidArgument: no such profile, or the file does not validate.
    """
    if isinstance(profile, TimingProfile):
        return profile
    path = Path(profile)
    if path.suffix == ".json" or path.exists():
        try:
            text = path.read_text()
        except OSError as exc:
            raise InvalidArgument(f"cannot read profile {path}: {exc}") from None
    else:
        folder = resources.files(__package__ or "transports.sim").joinpath("profiles")
        entry = folder.joinpath(f"{profile}.json")
        if not entry.is_file():
            raise InvalidArgument(
                f"unknown profile {profile!r}; shipped: {', '.join(available_profiles())}"
            )
        text = entry.read_text()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(f"profile {profile!s} is not JSON: {exc}") from None
    return TimingProfile.from_dict(data)
