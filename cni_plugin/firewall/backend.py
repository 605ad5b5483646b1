"""The masquerade backend interface the bridge plugin programs against."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol

from ..spec.types import IPAddress, IPInterface


class MasqEntry(NamedTuple):
    """One pod address in a network's masquerade set, tagged with its attachment's hash."""

    address: IPAddress
    tag: str


class SpoofEntry(NamedTuple):
    """A macspoofchk element: host veth (and, in spoof_allowed, the only MAC it may send from)."""

    host_if: str
    mac: str
    comment: str


class Masquerade(Protocol):
    def add(self, network: str, tag: str, addresses: Iterable[IPInterface]) -> None:
        """Masquerade traffic from `addresses` to anything outside their subnets (idempotent)."""

    def remove(self, network: str, tag: str) -> list[MasqEntry]:
        """Remove every entry of attachment `tag` in `network`; returns what was removed."""

    def entries(self, network: str) -> list[MasqEntry]:
        """Every pod address entry of `network` (empty when nothing was ever set up)."""

    def gc(self, network: str, keep: set[str]) -> list[MasqEntry]:
        """Remove entries of `network` whose tag is not in `keep`; returns what was removed."""

    def usable(self) -> None:
        """Raise FirewallFailure unless the backend can apply changes on this node."""


class SpoofCheck(Protocol):
    def add(self, network: str, tag: str, host_if: str, mac: str) -> None:
        """Drop frames from `host_if` whose source MAC is not `mac`."""

    def remove(self, network: str, tag: str) -> list[SpoofEntry]:
        """Remove the attachment's entries; returns what was removed."""

    def entries(self, network: str) -> list[SpoofEntry]:
        """The network's entries (comment starting with its id)."""

    def gc(self, network: str, keep: set[str]) -> list[SpoofEntry]:
        """Remove the network's entries whose attachment tag is not in `keep`."""
