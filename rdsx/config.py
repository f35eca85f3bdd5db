"""Node configuration: the few knobs RDS exposes as sysctls and socket defaults."""

from __future__ import annotations

from typing import Any

import attrs

from .engine import EngineConfig

__all__ = ["MAX_MESSAGE_SIZE", "RDS_CM_PORT", "NodeConfig"]

#: Largest payload (and largest RDMA) one message may carry (``RDS_MAX_MSG_SIZE``).
MAX_MESSAGE_SIZE = 1 << 20

#: The rdma_cm port RDS/IB listens on (``RDS_PORT``).
RDS_CM_PORT = 18634


def _positive(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be > 0, got {value}")


def _nonnegative(instance: object, attribute: attrs.Attribute[Any], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attribute.name} must be >= 0, got {value}")


@attrs.frozen(slots=True, kw_only=True)
class NodeConfig:
    """Settings of one node; every field has RDS's default.

    Attributes:
        sndbuf: default ``SO_SNDBUF`` of new sockets, in payload bytes.
        rcvbuf: default ``SO_RCVBUF`` of new sockets, in payload bytes.
        cm_port: the CM port every node listens on and connects to.
        send_slots: send-ring slots per path (RDS/IB's 256 send WRs).
        recv_slots: receive buffers posted per path (RDS/IB's 1024 receive WRs);
            each is one credit for the peer.
        engine: the protocol parameters of every connection (fragment size,
            ack policy, credits, ``ping_enable``).
        seed: seeds the node's random choices (free ports, back-off jitter,
            its generation number); ``None`` draws from the OS.
        drain_margin: on a graceful removal, how long before the grace deadline
            the drain gives up so closing the context still makes it in time.
        connect_timeout: bound on one CM connect attempt, in seconds.
        admin_socket: path of a Unix socket (mode 0600) on which the node serves
            its rds-info tables to ``rdsx-info`` (:mod:`rdsx.admin`); ``None``
            (the default) opens none.
    """

    sndbuf: int = attrs.field(default=256 * 1024, validator=_positive)
    rcvbuf: int = attrs.field(default=256 * 1024, validator=_positive)
    cm_port: int = attrs.field(default=RDS_CM_PORT, validator=_positive)
    send_slots: int = attrs.field(default=256, validator=_positive)
    recv_slots: int = attrs.field(default=256, validator=_positive)
    engine: EngineConfig = attrs.field(factory=EngineConfig)
    seed: int | None = None
    drain_margin: float = attrs.field(default=0.05, validator=_nonnegative)
    connect_timeout: float = attrs.field(default=2.0, validator=_positive)
    admin_socket: str | None = None
