"""The device-removal experiment of rdsx-stress (sim only): ``--remove-at``.

At ``--remove-at`` seconds into the run the active node's VF is hot-unplugged
through the sim fabric, with ``--grace`` seconds of warning (or none:
``surprise``); ``--reattach-after`` seconds after the removal completed, a VF
of a *different* host (a new one, as after a migration) is attached to the same
VM. The traffic keeps running throughout; the verification counts say whether
anything was lost, duplicated or reordered, and the JSON report records this
timeline under ``experiment``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio

from rdsx.errors import RdsError

from .options import Options

__all__ = ["make_removal"]


def make_removal(network: Any, opts: Options) -> Callable[[float], Awaitable[dict[str, Any]]]:
    """Build the experiment for ``run_stress`` from a sim network and the options.

    Args:
        network: the open ``sim`` network (it must expose ``fabric``).
        opts: the run's options (``remove_at``, ``grace``, ``reattach_after``).

    Raises:
        ValueError: the transport has no fabric to remove a device through.
    """
    fabric = getattr(network, "fabric", None)
    if fabric is None or opts.remove_at is None:
        raise ValueError("--remove-at needs the sim transport")
    num_vfs = getattr(network, "num_vfs", 4)
    remove_at = opts.remove_at

    async def experiment(start: float) -> dict[str, Any]:
        await trio.sleep_until(start + remove_at)
        vm = fabric.vm_at(opts.recv_addr)
        record: dict[str, Any] = {
            "kind": "device-removal",
            "grace_s": opts.grace,
            "old_host": vm.host.name if vm.host is not None else None,
            "removal_started_s": trio.current_time() - start,
        }
        try:
            await fabric.detach(vm, grace=opts.grace)
        except RdsError as exc:
            # A graceful detach the node did not honour in time: the VF stays.
            record["detach_error"] = repr(exc)
            record["removal_done_s"] = trio.current_time() - start
            return record
        detached = trio.current_time()
        record["removal_done_s"] = detached - start
        host = fabric.add_host(f"host-{opts.recv_addr}-after-{remove_at:g}s", num_vfs=num_vfs)
        await trio.sleep_until(detached + opts.reattach_after)
        await fabric.attach(vm, host)
        record["new_host"] = host.name
        record["attached_s"] = trio.current_time() - start
        return record

    return experiment
