"""The transparent shim: bottom-up live migration at the verbs layer.

:class:`TransparentDeviceSource` wraps any transport's device source and yields
one stable virtual device whose verbs objects survive device replacements
(DESIGN §1, problems 1-4). See ``README.md`` "Transparent mode (bottom-up)".
"""

from .core import ShimConfig as ShimConfig
from .device import TransparentDeviceSource as TransparentDeviceSource
from .device import VirtualDevice as VirtualDevice
from .stats import MigrationRecord as MigrationRecord
from .stats import ShimStatistics as ShimStatistics

__all__ = [
    "MigrationRecord",
    "ShimConfig",
    "ShimStatistics",
    "TransparentDeviceSource",
    "VirtualDevice",
]
