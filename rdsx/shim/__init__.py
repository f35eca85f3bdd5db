"""The transparent shim: bottom-up live migration at the verbs layer.

:class:`TransparentDeviceSource` wraps any transport's device source and yields
one stable virtual device whose verbs objects survive device replacements
(DESIGN §1, problems 1-4). See ``README.md`` "Transparent mode (bottom-up)".
"""

from .core import ShimConfig as ShimConfig
from .device import TransparentDeviceSource as TransparentDeviceSource
from .device import VirtualDevice as VirtualDevice
from .protocol import USER_PRIVATE_DATA_MAX
from .stats import MigrationRecord as MigrationRecord
from .stats import ShimStatistics as ShimStatistics

#: The most private data ``cm_connect`` and ``accept`` carry through the shim: the
#: CM's 196 bytes less the 20 its own header keeps (more is ``InvalidArgument``).
PRIVATE_DATA_MAX = USER_PRIVATE_DATA_MAX

__all__ = [
    "PRIVATE_DATA_MAX",
    "MigrationRecord",
    "ShimConfig",
    "ShimStatistics",
    "TransparentDeviceSource",
    "VirtualDevice",
]
