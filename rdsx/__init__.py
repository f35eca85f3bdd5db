"""rdsx: reliable datagram sockets (RDS-style) for trio over a pluggable verbs transport.

Every message is delivered in order and exactly once per (source, destination)
socket pair, even while the device underneath is removed and replaced, as in
the live migration of a VM with an SR-IOV InfiniBand VF.
"""

from .config import MAX_MESSAGE_SIZE as MAX_MESSAGE_SIZE
from .config import NodeConfig as NodeConfig
from .counters import Counters as Counters
from .errors import AddressInUse as AddressInUse
from .errors import AddressNotAvailable as AddressNotAvailable
from .errors import Congested as Congested
from .errors import DeviceBusy as DeviceBusy
from .errors import DeviceRemoved as DeviceRemoved
from .errors import LocalProtocolError as LocalProtocolError
from .errors import MessageTooLarge as MessageTooLarge
from .errors import ModeUnavailable as ModeUnavailable
from .errors import NotBound as NotBound
from .errors import NotConnected as NotConnected
from .errors import ProtocolError as ProtocolError
from .errors import RdsError as RdsError
from .errors import RemoteProtocolError as RemoteProtocolError
from .errors import SocketClosed as SocketClosed
from .errors import VerbsError as VerbsError
from .errors import WouldBlock as WouldBlock
from .info import ConnectionInfo as ConnectionInfo
from .info import MessageInfo as MessageInfo
from .info import NodeInfo as NodeInfo
from .info import SocketInfo as SocketInfo
from .node import Node as Node
from .node import open_node as open_node
from .rdma import RdmaArgs as RdmaArgs
from .rdma import RdmaNotification as RdmaNotification
from .rdma import RdmaStatus as RdmaStatus
from .registry import available_transports as available_transports
from .registry import load_transport as load_transport
from .socket import CongestionUpdate as CongestionUpdate
from .socket import Datagram as Datagram
from .socket import Socket as Socket

__version__ = "0.1.0"
