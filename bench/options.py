"""Command-line options of rdsx-stress, parsed into one frozen value.

The option letters, long names and defaults follow rds-stress (rds-tools):
``-q``/``-a``/``-D`` sizes accept K, M and G suffixes, ``-t`` tasks bind RDS
ports p+1 .. p+t, ``-d`` requests stay outstanding per peer task. Options that
only make sense for rdsx (the transport, the sim device-removal experiment,
virtual time, open-loop pacing) are long-only.

Errors print a one-line reason plus the usage and exit with status 2, as
argparse does.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Literal

import attrs

from .header import HEADER_SIZE

__all__ = ["MAX_MSG_SIZE", "Options", "build_parser", "parse_args", "parse_size"]

#: RDS_MAX_MSG_SIZE: the largest message (and RDMA transfer) RDS accepts.
MAX_MSG_SIZE = 1 << 20

_SIZE = re.compile(r"^\s*(\d+)\s*([kKmMgG]?)\s*$")
_SCALE = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Parse a byte count with an optional K, M or G suffix (powers of 1024).

    Args:
        text: e.g. ``"4096"``, ``"4K"``, ``"1M"`` (case-insensitive suffix).

    Returns:
        The number of bytes.

    Raises:
        ValueError: not a non-negative integer with an optional suffix.
    """
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"invalid size {text!r} (expected N, NK, NM or NG)")
    return int(match.group(1)) * _SCALE[match.group(2).lower()]


def _size_arg(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number of seconds {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text}")
    return value


def _chaos(text: str) -> tuple[float, float, float]:
    names = {"drop": 0, "dup": 1, "delay": 2}
    values = [0.0, 0.0, 0.0]
    for part in text.split(","):
        name, _, value = part.partition("=")
        try:
            probability = float(value)
        except ValueError:
            probability = -1.0
        if name.strip() not in names or not 0.0 <= probability <= 1.0:
            raise argparse.ArgumentTypeError(
                f"invalid chaos {part!r} (expected drop=P,dup=P,delay=P with 0 <= P <= 1)"
            )
        values[names[name.strip()]] = probability
    return values[0], values[1], values[2]


def _grace(text: str) -> float | None:
    if text == "surprise":
        return None
    return _seconds(text)


@attrs.frozen(slots=True, kw_only=True)
class Options:
    """Everything one rdsx-stress run needs to know.

    Attributes:
        recv_addr: local RDS address of this (active) side (``-r``).
        send_addr: the peer's RDS address (``-s``).
        port: base port ``-p``; task i binds RDS port ``port + 1 + i``.
        req_bytes: request size ``-q`` in bytes, header included.
        ack_bytes: ack size ``-a`` in bytes, header included.
        rdma_bytes: RDMA bytes per request ``-D`` (0: no RDMA).
        depth: outstanding requests per peer task ``-d``.
        tasks: tasks per side ``-t``.
        time: run time in seconds ``-T`` (0: until interrupted).
        summary_only: ``-z``: print only the summary line.
        report_cpu: ``-c``: measure CPU use (else the column is -1.00).
        verify_payload: ``-v``: also check payload bytes against the pattern.
        show_histogram: print the RTT histogram after the summary.
        one_way: ``-o``: only the active side sends requests (simplex).
        show_params: print the job parameters first (``--show-params``).
        show_perfdata: print ``::``-prefixed CSV lines instead of rows
            (``--show-perfdata``), with the active node's rds-info counters.
        transport: transport name from the ``rdsx.transports`` entry points.
        mode: the node's mode, ``reconnect`` or ``transparent``.
        port_model: sim port model, ``vswitch`` or ``shared``.
        seed: seed for the sim fabric and every random choice of the tool.
        json_path: where to write the JSON report, or None.
        rate: open-loop pacing in requests per second per task, or None for
            rds-stress's closed loop (``-d`` outstanding per peer).
        virtual_time: run on ``MockClock(autojump_threshold=0)``.
        drain_timeout: how long to wait after ``-T`` for outstanding requests.
        remove_at: seconds into the run at which the active node's device is
            removed (sim only), or None.
        grace: removal grace in seconds, or None for a surprise removal.
        reattach_after: seconds after the removal at which a new VF on another
            host is attached.
        max_reports: how many mismatch tables to print before going quiet.
        chaos: sim only: (drop, duplicate, delay) probabilities per packet on
            the fabric (``--chaos drop=P,dup=P,delay=P``), or None.
        role: ``both`` (both ends in this process: sim, or ``--in-process``),
            ``active`` (``-s`` given: connects to the passive side) or
            ``passive`` (waits for an active side on ``-r``:``-p``).
        connect_retries: the active side's control connect retries, 1 s apart.
        secret_file: the tcp transport's cluster secret (else ``RDSX_SECRET``).
        transport_port: the port tcp devices listen on (transport default if None).
        standby: sim only: the active node's VM gets an emulated standby device
            that carries its traffic while its VF is away (``--standby``).
    """

    recv_addr: str = "127.0.0.1"
    send_addr: str = "127.0.0.2"
    port: int = 4000
    req_bytes: int = 1024
    ack_bytes: int = HEADER_SIZE
    rdma_bytes: int = 0
    depth: int = 1
    tasks: int = 1
    time: float = 0.0
    summary_only: bool = False
    report_cpu: bool = False
    verify_payload: bool = False
    show_histogram: bool = False
    one_way: bool = False
    show_params: bool = False
    show_perfdata: bool = False
    transport: str = "sim"
    mode: Literal["reconnect", "transparent"] = "reconnect"
    port_model: str = "vswitch"
    seed: int = 0
    json_path: str | None = None
    rate: float | None = None
    virtual_time: bool = False
    drain_timeout: float = 10.0
    remove_at: float | None = None
    grace: float | None = 1.0
    reattach_after: float = 0.1
    max_reports: int = 10
    chaos: tuple[float, float, float] | None = None
    role: str = "both"
    connect_retries: int = 0
    secret_file: str | None = None
    transport_port: int | None = None
    standby: bool = False

    @property
    def sockbuf(self) -> int:
        """SNDBUF = RCVBUF = t·d·(q+a)·2 bytes, as rds-stress sets them."""
        return self.tasks * self.depth * (self.req_bytes + self.ack_bytes) * 2


def build_parser() -> argparse.ArgumentParser:
    """Return the argparse parser of rdsx-stress (rds-stress's letters)."""
    p = argparse.ArgumentParser(
        prog="rdsx-stress",
        description="rds-stress for rdsx: every task sends requests to every peer task "
        "and acks theirs; every message is verified (sequence, addresses, size).",
        epilog="live-migration experiments (sim): --compare, --migrate-at S, --migration, "
        "--profile, --clock, --plot, --jobs, --no-sa-cache, --no-standby; see rdsx-stress "
        "--compare --help",
    )
    add = p.add_argument
    add("-r", "--recv-addr", default="127.0.0.1", help="local (active) address")
    add("-s", "--send-addr", default=None, help="peer address; makes this the active side")
    add("-p", "--port", type=int, default=4000, help="base port; task i binds p+1+i")
    add("-q", "--req-bytes", type=_size_arg, default=1024, help="request size (K/M/G)")
    add("-a", "--ack-bytes", type=_size_arg, default=HEADER_SIZE, help="ack size (K/M/G)")
    add("-D", "--rdma-bytes", type=_size_arg, default=0, help="RDMA bytes per request")
    add("-d", "--depth", type=_positive_int, default=1, help="outstanding requests per peer")
    add("-t", "--tasks", type=_positive_int, default=1, help="tasks per side")
    add("-T", "--time", type=_seconds, default=0.0, help="run time in seconds (0: forever)")
    add("-z", "--report-summary", action="store_true", help="print only the summary")
    add("-c", "--report-cpu", action="store_true", help="report CPU use")
    add("-v", "--verify", action="store_true", help="check payload bytes too")
    add("--show-histogram", action="store_true", help="print the RTT histogram")
    add("-o", "--one-way", action="store_true", help="only the active side sends requests")
    add("--show-params", action="store_true", help="print the job parameters")
    add("--show-perfdata", action="store_true", help="'::' CSV lines instead of rows")
    add("--transport", default="sim", help="transport name (sim, tcp, ...)")
    add("--mode", choices=("reconnect", "transparent"), default="reconnect")
    add("--port-model", choices=("vswitch", "shared"), default="vswitch")
    add("--seed", type=int, default=0, help="seed of the fabric and the tool")
    add("--json", dest="json_path", metavar="FILE", help="write a JSON report")
    add("--rate", type=float, default=None, help="open loop: requests/s per task")
    add("--virtual-time", action="store_true", help="run on trio's MockClock (sim)")
    add("--drain-timeout", type=_seconds, default=10.0, help="seconds to drain after -T")
    add("--remove-at", type=_seconds, default=None, help="remove the active VF at SECONDS")
    add("--grace", type=_grace, default=1.0, help="removal grace: SECONDS or 'surprise'")
    add("--reattach-after", type=_seconds, default=0.1, help="attach a new VF after SECONDS")
    add("--max-reports", type=int, default=10, help="mismatch tables printed at most")
    add("--chaos", type=_chaos, default=None, help="sim: drop=P,dup=P,delay=P per packet")
    add("--in-process", action="store_true", help="both ends in this process (sim: always)")
    add("--connect-retries", type=int, default=0, help="control connect retries, 1 s apart")
    add("--secret-file", default=None, help="tcp cluster secret file (else RDSX_SECRET)")
    add("--transport-port", type=int, default=None, help="tcp: the port devices listen on")
    add(
        "--standby",
        action="store_true",
        help="sim: the active VM gets an emulated standby device while its VF is away",
    )
    return p


def parse_args(argv: Sequence[str] | None = None) -> Options:
    """Parse ``argv`` (default: ``sys.argv[1:]``) into :class:`Options`.

    Raises:
        SystemExit: with status 2 and a message on stderr for any bad option.
    """
    parser = build_parser()
    ns = parser.parse_args(argv)
    for name, value in (("request size", ns.req_bytes), ("ack size", ns.ack_bytes)):
        if value < HEADER_SIZE:
            parser.error(f"{name} must be at least {HEADER_SIZE} bytes")
        if value > MAX_MSG_SIZE:
            parser.error(f"{name} must be at most {MAX_MSG_SIZE} bytes (1M)")
    if ns.rdma_bytes > MAX_MSG_SIZE:
        parser.error(f"RDMA size must be at most {MAX_MSG_SIZE} bytes (1M)")
    if not 0 <= ns.port <= 65535 - ns.tasks:
        parser.error(f"port {ns.port} leaves no room for {ns.tasks} task ports")
    if ns.rate is not None and ns.rate <= 0:
        parser.error("--rate must be positive")
    if ns.virtual_time and ns.rate is None:
        parser.error("--virtual-time needs --rate (a closed loop in virtual time never ends)")
    if ns.virtual_time and ns.time == 0:
        parser.error("--virtual-time needs -T")
    if ns.remove_at is not None and ns.time and ns.remove_at >= ns.time:
        parser.error("--remove-at must fall inside the run time -T")
    in_process = ns.in_process or ns.transport == "sim"
    if in_process:
        role, send_addr = "both", ns.send_addr or "127.0.0.2"
    else:
        role, send_addr = ("active", ns.send_addr) if ns.send_addr else ("passive", "")
        if ns.virtual_time:
            parser.error("--virtual-time needs both ends in one process")
        if role == "active" and ns.time == 0:
            parser.error("a two-process run needs -T")
        if ns.remove_at is not None:
            parser.error("--remove-at needs the sim transport")
    if ns.chaos is not None and ns.transport != "sim":
        parser.error("--chaos needs the sim transport")
    if ns.standby and ns.transport != "sim":
        parser.error("--standby needs the sim transport")
    if ns.recv_addr == send_addr:
        parser.error("-r and -s must differ")
    return Options(
        recv_addr=ns.recv_addr,
        send_addr=send_addr,
        role=role,
        port=ns.port,
        req_bytes=ns.req_bytes,
        ack_bytes=ns.ack_bytes,
        rdma_bytes=ns.rdma_bytes,
        depth=ns.depth,
        tasks=ns.tasks,
        time=ns.time,
        summary_only=ns.report_summary,
        report_cpu=ns.report_cpu,
        verify_payload=ns.verify,
        show_histogram=ns.show_histogram,
        one_way=ns.one_way,
        show_params=ns.show_params,
        show_perfdata=ns.show_perfdata,
        transport=ns.transport,
        mode=ns.mode,
        port_model=ns.port_model,
        seed=ns.seed,
        json_path=ns.json_path,
        rate=ns.rate,
        virtual_time=ns.virtual_time,
        drain_timeout=ns.drain_timeout,
        remove_at=ns.remove_at,
        grace=ns.grace,
        reattach_after=ns.reattach_after,
        max_reports=ns.max_reports,
        chaos=ns.chaos,
        connect_retries=ns.connect_retries,
        secret_file=ns.secret_file,
        transport_port=ns.transport_port,
        standby=ns.standby,
    )
