"""Two processes exchange datagrams over the ``tcp`` transport with a shared secret.

Run it with ``python examples/tcp_pair.py``. The first process makes a fresh
cluster secret, starts the second process (this same file with ``--peer``)
and hands it the secret through ``RDSX_SECRET`` (not the command line, which
other users can read). Each process runs one rdsx node on its own loopback
address; they share one TCP port, as two hosts would share 18634. The first
sends numbered messages, the second echoes each one upper-cased, and the
first checks that every echo came back once and in order.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys

import trio

import rdsx

FIRST, SECOND = "127.0.0.1", "127.0.0.2"
FIRST_PORT, SECOND_PORT = 4000, 5000
COUNT = 20


def common_free_port() -> int:
    """A TCP port free on both loopback addresses (each node listens on its own)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((FIRST, 0))
            port = int(probe.getsockname()[1])
            try:
                with socket.socket() as other:
                    other.bind((SECOND, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no TCP port is free on both addresses")


async def peer(port: int) -> None:
    """The second process: echo every message upper-cased until ``bye``."""
    tcp = rdsx.load_transport("tcp")
    async with (
        tcp.open_network(port=port) as net,  # the secret comes from RDSX_SECRET
        rdsx.open_node(SECOND, await net.add_node(SECOND)) as node,
    ):
        sock = node.socket()
        sock.bind(SECOND_PORT)
        print("ready", flush=True)
        while True:
            data, source = await sock.recvfrom()
            if data == b"bye":
                return
            await sock.sendto(data.upper(), source)


async def main() -> list[str]:
    """The first process: start the peer, exchange, verify; return the lines printed."""
    port = common_free_port()
    secret = secrets.token_hex(32)
    env = {**os.environ, "RDSX_SECRET": secret}
    lines: list[str] = []
    async with trio.open_nursery() as nursery:
        child: trio.Process = await nursery.start(
            lambda task_status: trio.run_process(
                [sys.executable, __file__, "--peer", str(port)],
                env=env,
                stdout=subprocess.PIPE,
                task_status=task_status,
            )
        )
        assert child.stdout is not None
        seen = b""
        while b"ready\n" not in seen:
            chunk = await child.stdout.receive_some()
            if not chunk:
                raise RuntimeError("the peer process ended before it was ready")
            seen += chunk
        tcp = rdsx.load_transport("tcp")
        async with (
            tcp.open_network(secret=secret, port=port) as net,
            rdsx.open_node(FIRST, await net.add_node(FIRST)) as node,
        ):
            sock = node.socket()
            sock.bind(FIRST_PORT)
            sock.connect((SECOND, SECOND_PORT))
            for i in range(COUNT):
                await sock.send(b"message %d" % i)
            echoes = [await sock.recv() for _ in range(COUNT)]
            assert echoes == [b"MESSAGE %d" % i for i in range(COUNT)], echoes
            lines.append(f"pid {os.getpid()} sent {COUNT} datagrams to {SECOND}:{SECOND_PORT}")
            lines.append(f"pid {child.pid} echoed all {COUNT}, once each and in order")
            lines.append(f"first: {echoes[0].decode()!r}, last: {echoes[-1].decode()!r}")
            await sock.send(b"bye")
            await child.wait()
        lines.append(f"peer exited with status {child.returncode}")
    for line in lines:
        print(line)
    return lines


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--peer":
        trio.run(peer, int(sys.argv[2]))
    else:
        trio.run(main)
