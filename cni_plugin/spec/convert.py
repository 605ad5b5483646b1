"""Result <-> wire dict, for every spec version (pure, table-tested).

Version families, from pkg/types/{020,040,100} and Documentation/spec-upgrades.md:
  0.1.0, 0.2.0          {ip4: {ip, gateway, routes}, ip6: {...}, dns}; one address per family
  0.3.0, 0.3.1, 0.4.0   interfaces[], ips[] with "version", routes[{dst, gw}], dns
  1.0.0                 as 0.4.0 without ips[].version
  1.1.0                 1.0.0 plus interface mtu/socketPath/pciID and route mtu/advmss/priority/
                        table/scope
0.3.0's draft spec text named the list "ip"; every libcni release emits and parses "ips" for
0.3.0, so pycni emits "ips" (what runtimes read) and accepts either when parsing.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from .errors import DecodingFailure, IncompatibleVersion
from .types import DNS, Interface, IPConfig, Result, Route
from .version import ALL_VERSIONS, parse

LEGACY = ("0.1.0", "0.2.0")
WITH_IP_VERSION = ("0.3.0", "0.3.1", "0.4.0")


def _family_of(version: str) -> str:
    if version in LEGACY:
        return "legacy"
    if version in WITH_IP_VERSION:
        return "0.4"
    if version in ("1.0.0", "1.1.0"):
        return version
    raise IncompatibleVersion(f"cannot express a result in CNI version {version}")


# --- canonical -> wire ---------------------------------------------------------------------------


def _dns_to_wire(dns: DNS) -> dict[str, Any]:
    wire: dict[str, Any] = {}
    if dns.nameservers:
        wire["nameservers"] = list(dns.nameservers)
    if dns.domain:
        wire["domain"] = dns.domain
    if dns.search:
        wire["search"] = list(dns.search)
    if dns.options:
        wire["options"] = list(dns.options)
    return wire


def _route_to_wire(route: Route, rich: bool) -> dict[str, Any]:
    wire: dict[str, Any] = {"dst": str(route.dst)}
    if route.gw is not None:
        wire["gw"] = str(route.gw)
    if rich:
        for key, value in (
            ("mtu", route.mtu),
            ("advmss", route.advmss),
            ("priority", route.priority),
            ("table", route.table),
            ("scope", route.scope),
        ):
            if value is not None:
                wire[key] = value
    return wire


def _interface_to_wire(iface: Interface, rich: bool) -> dict[str, Any]:
    wire: dict[str, Any] = {"name": iface.name}
    if iface.mac:
        wire["mac"] = iface.mac
    if rich and iface.mtu is not None:
        wire["mtu"] = iface.mtu
    if iface.sandbox:
        wire["sandbox"] = iface.sandbox
    if rich and iface.socket_path:
        wire["socketPath"] = iface.socket_path
    if rich and iface.pci_id:
        wire["pciID"] = iface.pci_id
    return wire


def _legacy_to_wire(result: Result, version: str) -> dict[str, Any]:
    wire: dict[str, Any] = {"cniVersion": version}
    for family, key in ((4, "ip4"), (6, "ip6")):
        configs = [ip for ip in result.ips if ip.family == family]
        if len(configs) > 1:
            raise IncompatibleVersion(
                f"cannot convert result to CNI version {version}",
                f"{len(configs)} IPv{family} addresses; {version} carries at most one per family",
            )
        if not configs:
            continue
        entry: dict[str, Any] = {"ip": str(configs[0].address)}
        if configs[0].gateway is not None:
            entry["gateway"] = str(configs[0].gateway)
        routes = [_route_to_wire(r, False) for r in result.routes if r.dst.version == family]
        if routes:
            entry["routes"] = routes
        wire[key] = entry
    dns = _dns_to_wire(result.dns)
    if dns:
        wire["dns"] = dns
    return wire


def result_to_wire(result: Result, version: str) -> dict[str, Any]:
    """The dict a plugin prints for `version`; raises IncompatibleVersion if it cannot be said."""
    family = _family_of(version)
    if family == "legacy":
        return _legacy_to_wire(result, version)
    rich = family == "1.1.0"
    wire: dict[str, Any] = {"cniVersion": version}
    if result.interfaces:
        wire["interfaces"] = [_interface_to_wire(i, rich) for i in result.interfaces]
    if result.ips:
        ips = []
        for ip in result.ips:
            entry: dict[str, Any] = {}
            if family == "0.4":
                entry["version"] = str(ip.family)
            if ip.interface is not None:
                entry["interface"] = ip.interface
            entry["address"] = str(ip.address)
            if ip.gateway is not None:
                entry["gateway"] = str(ip.gateway)
            ips.append(entry)
        wire["ips"] = ips
    if result.routes:
        wire["routes"] = [_route_to_wire(r, rich) for r in result.routes]
    dns = _dns_to_wire(result.dns)
    if dns:
        wire["dns"] = dns
    return wire


# --- wire -> canonical ---------------------------------------------------------------------------


def _expect(value: Any, kind: type, where: str) -> Any:
    if not isinstance(value, kind):
        raise DecodingFailure(f"cannot decode result: {where} must be a {kind.__name__}")
    return value


def _cidr(value: Any, where: str) -> str:
    # The spec writes addresses and route destinations in CIDR notation; without the prefix,
    # ipaddress would silently read a host (/32, /128) where the reference decoder (ParseCIDR) fails.
    if "/" not in _expect(value, str, where):
        raise DecodingFailure(f"cannot decode result: {where} has no /prefix", repr(value))
    return value


def _list(value: Any, where: str) -> list[Any]:
    """An optional list: absent or null reads as empty, any other non-list is undecodable."""
    return [] if value is None else _expect(value, list, where)


def _ip_interface(value: Any, where: str) -> Any:
    try:
        return ipaddress.ip_interface(_cidr(value, where))
    except ValueError as exc:
        raise DecodingFailure(f"cannot decode result: {where} is not an address/prefix", str(exc)) from exc


def _ip_address(value: Any, where: str) -> Any:
    if value in (None, ""):
        return None
    try:
        return ipaddress.ip_address(_expect(value, str, where))
    except ValueError as exc:
        raise DecodingFailure(f"cannot decode result: {where} is not an address", str(exc)) from exc


def _optional_int(value: Any, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise DecodingFailure(f"cannot decode result: {where} must be an integer")
    return value


def _route_from_wire(raw: Any, where: str) -> Route:
    _expect(raw, dict, where)
    try:
        dst = ipaddress.ip_network(_cidr(raw.get("dst"), f"{where}.dst"), strict=False)
    except ValueError as exc:
        raise DecodingFailure(f"cannot decode result: {where}.dst is not a network", str(exc)) from exc
    return Route(
        dst=dst,
        gw=_ip_address(raw.get("gw"), f"{where}.gw"),
        mtu=_optional_int(raw.get("mtu"), f"{where}.mtu"),
        advmss=_optional_int(raw.get("advmss"), f"{where}.advmss"),
        priority=_optional_int(raw.get("priority"), f"{where}.priority"),
        table=_optional_int(raw.get("table"), f"{where}.table"),
        scope=_optional_int(raw.get("scope"), f"{where}.scope"),
    )


def _strings(raw: Any, where: str) -> tuple[str, ...]:
    if raw is None:
        return ()
    items = _expect(raw, list, where)
    return tuple(_expect(item, str, f"{where}[]") for item in items)


def _dns_from_wire(raw: Any) -> DNS:
    if raw is None:
        return DNS()
    _expect(raw, dict, "dns")
    return DNS(
        nameservers=_strings(raw.get("nameservers"), "dns.nameservers"),
        domain=_expect(raw.get("domain", ""), str, "dns.domain"),
        search=_strings(raw.get("search"), "dns.search"),
        options=_strings(raw.get("options"), "dns.options"),
    )


def _legacy_from_wire(raw: dict[str, Any]) -> Result:
    ips: list[IPConfig] = []
    routes: list[Route] = []
    for key in ("ip4", "ip6"):
        entry = raw.get(key)
        if entry is None:
            continue
        _expect(entry, dict, key)
        ips.append(
            IPConfig(
                address=_ip_interface(entry.get("ip"), f"{key}.ip"),
                gateway=_ip_address(entry.get("gateway"), f"{key}.gateway"),
            )
        )
        for n, route in enumerate(_list(entry.get("routes"), f"{key}.routes")):
            routes.append(_route_from_wire(route, f"{key}.routes[{n}]"))
    return Result(ips=tuple(ips), routes=tuple(routes), dns=_dns_from_wire(raw.get("dns")))


def result_from_wire(raw: Any, default_version: str) -> Result:
    """Parse a result (a prevResult, or a delegate's output) of any supported version.

    A result without cniVersion is read as `default_version` (SPEC §5: "the implemented version").
    """
    _expect(raw, dict, "result")
    version = raw.get("cniVersion") or default_version
    _expect(version, str, "cniVersion")
    parse(version)
    if version not in ALL_VERSIONS:
        raise IncompatibleVersion(f"cannot decode a result of CNI version {version}")
    if _family_of(version) == "legacy":
        return _legacy_from_wire(raw)

    interfaces = []
    for n, iface in enumerate(_list(raw.get("interfaces"), "interfaces")):
        _expect(iface, dict, f"interfaces[{n}]")
        interfaces.append(
            Interface(
                name=_expect(iface.get("name", ""), str, f"interfaces[{n}].name"),
                mac=_expect(iface.get("mac", ""), str, f"interfaces[{n}].mac"),
                sandbox=_expect(iface.get("sandbox", ""), str, f"interfaces[{n}].sandbox"),
                mtu=_optional_int(iface.get("mtu"), f"interfaces[{n}].mtu"),
                socket_path=_expect(iface.get("socketPath", ""), str, f"interfaces[{n}].socketPath"),
                pci_id=_expect(iface.get("pciID", ""), str, f"interfaces[{n}].pciID"),
            )
        )
    raw_ips = raw.get("ips")
    if raw_ips is None and version == "0.3.0":
        raw_ips = raw.get("ip")
    ips = []
    for n, entry in enumerate(_list(raw_ips, "ips")):
        _expect(entry, dict, f"ips[{n}]")
        index = _optional_int(entry.get("interface"), f"ips[{n}].interface")
        if index is not None and not 0 <= index < len(interfaces):
            raise DecodingFailure(
                f"cannot decode result: ips[{n}].interface {index} names no interface",
                f"the result has {len(interfaces)} interfaces",
            )
        ips.append(
            IPConfig(
                address=_ip_interface(entry.get("address"), f"ips[{n}].address"),
                gateway=_ip_address(entry.get("gateway"), f"ips[{n}].gateway"),
                interface=index,
            )
        )
    routes = [
        _route_from_wire(r, f"routes[{n}]")
        for n, r in enumerate(_list(raw.get("routes"), "routes"))
    ]
    return Result(
        interfaces=tuple(interfaces),
        ips=tuple(ips),
        routes=tuple(routes),
        dns=_dns_from_wire(raw.get("dns")),
    )
