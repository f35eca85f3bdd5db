"""Two-process rdsx-stress (``--transport tcp``), as rds-stress is used across hosts.

Passive side: ``rdsx-stress --transport tcp -r ADDR -p PORT`` listens for the
control connection on ADDR:PORT. Active side: ``rdsx-stress --transport tcp
-r MYADDR -s ADDR -p PORT [options]`` connects and decides the shared options
(:data:`bench.control.SHARED`). Each process runs one rdsx node with ``-t``
tasks on RDS ports p+1..p+t; both print their own rows; at the end they swap
ledger snapshots, so both print the same whole-run verification counts.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TextIO

from .control import Control, accept_control, adopt_options, connect_control, shared_options
from .options import Options
from .stress import Outcome, StressNode, run_sides

__all__ = ["open_rdsx_side", "run_two_process"]

OpenSide = Callable[[Options], AbstractAsyncContextManager[StressNode]]


@asynccontextmanager
async def open_rdsx_side(opts: Options) -> AsyncIterator[StressNode]:
    """This process's rdsx node on ``opts.transport`` at ``opts.recv_addr``."""
    import rdsx
    from rdsx.registry import load_transport

    net_options: dict[str, Any] = {}
    if opts.secret_file is not None:
        net_options["secret"] = Path(opts.secret_file).read_bytes().strip()
    if opts.transport_port is not None:
        net_options["port"] = opts.transport_port
    transport = load_transport(opts.transport)
    async with transport.open_network(**net_options) as net:
        devices = await net.add_node(opts.recv_addr)
        async with rdsx.open_node(opts.recv_addr, devices, mode=opts.mode) as node:
            yield node


async def run_two_process(
    opts: Options, *, out: TextIO | None = None, open_side: OpenSide = open_rdsx_side
) -> Outcome:
    """Run the active or passive side (``opts.role``) of a two-process run.

    Args:
        opts: this side's options (the passive side adopts the active side's
            shared ones).
        out: where the log lines and rows go (default ``sys.stdout``).
        open_side: opens this process's node (tests substitute a fake).

    Raises:
        RemoteProtocolError: the control connection broke or carried garbage.
        OSError: the control connection could not be made.
    """
    out = out if out is not None else sys.stdout
    control: Control
    if opts.role == "active":
        control = await connect_control(opts.send_addr, opts.port, None, opts.connect_retries, out)
        await control.send({**shared_options(opts), "addr": opts.recv_addr})
    else:
        control = await accept_control(opts.recv_addr, opts.port, out)
        message = await control.receive("options")
        opts = adopt_options(opts, message, str(message.get("addr", "")))
    try:
        out.write("negotiated options, tasks will start in 2 seconds\n")
        out.flush()
        async with open_side(opts) as node:
            return await run_sides(
                opts, [(node, opts.recv_addr, opts.send_addr)], out=out, remote=control
            )
    finally:
        await control.aclose()
