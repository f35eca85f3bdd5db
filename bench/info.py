# ruff: noqa: UP031  (the %-formats are rds-info.c's own, kept verbatim to match its columns)
"""``rdsx-info``: rds-info for rdsx (reference/rds.md §4).

``rdsx-info [-c] [-k] [-n] [-r] [-s] [-t] [-T] [-S PATH]`` reads a running
node's tables through its admin socket (``NodeConfig(admin_socket=PATH)``;
``-S`` or ``RDSX_ADMIN_SOCKET``) and prints them with rds-info's headers and
column formats. With no table option every table is printed.

| opt | table |
|---|---|
| -c | ``Counters:`` (the node's, then the transport's) |
| -k | ``RDS Sockets:`` |
| -n | ``RDS Connections:`` |
| -r / -s / -t | ``Receive`` / ``Send`` / ``Retransmit Message Queue:`` |
| -T | ``TCP Connections:`` (the tcp transport's QP connections) |

rdsx has no TOS, so the ``Tos`` column is 0.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

import msgpack

from rdsx.counters import CORE_COUNTERS

__all__ = ["AdminClient", "AdminError", "main", "print_tables"]

ENV_VAR = "RDSX_ADMIN_SOCKET"
TABLE_FLAGS = "cknrstT"


class AdminError(Exception):
    """The node answered a request with an error, or the socket broke."""


class AdminClient:
    """A blocking client of one node's admin socket (see :mod:`rdsx.admin`).

    Args:
        path: the socket's path.
        timeout: seconds to wait for each answer.

    Raises:
        OSError: the socket cannot be reached.
    """

    def __init__(self, path: str, timeout: float = 5.0) -> None:
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        try:
            self._sock.connect(path)
        except OSError:
            self._sock.close()
            raise
        self._unpacker = msgpack.Unpacker(raw=False)

    def request(self, op: str) -> Any:
        """Send ``{"op": op}`` and return the answer's result.

        Raises:
            AdminError: the node refused the request or closed the socket.
        """
        self._sock.sendall(msgpack.packb({"op": op}))
        while True:
            for reply in self._unpacker:
                if not isinstance(reply, dict) or not reply.get("ok"):
                    error = reply.get("error") if isinstance(reply, dict) else reply
                    raise AdminError(f"{op}: {error}")
                return reply.get("result")
            data = self._sock.recv(65536)
            if not data:
                raise AdminError(f"{op}: the node closed the admin socket")
            self._unpacker.feed(data)

    def close(self) -> None:
        """Close the connection."""
        self._sock.close()


def _counters(out: TextIO, counters: Mapping[str, Mapping[str, int]]) -> None:
    out.write("\nCounters:\n%25s %16s\n" % ("CounterName", "Value"))
    node = dict(counters.get("node", {}))
    names = list(CORE_COUNTERS) + [n for n in node if n not in CORE_COUNTERS]
    for name in names:
        out.write("%25s %16u\n" % (name, node.get(name, 0)))
    for name, value in counters.get("transport", {}).items():
        out.write("%25s %16u\n" % (name, value))


def _sockets(out: TextIO, rows: list[Mapping[str, Any]]) -> None:
    out.write(
        "\nRDS Sockets:\n%15s %5s %15s %5s %10s %10s %8s\n"
        % ("BoundAddr", "BPort", "ConnAddr", "CPort", "SndBuf", "RcvBuf", "Inode")
    )
    for r in rows:
        out.write(
            "%15s %5u %15s %5u %10u %10u %8u\n"
            % (
                r["bound_addr"] or "0.0.0.0",
                r["bound_port"],
                r["conn_addr"] or "0.0.0.0",
                r["conn_port"],
                r["sndbuf"],
                r["rcvbuf"],
                r["inode"],
            )
        )


def _connections(out: TextIO, rows: list[Mapping[str, Any]]) -> None:
    out.write(
        "\nRDS Connections:\n%15s %15s %4s %16s %16s %4s\n"
        % ("LocalAddr", "RemoteAddr", "Tos", "NextTX", "NextRX", "Flgs")
    )
    for r in rows:
        out.write(
            "%15s %15s %4u %16u %16u %4s\n"
            % (r["local_addr"], r["remote_addr"], 0, r["next_tx_seq"], r["next_rx_seq"], r["flags"])
        )


def _queue(out: TextIO, name: str, rows: list[Mapping[str, Any]]) -> None:
    out.write(
        "\n%s Message Queue:\n%15s %5s %15s %5s %4s %16s %10s\n"
        % (name, "LocalAddr", "LPort", "RemoteAddr", "RPort", "Tos", "Seq", "Bytes")
    )
    for r in rows:
        out.write(
            "%15s %5u %15s %5u %4u %16u %10u\n"
            % (
                r["local_addr"],
                r["local_port"],
                r["remote_addr"],
                r["remote_port"],
                0,
                r["seq"],
                r["bytes"],
            )
        )


def _tcp(out: TextIO, rows: list[Mapping[str, Any]] | None) -> None:
    out.write(
        "\nTCP Connections:\n%15s %5s %15s %5s %10s %10s %10s %10s %10s\n"
        % (
            "LocalAddr",
            "LPort",
            "RemoteAddr",
            "RPort",
            "HdrRemain",
            "DataRemain",
            "SentNxt",
            "ExpectUna",
            "SeenUna",
        )
    )
    if rows is None:
        out.write("(none: the node's transport is not tcp)\n")
        return
    for r in rows:
        out.write(
            "%15s %5u %15s %5u %10u %10u %10u %10u %10u\n"
            % (
                r["local_addr"],
                r["local_port"],
                r["remote_addr"],
                r["remote_port"],
                r["hdr_remain"],
                r["data_remain"],
                r["sent_nxt"],
                r["expect_una"],
                r["seen_una"],
            )
        )


def print_tables(client: AdminClient, flags: str, out: TextIO) -> None:
    """Print the tables ``flags`` selects (letters of ``cknrstT``; empty: all).

    Raises:
        AdminError: the node refused a request.
        OSError: the socket broke.
    """
    flags = flags or TABLE_FLAGS
    info: Mapping[str, Any] = {}
    if set(flags) & set("knrst"):
        info = client.request("info")
    for flag in TABLE_FLAGS:
        if flag not in flags:
            continue
        if flag == "c":
            _counters(out, client.request("counters"))
        elif flag == "k":
            _sockets(out, info["sockets"])
        elif flag == "n":
            _connections(out, info["connections"])
        elif flag == "r":
            _queue(out, "Receive", info["recv_queue"])
        elif flag == "s":
            _queue(out, "Send", info["send_queue"])
        elif flag == "t":
            _queue(out, "Retransmit", info["retransmit_queue"])
        elif flag == "T":
            _tcp(out, client.request("transport_connections"))


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """The ``rdsx-info`` console script; returns the exit status."""
    out = out if out is not None else sys.stdout
    parser = argparse.ArgumentParser(prog="rdsx-info", description="rds-info for rdsx")
    for flag, text in (
        ("c", "counters"),
        ("k", "sockets"),
        ("n", "connections"),
        ("r", "receive queue"),
        ("s", "send queue"),
        ("t", "retransmit queue"),
        ("T", "tcp transport connections"),
    ):
        parser.add_argument(f"-{flag}", dest=f"flag_{flag}", action="store_true", help=text)
    parser.add_argument(
        "-S", "--socket", default=os.environ.get(ENV_VAR), help=f"admin socket path (${ENV_VAR})"
    )
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    if not args.socket:
        parser.error(f"no admin socket: pass -S PATH or set {ENV_VAR}")
    flags = "".join(f for f in TABLE_FLAGS if getattr(args, f"flag_{f}"))
    try:
        client = AdminClient(args.socket)
    except OSError as exc:
        print(f"rdsx-info: cannot reach {args.socket}: {exc}", file=sys.stderr)
        return 1
    try:
        print_tables(client, flags, out)
        out.flush()
    except BrokenPipeError:
        # The reader went away (``rdsx-info | head``): stop quietly, as rds-info would.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (AdminError, OSError) as exc:
        print(f"rdsx-info: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
