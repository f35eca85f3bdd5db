"""Hosts and their SR-IOV HCAs: one PF, N VFs, and the two port models.

* ``shared`` (ConnectX-2): every function answers on the port's one LID and
  all of them draw QP numbers and memory keys from the HCA's single space, so
  a VF moved to another host necessarily gets another LID and other QPNs.
* ``vswitch``: each function sits behind a virtual switch port with a LID of
  its own and a QPN/key space of its own; the LID may follow the VM.

An :class:`Endpoint` is what a LID leads to (the port, or a VF's vport); a
:class:`ResourceSpace` is a QPN + key namespace.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from rdsx.errors import ResourceExhausted

if TYPE_CHECKING:
    from .fabric import Fabric
    from .verbs import SimDevice, SimMR, SimQP
    from .vm import Vm

__all__ = ["Endpoint", "Function", "Hca", "Host", "PortModel", "ResourceSpace"]

#: QPNs 0 and 1 are the SMI/GSI QPs; ordinary QPs start here (mlx4 reserves a few more).
QPN_BASE = 0x48
QPN_LIMIT = 1 << 24
#: Memory keys are (index << 8) | 8-bit tag, as on mlx4.
KEY_TAG_BITS = 8


class PortModel(enum.Enum):
    """How SR-IOV functions appear on the subnet."""

    SHARED = "shared"
    VSWITCH = "vswitch"


class ResourceSpace:
    """A QP-number and memory-key namespace (per HCA when shared, per VF under vSwitch)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.qps: dict[int, SimQP] = {}
        self.mrs: dict[int, SimMR] = {}
        self._next_qpn = QPN_BASE
        self._next_key = 1

    def alloc_qpn(self) -> int:
        """Return a free QP number (24 bits, wrapping, skipping those in use).

        Raises:
            ResourceExhausted: every QP number is in use.
        """
        if len(self.qps) >= QPN_LIMIT - QPN_BASE:
            raise ResourceExhausted(f"no QP number left in {self.name}")
        qpn = self._next_qpn
        while qpn in self.qps:
            qpn = qpn + 1 if qpn + 1 < QPN_LIMIT else QPN_BASE
        self._next_qpn = qpn + 1 if qpn + 1 < QPN_LIMIT else QPN_BASE
        return qpn

    def alloc_key(self) -> int:
        """Return a memory key never handed out before in this space."""
        index = self._next_key
        self._next_key += 1
        return ((index << KEY_TAG_BITS) | (index * 0x5B & 0xFF)) & 0xFFFFFFFF


class Endpoint:
    """What one LID leads to: the HCA port (shared) or one function's vport (vSwitch)."""

    def __init__(self, host: Host, lid: int, space: ResourceSpace) -> None:
        self.host = host
        self.lid = lid
        self.space = space
        #: vGUID -> function, so CM messages (addressed by GUID) find their VF.
        self.functions: dict[int, Function] = {}


class Function:
    """One PCI function of an HCA: the PF (index 0) or a VF (index 1..N)."""

    def __init__(self, hca: Hca, index: int, space: ResourceSpace) -> None:
        self.hca = hca
        self.index = index
        self.space = space
        self.endpoint: Endpoint | None = None
        self.vguid = 0
        self.vm: Vm | None = None
        self.device: SimDevice | None = None

    @property
    def host(self) -> Host:
        """The host the function belongs to."""
        return self.hca.host

    @property
    def is_pf(self) -> bool:
        """True for the physical function."""
        return self.index == 0

    @property
    def name(self) -> str:
        """``"<host>/pf"`` or ``"<host>/vf<n>"``."""
        return f"{self.hca.host.name}/{'pf' if self.is_pf else f'vf{self.index}'}"

    @property
    def lid(self) -> int:
        """The LID the function answers on (0 while it has none)."""
        return self.endpoint.lid if self.endpoint is not None else 0


class Hca:
    """An SR-IOV HCA with one port: a PF and ``num_vfs`` VFs."""

    def __init__(self, host: Host, num_vfs: int, model: PortModel) -> None:
        self.host = host
        self.model = model
        self.space = ResourceSpace(f"{host.name}/hca")
        spaces = (
            [self.space] * (num_vfs + 1)
            if model is PortModel.SHARED
            else [
                ResourceSpace(f"{host.name}/{'pf' if i == 0 else f'vf{i}'}")
                for i in range(num_vfs + 1)
            ]
        )
        self.pf = Function(self, 0, spaces[0])
        self.vfs = [Function(self, i, spaces[i]) for i in range(1, num_vfs + 1)]
        #: The port's endpoint (the PF's LID); under ``shared`` every VF answers here.
        self.port: Endpoint | None = None

    def free_vf(self) -> Function:
        """The lowest-numbered VF not attached to a VM.

        Raises:
            ResourceExhausted: every VF is in use.
        """
        for vf in self.vfs:
            if vf.vm is None:
                return vf
        raise ResourceExhausted(f"all {len(self.vfs)} VFs of {self.host.name} are attached")


class Host:
    """A physical server: an HCA cabled to one leaf switch.

    Attributes:
        name: the host's name.
        hca: its HCA.
        switch: the index of the switch its cable goes to.
        link_is_up: False between ``fabric.link_down(host)`` and ``link_up``.
        crashed: True after :meth:`crash`.
    """

    def __init__(
        self, fabric: Fabric, name: str, switch: int, num_vfs: int, model: PortModel
    ) -> None:
        self.fabric = fabric
        self.name = name
        self.switch = switch
        self.link_is_up = True
        self.crashed = False
        #: When the host's egress link finishes serialising what it was given.
        self.tx_free = 0.0
        #: ``link_is_up and not crashed``, kept by the fabric (read per packet).
        self.reachable = True
        self.hca = Hca(self, num_vfs, model)

    @property
    def where(self) -> tuple[int, str]:
        """Where the host's port attaches (its switch and its name), for routing."""
        return (self.switch, self.name)

    @property
    def vms(self) -> list[Any]:
        """The VMs holding a VF of this host."""
        return [vf.vm for vf in self.hca.vfs if vf.vm is not None]

    def crash(self) -> None:
        """Power the host off: its VMs' devices vanish, peers are told nothing."""
        self.fabric.crash_host(self)

    def __repr__(self) -> str:
        return f"<Host {self.name}>"
