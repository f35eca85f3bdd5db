"""An RDMA WRITE carried by a message, with its completion notification.

Bob registers a buffer and hands its cookie to Alice in an ordinary message.
Alice sends Bob a message that carries an RDMA WRITE into that buffer: her
node performs the WRITE on the QP before the message itself is delivered, so
when Bob reads the message the data is already in his buffer. Alice asked
to be notified and gets SUCCESS once Bob's node acknowledged the message.

The network, the two nodes and their bound sockets come from ``_pair.py``.
Run it with ``python examples/rdma.py``.
"""

from __future__ import annotations

import trio
from _pair import ALICE, ALICE_PORT, BOB, BOB_PORT, open_pair

import rdsx


async def main() -> list[str]:
    """Run the exchange; return (and print) what happened."""
    lines: list[str] = []
    async with open_pair(seed=2) as (_, a, b):
        region = bytearray(64)
        cookie = b.get_mr(region)  # peers may write (and read) it
        await b.sendto(cookie.to_bytes(8, "big"), (ALICE, ALICE_PORT))

        peer_cookie = int.from_bytes(await a.recv(), "big")
        payload = bytearray(b"written by alice's RDMA")
        await a.sendto(
            b"look at your buffer",
            (BOB, BOB_PORT),
            rdma=rdsx.RdmaArgs(cookie=peer_cookie, local=payload, notify=True, token=42),
        )

        message = await b.recv()
        lines.append(f"bob got {message.decode()!r}")
        lines.append(f"bob's buffer now holds {bytes(region[: len(payload)]).decode()!r}")
        note = await a.recv_notification()
        lines.append(f"alice's notification: token={note.token} status={note.status.name}")
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    trio.run(main)
