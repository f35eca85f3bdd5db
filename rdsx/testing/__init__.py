"""Public test tools: the transport conformance suite and its harness contract.

No pytest dependency: ``await check_transport(harness)`` raises
``AssertionError`` with a message naming the rule that a transport broke.
"""

from ._harness import Harness as Harness
