"""What the sim examples share: two rdsx nodes on the in-process IB fabric, a socket each.

Not an example itself: ``hello.py`` and ``rdma.py`` import it (run them from any
directory; Python puts the script's own folder on ``sys.path``).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import rdsx

ALICE, BOB = "127.0.0.1", "127.0.0.2"
#: The port Alice's socket is bound to, and Bob's.
ALICE_PORT, BOB_PORT = 4000, 5000


@contextlib.asynccontextmanager
async def open_pair(seed: int) -> AsyncIterator[tuple[rdsx.Node, rdsx.Socket, rdsx.Socket]]:
    """Open a sim network with Alice's and Bob's nodes and bind one socket on each.

    Args:
        seed: the fabric's seed.

    Returns:
        (in ``async with``) Alice's node, her socket (``ALICE_PORT``) and Bob's
        socket (``BOB_PORT``); everything is closed when the block exits.
    """
    transport = rdsx.load_transport("sim")
    async with transport.open_network(seed=seed) as net:
        alice_devices = await net.add_node(ALICE)
        bob_devices = await net.add_node(BOB)
        async with (
            rdsx.open_node(ALICE, alice_devices) as alice,
            rdsx.open_node(BOB, bob_devices) as bob,
        ):
            a = alice.socket()
            a.bind(ALICE_PORT)
            b = bob.socket()
            b.bind(BOB_PORT)
            yield alice, a, b
