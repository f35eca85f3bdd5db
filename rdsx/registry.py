"""Find transports by name through the ``rdsx.transports`` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from .errors import TransportNotFound
from .verbs import Transport

__all__ = ["available_transports", "load_transport"]

GROUP = "rdsx.transports"


def available_transports() -> list[str]:
    """Return the names registered in the ``rdsx.transports`` group, sorted."""
    return sorted(ep.name for ep in entry_points(group=GROUP))


def load_transport(name: str) -> Transport:
    """Instantiate the transport registered as ``name``.

    Raises:
        TransportNotFound: nothing is registered under that name.
    """
    for ep in entry_points(group=GROUP):
        if ep.name == name:
            cls = ep.load()
            if not (isinstance(cls, type) and issubclass(cls, Transport)):
                raise TransportNotFound(f"entry point {name!r} is not a rdsx.verbs.Transport")
            return cls()
    raise TransportNotFound(
        f"no transport named {name!r}; available: {', '.join(available_transports()) or 'none'}"
    )
