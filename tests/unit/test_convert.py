"""cni_plugin.spec.convert: golden tests, both directions, for every spec version.

One rich canonical Result (dual-stack, two interfaces, 1.1.0 interface and route fields, dns) is
written out in each wire format as an exact dict, parsed back, and round-tripped. The IPAM-shaped
part is also checked against an independent implementation: the Go reference `static` IPAM plugin
(/usr/lib/cni/static), which prints a result for the addresses in its config without touching the
system.
"""

from __future__ import annotations

import json
import os
import subprocess
from ipaddress import ip_address as addr
from ipaddress import ip_interface as cidr
from ipaddress import ip_network as net
from pathlib import Path
from typing import Any

import pytest

from cni_plugin.spec.convert import result_from_wire, result_to_wire
from cni_plugin.spec.errors import DecodingFailure, IncompatibleVersion
from cni_plugin.spec.types import DNS, Interface, IPConfig, Result, Route
from cni_plugin.spec.version import ALL_VERSIONS

LEGACY = ("0.1.0", "0.2.0")
WITH_IP_VERSION = ("0.3.0", "0.3.1", "0.4.0")

# --- the canonical result ---------------------------------------------------------------------------

HOST_IF = Interface(name="cni0", mac="0a:58:0a:01:02:01")
POD_IF = Interface(
    name="eth0",
    mac="0a:58:0a:01:02:05",
    sandbox="/var/run/netns/pod-1",
    mtu=1450,
    socket_path="/run/vhost-user/pod-1.sock",
    pci_id="0000:00:1f.6",
)
DNS_VALUE = DNS(
    nameservers=("10.1.2.1", "fd00:1::1"),
    domain="cluster.local",
    search=("svc.cluster.local", "cluster.local"),
    options=("ndots:5", "edns0"),
)
# IPv4 routes before IPv6 ones: the legacy formats group routes by family, so this order survives
# a trip through 0.1.0/0.2.0.
ROUTES = (
    Route(dst=net("0.0.0.0/0"), gw=addr("10.1.2.1"), mtu=1400, advmss=1360, priority=100, table=254, scope=0),
    Route(dst=net("192.168.0.0/16")),
    Route(dst=net("::/0"), gw=addr("fd00:1::1"), table=100),
)
RICH = Result(
    interfaces=(HOST_IF, POD_IF),
    ips=(
        IPConfig(address=cidr("10.1.2.5/24"), gateway=addr("10.1.2.1"), interface=1),
        IPConfig(address=cidr("fd00:1::5/64"), gateway=addr("fd00:1::1"), interface=1),
    ),
    routes=ROUTES,
    dns=DNS_VALUE,
)

# --- its wire form per version, written out by hand ----------------------------------------------

DNS_WIRE = {
    "nameservers": ["10.1.2.1", "fd00:1::1"],
    "domain": "cluster.local",
    "search": ["svc.cluster.local", "cluster.local"],
    "options": ["ndots:5", "edns0"],
}
LEGACY_WIRE = {
    "ip4": {
        "ip": "10.1.2.5/24",
        "gateway": "10.1.2.1",
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}, {"dst": "192.168.0.0/16"}],
    },
    "ip6": {"ip": "fd00:1::5/64", "gateway": "fd00:1::1", "routes": [{"dst": "::/0", "gw": "fd00:1::1"}]},
    "dns": DNS_WIRE,
}
PLAIN_INTERFACES = [
    {"name": "cni0", "mac": "0a:58:0a:01:02:01"},
    {"name": "eth0", "mac": "0a:58:0a:01:02:05", "sandbox": "/var/run/netns/pod-1"},
]
PLAIN_ROUTES = [
    {"dst": "0.0.0.0/0", "gw": "10.1.2.1"},
    {"dst": "192.168.0.0/16"},
    {"dst": "::/0", "gw": "fd00:1::1"},
]
V04_WIRE = {
    "interfaces": PLAIN_INTERFACES,
    "ips": [
        {"version": "4", "interface": 1, "address": "10.1.2.5/24", "gateway": "10.1.2.1"},
        {"version": "6", "interface": 1, "address": "fd00:1::5/64", "gateway": "fd00:1::1"},
    ],
    "routes": PLAIN_ROUTES,
    "dns": DNS_WIRE,
}
V100_IPS = [
    {"interface": 1, "address": "10.1.2.5/24", "gateway": "10.1.2.1"},
    {"interface": 1, "address": "fd00:1::5/64", "gateway": "fd00:1::1"},
]
V100_WIRE = {"interfaces": PLAIN_INTERFACES, "ips": V100_IPS, "routes": PLAIN_ROUTES, "dns": DNS_WIRE}
V110_WIRE = {
    "interfaces": [
        {"name": "cni0", "mac": "0a:58:0a:01:02:01"},
        {
            "name": "eth0",
            "mac": "0a:58:0a:01:02:05",
            "mtu": 1450,
            "sandbox": "/var/run/netns/pod-1",
            "socketPath": "/run/vhost-user/pod-1.sock",
            "pciID": "0000:00:1f.6",
        },
    ],
    "ips": V100_IPS,
    "routes": [
        {"dst": "0.0.0.0/0", "gw": "10.1.2.1", "mtu": 1400, "advmss": 1360, "priority": 100, "table": 254, "scope": 0},
        {"dst": "192.168.0.0/16"},
        {"dst": "::/0", "gw": "fd00:1::1", "table": 100},
    ],
    "dns": DNS_WIRE,
}


def golden_wire(version: str) -> dict[str, Any]:
    body = (
        LEGACY_WIRE if version in LEGACY
        else V04_WIRE if version in WITH_IP_VERSION
        else V100_WIRE if version == "1.0.0"
        else V110_WIRE
    )
    return {"cniVersion": version, **json.loads(json.dumps(body))}  # a deep copy


# What survives a trip through each format: 1.1.0 keeps everything; 0.3.0-1.0.0 lose the 1.1.0
# fields; 0.1.0/0.2.0 also lose the interfaces and which interface an address belongs to.
WITHOUT_1_1_FIELDS = Result(
    interfaces=(HOST_IF, Interface(name="eth0", mac="0a:58:0a:01:02:05", sandbox="/var/run/netns/pod-1")),
    ips=RICH.ips,
    routes=tuple(Route(dst=r.dst, gw=r.gw) for r in ROUTES),
    dns=DNS_VALUE,
)
LEGACY_SHAPE = WITHOUT_1_1_FIELDS.with_changes(
    interfaces=(), ips=tuple(IPConfig(address=ip.address, gateway=ip.gateway) for ip in RICH.ips)
)


def surviving(version: str) -> Result:
    if version in LEGACY:
        return LEGACY_SHAPE
    return RICH if version == "1.1.0" else WITHOUT_1_1_FIELDS


# --- canonical -> wire ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_canonical_to_wire_is_the_golden_dict(version: str) -> None:
    wire = result_to_wire(RICH, version)
    assert wire == golden_wire(version)
    json.dumps(wire)  # printable as is


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_empty_result_is_only_the_version(version: str) -> None:
    # Empty lists and an empty dns are left out rather than printed as [] / {}.
    assert result_to_wire(Result(), version) == {"cniVersion": version}


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_ipam_result_has_no_interfaces_and_no_interface_index(version: str) -> None:
    ipam = Result(ips=(IPConfig(address=cidr("10.1.2.5/24")),))
    assert result_to_wire(ipam, version) == {"cniVersion": version, "ips": [{"address": "10.1.2.5/24"}]}


@pytest.mark.parametrize("version", LEGACY)
@pytest.mark.parametrize("family_addresses", [("10.1.2.5/24", "10.1.3.5/24"), ("fd00:1::5/64", "fd00:2::5/64")])
def test_legacy_versions_refuse_two_addresses_of_one_family(version: str, family_addresses: tuple[str, str]) -> None:
    result = Result(ips=tuple(IPConfig(address=cidr(a)) for a in family_addresses))
    with pytest.raises(IncompatibleVersion) as info:
        result_to_wire(result, version)
    assert info.value.code == 1
    assert version in info.value.details


def test_legacy_drops_routes_of_a_family_without_an_address() -> None:
    # As the reference 0.2.0 converter does: routes live inside ip4/ip6, so they need the entry.
    result = Result(ips=(IPConfig(address=cidr("10.1.2.5/24")),), routes=(Route(dst=net("::/0")),))
    assert result_to_wire(result, "0.2.0") == {"cniVersion": "0.2.0", "ip4": {"ip": "10.1.2.5/24"}}


@pytest.mark.parametrize("version", ["0.0.9", "0.5.0", "1.2.0"])
def test_unknown_version_cannot_be_written(version: str) -> None:
    with pytest.raises(IncompatibleVersion):
        result_to_wire(RICH, version)


# --- wire -> canonical ---------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_golden_wire_to_canonical(version: str) -> None:
    # default_version is deliberately different: the result's own cniVersion decides the format.
    other = "0.2.0" if version not in LEGACY else "1.1.0"
    assert result_from_wire(golden_wire(version), other) == surviving(version)


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_round_trip_canonical_wire_canonical(version: str) -> None:
    once = result_from_wire(result_to_wire(RICH, version), version)
    assert once == surviving(version)
    # ... and a second trip changes nothing more.
    assert result_from_wire(result_to_wire(once, version), version) == once


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_round_trip_wire_canonical_wire(version: str) -> None:
    assert result_to_wire(result_from_wire(golden_wire(version), version), version) == golden_wire(version)


@pytest.mark.parametrize(("old", "new"), [("0.2.0", "1.0.0"), ("0.3.1", "1.1.0"), ("1.1.0", "0.4.0")])
def test_conversion_between_versions(old: str, new: str) -> None:
    # A chained plugin reads prevResult in one version and prints it in another.
    converted = result_to_wire(result_from_wire(golden_wire(old), old), new)
    assert converted == result_to_wire(surviving(old), new)


def test_result_without_cni_version_is_read_as_the_default() -> None:
    legacy_shaped = {"ip4": {"ip": "10.1.2.5/24"}}
    assert result_from_wire(legacy_shaped, "0.2.0").ips == (IPConfig(address=cidr("10.1.2.5/24")),)
    assert result_from_wire(legacy_shaped, "1.0.0").ips == ()
    rich_shaped = {"cniVersion": "", "ips": [{"address": "10.1.2.5/24"}]}
    assert result_from_wire(rich_shaped, "1.0.0").ips == (IPConfig(address=cidr("10.1.2.5/24")),)
    assert result_from_wire(rich_shaped, "0.1.0").ips == ()


def test_0_3_0_accepts_the_draft_ip_key() -> None:
    draft = {"cniVersion": "0.3.0", "ip": [{"version": "4", "address": "10.1.2.5/24"}]}
    assert result_from_wire(draft, "0.3.0").ips == (IPConfig(address=cidr("10.1.2.5/24")),)
    # Only 0.3.0 had that draft: 0.3.1 ignores the key ...
    assert result_from_wire({**draft, "cniVersion": "0.3.1"}, "0.3.1").ips == ()
    # ... and "ips" wins where both are present.
    both = {**draft, "ips": [{"version": "6", "address": "fd00:1::5/64"}]}
    assert result_from_wire(both, "0.3.0").ips == (IPConfig(address=cidr("fd00:1::5/64")),)


def test_route_dst_with_host_bits_is_read_as_its_network() -> None:
    parsed = result_from_wire({"cniVersion": "1.0.0", "routes": [{"dst": "10.1.2.5/24"}]}, "1.0.0")
    assert parsed.routes == (Route(dst=net("10.1.2.0/24")),)


DELETE = object()


def _with(version: str, path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """The golden wire of `version` with the value at `path` replaced (or removed: DELETE)."""
    wire = golden_wire(version)
    target: Any = wire
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return wire


BAD_RESULTS = [
    # (id, version, path to change, bad value)
    ("address-out-of-range", "1.1.0", ("ips", 0, "address"), "10.1.2.300/24"),
    ("address-not-an-ip", "1.0.0", ("ips", 0, "address"), "pod-1"),
    ("address-without-prefix", "1.0.0", ("ips", 0, "address"), "10.1.2.5"),
    ("address-missing", "0.4.0", ("ips", 1), {"version": "6", "interface": 1}),
    ("address-a-number", "0.3.1", ("ips", 0, "address"), 167838213),
    ("gateway-with-prefix", "1.0.0", ("ips", 0, "gateway"), "10.1.2.1/24"),
    ("legacy-bad-ip", "0.2.0", ("ip4", "ip"), "10.1.2/24"),
    ("legacy-bad-gateway", "0.1.0", ("ip6", "gateway"), "fd00::zz"),
    ("route-dst-bad", "1.1.0", ("routes", 0, "dst"), "0.0.0.0/33"),
    ("route-dst-missing", "1.0.0", ("routes", 1), {"gw": "10.1.2.1"}),
    ("route-dst-without-prefix", "1.0.0", ("routes", 1, "dst"), "192.168.0.0"),
    ("route-gw-bad", "0.3.0", ("routes", 0, "gw"), "10.1.2.1.1"),
    ("interface-index-too-big", "1.0.0", ("ips", 0, "interface"), 2),
    ("interface-index-negative", "0.4.0", ("ips", 0, "interface"), -1),
    ("interface-index-a-string", "1.1.0", ("ips", 0, "interface"), "1"),
    ("interface-index-a-bool", "1.1.0", ("ips", 0, "interface"), True),
    ("interfaces-an-object", "1.0.0", ("interfaces",), {}),
    ("interfaces-entry-a-string", "1.0.0", ("interfaces", 0), "cni0"),
    ("interface-name-a-number", "1.0.0", ("interfaces", 0, "name"), 0),
    ("interface-mtu-a-string", "1.1.0", ("interfaces", 1, "mtu"), "1450"),
    ("ips-a-string", "0.3.1", ("ips",), "10.1.2.5/24"),
    ("ips-entry-a-list", "1.0.0", ("ips", 0), ["10.1.2.5/24"]),
    ("routes-a-number", "1.0.0", ("routes",), 0),
    ("route-entry-a-string", "1.0.0", ("routes", 0), "0.0.0.0/0"),
    ("route-priority-a-float", "1.1.0", ("routes", 0, "priority"), 1.5),
    ("route-table-a-bool", "1.1.0", ("routes", 0, "table"), False),
    ("legacy-ip4-a-string", "0.2.0", ("ip4",), "10.1.2.5/24"),
    ("legacy-routes-an-object", "0.2.0", ("ip4", "routes"), {}),
    ("dns-a-list", "1.0.0", ("dns",), ["10.1.2.1"]),
    ("dns-nameservers-a-string", "0.4.0", ("dns", "nameservers"), "10.1.2.1"),
    ("dns-search-entry-a-number", "0.2.0", ("dns", "search"), [1]),
    ("dns-domain-a-list", "1.1.0", ("dns", "domain"), ["cluster.local"]),
    ("cni-version-a-number", "1.0.0", ("cniVersion",), 1),
]


@pytest.mark.parametrize(("version", "path", "value"), [b[1:] for b in BAD_RESULTS], ids=[b[0] for b in BAD_RESULTS])
def test_undecodable_result_is_code_6(version: str, path: tuple[Any, ...], value: Any) -> None:
    with pytest.raises(DecodingFailure) as info:
        result_from_wire(_with(version, path, value), version)
    assert info.value.code == 6


@pytest.mark.parametrize("raw", [[], "{}", None, 1])
def test_result_that_is_not_an_object_is_code_6(raw: Any) -> None:
    with pytest.raises(DecodingFailure):
        result_from_wire(raw, "1.0.0")


@pytest.mark.parametrize("version", ["0.5.0", "2.0.0", "bogus"])
def test_result_of_an_unknown_version_is_code_1(version: str) -> None:
    with pytest.raises(IncompatibleVersion) as info:
        result_from_wire({"cniVersion": version}, "1.0.0")
    assert info.value.code == 1


@pytest.mark.parametrize(
    ("version", "path"),
    [("1.0.0", ("ips", 0, "gateway")), ("1.0.0", ("routes",)), ("0.2.0", ("ip4", "routes")), ("1.1.0", ("dns",))],
)
def test_json_null_reads_as_absent(version: str, path: tuple[Any, ...]) -> None:
    # Encoders that print null for an empty optional field (instead of leaving it out) are common.
    parsed = result_from_wire(_with(version, path, None), version)
    assert parsed == result_from_wire(_with(version, path, DELETE), version)
    assert parsed != surviving(version)


# --- against an independent implementation: the Go reference static IPAM plugin -----------------

STATIC = Path("/usr/lib/cni/static")
# The IPAM-shaped part of RICH (IPAM results carry no interfaces) in static's own config terms.
STATIC_IPAM = {
    "type": "static",
    "addresses": [
        {"address": "10.1.2.5/24", "gateway": "10.1.2.1"},
        {"address": "fd00:1::5/64", "gateway": "fd00:1::1"},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1"}, {"dst": "192.168.0.0/16"}, {"dst": "::/0", "gw": "fd00:1::1"}],
    "dns": DNS_WIRE,
}
IPAM_RESULT = LEGACY_SHAPE


def run_static(version: str, ipam: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    config = {"cniVersion": version, "name": "golden", "type": "static", "ipam": ipam}
    env = {
        "PATH": "/usr/bin:/bin",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "golden-1",
        # static never enters the namespace; the override keeps newer skels from refusing it.
        "CNI_NETNS": "/proc/self/ns/net",
        "CNI_NETNS_OVERRIDE": "1",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(STATIC.parent),
    }
    proc = subprocess.run(
        [str(STATIC)], input=json.dumps(config).encode(), env=env, capture_output=True, timeout=10, check=False
    )
    return proc.returncode, json.loads(proc.stdout)


def static_versions() -> tuple[str, ...]:
    if not os.access(STATIC, os.X_OK):
        return ()
    proc = subprocess.run(
        [str(STATIC)], env={"CNI_COMMAND": "VERSION"}, stdin=subprocess.DEVNULL, capture_output=True, timeout=10
    )
    return tuple(json.loads(proc.stdout)["supportedVersions"])


STATIC_VERSIONS = static_versions()
needs_static = pytest.mark.skipif(not STATIC_VERSIONS, reason=f"{STATIC} (containernetworking-plugins) not installed")


@needs_static
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_same_result_as_the_go_static_plugin(version: str) -> None:
    if version not in STATIC_VERSIONS:
        pytest.skip(f"this build of {STATIC} does not speak {version}")
    code, printed = run_static(version, STATIC_IPAM)
    assert code == 0, printed
    assert result_to_wire(IPAM_RESULT, version) == printed
    assert result_from_wire(printed, version) == IPAM_RESULT


@needs_static
@pytest.mark.parametrize("version", LEGACY)
def test_go_static_plugin_also_refuses_two_ipv4_addresses_in_legacy_versions(version: str) -> None:
    two = {"type": "static", "addresses": [{"address": "10.1.2.5/24"}, {"address": "10.1.3.5/24"}]}
    code, printed = run_static(version, two)
    assert code == 1 and "more than 1 address per family" in printed["msg"]
    with pytest.raises(IncompatibleVersion):
        result_to_wire(Result(ips=tuple(IPConfig(address=cidr(a["address"])) for a in two["addresses"])), version)
