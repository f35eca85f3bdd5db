"""Soft verbs over real TCP sockets (siw-like): the ``tcp`` transport of rdsx.

A device is a local interface address; each RC QP is one TCP connection
carrying framed work requests, acknowledged by the responder's QP (not by
TCP); every connection is authenticated with a shared cluster secret. See the
README section "The tcp transport".
"""

from ._addresses import LocalAddresses as LocalAddresses
from ._addresses import system_addresses as system_addresses
from ._device import TcpDevice as TcpDevice
from ._network import DEFAULT_PORT as DEFAULT_PORT
from ._network import TcpNetwork as TcpNetwork
from ._network import TcpNode as TcpNode
from ._network import TcpTransport as TcpTransport
from ._secret import ENV_VAR as ENV_VAR
from ._secret import load_secret as load_secret
from ._stats import TcpStatistics as TcpStatistics
