"""The Store protocol: every storage operation the allocator and the handlers use.

A store is used inside one locked request (`with store:`), so each method sees a consistent
snapshot. DiskStore (ipam.disk) is the real one; MemoryStore (ipam.memory) is its twin for tests.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple, Protocol

from cni_plugin.spec.types import IPAddress


class Owner(NamedTuple):
    """Who holds a reservation. A legacy reference file holds only the id: ifname is ''."""

    container_id: str
    ifname: str

    def file_content(self) -> str:
        # The reference's format (disk/backend.go): "<id>\r\n<ifname>", no trailing newline.
        return f"{self.container_id.strip()}\r\n{self.ifname}"

    @classmethod
    def from_file_content(cls, text: str) -> Owner:
        text = text.strip()
        container_id, sep, ifname = text.partition("\r\n")
        return cls(container_id.strip(), ifname.strip() if sep else "")


class Store(Protocol):
    def reserve(self, owner: Owner, ip: IPAddress, set_index: int) -> bool:
        """Reserve `ip` for `owner` and remember it as set `set_index`'s last reserved address.

        False (and nothing changed) if `ip` is already reserved.
        """

    def release(self, ip: IPAddress) -> None:
        """Drop the reservation of `ip`; absent is fine."""

    def owned_by(self, owner: Owner) -> list[IPAddress]:
        """Addresses reserved by exactly this owner (no legacy fallback)."""

    def last_reserved(self, set_index: int) -> IPAddress | None: ...

    def reservations(self) -> Mapping[IPAddress, Owner]:
        """Every reservation (GC, STATUS, listings): may cost O(allocations)."""
