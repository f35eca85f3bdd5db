"""The transport seam: how a node, a test or rdsx-stress gets devices by name.

A transport (``sim``, ``tcp``, a third party's) registers a :class:`Transport`
subclass under the entry-point group ``rdsx.transports``. It opens a
:class:`Network`: for ``sim`` a whole fabric (subnet manager, hosts, VMs); for
``tcp`` the local interfaces. Asking the network for a node gives that node's
:class:`~rdsx.verbs.DeviceSource`.
"""

from __future__ import annotations

import abc
from contextlib import AbstractAsyncContextManager
from typing import Any, ClassVar

from ._abc import DeviceSource

__all__ = ["Network", "Transport"]


class Network(abc.ABC):
    """A set of nodes that can reach each other over one transport."""

    @abc.abstractmethod
    async def add_node(self, address: str) -> DeviceSource:
        """Create (or adopt) the node with RDS address ``address`` and return its devices.

        On ``sim`` this makes a host and a VM with a VF attached; on ``tcp`` it
        binds a soft-verbs device to that local interface address.

        Raises:
            AddressInUse: a node with that address already exists in this network.
            AddressNotAvailable: the transport cannot use that address.
        """


class Transport(abc.ABC):
    """A named verbs transport, found through the ``rdsx.transports`` entry points."""

    name: ClassVar[str]

    @abc.abstractmethod
    def open_network(self, **options: Any) -> AbstractAsyncContextManager[Network]:
        """Open a network; everything it started stops when the context exits.

        Options are transport-specific (``sim``: ``port_model``, ``seed``,
        ``profile``; ``tcp``: ``secret``, ``port``).
        """
