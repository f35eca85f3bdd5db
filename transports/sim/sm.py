"""The subnet manager: LIDs, vGUIDs, linear forwarding tables, path queries.

It is the only place that hands out addresses, and it counts what it spends so
that the shared-port and vSwitch models can be compared the way the vSwitch
papers do (one SMP per changed 64-entry LFT block per switch, versus none when
VFs share the PF's LID):

* ``smps_sent`` — every subnet management packet: PortInfo sets when a LID is
  given to a port, GUIDInfo sets when a VF gets a vGUID, and LFT block writes.
* ``lft_blocks_written`` — the LFT part of ``smps_sent``.
* ``sa_queries`` — path record queries answered by the subnet administrator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import attrs

from rdsx.errors import InvalidArgument, ResourceExhausted, Unreachable

__all__ = ["LID_MAX", "LID_MIN", "UNICAST_LIDS", "PathRecord", "SubnetManager"]

#: First and last unicast LID (0 is reserved, 0xC000 and up are multicast).
LID_MIN = 0x0001
LID_MAX = 0xBFFF
#: How many unicast LIDs one subnet has: 49,151.
UNICAST_LIDS = LID_MAX - LID_MIN + 1
#: Entries per linear forwarding table block (one SMP writes one block).
LFT_BLOCK = 64
#: vGUIDs handed to VFs start here (an OUI-like prefix, then a counter).
VGUID_BASE = 0x0002_C903_00A0_0000


@attrs.frozen(slots=True)
class PathRecord:
    """What an SA path query returns.

    Attributes:
        dlid: the destination port's LID.
        dguid: the destination port's (v)GUID, which the CM addresses.
        mtu: the path MTU in bytes.
        hops: links between the two ports.
    """

    dlid: int
    dguid: int
    mtu: int
    hops: int


class SubnetManager:
    """Assigns LIDs and vGUIDs, programs switch LFTs and answers path queries.

    ``route`` is the fabric's topology function: given a switch index and a
    LID's attachment point, it returns that switch's output port for the LID.
    """

    def __init__(self, num_switches: int, route: Callable[[int, object], object]) -> None:
        self.smps_sent = 0
        self.lft_blocks_written = 0
        self.sa_queries = 0
        self.vguids_assigned = 0
        self._route = route
        self._lfts: list[dict[int, object]] = [{} for _ in range(num_switches)]
        self._where: dict[int, object] = {}
        self._next_lid = LID_MIN
        self._free: list[int] = []
        self._next_vguid = VGUID_BASE

    @property
    def lids_in_use(self) -> int:
        """How many unicast LIDs are assigned."""
        return len(self._where)

    def assign_lid(self, where: object, lid: int | None = None) -> int:
        """Give a LID to the port attached at ``where`` and route it on every switch.

        Args:
            where: the attachment point (opaque to the SM, understood by ``route``).
            lid: a specific LID to take (the LID follows a migrating VM); any
                free one when ``None``.

        Returns:
            The LID.

        Raises:
            ResourceExhausted: all 49,151 unicast LIDs are in use.
            InvalidArgument: the requested LID is out of range or already in use.
        """
        if lid is None:
            lid = self._allocate()
        elif not LID_MIN <= lid <= LID_MAX:
            raise InvalidArgument(f"LID {lid:#x} is not unicast (0x0001..0xBFFF)")
        elif lid in self._where:
            raise InvalidArgument(f"LID {lid:#x} is already assigned")
        else:
            self._claim(lid)
        self._where[lid] = where
        self.smps_sent += 1  # PortInfo(LID) set on the port
        self._program([lid])
        return lid

    def move_lid(self, lid: int, where: object) -> None:
        """Re-home an assigned LID (a vSwitch VF's LID following its VM)."""
        self._where[lid] = where
        self._program([lid])

    def release_lid(self, lid: int) -> None:
        """Return a LID to the pool. Stale LFT entries are left as they are (no SMPs)."""
        if self._where.pop(lid, None) is not None:
            self._free.append(lid)

    def assign_vguid(self) -> int:
        """Return a fresh vGUID for a VF (one GUIDInfo SMP); never reused."""
        vguid = self._next_vguid
        self._next_vguid += 1
        self.vguids_assigned += 1
        self.smps_sent += 1
        return vguid

    def path_query(self, dlid: int, dguid: int, mtu: int, hops: int) -> PathRecord:
        """Answer one SA path record query (counted).

        Raises:
            Unreachable: ``dlid`` is not assigned.
        """
        self.sa_queries += 1
        if dlid not in self._where:
            raise Unreachable(f"no path to LID {dlid:#x}")
        return PathRecord(dlid=dlid, dguid=dguid, mtu=mtu, hops=hops)

    def lft(self, switch: int) -> dict[int, object]:
        """A copy of one switch's linear forwarding table (LID -> output port)."""
        return dict(self._lfts[switch])

    def _allocate(self) -> int:
        if self._free:
            self._free.sort(reverse=True)
            return self._free.pop()
        if self._next_lid > LID_MAX:
            raise ResourceExhausted(
                f"the subnet's {UNICAST_LIDS} unicast LIDs (0x0001-0xBFFF) are all assigned"
            )
        lid = self._next_lid
        self._next_lid += 1
        return lid

    def _claim(self, lid: int) -> None:
        if lid >= self._next_lid:
            self._free.extend(range(self._next_lid, lid))
            self._next_lid = lid + 1
        else:
            self._free.remove(lid)

    def _program(self, lids: Iterable[int]) -> None:
        dirty: set[tuple[int, int]] = set()
        for lid in lids:
            where = self._where[lid]
            for index, lft in enumerate(self._lfts):
                port = self._route(index, where)
                if lft.get(lid) != port:
                    lft[lid] = port
                    dirty.add((index, lid // LFT_BLOCK))
        self.lft_blocks_written += len(dirty)
        self.smps_sent += len(dirty)
