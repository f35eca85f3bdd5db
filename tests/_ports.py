"""Free loopback TCP ports for the tests that run real processes or listeners."""

from __future__ import annotations

import socket


def free_port(*addrs: str) -> int:
    """A TCP port free on every one of ``addrs`` (default ``127.0.0.1``).

    Two nodes on two loopback addresses share one port, as two hosts would.

    Raises:
        RuntimeError: no port was free on all of them in 20 tries.
    """
    first, *others = addrs or ("127.0.0.1",)
    for _ in range(20):
        with socket.socket() as probe:
            probe.bind((first, 0))
            port = int(probe.getsockname()[1])
            try:
                for addr in others:
                    with socket.socket() as other:
                        other.bind((addr, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no common free port")
