"""rdsx-info and the node's admin socket: tables, permissions, bad requests."""

from __future__ import annotations

import io
import os
import socket
import stat
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

import rdsx
from bench.info import main as info_main
from transports.tcp.harness import TEST_SECRET


def tables(text: str) -> dict[str, list[list[str]]]:
    """Split rds-info output into {title: rows of fields} (header line dropped)."""
    result: dict[str, list[list[str]]] = {}
    for block in text.strip("\n").split("\n\n"):
        lines = block.splitlines()
        result[lines[0].rstrip(":")] = [line.split() for line in lines[2:]]
    return result


async def run_info(*argv: str) -> str:
    out = io.StringIO()
    status = await trio.to_thread.run_sync(lambda: info_main(list(argv), out=out))
    assert status == 0
    return out.getvalue()


async def test_tables_of_a_tcp_node(tmp_path: Path) -> None:
    path = str(tmp_path / "a.sock")
    tcp = rdsx.load_transport("tcp")
    with trio.fail_after(30):
        async with tcp.open_network(secret=TEST_SECRET, port=0) as net:
            da, db = await net.add_node("127.0.0.71"), await net.add_node("127.0.0.72")
            async with (
                rdsx.open_node("127.0.0.71", da, config=rdsx.NodeConfig(admin_socket=path)) as a,
                rdsx.open_node("127.0.0.72", db) as b,
            ):
                sa, sb = a.socket(), b.socket()
                sa.bind(4000)
                sb.bind(5000)
                sa.connect(("127.0.0.72", 5000))
                for i in range(3):
                    await sb.sendto(b"x" * (10 + i), ("127.0.0.71", 4000))
                await sa.send(b"hello")
                assert await sb.recv() == b"hello"
                while a.statistics()["recv_delivered"] < 3:
                    await trio.sleep(0.01)  # polling a counter the peer's sends raise
                # "hello" is acked and no SEND (ack frames included) is still outstanding,
                # so the connection row is steady when rdsx-info reads it.
                info = a.info()
                while info.retransmit_queue or any(c.flags[0] == "s" for c in info.connections):
                    await trio.sleep(0.01)
                    info = a.info()
                got = tables(await run_info("-S", path))
                tcp_only = tables(await run_info("-S", path, "-T"))
    assert set(got) == {
        "Counters",
        "RDS Sockets",
        "RDS Connections",
        "Receive Message Queue",
        "Send Message Queue",
        "Retransmit Message Queue",
        "TCP Connections",
    }
    assert got["RDS Sockets"][0][:6] == [
        "127.0.0.71",
        "4000",
        "127.0.0.72",
        "5000",
        "262144",
        "262144",
    ]
    [conn] = got["RDS Connections"]
    assert conn[:3] == ["127.0.0.71", "127.0.0.72", "0"] and conn[5] == "--C-"
    assert int(conn[3]) == 2 and int(conn[4]) == 4  # one sent (seq 1); three received (1..3)
    recv_rows = got["Receive Message Queue"]
    assert [(r[0], r[1], r[2], r[3], r[5], r[6]) for r in recv_rows] == [
        ("127.0.0.71", "4000", "127.0.0.72", "5000", str(seq), str(9 + seq)) for seq in (1, 2, 3)
    ]
    counters = {row[0]: int(row[1]) for row in got["Counters"]}
    assert counters["recv_delivered"] == 3 and counters["send_queued"] == 1
    assert counters["tcp_frames_rx"] > 0
    assert list(got).index("Counters") == 0
    assert list(tcp_only) == ["TCP Connections"]
    rows = tcp_only["TCP Connections"]
    assert rows and all(r[0] == "127.0.0.71" and r[2] == "127.0.0.72" for r in rows)
    assert not os.path.exists(path)  # removed when the node closed


async def test_admin_socket_is_owner_only_and_survives_bad_requests(tmp_path: Path) -> None:
    path = str(tmp_path / "n.sock")
    sim = rdsx.load_transport("sim")
    with trio.fail_after(30):
        async with sim.open_network(seed=1) as net:
            dev = await net.add_node("127.0.0.1")
            config = rdsx.NodeConfig(admin_socket=path)
            async with rdsx.open_node("127.0.0.1", dev, config=config) as node:
                mode = os.stat(path).st_mode
                assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600

                def exchange(payload: bytes) -> tuple[list[Any], bool]:
                    """Send, read to EOF: (replies, True) or (replies so far, False) if reset."""
                    data, clean = b"", True
                    with socket.socket(socket.AF_UNIX) as s:
                        s.settimeout(5)
                        s.connect(path)
                        try:
                            s.sendall(payload)
                            s.shutdown(socket.SHUT_WR)
                            while chunk := s.recv(4096):
                                data += chunk
                        except ConnectionResetError:
                            clean = False  # the node closed on us mid-request
                    unpacker = msgpack.Unpacker(raw=False)
                    unpacker.feed(data)
                    return list(unpacker), clean

                # Not msgpack: an error answer, then the connection is closed.
                replies, _ = await trio.to_thread.run_sync(exchange, b"\xc1\xc1\xc1")
                assert replies[0]["ok"] is False and "malformed" in replies[0]["error"]
                # Valid msgpack, wrong shape: error answers, the connection goes on.
                batch = b"".join(
                    msgpack.packb(r) for r in ([1, 2], {"op": "reboot"}, {"op": 3}, {"op": "node"})
                )
                replies, _ = await trio.to_thread.run_sync(exchange, batch)
                assert [r["ok"] for r in replies] == [False, False, False, True]
                assert replies[3]["result"]["address"] == "127.0.0.1"
                # Too big a request: refused and cut off (possibly while we still send).
                replies, clean = await trio.to_thread.run_sync(
                    exchange, msgpack.packb({"op": "x" * 100_000})
                )
                assert not clean or replies[0]["ok"] is False
                assert all(not r["ok"] for r in replies)
                # The node still works, and the tool still reads it.
                sock = node.socket()
                sock.bind(7)
                await sock.sendto(b"ping", ("127.0.0.1", 7))
                assert await sock.recv() == b"ping"
                text = await run_info("-S", path, "-T", "-k")
                assert "(none: the node's transport is not tcp)" in text
                assert tables(text)["RDS Sockets"][0][:2] == ["127.0.0.1", "7"]


async def test_stale_socket_is_replaced_and_other_files_refused(tmp_path: Path) -> None:
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))  # bound, never listening, closed: what a killed node leaves
    plain = tmp_path / "plain"
    plain.write_text("not a socket")
    sim = rdsx.load_transport("sim")
    async with sim.open_network(seed=1) as net:
        dev = await net.add_node("127.0.0.1")
        config = rdsx.NodeConfig(admin_socket=str(stale))
        async with rdsx.open_node("127.0.0.1", dev, config=config):
            assert stat.S_IMODE(os.stat(stale).st_mode) == 0o600
        with pytest.raises(BaseException) as caught:  # an ExceptionGroup from the node's nursery
            async with rdsx.open_node(
                "127.0.0.1", dev, config=rdsx.NodeConfig(admin_socket=str(plain))
            ):
                pass
        assert "not a socket" in repr(caught.value)
    assert plain.read_text() == "not a socket"


def test_unreachable_socket_exits_1(tmp_path: Path) -> None:
    assert info_main(["-S", str(tmp_path / "nobody.sock")]) == 1


async def test_tcp_connections_under_the_transparent_shim(tmp_path: Path) -> None:
    """-T looks through the shim to the tcp device under it."""
    path = str(tmp_path / "t.sock")
    tcp = rdsx.load_transport("tcp")
    with trio.fail_after(30):
        async with tcp.open_network(secret=TEST_SECRET, port=0) as net:
            da, db = await net.add_node("127.0.0.73"), await net.add_node("127.0.0.74")
            config = rdsx.NodeConfig(admin_socket=path)
            async with (
                rdsx.open_node("127.0.0.73", da, mode="transparent", config=config) as a,
                rdsx.open_node("127.0.0.74", db, mode="transparent") as b,
            ):
                sa, sb = a.socket(), b.socket()
                sa.bind(4000)
                sb.bind(5000)
                await sa.sendto(b"hi", ("127.0.0.74", 5000))
                assert await sb.recv() == b"hi"
                rows = tables(await run_info("-S", path, "-T"))["TCP Connections"]
    assert rows and all(r[0] == "127.0.0.73" and r[2] == "127.0.0.74" for r in rows)
