"""``sim``: an in-process InfiniBand fabric with SR-IOV, a subnet manager and faults.

Everything runs on trio's clock; under ``MockClock(autojump_threshold=0)``
seconds-long experiments finish instantly and one seed gives one trace.

Example::

    async with open_fabric(port_model="vswitch", seed=0) as fabric:
        host = fabric.add_host("hostA", num_vfs=16)
        vm = fabric.create_vm("vm1", address="127.0.0.1")
        device = await fabric.attach(vm, host)
"""

from .fabric import Fabric as Fabric
from .fabric import FabricStatistics as FabricStatistics
from .fabric import TraceRecord as TraceRecord
from .fabric import open_fabric as open_fabric
from .faults import chaos as chaos
from .faults import partitioned as partitioned
from .hca import Host as Host
from .hca import PortModel as PortModel
from .packet import Packet as Packet
from .sm import PathRecord as PathRecord
from .sm import SubnetManager as SubnetManager
from .transport import SimNetwork as SimNetwork
from .transport import SimTransport as SimTransport
from .verbs import SimDevice as SimDevice
from .vm import Vm as Vm
