"""Public test tools: the transport conformance suite and its harness contract.

No pytest dependency: ``await check_transport(harness)`` raises
``AssertionError`` with a message naming the rule that a transport broke.
"""

from ._conformance import CHECKS as CHECKS
from ._conformance import Check as Check
from ._conformance import check_rng as check_rng
from ._conformance import check_transport as check_transport
from ._harness import Harness as Harness
