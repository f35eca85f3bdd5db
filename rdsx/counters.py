"""Counters named as rds-info prints them (reference/rds.md §4).

A node keeps one mutable :class:`CounterSet`; :meth:`rdsx.Node.statistics`
returns a frozen :class:`Counters` snapshot that merges it with the counters of
every connection engine. Every drop, retry and reset has a name here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

import attrs

__all__ = ["CORE_COUNTERS", "IB_COUNTERS", "CounterSet", "Counters"]

#: The core counters, in rds-info's order.
CORE_COUNTERS: tuple[str, ...] = (
    "conn_reset",
    "recv_drop_bad_checksum",
    "recv_drop_old_seq",
    "recv_drop_no_sock",
    "recv_drop_dead_sock",
    "recv_deliver_raced",
    "recv_delivered",
    "recv_queued",
    "recv_immediate_retry",
    "recv_delayed_retry",
    "recv_ack_required",
    "recv_rdma_bytes",
    "recv_ping",
    "send_queue_empty",
    "send_queue_full",
    "send_lock_contention",
    "send_lock_queue_raced",
    "send_immediate_retry",
    "send_delayed_retry",
    "send_drop_acked",
    "send_ack_required",
    "send_queued",
    "send_rdma",
    "send_rdma_bytes",
    "send_pong",
    "page_remainder_hit",
    "page_remainder_miss",
    "copy_to_user",
    "copy_from_user",
    "cong_update_queued",
    "cong_update_received",
    "cong_send_error",
    "cong_send_blocked",
    "recv_bytes_added_to_sock",
    "recv_bytes_freed_fromsock",
    "send_stuck_rm",
)

#: The IB transport counters a path maintains (the subset that has a meaning here).
IB_COUNTERS: tuple[str, ...] = (
    "ib_connect_raced",
    "ib_listen_closed_stale",
    "ib_tx_cq_event",
    "ib_tx_ring_full",
    "ib_tx_credit_updates",
    "ib_rx_cq_event",
    "ib_rx_refill_from_cq",
    "ib_rx_credit_updates",
    "ib_rdma_mr_alloc",
    "ib_rdma_mr_free",
    # rdsx's own, for what Linux RDS logs instead of counting:
    "recv_drop_bad_frame",
    "rdma_remote_error",
    "device_removal",
    "device_arrival",
    "drain_timeout",
    "conn_connect_attempt",
    "conn_connect_failed",
)


class CounterSet:
    """A mutable set of named counters; unknown names start at 0.

    Attributes:
        values: name -> count, every name given at construction present. Per-message
            code adds to it directly (``values["recv_queued"] += 1``), which costs a
            third of an :meth:`inc` call; only names given at construction may be
            used that way.
    """

    __slots__ = ("values",)

    def __init__(self, names: Iterable[str] = CORE_COUNTERS + IB_COUNTERS) -> None:
        self.values: dict[str, int] = dict.fromkeys(names, 0)

    def inc(self, name: str, by: int = 1) -> None:
        """Add ``by`` to counter ``name``."""
        self.values[name] = self.values.get(name, 0) + by

    def __getitem__(self, name: str) -> int:
        return self.values.get(name, 0)

    def snapshot(self) -> dict[str, int]:
        """Return a copy of the current values."""
        return dict(self.values)


def _frozen_copy(counts: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(counts))


@attrs.frozen(slots=True)
class Counters(Mapping[str, int]):
    """A frozen snapshot of counters: a mapping name -> value, in rds-info order.

    Read as ``stats["recv_drop_no_sock"]`` or ``stats.recv_drop_no_sock``; a
    name never counted reads 0.
    """

    counts: Mapping[str, int] = attrs.field(converter=_frozen_copy)

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    def __getattr__(self, name: str) -> int:
        if name.startswith("_"):
            raise AttributeError(name)
        return self.counts.get(name, 0)

    def __iter__(self) -> Iterator[str]:
        return iter(self.counts)

    def __len__(self) -> int:
        return len(self.counts)

    def __contains__(self, name: object) -> bool:
        return name in self.counts

    def format(self) -> str:
        """Render as ``rds-info -c`` prints it: ``Counters:`` then name and value columns.

        Returns:
            The text, one counter per line, in rds-info's order.
        """
        lines = ["Counters:", f"{'CounterName':>25} {'Value':>16}"]
        lines += [f"{name:>25} {value:>16}" for name, value in self.counts.items()]
        return "\n".join(lines) + "\n"

    @classmethod
    def merge(cls, *parts: Mapping[str, int]) -> Counters:
        """Sum several name -> value mappings (node and engines) into one snapshot.

        Args:
            parts: the mappings to add up; the first one fixes the order.

        Returns:
            The merged, frozen counters.
        """
        total: dict[str, int] = {}
        for part in parts:
            for name, value in part.items():
                total[name] = total.get(name, 0) + value
        return cls(counts=total)
