"""An RDMA WRITE carried by a message, with its completion notification.

Bob registers a buffer and hands its cookie to Alice in an ordinary message.
Alice sends Bob a message that carries an RDMA WRITE into that buffer: her
node performs the WRITE on the QP before the message itself is delivered, so
when Bob reads the message the data is already in his buffer. Alice asked
to be notified and gets SUCCESS once Bob's node acknowledged the message.

Run it with ``python examples/rdma.py``.
"""

from __future__ import annotations

import trio

import rdsx

ALICE, BOB = "127.0.0.1", "127.0.0.2"


async def main() -> list[str]:
    """Run the exchange; return (and print) what happened."""
    lines: list[str] = []
    transport = rdsx.load_transport("sim")
    async with transport.open_network(seed=2) as net:
        alice_devices = await net.add_node(ALICE)
        bob_devices = await net.add_node(BOB)
        async with (
            rdsx.open_node(ALICE, alice_devices) as alice,
            rdsx.open_node(BOB, bob_devices) as bob,
        ):
            a = alice.socket()
            a.bind(4000)
            b = bob.socket()
            b.bind(5000)

            region = bytearray(64)
            cookie = b.get_mr(region)  # peers may write (and read) it
            await b.sendto(cookie.to_bytes(8, "big"), (ALICE, 4000))

            peer_cookie = int.from_bytes(await a.recv(), "big")
            payload = bytearray(b"written by alice's RDMA")
            await a.sendto(
                b"look at your buffer",
                (BOB, 5000),
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
