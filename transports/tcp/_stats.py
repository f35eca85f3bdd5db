"""Counters of the tcp transport, named like rds-info's (``tcp_*``), and their snapshot."""

from __future__ import annotations

import attrs

__all__ = ["Counters", "TcpStatistics"]


@attrs.define(slots=True)
class _CounterFields:
    """The counter fields, defined once for the live counters and their snapshot.

    Attributes:
        tcp_conn_accepted: TCP connections accepted by a device listener.
        tcp_conn_connected: TCP connections this side opened.
        tcp_conn_reset: connections closed because of an error (bad frame, stall, auth).
        tcp_conn_flood_drops: connections closed at once because too many handshakes
            were already running (the flood guard).
        tcp_auth_failures: handshakes that failed the cluster-secret challenge.
        tcp_handshake_timeouts: handshakes that did not finish in time.
        tcp_protocol_errors: malformed frames or messages that violate the protocol.
        tcp_frame_timeouts: peers that stalled in the middle of a frame.
        tcp_frames_tx / tcp_frames_rx: frames sent and received.
        tcp_send_batches / tcp_recv_batches: writer batches (one ``sendmsg`` of all
            frames queued, unless the kernel takes only part) and receives that
            carried them (frames per batch = frames / batches).
        tcp_acks_tx: cumulative ACKs sent.
        tcp_retransmits: requests sent again after a timeout or RNR NAK.
        tcp_rnr_naks_tx / tcp_rnr_naks_rx: receiver-not-ready NAKs sent and received.
        tcp_naks_tx: other NAKs sent (access, invalid request, operation errors).
        tcp_fault_drops: frames discarded by an injected partition.
    """

    tcp_conn_accepted: int = 0
    tcp_conn_connected: int = 0
    tcp_conn_reset: int = 0
    tcp_conn_flood_drops: int = 0
    tcp_auth_failures: int = 0
    tcp_handshake_timeouts: int = 0
    tcp_protocol_errors: int = 0
    tcp_frame_timeouts: int = 0
    tcp_frames_tx: int = 0
    tcp_frames_rx: int = 0
    tcp_send_batches: int = 0
    tcp_recv_batches: int = 0
    tcp_acks_tx: int = 0
    tcp_retransmits: int = 0
    tcp_rnr_naks_tx: int = 0
    tcp_rnr_naks_rx: int = 0
    tcp_naks_tx: int = 0
    tcp_fault_drops: int = 0


@attrs.frozen(slots=True)
class TcpStatistics(_CounterFields):
    """A snapshot of the tcp transport's counters (see :meth:`Counters.snapshot`)."""


@attrs.define(slots=True)
class Counters(_CounterFields):
    """The live, mutable counters of one network (every device of it adds to them)."""

    def snapshot(self) -> TcpStatistics:
        """Return the current values as a frozen :class:`TcpStatistics`."""
        return TcpStatistics(**attrs.asdict(self))
