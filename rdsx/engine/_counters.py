"""Counters named as rds-info's (rds.md §4), kept per connection."""

from __future__ import annotations

import attrs

__all__ = ["COUNTER_NAMES", "EngineCounters", "MutableCounters"]


@attrs.define(slots=True, kw_only=True)
class _CounterFields:
    """The counter fields, defined once for the live counters and their snapshot.

    Attributes:
        conn_reset: transports torn down while UP/RESETTING (queues reset, unacked resent).
        recv_drop_bad_checksum: frames with a bad header checksum (we never checksum: stays 0).
        recv_drop_old_seq: retransmitted messages dropped as duplicates (seq < next_rx_seq).
        recv_ack_required: received messages that asked for an ack.
        recv_ping: pings received on port 0.
        recv_protocol_error: frames that did not parse or lied (each resets; not a kernel name).
        send_ack_required: messages sent with ACK_REQUIRED.
        send_pong: pongs queued.
        send_queued: messages accepted by ``send``.
        send_drop_acked: messages freed by an ack.
        send_retransmitted: messages resent after a reset (not a kernel name).
        send_rdma_dropped: RDMA messages dropped instead of resent (not a kernel name).
        send_flushed: unacked messages flushed because the peer restarted (not a kernel name).
        cong_update_queued: congestion-map updates queued.
        cong_update_received: congestion-map updates received.
        ib_tx_credit_updates: frames sent that granted credits.
        ib_rx_credit_updates: frames received that granted credits.
        ib_tx_throttle: times sending stopped for lack of credits.
        ib_ack_sent: explicit ack-only frames sent.
        ib_ack_send_delayed: explicit acks deferred (no credit to send them).
        ib_ack_send_piggybacked: data frames that carried a new ack.
        ib_ack_received: explicit ack-only frames received.
        ib_connect_raced: incoming connects while already connecting.
        ib_listen_closed_stale: incoming connects that replaced a live (stale) transport.
    """

    conn_reset: int = 0
    recv_drop_bad_checksum: int = 0
    recv_drop_old_seq: int = 0
    recv_ack_required: int = 0
    recv_ping: int = 0
    recv_protocol_error: int = 0
    send_ack_required: int = 0
    send_pong: int = 0
    send_queued: int = 0
    send_drop_acked: int = 0
    send_retransmitted: int = 0
    send_rdma_dropped: int = 0
    send_flushed: int = 0
    cong_update_queued: int = 0
    cong_update_received: int = 0
    ib_tx_credit_updates: int = 0
    ib_rx_credit_updates: int = 0
    ib_tx_throttle: int = 0
    ib_ack_sent: int = 0
    ib_ack_send_delayed: int = 0
    ib_ack_send_piggybacked: int = 0
    ib_ack_received: int = 0
    ib_connect_raced: int = 0
    ib_listen_closed_stale: int = 0


@attrs.frozen(slots=True, kw_only=True)
class EngineCounters(_CounterFields):
    """A frozen snapshot of one connection's counters (sum them with ``+``)."""

    def __add__(self, other: EngineCounters) -> EngineCounters:
        """Field-wise sum, to total the counters of several connections."""
        mine, theirs = attrs.asdict(self), attrs.asdict(other)
        return EngineCounters(**{k: v + theirs[k] for k, v in mine.items()})

    def as_dict(self) -> dict[str, int]:
        """The counters in rds-info order."""
        return attrs.asdict(self)


@attrs.define(slots=True)
class MutableCounters(_CounterFields):
    """The live counters a :class:`~rdsx.engine.Connection` increments."""

    def snapshot(self) -> EngineCounters:
        """A frozen copy."""
        return EngineCounters(**attrs.asdict(self))


#: Every counter name, in rds-info order.
COUNTER_NAMES: tuple[str, ...] = tuple(f.name for f in attrs.fields(EngineCounters))
