"""The engine's tunables, with the kernel defaults they come from."""

from __future__ import annotations

import attrs

__all__ = ["MAX_MESSAGE_SIZE", "EngineConfig"]

#: RDS_MAX_MSG_SIZE: the largest payload (or RDMA) of one message.
MAX_MESSAGE_SIZE = 1 << 20


def _positive(_inst: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ValueError(f"{attribute.name} must be >= 1, got {value}")


@attrs.frozen(slots=True, kw_only=True)
class EngineConfig:
    """Per-connection protocol parameters.

    Attributes:
        frag_size: payload bytes per fragment (``RDS_FRAG_SIZE``, 4096). The
            node's receive buffers must hold ``HEADER_SIZE + frag_size`` bytes.
        max_message_size: larger sends raise :class:`~rdsx.errors.MessageTooLarge`.
        max_unacked_packets: every this many messages one carries ACK_REQUIRED
            (kernel sysctl default 8).
        max_unacked_bytes: ... or once this many payload bytes went unacked (16 MiB).
        ack_delay: seconds a received message may wait for a piggybacked ack
            before an explicit ack is sent, so acks are not lost when traffic stops.
        credit_update_threshold: send an explicit credit update once this many
            newly posted receive buffers are unadvertised (IB: 16).
        flow_control: advertise receive credits; flow control is on only if
            both sides advertise (rds.md §2.2).
        ping_enable: answer pings to port 0 (sysctl ``ping_enable``).
    """

    frag_size: int = attrs.field(default=4096, validator=_positive)
    max_message_size: int = attrs.field(default=MAX_MESSAGE_SIZE, validator=_positive)
    max_unacked_packets: int = attrs.field(default=8, validator=_positive)
    max_unacked_bytes: int = attrs.field(default=16 << 20, validator=_positive)
    ack_delay: float = 0.001
    credit_update_threshold: int = attrs.field(default=16, validator=_positive)
    flow_control: bool = True
    ping_enable: bool = True

    def __attrs_post_init__(self) -> None:
        if self.ack_delay < 0:
            raise ValueError("ack_delay must be >= 0")
        if -(-self.max_message_size // self.frag_size) > 0xFFFF:
            raise ValueError("frag_size too small: more than 65535 fragments per message")
