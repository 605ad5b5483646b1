"""An in-memory Masquerade for unit tests: same contract as NftMasquerade, `dump()` to assert."""

from __future__ import annotations

from collections.abc import Iterable

from ..spec.errors import FirewallFailure
from ..spec.types import IPInterface
from .backend import MasqEntry


class FakeMasquerade:
    def __init__(self, *, broken: bool = False) -> None:
        self.sets: dict[str, dict[object, str]] = {}
        self.subnets: dict[str, set[object]] = {}
        self.broken = broken

    def _check(self) -> None:
        if self.broken:
            raise FirewallFailure("nftables: fake failure", "broken on purpose")

    def add(self, network: str, tag: str, addresses: Iterable[IPInterface]) -> None:
        self._check()
        members = self.sets.setdefault(network, {})
        nets = self.subnets.setdefault(network, set())
        for address in addresses:
            members[address.ip] = tag
            nets.add(address.network)

    def entries(self, network: str) -> list[MasqEntry]:
        return [MasqEntry(a, t) for a, t in self.sets.get(network, {}).items()]  # type: ignore[arg-type]

    def remove(self, network: str, tag: str) -> list[MasqEntry]:
        return self.gc(network, keep={t for t in self.sets.get(network, {}).values() if t != tag})

    def gc(self, network: str, keep: set[str]) -> list[MasqEntry]:
        self._check()
        members = self.sets.get(network, {})
        doomed = [MasqEntry(a, t) for a, t in members.items() if t not in keep]  # type: ignore[arg-type]
        for entry in doomed:
            del members[entry.address]
        return doomed

    def usable(self) -> None:
        self._check()

    def dump(self) -> dict[str, dict[str, str]]:
        return {net: {str(a): t for a, t in members.items()} for net, members in self.sets.items() if members}
