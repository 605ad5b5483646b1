"""MemoryStore: the Store protocol in a dict, for unit tests of the allocator and handlers."""

from __future__ import annotations

from collections.abc import Mapping

from cni_plugin.spec.types import IPAddress

from .store import Owner


class MemoryStore:
    def __init__(self) -> None:
        self.by_ip: dict[IPAddress, Owner] = {}
        self.last: dict[int, IPAddress] = {}

    def __enter__(self) -> MemoryStore:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def reserve(self, owner: Owner, ip: IPAddress, set_index: int) -> bool:
        if ip in self.by_ip:
            return False
        self.by_ip[ip] = owner
        self.last[set_index] = ip
        return True

    def release(self, ip: IPAddress) -> None:
        self.by_ip.pop(ip, None)

    def owned_by(self, owner: Owner) -> list[IPAddress]:
        return [ip for ip, who in self.by_ip.items() if who == owner]

    def last_reserved(self, set_index: int) -> IPAddress | None:
        return self.last.get(set_index)

    def reservations(self) -> Mapping[IPAddress, Owner]:
        return dict(self.by_ip)
