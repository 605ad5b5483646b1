"""Pure nftables rendering for pycni's masquerade: no I/O, table-tested.

Layout (one table for every pycni network, `inet pycni`), for a network with id N
(`network_id(name)`, 12 hex chars of sha256 of the network name):

    set pods4_N  { type ipv4_addr; comment "<network name>"; }          pod addresses
    set pods6_N  { type ipv6_addr; ... }
    set nets4_N  { type ipv4_addr; flags interval; auto-merge; }        the network's subnets
    set nets6_N  { type ipv6_addr; flags interval; auto-merge; }
    chain masq_N { type nat hook postrouting priority srcnat; policy accept;
        ip daddr 224.0.0.0/4 return
        ip6 daddr ff00::/8 return
        ip saddr @pods4_N ip daddr != @nets4_N masquerade
        ip6 saddr @pods6_N ip6 daddr != @nets6_N masquerade
    }

A pod is one set element per address, commented with its attachment tag
(`attachment_tag(containerID, ifname)`, 16 hex chars) - never a chain or rule per pod. DEL and GC
find elements by tag, so they remove exactly their own entries even without the pod's addresses
(netns gone, no prevResult) and never an entry a reused IP now holds for another pod.

Every ADD re-declares the table, sets and chain and rewrites the chain's four rules in one
transaction ("add" of an existing object is a no-op, "flush chain" + re-add is idempotent), so
concurrent ADDs converge on the same ruleset. An element is added, deleted and re-added in that
transaction so it carries this attachment's tag even if a stale entry held the address.

DEL and GC that leave a network without pod elements delete its chain and four sets in the same
transaction (`plan_removal`): nothing per network outlives its last attachment (podman's `network
rm`, for one, calls no plugin). The table stays: the portmap and firewall objects share it, and
an empty table hooks nothing. ADD, DEL and GC hold the node's masquerade lock (lock.py) around
list + decide + apply, so an ADD racing the last DEL either lands before the listing (and the
skeleton stays) or after the teardown (and re-creates it).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from ..spec.types import IPInterface
from .backend import MasqEntry, SpoofEntry

TABLE = "pycni"
FAMILY = "inet"


def network_id(network: str) -> str:
    return hashlib.sha256(network.encode()).hexdigest()[:12]


def attachment_tag(container_id: str, ifname: str) -> str:
    return hashlib.sha256(f"{container_id}:{ifname}".encode()).hexdigest()[:16]


def set_names(network: str) -> dict[str, str]:
    n = network_id(network)
    return {"pods4": f"pods4_{n}", "pods6": f"pods6_{n}", "nets4": f"nets4_{n}", "nets6": f"nets6_{n}"}


def chain_name(network: str) -> str:
    return f"masq_{network_id(network)}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "").replace('"', "") + '"'


def render_skeleton(network: str) -> list[str]:
    s, chain, t = set_names(network), chain_name(network), f"{FAMILY} {TABLE}"
    return [
        f"add table {t}",
        f"add set {t} {s['pods4']} {{ type ipv4_addr; comment {_quote(network)}; }}",
        f"add set {t} {s['pods6']} {{ type ipv6_addr; comment {_quote(network)}; }}",
        f"add set {t} {s['nets4']} {{ type ipv4_addr; flags interval; auto-merge; }}",
        f"add set {t} {s['nets6']} {{ type ipv6_addr; flags interval; auto-merge; }}",
        f"add chain {t} {chain} {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"flush chain {t} {chain}",
        f"add rule {t} {chain} ip daddr 224.0.0.0/4 return",
        f"add rule {t} {chain} ip6 daddr ff00::/8 return",
        f"add rule {t} {chain} ip saddr @{s['pods4']} ip daddr != @{s['nets4']} masquerade",
        f"add rule {t} {chain} ip6 saddr @{s['pods6']} ip6 daddr != @{s['nets6']} masquerade",
    ]


def render_add(network: str, tag: str, addresses: Iterable[IPInterface]) -> str:
    s, t = set_names(network), f"{FAMILY} {TABLE}"
    lines = render_skeleton(network)
    for address in addresses:
        fam = address.version
        lines.append(f"add element {t} {s[f'nets{fam}']} {{ {address.network} }}")
        elem = f"{address.ip} comment {_quote(tag)}"
        lines.append(f"add element {t} {s[f'pods{fam}']} {{ {address.ip} }}")
        lines.append(f"delete element {t} {s[f'pods{fam}']} {{ {address.ip} }}")
        lines.append(f"add element {t} {s[f'pods{fam}']} {{ {elem} }}")
    return "\n".join(lines) + "\n"


def render_delete(network: str, entries: Iterable[MasqEntry]) -> str:
    s, t = set_names(network), f"{FAMILY} {TABLE}"
    lines = [f"delete element {t} {s[f'pods{e.address.version}']} {{ {e.address} }}" for e in entries]
    return "\n".join(lines) + ("\n" if lines else "")


def render_teardown(chains: Iterable[str], sets: Iterable[str], table: str = f"{FAMILY} {TABLE}") -> list[str]:
    """Delete `chains` (all flushed first: older kernels refuse to delete a chain that holds
    rules, and a chain another one jumps to is in use until that rule is gone), then `sets` (no
    longer referenced once those rules are gone). Name only objects that exist: deleting a
    missing one fails the whole transaction."""
    chains = list(chains)
    lines = [f"flush chain {table} {chain}" for chain in chains]
    lines += [f"delete chain {table} {chain}" for chain in chains]
    lines += [f"delete set {table} {name}" for name in sets]
    return lines


def objects(listing: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(chain names, set and map names) in an `nft -j list table` listing."""
    chains: set[str] = set()
    sets: set[str] = set()
    for item in listing.get("nftables", []):
        if not isinstance(item, dict):
            continue
        for kind, bucket in (("chain", chains), ("set", sets), ("map", sets)):
            if isinstance(item.get(kind), dict) and "name" in item[kind]:
                bucket.add(item[kind]["name"])
    return chains, sets


_NON_OBJECTS = frozenset({"metainfo", "table", "rule", "element"})


def table_objects(listing: dict[str, Any]) -> set[tuple[str, str]]:
    """Every named object of a `nft -j list table` listing as (kind, name), maps counted as sets:
    chains, sets and also whatever else a table may hold (flowtables, counters, ...)."""
    found: set[tuple[str, str]] = set()
    for item in listing.get("nftables", []):
        if not isinstance(item, dict):
            continue
        for kind, body in item.items():
            if kind not in _NON_OBJECTS and isinstance(body, dict) and "name" in body:
                found.add(("set" if kind == "map" else kind, str(body["name"])))
    return found


def has_table(listing: dict[str, Any]) -> bool:
    return any(isinstance(item, dict) and "table" in item for item in listing.get("nftables", []))


def with_table_teardown(listing: dict[str, Any], lines: list[str], table: str = f"{FAMILY} {TABLE}") -> list[str]:
    """`lines` (one removal transaction), plus `delete table` when that transaction deletes every
    object the table's listing holds, or the table is there and empty.

    "Every object" is every chain, set, map or other object of ANY pycni part, not only the
    caller's: the table goes only when its last user's objects go. The caller holds
    lock.tables(exclusive=True) from the listing to the transaction."""
    if not has_table(listing):
        return lines
    if table_objects(listing) - deleted_objects(lines, table):
        return lines
    return [*lines, f"delete table {table}"]


def deleted_objects(lines: Iterable[str], table: str = f"{FAMILY} {TABLE}") -> set[tuple[str, str]]:
    """The (kind, name) objects of `table` that the transaction `lines` deletes."""
    gone: set[tuple[str, str]] = set()
    prefix = {f"delete {kind} {table} ": kind for kind in ("chain", "set", "map")}
    for line in lines:
        for start, kind in prefix.items():
            if line.startswith(start):
                gone.add(("set" if kind == "map" else kind, line[len(start):].strip()))
    return gone


def script_of(lines: Iterable[str]) -> str:
    """One nft script from transaction lines ("" for none)."""
    text = "\n".join(lines)
    return text + "\n" if text else ""


def element_count(listing: dict[str, Any], names: Iterable[str]) -> int:
    """How many elements the sets/maps `names` of a listing hold."""
    wanted = set(names)
    total = 0
    for item in listing.get("nftables", []):
        if not isinstance(item, dict):
            continue
        obj = item.get("set") or item.get("map")
        if isinstance(obj, dict) and obj.get("name") in wanted:
            total += len(obj.get("elem", []))
    return total


class RemovalPlan(NamedTuple):
    """What a DEL/GC does to one network: `script` is "" when there is nothing to change."""

    removed: tuple[MasqEntry, ...]
    teardown: bool  # no element of the network is left: its chain and sets go as well
    script: str


def plan_removal(network: str, listing: dict[str, Any], doomed: Callable[[str], bool]) -> RemovalPlan:
    """Remove the entries whose tag is `doomed`; when none of the network's are left (or there were
    none but its skeleton exists, e.g. from an older pycni), delete its chain and sets instead."""
    entries = parse_entries(network, listing)
    removed = tuple(e for e in entries if doomed(e.tag))
    chains, sets = objects(listing)
    mine_chains = [c for c in (chain_name(network),) if c in chains]
    mine_sets = [name for name in set_names(network).values() if name in sets]
    if len(removed) == len(entries) and (mine_chains or mine_sets):
        lines = render_teardown(mine_chains, mine_sets)
        return RemovalPlan(removed, True, "\n".join(lines) + "\n")
    return RemovalPlan(removed, False, render_delete(network, removed))


def parse_entries(network: str, listing: dict[str, Any]) -> list[MasqEntry]:
    """Entries of `network` from `nft -j list table inet pycni` output."""
    wanted = {set_names(network)["pods4"], set_names(network)["pods6"]}
    out: list[MasqEntry] = []
    for item in listing.get("nftables", []):
        st = item.get("set")
        if not st or st.get("name") not in wanted:
            continue
        for elem in st.get("elem", []):
            if isinstance(elem, dict) and "elem" in elem:
                val, comment = elem["elem"].get("val"), elem["elem"].get("comment", "")
            else:
                val, comment = elem, ""
            if isinstance(val, str):
                out.append(MasqEntry(ipaddress.ip_address(val), comment))
    return out


def parse_listing(text: str) -> dict[str, Any]:
    return json.loads(text) if text.strip() else {}


# --- macspoofchk: one `bridge pycni` table for the node ------------------------------------------
#
#     set spoof_ports   { type ifname; }                  host veths under spoof checking
#     set spoof_allowed { type ifname . ether_addr; }     (host veth, container MAC) pairs
#     chain prerouting  { type filter hook prerouting priority -300; policy accept;
#         iifname @spoof_ports iifname . ether saddr != @spoof_allowed drop }
#
# Frames entering the bridge from a checked host veth with any source MAC but the container's are
# dropped (the reference's pkg/link/spoofcheck.go, as set elements instead of a chain per pod).
# Elements carry "<network_id>-<attachment tag>" so DEL and GC remove exactly their own.

SPOOF_TABLE = "bridge pycni"


def spoof_comment(network: str, tag: str) -> str:
    return f"{network_id(network)}-{tag}"


def _ifname(name: str) -> str:
    return '"' + name.replace('"', "") + '"'


def render_spoof_add(network: str, tag: str, host_if: str, mac: str) -> str:
    t, c = SPOOF_TABLE, _quote(spoof_comment(network, tag))
    lines = [
        f"add table {t}",
        f"add set {t} spoof_ports {{ type ifname; }}",
        f"add set {t} spoof_allowed {{ type ifname . ether_addr; }}",
        f"add chain {t} prerouting {{ type filter hook prerouting priority -300; policy accept; }}",
        f"flush chain {t} prerouting",
        f"add rule {t} prerouting iifname @spoof_ports iifname . ether saddr != @spoof_allowed drop",
        f"add element {t} spoof_allowed {{ {_ifname(host_if)} . {mac} comment {c} }}",
        f"add element {t} spoof_ports {{ {_ifname(host_if)} comment {c} }}",
    ]
    return "\n".join(lines) + "\n"


def render_spoof_delete(entries: Iterable[SpoofEntry]) -> str:
    lines = []
    for e in entries:
        if e.mac:
            lines.append(f"delete element {SPOOF_TABLE} spoof_allowed {{ {_ifname(e.host_if)} . {e.mac} }}")
        else:
            lines.append(f"delete element {SPOOF_TABLE} spoof_ports {{ {_ifname(e.host_if)} }}")
    return "\n".join(lines) + ("\n" if lines else "")


def render_spoof_removal(listing: dict[str, Any], doomed: list[SpoofEntry], *, everything: bool) -> list[str]:
    """Delete `doomed`; when they are all the elements there are (`everything`), delete the
    chain and both sets instead (those that exist): nothing of macspoofchk outlives its last pod."""
    chains, sets = objects(listing)
    if everything and ("prerouting" in chains or {"spoof_ports", "spoof_allowed"} & sets):
        present = [n for n in ("spoof_ports", "spoof_allowed") if n in sets]
        return render_teardown([c for c in ("prerouting",) if c in chains], present, SPOOF_TABLE)
    return render_spoof_delete(doomed).splitlines()


def parse_spoof_entries(listing: dict[str, Any]) -> list[SpoofEntry]:
    """Every element of both spoof sets (mac == "" for a spoof_ports element)."""
    out: list[SpoofEntry] = []
    for item in listing.get("nftables", []):
        st = item.get("set")
        if not st or st.get("name") not in ("spoof_ports", "spoof_allowed"):
            continue
        for elem in st.get("elem", []):
            inner = elem.get("elem", {}) if isinstance(elem, dict) else {"val": elem}
            val, comment = inner.get("val"), inner.get("comment", "")
            if isinstance(val, dict) and "concat" in val:
                out.append(SpoofEntry(str(val["concat"][0]), str(val["concat"][1]), comment))
            elif isinstance(val, str):
                out.append(SpoofEntry(val, "", comment))
    return out
