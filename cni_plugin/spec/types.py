"""The canonical CNI result (spec 1.1.0), as frozen values.

Every plugin builds and returns one of these; convert.py turns it into the wire format of the
version the runtime asked for, and parses any older wire format back into it.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class Interface(NamedTuple):
    name: str
    mac: str = ""
    sandbox: str = ""
    # 1.1.0 additions; None/"" means absent.
    mtu: int | None = None
    socket_path: str = ""
    pci_id: str = ""


class IPConfig(NamedTuple):
    address: IPInterface
    gateway: IPAddress | None = None
    # Index into Result.interfaces; None for IPAM results, which carry no interfaces.
    interface: int | None = None

    @property
    def family(self) -> int:
        return self.address.version


class Route(NamedTuple):
    dst: IPNetwork
    gw: IPAddress | None = None
    # 1.1.0 additions.
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


class DNS(NamedTuple):
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def is_empty(self) -> bool:
        return not (self.nameservers or self.domain or self.search or self.options)


class Result(NamedTuple):
    interfaces: tuple[Interface, ...] = ()
    ips: tuple[IPConfig, ...] = ()
    routes: tuple[Route, ...] = ()
    dns: DNS = DNS()

    def with_changes(self, **changes: object) -> Result:
        return self._replace(**changes)  # type: ignore[arg-type]
