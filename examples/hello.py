"""Two rdsx nodes on the in-process IB fabric trade a few datagrams each way.

The network, the two nodes and their bound sockets come from ``_pair.py``.
Run it with ``python examples/hello.py``.
"""

from __future__ import annotations

import trio
from _pair import ALICE, ALICE_PORT, BOB, BOB_PORT, open_pair


async def main() -> list[str]:
    """Run the exchange; return (and print) what each side received."""
    lines: list[str] = []
    async with open_pair(seed=1) as (alice, a, b):
        b.connect((ALICE, ALICE_PORT))  # a default destination for send()
        for i in range(3):
            await a.sendto(b"hello bob #%d" % i, (BOB, BOB_PORT))
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
