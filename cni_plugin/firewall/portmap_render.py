"""Pure nftables rendering for pycni-portmap (host ports): no I/O, table-tested.

Everything lives in the `inet pycni` table shared with the bridge masquerade (render.py), in
objects of its own. Per address family F (4 or 6):

    map hostports4    { type inet_proto . inet_service : ipv4_addr . inet_service; }
                        any-address mappings:          tcp . 8080 : <pod ip> . 80
    map hostipports4  { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }
                        hostIP mappings:    192.0.2.10 . tcp . 8080 : <pod ip> . 80
    set hostports_masq4 { type ipv4_addr . ipv4_addr; flags interval; }
                        (source range . pod ip) pairs that are masqueraded after DNAT:
                        <pod subnet> . <pod ip>     hairpin: a pod (or its neighbours on the same
                                                    bridge) reaching a hostPort that lands on it
                        127.0.0.1 . <pod ip>        the node itself on 127.0.0.1 (IPv4 only)
                        0.0.0.0/0 . <pod ip>        masqAll: every DNATed connection
    chain hostports_dnat {                                         (regular chain)
        dnat ip to ip daddr . meta l4proto . th dport map @hostipports4
        dnat ip6 to ip6 daddr . meta l4proto . th dport map @hostipports6
        meta nfproto ipv4 dnat ip to meta l4proto . th dport map @hostports4
        meta nfproto ipv6 dnat ip6 to meta l4proto . th dport map @hostports6 }
    chain hostports_pre  { type nat hook prerouting priority dstnat; fib daddr type local jump hostports_dnat }
    chain hostports_out  { type nat hook output priority -100;      fib daddr type local jump hostports_dnat }
    chain hostports_masq { type nat hook postrouting priority srcnat;
        ct status dnat ip saddr . ip daddr @hostports_masq4 masquerade
        ct status dnat ip6 saddr . ip6 daddr @hostports_masq6 masquerade }

DNAT happens in prerouting and output only (never the input hook: plugins#1115), and only for
locally-destined packets, like the reference's `--dst-type LOCAL`. A map lookup that misses
simply does not match, so the chains never grow with the number of pods.

Every element carries the comment "<network_id>-<attachment tag>" (`portmap_comment`), so DEL
and GC remove exactly their own elements without the pod's addresses (no prevResult, netns gone).
A host port is a node-wide resource, hence one map per family for all networks: two pods asking
for the same (hostIP, protocol, port) collide on the map key, and `create element` fails the
whole transaction (nothing is half-applied). A specific hostIP and the any-address mapping of the
same protocol/port live in different maps; `conflicts()` refuses that pair (the caller holds a
lock around list + check + apply).

Every ADD re-declares the table, maps, sets and chains and rewrites the chains' rules in the same
transaction ("add" of an existing object is a no-op; "flush chain" + re-add is idempotent), so
concurrent ADDs converge on one ruleset.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..spec.types import IPAddress, IPNetwork
from .render import FAMILY, TABLE, element_count, network_id, objects, render_teardown

T = f"{FAMILY} {TABLE}"
DNAT_CHAIN = "hostports_dnat"
PRE_CHAIN = "hostports_pre"
OUT_CHAIN = "hostports_out"
MASQ_CHAIN = "hostports_masq"
CHAINS = (DNAT_CHAIN, PRE_CHAIN, OUT_CHAIN, MASQ_CHAIN)
PROTOCOLS = ("tcp", "udp", "sctp")
_IP = {4: "ip", 6: "ip6"}
_ADDR = {4: "ipv4_addr", 6: "ipv6_addr"}


def any_map(family: int) -> str:
    return f"hostports{family}"


def hostip_map(family: int) -> str:
    return f"hostipports{family}"


def masq_set(family: int) -> str:
    return f"hostports_masq{family}"


def portmap_comment(network: str, tag: str) -> str:
    """The comment on every element of one attachment: "<network_id>-<attachment_tag>"."""
    return f"{network_id(network)}-{tag}"


@dataclass(frozen=True)
class PortEntry:
    """One DNAT map element: (host_ip or any, protocol, host_port) -> pod_ip . container_port."""

    family: int
    protocol: str
    host_port: int
    host_ip: IPAddress | None  # None: any local address of the family
    pod_ip: IPAddress
    container_port: int
    comment: str = ""

    @property
    def key(self) -> tuple[int, str, int, IPAddress | None]:
        return (self.family, self.protocol, self.host_port, self.host_ip)

    @property
    def map_name(self) -> str:
        return any_map(self.family) if self.host_ip is None else hostip_map(self.family)

    def sort_key(self) -> tuple[int, str, int, str]:
        return (self.family, self.protocol, self.host_port, str(self.host_ip or ""))

    def key_text(self) -> str:
        base = f"{self.protocol} . {self.host_port}"
        return base if self.host_ip is None else f"{self.host_ip} . {base}"

    def describe(self) -> str:
        where = self.host_ip if self.host_ip is not None else ("0.0.0.0" if self.family == 4 else "::")
        return f"{self.protocol}/{self.host_port} on {where}"

    def same_value(self, other: PortEntry) -> bool:
        return (self.pod_ip, self.container_port, self.comment) == (other.pod_ip, other.container_port, other.comment)


@dataclass(frozen=True)
class HairpinEntry:
    """One masquerade element: connections DNATed to `pod_ip` from `source` are masqueraded."""

    family: int
    source: IPNetwork
    pod_ip: IPAddress
    comment: str = ""

    @property
    def key(self) -> tuple[int, IPNetwork, IPAddress]:
        return (self.family, self.source, self.pod_ip)

    def key_text(self) -> str:
        src = self.source
        source = str(src.network_address) if src.prefixlen == src.max_prefixlen else str(src)
        return f"{source} . {self.pod_ip}"


@dataclass(frozen=True)
class Entries:
    ports: tuple[PortEntry, ...] = ()
    masq: tuple[HairpinEntry, ...] = ()

    def with_comment(self, comment: str) -> Entries:
        return Entries(
            ports=tuple(e for e in self.ports if e.comment == comment),
            masq=tuple(e for e in self.masq if e.comment == comment),
        )

    def of_network(self, network: str) -> Entries:
        prefix = network_id(network) + "-"
        return Entries(
            ports=tuple(e for e in self.ports if e.comment.startswith(prefix)),
            masq=tuple(e for e in self.masq if e.comment.startswith(prefix)),
        )

    def __bool__(self) -> bool:
        return bool(self.ports or self.masq)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "").replace('"', "") + '"'


# --- conflicts ------------------------------------------------------------------------------------


def collides(a: PortEntry, b: PortEntry) -> bool:
    """Whether two mappings claim the same packets: same family, protocol and port, and the same
    hostIP or either of them on any address (a specific hostIP would shadow part of an
    any-address mapping, or the other way round)."""
    if (a.family, a.protocol, a.host_port) != (b.family, b.protocol, b.host_port):
        return False
    return a.host_ip is None or b.host_ip is None or a.host_ip == b.host_ip


def conflicts(wanted: Iterable[PortEntry], existing: Iterable[PortEntry]) -> list[tuple[PortEntry, PortEntry]]:
    """(wanted, holder) pairs where `holder`, an element of another attachment, blocks `wanted`."""
    existing = list(existing)
    return [(w, e) for w in wanted for e in existing if e.comment != w.comment and collides(w, e)]


# --- transactions ---------------------------------------------------------------------------------


def render_skeleton() -> list[str]:
    lines = [f"add table {T}"]
    for fam in (4, 6):
        addr = _ADDR[fam]
        lines += [
            f"add map {T} {any_map(fam)} {{ type inet_proto . inet_service : {addr} . inet_service; }}",
            f"add map {T} {hostip_map(fam)} {{ type {addr} . inet_proto . inet_service : {addr} . inet_service; }}",
            f"add set {T} {masq_set(fam)} {{ type {addr} . {addr}; flags interval; }}",
        ]
    lines += [
        f"add chain {T} {DNAT_CHAIN}",
        f"add chain {T} {PRE_CHAIN} {{ type nat hook prerouting priority dstnat; policy accept; }}",
        # "dstnat" is not accepted for the output hook by every nft version; it is -100.
        f"add chain {T} {OUT_CHAIN} {{ type nat hook output priority -100; policy accept; }}",
        f"add chain {T} {MASQ_CHAIN} {{ type nat hook postrouting priority srcnat; policy accept; }}",
    ]
    lines += [f"flush chain {T} {chain}" for chain in CHAINS]
    for fam in (4, 6):
        ip = _IP[fam]
        key = f"{ip} daddr . meta l4proto . th dport"
        lines.append(f"add rule {T} {DNAT_CHAIN} dnat {ip} to {key} map @{hostip_map(fam)}")
    for fam in (4, 6):
        ip, nfproto = _IP[fam], f"ipv{fam}"
        lines.append(
            f"add rule {T} {DNAT_CHAIN} meta nfproto {nfproto} dnat {ip} to meta l4proto . th dport map @{any_map(fam)}"
        )
    lines += [
        f"add rule {T} {PRE_CHAIN} fib daddr type local jump {DNAT_CHAIN}",
        f"add rule {T} {OUT_CHAIN} fib daddr type local jump {DNAT_CHAIN}",
    ]
    for fam in (4, 6):
        ip = _IP[fam]
        lines.append(f"add rule {T} {MASQ_CHAIN} ct status dnat {ip} saddr . {ip} daddr @{masq_set(fam)} masquerade")
    return lines


def _delete_lines(ports: Iterable[PortEntry], masq: Iterable[HairpinEntry]) -> list[str]:
    lines = [f"delete element {T} {e.map_name} {{ {e.key_text()} }}" for e in ports]
    lines += [f"delete element {T} {masq_set(e.family)} {{ {e.key_text()} }}" for e in masq]
    return lines


def render_add(
    ports: Sequence[PortEntry],
    masq: Sequence[HairpinEntry],
    stale_ports: Sequence[PortEntry] = (),
    stale_masq: Sequence[HairpinEntry] = (),
) -> str:
    """Skeleton, then removal of `stale_*` (elements this ADD replaces), then the new elements.

    Port elements use `create`: an element of the same key that is not in `stale_ports` makes
    the kernel refuse the whole transaction (EEXIST) - a host port is never silently stolen.
    """
    lines = render_skeleton() + _delete_lines(stale_ports, stale_masq)
    for p in ports:
        lines.append(
            f"create element {T} {p.map_name} "
            f"{{ {p.key_text()} comment {_quote(p.comment)} : {p.pod_ip} . {p.container_port} }}"
        )
    for m in masq:
        lines.append(f"add element {T} {masq_set(m.family)} {{ {m.key_text()} comment {_quote(m.comment)} }}")
    return "\n".join(lines) + "\n"


OBJECT_NAMES = tuple(name for fam in (4, 6) for name in (any_map(fam), hostip_map(fam), masq_set(fam)))


def render_removal(listing: dict[str, Any], doomed: Entries) -> list[str]:
    """The DEL/GC transaction: delete `doomed`; when they are every element the portmap maps and
    sets hold (or there are none but the objects exist), delete the portmap chains and maps
    instead, so no host-port object outlives the last mapping."""
    chains, sets = objects(listing)
    mine_chains = [c for c in CHAINS if c in chains]
    mine_sets = [n for n in OBJECT_NAMES if n in sets]
    if (mine_chains or mine_sets) and element_count(listing, OBJECT_NAMES) == len(doomed.ports) + len(doomed.masq):
        return render_teardown(mine_chains, mine_sets, T)
    return _delete_lines(doomed.ports, doomed.masq)


def render_delete(entries: Entries) -> str:
    lines = _delete_lines(entries.ports, entries.masq)
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass(frozen=True)
class AddPlan:
    script: str
    conflicts: tuple[tuple[PortEntry, PortEntry], ...]


def plan_add(wanted: Entries, existing: Entries) -> AddPlan:
    """The ADD transaction for `wanted` given what the table holds now (`existing`).

    * another attachment's element colliding with a wanted port: a conflict (no script);
    * this attachment's own elements (a repeated ADD): replaced;
    * masquerade elements for the same pod address (an IP reused after a DEL that never came):
      replaced, so the element carries this attachment's comment and no interval overlaps.
    """
    clash = tuple(conflicts(wanted.ports, existing.ports))
    if clash:
        return AddPlan(script="", conflicts=clash)
    comments = {e.comment for e in wanted.ports} | {e.comment for e in wanted.masq}
    stale_ports = [e for e in existing.ports if e.comment in comments]
    pod_ips = {(m.family, m.pod_ip) for m in wanted.masq}
    stale_masq = [e for e in existing.masq if e.comment in comments or (e.family, e.pod_ip) in pod_ips]
    return AddPlan(script=render_add(wanted.ports, wanted.masq, stale_ports, stale_masq), conflicts=())


# --- parsing `nft -j list table inet pycni` ---------------------------------------------------------


def _elem_parts(raw: Any) -> tuple[Any, str, Any]:
    """(key, comment, value) of one JSON set/map element."""
    value = None
    if isinstance(raw, list) and len(raw) == 2:  # map element: [key, value]
        raw, value = raw
    if isinstance(raw, dict) and "elem" in raw:
        return raw["elem"].get("val"), str(raw["elem"].get("comment", "")), value
    return raw, "", value


def _concat(obj: Any) -> list[Any]:
    return list(obj["concat"]) if isinstance(obj, dict) and "concat" in obj else []


def _network(obj: Any) -> IPNetwork:
    if isinstance(obj, dict) and "prefix" in obj:
        return ipaddress.ip_network(f"{obj['prefix']['addr']}/{obj['prefix']['len']}")
    if isinstance(obj, dict) and "range" in obj:  # a range that is exactly one prefix
        low, high = (ipaddress.ip_address(x) for x in obj["range"])
        nets: list[IPNetwork] = list(ipaddress.summarize_address_range(low, high))  # type: ignore[type-var]
        if len(nets) != 1:
            raise ValueError(f"range {obj['range']} is not a prefix")
        return nets[0]
    return ipaddress.ip_network(str(obj))


def _protocol(value: Any) -> str:
    names = {6: "tcp", 17: "udp", 132: "sctp"}
    return names.get(value, str(value)) if isinstance(value, int) else str(value)


def parse_entries(listing: dict[str, Any]) -> Entries:
    """Every portmap element of the table (all networks); unparseable elements are skipped."""
    ports: list[PortEntry] = []
    masq: list[HairpinEntry] = []
    for item in listing.get("nftables", []):
        obj = item.get("map") or item.get("set")
        if not obj:
            continue
        name = obj.get("name", "")
        for raw in obj.get("elem", []):
            key, comment, value = _elem_parts(raw)
            try:
                for fam in (4, 6):
                    if name in (any_map(fam), hostip_map(fam)):
                        k, v = _concat(key), _concat(value)
                        host_ip = ipaddress.ip_address(k.pop(0)) if name == hostip_map(fam) else None
                        ports.append(PortEntry(
                            family=fam, protocol=_protocol(k[0]), host_port=int(k[1]), host_ip=host_ip,
                            pod_ip=ipaddress.ip_address(v[0]), container_port=int(v[1]), comment=comment,
                        ))
                    elif name == masq_set(fam):
                        k = _concat(key)
                        masq.append(HairpinEntry(
                            family=fam, source=_network(k[0]), pod_ip=ipaddress.ip_address(k[1]), comment=comment,
                        ))
            except (ValueError, IndexError, KeyError, TypeError):
                continue  # not an element pycni wrote: leave it alone
    return Entries(ports=tuple(ports), masq=tuple(masq))


def chains_present(listing: dict[str, Any]) -> set[str]:
    return {item["chain"]["name"] for item in listing.get("nftables", []) if "chain" in item}
