"""What the shim measures per migration, as frozen values (trio's ``statistics()`` idiom)."""

from __future__ import annotations

import attrs

__all__ = ["MigrationRecord", "ShimStatistics"]


@attrs.frozen(slots=True, kw_only=True)
class MigrationRecord:
    """One device replacement as the shim lived it (times are ``trio.current_time()``).

    Attributes:
        graceful: the removal came with a grace deadline (else: surprise).
        removal_at: when the shim learnt the device was going.
        deadline: the grace deadline (``None`` for a surprise removal).
        released_at: when every physical resource was released.
        arrival_at: when the next device arrived (``None``: not yet).
        resumed_at: when the last peer was resumed on it (``None``: not yet).
        peers_suspended: peers told to suspend (and that answered in time).
        suspended_in_band: of those, peers told over the connection's own CM id
            (a CM message, no QP made); the rest through their control port.
        peers_resumed: virtual QPs bound to a new physical QP on the new device.
        peers_timed_out: virtual QPs given up with ``PeerResumeTimeout``.
        drained: sends that completed during the drain, before the release.
        held: sends posted by the layer above while the shim held them.
        resent: sends posted again on the new QP (the peer did not have them).
        duplicates_dropped: unacknowledged sends the peer already had; completed,
            not resent.
    """

    graceful: bool
    removal_at: float
    deadline: float | None
    released_at: float | None = None
    arrival_at: float | None = None
    resumed_at: float | None = None
    peers_suspended: int = 0
    suspended_in_band: int = 0
    peers_resumed: int = 0
    peers_timed_out: int = 0
    drained: int = 0
    held: int = 0
    resent: int = 0
    duplicates_dropped: int = 0

    @property
    def release_seconds(self) -> float | None:
        """From the removal notice to the physical release (problem 1's budget)."""
        if self.released_at is None:
            return None
        return self.released_at - self.removal_at

    @property
    def resume_seconds(self) -> float | None:
        """From the new device's arrival to every peer resumed."""
        if self.arrival_at is None or self.resumed_at is None:
            return None
        return self.resumed_at - self.arrival_at

    @property
    def pause_seconds(self) -> float | None:
        """From the removal notice to every peer resumed: the pause above the shim."""
        if self.resumed_at is None:
            return None
        return self.resumed_at - self.removal_at


@attrs.frozen(slots=True, kw_only=True)
class ShimStatistics:
    """A snapshot of a :class:`~rdsx.shim.TransparentDeviceSource`.

    Attributes:
        devices: physical devices used so far (1 + migrations).
        migrations: one record per device removal, oldest first.
        held: sends held across all migrations.
        resent: sends resent across all migrations.
        duplicates_dropped: sends found already delivered across all migrations.
        resume_timeouts: virtual QPs given up with ``PeerResumeTimeout``.
        lost: messages a peer acknowledged at the hardware level but whose receive
            completion died with its device before the shim polled it.
        control_requests: suspend/reconnect requests served for peers.
        suspends_in_band: suspend messages served for peers over a connection's
            CM id (not counted in ``control_requests``).
        presetups: replacement physical QPs made ahead for a suspended or lost
            peer (MigrRDMA's pre-setup), before it reconnects.
        presetups_used: reconnects accepted with such a QP (its creation off the
            critical path).
        unresumable: connected QPs ended at a device replacement because the
            shim could not resume them (connected by hand, or to a peer
            without a shim): each got ``QP_FATAL``.
    """

    devices: int
    migrations: tuple[MigrationRecord, ...]
    held: int
    resent: int
    duplicates_dropped: int
    resume_timeouts: int
    lost: int
    control_requests: int
    suspends_in_band: int = 0
    presetups: int = 0
    presetups_used: int = 0
    unresumable: int = 0


class Recorder:
    """The mutable tally behind :class:`ShimStatistics` (one per shim)."""

    def __init__(self) -> None:
        self.devices = 0
        self.records: list[MigrationRecord] = []
        self.totals = {"held": 0, "resent": 0, "duplicates_dropped": 0}
        self.resume_timeouts = 0
        self.lost_messages = 0
        self.control_requests = 0
        self.suspends_in_band = 0
        self.presetups = 0
        self.presetups_used = 0
        self.unresumable = 0

    def _bump(self, name: str, count: int) -> None:
        if name in self.totals:
            self.totals[name] += count
        if self.records:
            last = self.records[-1]
            self.records[-1] = attrs.evolve(last, **{name: getattr(last, name) + count})

    def removal(self, now: float, deadline: float | None) -> None:
        """A device announced (or suffered) its removal."""
        self.records.append(
            MigrationRecord(graceful=deadline is not None, removal_at=now, deadline=deadline)
        )

    def update(self, **changes: object) -> None:
        """Set fields of the current migration record."""
        if self.records:
            self.records[-1] = attrs.evolve(self.records[-1], **changes)  # type: ignore[arg-type]

    def held(self, count: int) -> None:
        """Sends held while the QP could not post."""
        self._bump("held", count)

    def resent(self, count: int) -> None:
        """Sends posted again on a new physical QP."""
        self._bump("resent", count)

    def duplicates_dropped(self, count: int) -> None:
        """Unacknowledged sends the peer turned out to have."""
        self._bump("duplicates_dropped", count)

    def drained(self, count: int) -> None:
        """Sends that completed during a drain."""
        self._bump("drained", count)

    def suspended(self, *, in_band: bool) -> None:
        """A peer answered our suspend (over the connection's CM id if ``in_band``)."""
        self._bump("peers_suspended", 1)
        if in_band:
            self._bump("suspended_in_band", 1)

    def resumed(self) -> None:
        """A virtual QP was bound to a new physical QP."""
        self._bump("peers_resumed", 1)

    def resume_timeout(self) -> None:
        """A virtual QP gave up waiting for its peer."""
        self.resume_timeouts += 1
        self._bump("peers_timed_out", 1)

    def lost(self, count: int) -> None:
        """Messages acknowledged by hardware whose receive completion died unpolled."""
        self.lost_messages += count

    def snapshot(self) -> ShimStatistics:
        """The frozen value."""
        return ShimStatistics(
            devices=self.devices,
            migrations=tuple(self.records),
            held=self.totals["held"],
            resent=self.totals["resent"],
            duplicates_dropped=self.totals["duplicates_dropped"],
            resume_timeouts=self.resume_timeouts,
            lost=self.lost_messages,
            control_requests=self.control_requests,
            suspends_in_band=self.suspends_in_band,
            presetups=self.presetups,
            presetups_used=self.presetups_used,
            unresumable=self.unresumable,
        )
