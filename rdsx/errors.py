"""The one exception hierarchy of rdsx.

Every error the library, its transports and its tools raise on purpose derives
from :class:`RdsError`, so ``except rdsx.RdsError`` is a complete net. Errors
that are also plain misuse of a Python value (a negative size, a bad port
number) additionally derive from :class:`ValueError`, so generic callers that
only know Python's vocabulary still catch them.

The tree is grouped by who is at fault, as h11 does:

* :class:`VerbsError` — raised by the verbs contract (:mod:`rdsx.verbs`) and
  every transport that implements it.
* socket-level errors (:class:`NotBound`, :class:`AddressInUse`,
  :class:`MessageTooLarge`, :class:`WouldBlock`, ...) — misuse of, or
  back-pressure from, the RDS socket API.
* :class:`ProtocolError` — :class:`LocalProtocolError` when our own engine was
  driven wrongly, :class:`RemoteProtocolError` when a peer sent something that
  does not parse or lies. A remote protocol error resets only the connection it
  arrived on and is counted; it never escapes a node.
* :class:`MigrationError` — refusals of the VMM (same host, unknown host, a
  migration already running, a VF that is not attached).
"""

from __future__ import annotations

__all__ = [
    "AddressInUse",
    "AddressNotAvailable",
    "AuthenticationFailed",
    "Congested",
    "ConnectTimeout",
    "ConnectionRejected",
    "DetachRefused",
    "DeviceBusy",
    "DeviceRemoved",
    "HostCrashed",
    "InvalidArgument",
    "InvalidHandle",
    "InvalidMigration",
    "InvalidState",
    "LocalProtocolError",
    "MessageTooLarge",
    "MigrationError",
    "MigrationFailed",
    "MigrationInProgress",
    "ModeUnavailable",
    "NotAttached",
    "NotBound",
    "NotConnected",
    "NotSupported",
    "PeerResumeTimeout",
    "ProtocolError",
    "QueueFull",
    "RdsError",
    "RemoteProtocolError",
    "ResourceExhausted",
    "SecretNotConfigured",
    "SocketClosed",
    "TransportNotFound",
    "UnknownHost",
    "Unreachable",
    "VerbsError",
    "WouldBlock",
]


class RdsError(Exception):
    """Root of every error rdsx raises on purpose."""


# --------------------------------------------------------------------------- verbs


class VerbsError(RdsError):
    """An error from the verbs contract or a transport implementing it."""


class DeviceRemoved(VerbsError):
    """The device behind this handle is gone (hot-unplugged or detached).

    Like rdma-core's "zombie" objects after a disassociate: the Python object
    still exists, every call on it raises this.
    """


class DeviceBusy(VerbsError):
    """A graceful removal failed: resources were still held at the grace deadline.

    This is the seed's problem 1b: the hot-plug script times out because a
    process still holds a verbs context. The device stays attached.
    """


class InvalidState(VerbsError):
    """An operation is not legal in the object's current state.

    Examples: an illegal QP state transition, ``post_send`` on a QP in RESET,
    INIT or RTR.
    """


class InvalidArgument(VerbsError, ValueError):
    """A malformed argument: missing required attribute, too many SGEs, bad size."""


class InvalidHandle(VerbsError):
    """The handle was already destroyed, deregistered or closed by its owner."""


class NotSupported(VerbsError):
    """An optional part of the verbs contract this transport does not implement.

    Example: :meth:`rdsx.verbs.CmId.send_message` on a CM that carries no
    messages on established connections; the caller takes another way.
    """


class QueueFull(VerbsError):
    """A work queue is full: more outstanding WRs than the QP's capacity."""


class ResourceExhausted(VerbsError):
    """A finite space ran out: LIDs (49,151 unicast per subnet), QPNs, keys, VFs."""


class CmError(VerbsError):
    """A connection-manager failure."""


class ConnectionRejected(CmError):
    """The passive side rejected the connect request.

    Attributes:
        private_data: the bytes the rejecting side attached to its reject.
    """

    def __init__(self, message: str, private_data: bytes = b"") -> None:
        super().__init__(message)
        self.private_data = private_data


class Unreachable(CmError):
    """No path to the out-of-band address: nobody listens there, or it is unknown."""


class ConnectTimeout(CmError):
    """The CM exchange did not complete in time."""


class AuthenticationFailed(CmError):
    """The peer failed the cluster-secret challenge (tcp transport)."""


class SecretNotConfigured(VerbsError, LookupError):
    """No cluster secret was given: neither a secret file nor ``RDSX_SECRET`` (tcp transport).

    There is deliberately no default secret: a default that works would let any
    peer that knows the default in.
    """


class PeerResumeTimeout(VerbsError):
    """The transparent shim could not resume a suspended peer within its bound.

    The RDS layer above treats this as a connection loss and falls back to its
    own reconnect and resend.
    """


# --------------------------------------------------------------------------- sockets


class NotBound(RdsError):
    """The socket must be bound to (address, port) before it sends or receives."""


class NotConnected(RdsError):
    """``send`` without a destination: call ``connect`` first or use ``sendto``."""


class AddressInUse(RdsError):
    """Another socket on this node is already bound to that (address, port)."""


class AddressNotAvailable(RdsError, ValueError):
    """The address does not belong to this node, or the port is reserved/invalid."""


class SocketClosed(RdsError):
    """The socket (or its node) was closed."""


class MessageTooLarge(RdsError, ValueError):
    """The message (or its RDMA) exceeds the 1 MiB maximum, or the send buffer."""


class WouldBlock(RdsError):
    """A ``*_nowait`` call could not complete immediately (RDS's EAGAIN)."""


class Congested(WouldBlock):
    """The destination port is congested (RDS's ENOBUFS).

    Attributes:
        destination: the (address, port) that is congested.
    """

    def __init__(self, message: str, destination: tuple[str, int] | None = None) -> None:
        super().__init__(message)
        self.destination = destination


class ModeUnavailable(RdsError, LookupError):
    """The node mode asked for is not available in this build.

    ``open_node(..., mode="transparent")`` raises it while the bottom-up verbs
    shim (``rdsx.shim``) is not installed.
    """


class TransportNotFound(RdsError, LookupError):
    """No transport is registered under that name in the ``rdsx.transports`` group."""


# --------------------------------------------------------------------------- protocol


class ProtocolError(RdsError):
    """The RDS protocol was violated."""


class LocalProtocolError(ProtocolError):
    """Our own engine was driven in a way the protocol forbids (a bug or misuse)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent a malformed, truncated or lying frame.

    Raised by the decoders; a node turns it into a counted reset of the one
    connection it arrived on.
    """


# --------------------------------------------------------------------------- migration


class MigrationError(RdsError):
    """The VMM refused a migration (same host, unknown host, already migrating, ...)."""


class InvalidMigration(MigrationError, ValueError):
    """A request that cannot be right: to the VM's own host, a negative grace, no such strategy."""


class UnknownHost(MigrationError, LookupError):
    """The destination is not a host of this fabric."""


class MigrationInProgress(MigrationError):
    """The VM is already being migrated; one migration per VM at a time."""


class NotAttached(MigrationError):
    """The VM holds no VF to migrate with (never attached, or detached)."""


class MigrationFailed(MigrationError):
    """A migration started but did not complete.

    Attributes:
        timeline: the stages that ran before the failure (a
            ``transports.sim.timeline.Timeline``), or None.
        vm_lost: True if the VM did not survive (its host crashed under it);
            otherwise it is running on its source host again.
    """

    def __init__(self, message: str, timeline: object = None, vm_lost: bool = False) -> None:
        super().__init__(message)
        self.timeline = timeline
        self.vm_lost = vm_lost


class DetachRefused(MigrationFailed, DeviceBusy):
    """The VF was not released within the grace period, so it could not be detached.

    The migration is abandoned before the VM stops: it stays on its source host
    with its VF, as after the seed's hot-plug script time-out (problem 1b).
    """


class HostCrashed(MigrationFailed):
    """The source or the destination host crashed while the VM was migrating."""
