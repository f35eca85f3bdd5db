"""The verbs contract: what a transport implements and what rdsx relies on.

Modelled on libibverbs + librdmacm, in trio terms: data-path posts are
synchronous and never block (as ``ibv_post_send``); anything that waits is
``async``; every resource is released by ``close()`` (idempotent) and the
context is an async context manager. Completions and events are pulled.

The device life cycle (DESIGN §3) is the heart of it. A node never owns one
device for life: it reads devices from a :class:`DeviceSource`. A device
announces its own removal with an :class:`~rdsx.verbs.AsyncEvent` of type
``DEVICE_REMOVAL`` carrying a grace deadline. If every context of the device is
closed before the deadline, the removal succeeds; otherwise the remover gets
:class:`~rdsx.errors.DeviceBusy` and the device stays. After a removal every
call on an old handle raises :class:`~rdsx.errors.DeviceRemoved`. While a
removal is pending (between the event and the deadline) the device accepts no
new context: :meth:`Device.open` raises ``DeviceRemoved`` at once, as
``ib_unregister_device`` hides a device from new opens before it waits for its
users; after a failed removal (``DeviceBusy``) it opens again.

Closing is visible to the peer only while the device works. Closing an
established :class:`CmId`, or the :class:`Context` that holds it (a process exit
does the same), sends a DREQ as ``rdma_destroy_id`` does: the peer's id sees
``DISCONNECTED`` then ``TIMEWAIT_EXIT`` and the peer's QP goes to ERR. This holds
during a graceful removal's grace period too. A surprise removal or a host crash
sends nothing: the peer learns only through its own RC retries
(``RETRY_EXC_ERR``) and, on InfiniBand, its CM id stays silent. A transport
whose CM channel is itself a connection (``tcp``) cannot tell a vanished peer
from an exited process and may report the channel's loss as ``DISCONNECTED``;
users must not rely on getting, or on not getting, that event.

Errors common to every call below and not repeated in each docstring:

* :class:`~rdsx.errors.DeviceRemoved` — the device went away (zombie handle).
* :class:`~rdsx.errors.InvalidHandle` — the object was closed/destroyed by its owner.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from types import TracebackType

from ..errors import NotSupported
from ._types import (
    Access,
    AsyncEvent,
    CmEvent,
    DeviceAttr,
    PortAttr,
    QpAttr,
    QpCap,
    QpState,
    RecvWR,
    SendWR,
    WorkCompletion,
)

__all__ = [
    "CQ",
    "MR",
    "PD",
    "QP",
    "CmId",
    "CmListener",
    "CmRequest",
    "Context",
    "Device",
    "DeviceSource",
]


class Device(abc.ABC):
    """A verbs device as seen from inside a node (an HCA VF, a soft-verbs interface).

    Attributes:
        name: a stable, human-readable name (``"mlx4_0"``-like).
        address: the out-of-band (IP-like) address the CM of this device listens
            on and that peers connect to. It names the *node*, not the device, so
            it survives migration: a new device of the same node has the same one.
    """

    name: str
    address: str

    @property
    @abc.abstractmethod
    def removed(self) -> bool:
        """True once the device has been removed (every handle is a zombie)."""

    @abc.abstractmethod
    async def open(self) -> Context:
        """Open a context on the device (``ibv_open_device``).

        Returns:
            A new :class:`Context`; close it (or use ``async with``) to release it.

        Raises:
            DeviceRemoved: the device is already gone, or its removal is pending
                (a ``DEVICE_REMOVAL`` was announced and its deadline has not passed).
        """


class DeviceSource(abc.ABC):
    """An async stream of device arrivals: PCI hot-plug as a node sees it.

    Iterate it (``async for device in source``) or call :meth:`next_device`.
    Each device yielded is usable until it announces ``DEVICE_REMOVAL``.
    """

    @abc.abstractmethod
    async def next_device(self) -> Device:
        """Wait for the next device to arrive.

        Returns the device already present on the first call, if any.

        Raises:
            trio.EndOfChannel: the source is closed and no device will come.
        """

    def __aiter__(self) -> AsyncIterator[Device]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Device]:
        import trio

        while True:
            try:
                yield await self.next_device()
            except trio.EndOfChannel:
                return


class Context(abc.ABC):
    """An open device context (``ibv_context`` + its rdma_cm event channel).

    Closing the context releases every resource created through it (PDs, MRs,
    CQs, QPs, CM ids and listeners); QPs are destroyed without flushing, as a
    process exit would, and every established CM id sends its DREQ (see
    :meth:`CmId.close`).
    """

    device: Device

    @abc.abstractmethod
    def query_device(self) -> DeviceAttr:
        """Return the device's attributes and limits."""

    @abc.abstractmethod
    def query_port(self) -> PortAttr:
        """Return the port's current attributes (state, LID, locator, MTU)."""

    @abc.abstractmethod
    async def get_async_event(self) -> AsyncEvent:
        """Wait for the next async event (``ibv_get_async_event``).

        Raises:
            DeviceRemoved: after the device is gone and every event was read.
        """

    @abc.abstractmethod
    def alloc_pd(self) -> PD:
        """Allocate a protection domain.

        Raises:
            ResourceExhausted: ``max_pd`` reached.
        """

    @abc.abstractmethod
    def create_cq(self, cqe: int = 4096) -> CQ:
        """Create a completion queue able to hold ``cqe`` completions.

        ``cqe`` is enforced as on InfiniBand: a completion that arrives while the
        CQ holds ``cqe`` unpolled ones overruns it. The CQ is then in error for
        good: that completion and every later one are lost (``poll``/``wait``
        still return what it held), the context gets one ``CQ_ERR`` event, and
        each QP whose completion was lost goes to ERR with a ``QP_FATAL`` event
        (its flushes into the broken CQ are lost too). Size a CQ for every WR
        that may complete into it before it is polled.

        Raises:
            InvalidArgument: ``cqe`` < 1 or above ``max_cqe``.
        """

    @abc.abstractmethod
    async def cm_listen(self, port: int, *, backlog: int = 64) -> CmListener:
        """Listen for CM connect requests on ``(device.address, port)``.

        Raises:
            AddressInUse: another listener holds that port on this address.
        """

    @abc.abstractmethod
    async def cm_connect(
        self,
        qp: QP,
        address: str,
        port: int,
        private_data: bytes = b"",
        *,
        timeout: float = 5.0,
    ) -> CmId:
        """Connect ``qp`` (in RESET or INIT) to the listener at ``(address, port)``.

        Resolves the address to a path (the SA path query on ``sim``), exchanges
        private data and moves ``qp`` through INIT, RTR and RTS as librdmacm does
        (retry_cnt 7, rnr_retry 7 unless the QP was already configured). A QP
        handed over in INIT keeps the receives posted on it (as after
        ``rdma_create_qp``), so the peer's first SEND finds one: post them first.

        Returns:
            The established :class:`CmId`; ``cm_id.private_data`` is the peer's.

        Raises:
            ConnectionRejected: the peer rejected (with its private data).
            Unreachable: nothing listens at that address and port.
            ConnectTimeout: no answer within ``timeout`` seconds.
            InvalidState: ``qp`` is in neither RESET nor INIT.
            InvalidArgument: private data longer than 196 bytes (IB REQ limit).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Release the context and everything created through it. Idempotent.

        While the device works, each established CM id sends a DREQ first (the
        peer sees ``DISCONNECTED``); after a removal nothing is sent.
        """

    async def aclose(self) -> None:
        """Async spelling of :meth:`close`, for ``async with``."""
        self.close()

    async def __aenter__(self) -> Context:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class PD(abc.ABC):
    """A protection domain: MRs and QPs of one PD may reference each other only."""

    @abc.abstractmethod
    def reg_mr(
        self, buffer: bytearray | memoryview, access: Access, *, iova: int | None = None
    ) -> MR:
        """Register ``buffer`` for local and (per ``access``) remote access.

        Args:
            buffer: writable memory; the MR aliases it (no copy).
            access: which accesses the keys allow; local read is implicit.
            iova: the address this region has in SGEs and RDMA; the transport
                picks one when ``None``. The transparent shim passes the old one
                after migration so virtual addresses stay valid.

        Returns:
            An :class:`MR` with fresh ``lkey``/``rkey``.

        Raises:
            InvalidArgument: empty or read-only buffer, REMOTE_WRITE without
                LOCAL_WRITE (as ibv_reg_mr refuses), an ``iova`` that overlaps
                another MR of this PD.
            ResourceExhausted: ``max_mr`` reached.
        """

    @abc.abstractmethod
    def create_qp(
        self, send_cq: CQ, recv_cq: CQ, cap: QpCap | None = None, *, sq_sig_all: bool = False
    ) -> QP:
        """Create an RC queue pair in RESET (``cap`` defaults to :class:`QpCap()`).

        Raises:
            InvalidArgument: a capacity above the device limits, a CQ of another context.
            ResourceExhausted: no QP number left.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Deallocate the PD and every MR and QP in it. Idempotent."""


class MR(abc.ABC):
    """A registered memory region.

    Attributes:
        addr: the region's address (iova) as used in SGEs and remote addresses.
        length: its size in bytes.
        lkey: the key local SGEs name.
        rkey: the key a peer names for RDMA (valid only with REMOTE_* access).
        access: the access flags it was registered with.
        buffer: the registered memory itself.
    """

    addr: int
    length: int
    lkey: int
    rkey: int
    access: Access
    buffer: memoryview

    @abc.abstractmethod
    def close(self) -> None:
        """Deregister. Later use of the keys is a protection error.

        Raises:
            InvalidHandle: deregistered twice.
        """


class CQ(abc.ABC):
    """A completion queue: awaitable and pollable."""

    @abc.abstractmethod
    def poll(self, max_entries: int = 64) -> list[WorkCompletion]:
        """Return up to ``max_entries`` completions without waiting (maybe none)."""

    @abc.abstractmethod
    async def wait(self, max_entries: int = 64) -> list[WorkCompletion]:
        """Wait until at least one completion is there, then return up to ``max_entries``.

        Raises:
            DeviceRemoved: the device went away while waiting.
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Destroy the CQ. Idempotent."""


class QP(abc.ABC):
    """An RC queue pair.

    Attributes:
        qp_num: the QP number peers address (24 bits).
    """

    qp_num: int

    @property
    @abc.abstractmethod
    def state(self) -> QpState:
        """The current state (it may change on its own to ERR or SQD-drained)."""

    @property
    @abc.abstractmethod
    def sq_draining(self) -> bool:
        """True while in SQD with sends still outstanding (``ibv_qp_attr.sq_draining``)."""

    @abc.abstractmethod
    def modify(self, attr: QpAttr) -> None:
        """Move the QP to ``attr.state`` with the given attributes.

        Moving to ERR completes every outstanding and every later-posted WR with
        ``WR_FLUSH_ERR``. Moving to SQD stops starting new sends; once those in
        flight complete the context raises ``SQ_DRAINED`` (if
        ``en_sqd_async_notify``). SQD -> SQD may change ``dest`` (a path change).
        Leaving SQD for RTS while still draining is refused.

        Raises:
            InvalidState: an illegal transition (see :data:`rdsx.verbs.LEGAL_TRANSITIONS`).
            InvalidArgument: a required attribute is missing or out of range.
        """

    @abc.abstractmethod
    def post_send(self, wrs: SendWR | Sequence[SendWR]) -> None:
        """Post one or more send WRs; never blocks.

        Completions go to the send CQ. In ERR the WRs are accepted and flushed.
        As with ``ibv_post_send``, the memory a WR's SGEs name belongs to the
        transport until the WR has completed (an unsignaled WR: until a later
        WR's completion is in): a transport may read it then, or again for a
        retransmission (``tcp`` sends it from there), so changing it earlier
        sends undefined bytes.

        Raises:
            InvalidState: the QP is in RESET, INIT or RTR (SQD: queued until RTS).
            QueueFull: more than ``max_send_wr`` outstanding.
            InvalidArgument: more SGEs than ``max_send_sge``, a message longer
                than ``max_msg_sz``, negative lengths, a missing ``imm_data``, an
                ``imm_data`` outside 32 bits (:func:`rdsx.verbs.check_send_wrs`).
        """

    @abc.abstractmethod
    def post_recv(self, wrs: RecvWR | Sequence[RecvWR]) -> None:
        """Post one or more receive WRs; never blocks.

        Raises:
            InvalidState: the QP is in RESET.
            QueueFull: more than ``max_recv_wr`` outstanding.
            InvalidArgument: more SGEs than ``max_recv_sge``, negative lengths
                (the checks of :func:`rdsx.verbs.check_recv_wrs`).
        """

    @abc.abstractmethod
    def close(self) -> None:
        """Destroy the QP; outstanding WRs are discarded without completions."""


class CmRequest(abc.ABC):
    """An incoming connect request (``RDMA_CM_EVENT_CONNECT_REQUEST``).

    Attributes:
        private_data: what the active side attached.
        source: the active side's out-of-band address.
        replied: whether :meth:`accept` got its reply (the REP) out; the active side
            may then count the connection as made even if ``accept`` fails after it
            (librdmacm's ``rdma_accept`` returns there). False where not known.
    """

    private_data: bytes
    source: str
    replied: bool = False

    @abc.abstractmethod
    async def accept(self, qp: QP, private_data: bytes = b"") -> CmId:
        """Accept with ``qp`` (in RESET or INIT), which the CM moves to RTS.

        Receives posted on ``qp`` in INIT stay posted, so the active side's first
        SEND (it may send as soon as its ``cm_connect`` returns) meets no RNR NAK.

        Raises:
            InvalidState: ``qp`` is in neither RESET nor INIT, or the request was
                already answered.
            ConnectTimeout: the active side went away before it was established.
        """

    @abc.abstractmethod
    async def reject(self, private_data: bytes = b"") -> None:
        """Reject; the active side gets :class:`~rdsx.errors.ConnectionRejected`."""


class CmListener(abc.ABC):
    """A listening CM id."""

    port: int

    @abc.abstractmethod
    async def get_request(self) -> CmRequest:
        """Wait for the next connect request."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop listening. Idempotent."""


class CmId(abc.ABC):
    """An established CM connection around one QP.

    Attributes:
        qp: the QP it connected.
        private_data: the peer's private data from the exchange.
        peer_address: the peer's out-of-band address.
    """

    qp: QP
    private_data: bytes
    peer_address: str

    @abc.abstractmethod
    async def next_event(self) -> CmEvent:
        """Wait for the next event: DISCONNECTED, DEVICE_REMOVAL or TIMEWAIT_EXIT.

        A CM that implements :meth:`send_message` also gives ``MESSAGE`` events.
        """

    async def send_message(self, private_data: bytes) -> None:
        """Send ``private_data`` to the peer's id of this connection (optional).

        Rides the CM's own channel (on IB a MAD to the peer's CM agent, as a
        LAP or APR does), so no QP is created or touched; the peer's id gets a
        ``MESSAGE`` event with ``private_data``. Like a MAD it may be lost; the
        caller retries if it needs an answer. The default says the CM cannot.

        Raises:
            NotSupported: this transport's CM carries no such messages.
            InvalidState: the connection is no longer established.
            InvalidArgument: more than :data:`~rdsx.verbs.MSG_PRIVATE_DATA` bytes.
            InvalidHandle: the id was closed.
            DeviceRemoved: the device went away.
        """
        raise NotSupported(f"{type(self).__name__} carries no CM messages")

    @abc.abstractmethod
    async def disconnect(self) -> None:
        """Send a disconnect (DREQ): both sides see DISCONNECTED; the QP goes to ERR."""

    @abc.abstractmethod
    def close(self) -> None:
        """Destroy the CM id (not the QP). Idempotent.

        An established id whose device works sends a DREQ first, as
        ``rdma_destroy_id`` does: the peer's id sees ``DISCONNECTED`` then
        ``TIMEWAIT_EXIT`` and its QP goes to ERR. The local QP is left as it is
        and this id gets no further event. An id already disconnected, or whose
        device was removed, sends nothing.
        """
