"""Two rdsx nodes on the in-process IB fabric trade a few datagrams each way.

Run it with ``python examples/hello.py``.
"""

from __future__ import annotations

import trio

import rdsx

ALICE, BOB = "127.0.0.1", "127.0.0.2"


async def main() -> list[str]:
    """Run the exchange; return (and print) what each side received."""
    lines: list[str] = []
    transport = rdsx.load_transport("sim")
    async with transport.open_network(seed=1) as net:
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
            b.connect((ALICE, 4000))  # a default destination for send()
            for i in range(3):
                await a.sendto(b"hello bob #%d" % i, (BOB, 5000))
                await b.send(b"hello alice #%d" % i)
            for sock, who in ((b, "bob"), (a, "alice")):
                for _ in range(3):
                    data, (addr, port) = await sock.recvfrom()
                    lines.append(f"{who} got {data.decode()!r} from {addr}:{port}")
            await a.sendto(b"", (BOB, 0))  # a ping: port 0 answers with an empty pong
            _, source = await a.recvfrom()
            lines.append(f"alice got a pong from {source[0]}:{source[1]}")
            stats = alice.statistics()
            lines.append(f"alice sent {stats.send_queued} messages, all acked: {a.snd_bytes == 0}")
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    trio.run(main)
