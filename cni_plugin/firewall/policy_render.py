"""Pure rendering and parsing for the firewall plugin: nft scripts, iptables argv lists, listings.

nftables layout (shared `table inet pycni`, next to render.py's masquerade and the portmap chains;
every name here starts with `fw_`, except the admin chain whose name the operator chooses).
For a network with id N (`network_id(name)`) and admin chain A (default `CNI-ADMIN`):

    chain A { }                                          regular chain: created if missing, never
                                                         flushed or deleted by pycni (the operator's)
    chain fw_admin_<h(A)> { type filter hook forward priority filter - 10; policy accept;
        jump A }
    set fw4_N { type ipv4_addr; comment "<network>"; }   pod addresses, one element per address,
    set fw6_N { type ipv6_addr; comment "<network>"; }   commented with the attachment tag
    chain fw_N { type filter hook forward priority filter; policy accept;
        ip daddr @fw4_N ct state established,related accept
        ip saddr @fw4_N accept
        ip6 daddr @fw6_N ct state established,related accept
        ip6 saddr @fw6_N accept }

ingressPolicy same-bridge / isolated (the reference's CNI-ISOLATION-STAGE-1/2, as sets):

    set fw_iso_bridges { type ifname; }                  bridges under same-bridge or isolated
    set fw_iso_intra { type ifname . ifname; }           "B" . "B" for same-bridge bridges
    chain fw_isolation { type filter hook forward priority filter - 5; policy accept;
        iifname @fw_iso_bridges oifname @fw_iso_bridges iifname . oifname != @fw_iso_intra drop }

  Traffic routed from one isolating bridge to another is dropped; a same-bridge bridge's own
  traffic (hairpin, or bridged with br_netfilter) is exempt; an isolated bridge's is not.
  `isolated` also blocks frames bridged between pods of that bridge without br_netfilter:

    table bridge pycni { set fw_isolated_ports { type ifname; }     host veths of isolated pods
        chain fw_isolated { type filter hook forward priority filter; policy accept;
            iifname @fw_isolated_ports oifname @fw_isolated_ports ether type { ip, ip6 } drop } }

  Port elements are commented `<network id>-<attachment tag>`. Bridge elements are per bridge,
  not per pod: like the reference's per-bridge rules they stay after the last pod (GC removes
  those naming a bridge that no longer exists).

Every ADD re-declares all of it and rewrites the fw_ chains in one transaction ("add" of an
existing object is a no-op, "flush chain" + re-add is idempotent), so racing ADDs converge.

The per-network objects (chain fw_N, sets fw4_N and fw6_N) go with the network's last element:
a DEL or GC that leaves none deletes them in its transaction (`plan_removal`). The shared objects
(fw_admin_*, an admin chain that holds no rule, the isolation sets and chains) go with the last
firewall network, and the table with the last object of any pycni part in it. ADD, DEL and GC hold the
node's firewall lock (lock.py) around list + decide + apply, so an ADD racing the last DEL cannot
lose its elements.

nftables verdicts: an `accept` ends only the base chain it is in. A drop in any other base chain
on the forward hook (e.g. Docker's iptables-nft FORWARD policy DROP) still drops the packet, so
on such nodes the accept rules above cannot let pod traffic through: that is what `backend:
iptables` (rules inside the iptables FORWARD chain, as the reference) is for.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import shlex
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ..spec.types import IPAddress
from .render import FAMILY, TABLE, deleted_objects, network_id, objects, render_teardown

T = f"{FAMILY} {TABLE}"
BRIDGE_T = f"bridge {TABLE}"
ISO_BRIDGES = "fw_iso_bridges"
ISO_INTRA = "fw_iso_intra"
ISO_CHAIN = "fw_isolation"
ISO_PORTS = "fw_isolated_ports"
ISO_PORT_CHAIN = "fw_isolated"
DEFAULT_ADMIN_CHAIN = "CNI-ADMIN"
POLICIES = ("open", "same-bridge", "isolated")


@dataclass(frozen=True)
class FwEntry:
    """One pod address in a network's firewall set, with its attachment tag."""

    address: IPAddress
    tag: str


@dataclass(frozen=True)
class PortEntry:
    """An isolated pod's host veth in the bridge-family port set."""

    host_if: str
    comment: str


def set_name(network: str, family: int) -> str:
    return f"fw{family}_{network_id(network)}"


def chain_name(network: str) -> str:
    return f"fw_{network_id(network)}"


def admin_jump_chain(admin: str) -> str:
    return "fw_admin_" + hashlib.sha256(admin.encode()).hexdigest()[:12]


def port_comment(network: str, tag: str) -> str:
    return f"{network_id(network)}-{tag}"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "").replace('"', "") + '"'


def render_skeleton(network: str, admin: str) -> list[str]:
    chain, jump = chain_name(network), admin_jump_chain(admin)
    s4, s6 = set_name(network, 4), set_name(network, 6)
    return [
        f"add table {T}",
        f"add chain {T} {admin}",
        f"add chain {T} {jump} {{ type filter hook forward priority filter - 10; policy accept; }}",
        f"flush chain {T} {jump}",
        f"add rule {T} {jump} jump {admin}",
        f"add set {T} {s4} {{ type ipv4_addr; comment {_quote(network)}; }}",
        f"add set {T} {s6} {{ type ipv6_addr; comment {_quote(network)}; }}",
        f"add chain {T} {chain} {{ type filter hook forward priority filter; policy accept; }}",
        f"flush chain {T} {chain}",
        f"add rule {T} {chain} ip daddr @{s4} ct state established,related accept",
        f"add rule {T} {chain} ip saddr @{s4} accept",
        f"add rule {T} {chain} ip6 daddr @{s6} ct state established,related accept",
        f"add rule {T} {chain} ip6 saddr @{s6} accept",
    ]


def _isolation_skeleton() -> list[str]:
    return [
        f"add set {T} {ISO_BRIDGES} {{ type ifname; }}",
        f"add set {T} {ISO_INTRA} {{ type ifname . ifname; }}",
        f"add chain {T} {ISO_CHAIN} {{ type filter hook forward priority filter - 5; policy accept; }}",
        f"flush chain {T} {ISO_CHAIN}",
        f"add rule {T} {ISO_CHAIN} iifname @{ISO_BRIDGES} oifname @{ISO_BRIDGES} "
        f"iifname . oifname != @{ISO_INTRA} drop",
    ]


def _port_skeleton() -> list[str]:
    return [
        f"add table {BRIDGE_T}",
        f"add set {BRIDGE_T} {ISO_PORTS} {{ type ifname; }}",
        f"add chain {BRIDGE_T} {ISO_PORT_CHAIN} {{ type filter hook forward priority filter; policy accept; }}",
        f"flush chain {BRIDGE_T} {ISO_PORT_CHAIN}",
        f"add rule {BRIDGE_T} {ISO_PORT_CHAIN} iifname @{ISO_PORTS} oifname @{ISO_PORTS} ether type {{ ip, ip6 }} drop",
    ]


def _refresh(table: str, set_: str, key: str, comment: str) -> list[str]:
    # add + delete + add: the element ends up carrying `comment` even if a stale one held the key.
    return [
        f"add element {table} {set_} {{ {key} }}",
        f"delete element {table} {set_} {{ {key} }}",
        f"add element {table} {set_} {{ {key} comment {_quote(comment)} }}",
    ]


def render_add(
    network: str,
    tag: str,
    addresses: Iterable[IPAddress],
    *,
    admin: str = DEFAULT_ADMIN_CHAIN,
    policy: str = "open",
    bridge: str = "",
    host_if: str = "",
) -> str:
    """One nft transaction: skeleton, this attachment's addresses, and its isolation entries."""
    lines = render_skeleton(network, admin)
    for address in addresses:
        lines += _refresh(T, set_name(network, address.version), str(address), tag)
    if policy in ("same-bridge", "isolated"):
        b = _quote(bridge)
        lines += _isolation_skeleton()
        lines.append(f"add element {T} {ISO_BRIDGES} {{ {b} }}")
        # add-then-delete makes the delete safe when the element is absent: the last ADD's policy wins
        lines.append(f"add element {T} {ISO_INTRA} {{ {b} . {b} }}")
        if policy == "isolated":
            lines.append(f"delete element {T} {ISO_INTRA} {{ {b} . {b} }}")
            lines += _port_skeleton()
            lines += _refresh(BRIDGE_T, ISO_PORTS, _quote(host_if), port_comment(network, tag))
    return "\n".join(lines) + "\n"


def render_delete(network: str, entries: Iterable[FwEntry], ports: Iterable[PortEntry] = ()) -> str:
    lines = [f"delete element {T} {set_name(network, e.address.version)} {{ {e.address} }}" for e in entries]
    lines += [f"delete element {BRIDGE_T} {ISO_PORTS} {{ {_quote(p.host_if)} }}" for p in ports]
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass(frozen=True)
class RemovalPlan:
    """What a DEL/GC does to one network: `script` is "" when there is nothing to change."""

    entries: tuple[FwEntry, ...]
    ports: tuple[PortEntry, ...]
    teardown: bool  # no address of the network is left: fw_N, fw4_N and fw6_N go as well
    script: str


def plan_removal(
    network: str, inet: dict[str, Any], bridge: dict[str, Any], doomed: Callable[[str], bool]
) -> RemovalPlan:
    """Remove the addresses and isolated ports whose attachment tag is `doomed` (from the `inet`
    and `bridge` pycni listings); when the network has no address left (or none, but its objects
    exist), its chain and sets are deleted in the same transaction."""
    entries = parse_entries(network, inet)
    doomed_entries = tuple(e for e in entries if doomed(e.tag))
    prefix = port_comment(network, "")
    ports = tuple(p for p in parse_ports(bridge) if p.comment.startswith(prefix) and doomed(p.comment[len(prefix):]))
    chains, sets = objects(inet)
    mine_chains = [c for c in (chain_name(network),) if c in chains]
    mine_sets = [s for s in (set_name(network, 4), set_name(network, 6)) if s in sets]
    teardown = len(doomed_entries) == len(entries) and bool(mine_chains or mine_sets)
    if not teardown:
        return RemovalPlan(doomed_entries, ports, False, render_delete(network, doomed_entries, ports))
    # The sets go whole; the shared bridge-family port set keeps its other elements.
    lines = render_teardown(mine_chains, mine_sets, T) + render_delete(network, (), ports).splitlines()
    return RemovalPlan(doomed_entries, ports, True, "\n".join(lines) + "\n")


_NETWORK_OBJECT = re.compile(r"^fw[46]?_[0-9a-f]{12}$")  # fw_N, fw4_N, fw6_N
_ADMIN_JUMP = re.compile(r"^fw_admin_[0-9a-f]{12}$")


def jump_targets(listing: dict[str, Any]) -> dict[str, str]:
    """Chain -> the chain its first `jump` rule names."""
    found: dict[str, str] = {}
    for item in listing.get("nftables", []):
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        for expr in rule.get("expr", []):
            target = expr.get("jump", {}).get("target") if isinstance(expr, dict) else None
            if isinstance(target, str):
                found.setdefault(str(rule.get("chain", "")), target)
    return found


def render_shared_teardown(inet: dict[str, Any], bridge: dict[str, Any], lines: list[str]) -> list[str]:
    """`lines` (a DEL/GC transaction) plus the removal of the firewall's shared objects when that
    transaction leaves no network's objects (fw_N, fw4_N, fw6_N) behind:

    * each admin jump chain fw_admin_* and its admin chain, when the admin chain holds no rule
      (an admin chain with an operator's rules keeps both: they still apply to forwarded traffic);
    * the isolation chain and sets (only pods of a firewall network are isolated);
    * in `bridge pycni`, the isolated-port chain and set once no port element is left.
    """
    gone = deleted_objects(lines, T)
    chains_present, sets_present = objects(inet)
    live = {("chain", c) for c in chains_present if _NETWORK_OBJECT.match(c)}
    live |= {("set", s) for s in sets_present if _NETWORK_OBJECT.match(s)}
    extra: list[str] = []
    if not live - gone:
        rules = chains(inet)
        targets = jump_targets(inet)
        for jump in sorted(c for c in chains_present if _ADMIN_JUMP.match(c)):
            admin = targets.get(jump, "")
            if admin and admin in chains_present and rules.get(admin, 0):
                continue  # the operator's rules are in it
            extra += render_teardown([jump], [], T)
            if admin in chains_present:
                extra.append(f"delete chain {T} {admin}")
        iso_sets = [s for s in (ISO_BRIDGES, ISO_INTRA) if s in sets_present]
        extra += render_teardown([c for c in (ISO_CHAIN,) if c in chains_present], iso_sets, T)
    bridge_chains, bridge_sets = objects(bridge)
    doomed_ports = sum(1 for line in lines if line.startswith(f"delete element {BRIDGE_T} {ISO_PORTS} "))
    if (ISO_PORT_CHAIN in bridge_chains or ISO_PORTS in bridge_sets) and len(parse_ports(bridge)) <= doomed_ports:
        port_lines = f"delete element {BRIDGE_T} {ISO_PORTS} "
        lines = [line for line in lines if not line.startswith(port_lines)]  # the set goes whole
        port_sets = [s for s in (ISO_PORTS,) if s in bridge_sets]
        extra += render_teardown([c for c in (ISO_PORT_CHAIN,) if c in bridge_chains], port_sets, BRIDGE_T)
    return lines + extra


def render_bridge_delete(bridges: Iterable[str]) -> str:
    lines = []
    for bridge in bridges:
        b = _quote(bridge)
        lines.append(f"add element {T} {ISO_BRIDGES} {{ {b} }}")  # add first: a racing GC's delete is no error
        lines.append(f"delete element {T} {ISO_BRIDGES} {{ {b} }}")
        lines.append(f"add element {T} {ISO_INTRA} {{ {b} . {b} }}")
        lines.append(f"delete element {T} {ISO_INTRA} {{ {b} . {b} }}")
    return "\n".join(lines) + ("\n" if lines else "")


# --- parsing `nft -j list table ...` ---------------------------------------------------------------------


def _sets(listing: dict[str, Any]) -> dict[str, list[Any]]:
    return {
        item["set"]["name"]: item["set"].get("elem", [])
        for item in listing.get("nftables", [])
        if isinstance(item, dict) and "set" in item
    }


def _elem(raw: Any) -> tuple[Any, str]:
    if isinstance(raw, dict) and "elem" in raw:
        return raw["elem"].get("val"), raw["elem"].get("comment", "")
    return raw, ""


def parse_entries(network: str, listing: dict[str, Any]) -> list[FwEntry]:
    sets = _sets(listing)
    out = []
    for family in (4, 6):
        for raw in sets.get(set_name(network, family), []):
            val, comment = _elem(raw)
            if isinstance(val, str):
                out.append(FwEntry(ipaddress.ip_address(val), comment))
    return out


def parse_ports(listing: dict[str, Any]) -> list[PortEntry]:
    out = []
    for raw in _sets(listing).get(ISO_PORTS, []):
        val, comment = _elem(raw)
        if isinstance(val, str):
            out.append(PortEntry(val, comment))
    return out


def parse_isolation(listing: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(isolating bridges, bridges exempt for their own traffic i.e. same-bridge)."""
    sets = _sets(listing)
    bridges = {v for v, _ in map(_elem, sets.get(ISO_BRIDGES, [])) if isinstance(v, str)}
    intra = set()
    for raw in sets.get(ISO_INTRA, []):
        val, _ = _elem(raw)
        if isinstance(val, dict) and isinstance(val.get("concat"), list) and len(val["concat"]) == 2:
            a, b = val["concat"]
            if a == b:
                intra.add(str(a))
    return bridges, intra


def chains(listing: dict[str, Any]) -> dict[str, int]:
    """Chain name -> number of rules in it."""
    found: dict[str, int] = {}
    for item in listing.get("nftables", []):
        if isinstance(item, dict) and "chain" in item:
            found.setdefault(item["chain"]["name"], 0)
        elif isinstance(item, dict) and "rule" in item:
            name = item["rule"].get("chain", "")
            found[name] = found.get(name, 0) + 1
    return found


# --- iptables backend: the reference's chains, with pycni-tagged pod rules -------------------------------------
#
#   FORWARD (first):     -m comment --comment "CNI firewall plugin rules" -j CNI-FORWARD
#   CNI-FORWARD (first): -m comment --comment "CNI firewall plugin admin overrides" -j <admin>
#   CNI-FORWARD:         -d IP/32 -m conntrack --ctstate RELATED,ESTABLISHED
#                            -m comment --comment pycni-fw:<N>-<tag> -j ACCEPT
#                        -s IP/32 -m comment --comment pycni-fw:<N>-<tag> -j ACCEPT
#   FORWARD (first):     -m comment --comment "CNI firewall plugin rules (ingressPolicy: same-bridge)"
#                            -j CNI-ISOLATION-STAGE-1
#   CNI-ISOLATION-STAGE-1: -i B ! -o B -j CNI-ISOLATION-STAGE-2; (isolated) -i B -o B -j DROP; -j RETURN
#   CNI-ISOLATION-STAGE-2: -o B -j DROP; -j RETURN
#
# The shared chains and jumps are the reference's exact rules (same comments), so the Go plugin and
# pycni recognise each other's; pod rules carry a tag comment so DEL and GC need no prevResult.

FORWARD_CHAIN = "CNI-FORWARD"
STAGE1 = "CNI-ISOLATION-STAGE-1"
STAGE2 = "CNI-ISOLATION-STAGE-2"
RULES_COMMENT = "CNI firewall plugin rules"
ADMIN_COMMENT = "CNI firewall plugin admin overrides"
ISOLATION_COMMENT = "CNI firewall plugin rules (ingressPolicy: same-bridge)"
ISOLATED_COMMENT = "CNI firewall plugin rules (ingressPolicy: isolated)"
TAG_PREFIX = "pycni-fw:"


@dataclass(frozen=True)
class IptRule:
    """Ensure `spec` is in `chain`: first (insert at 1) or anywhere (append)."""

    chain: str
    spec: tuple[str, ...]
    first: bool = False


def _comment(text: str) -> tuple[str, ...]:
    return ("-m", "comment", "--comment", text)


def ipt_tag(network: str, tag: str) -> str:
    return f"{TAG_PREFIX}{network_id(network)}-{tag}"


def ipt_pod_rules(network: str, tag: str, address: IPAddress) -> list[IptRule]:
    host = f"{address}/{address.max_prefixlen}"
    c = _comment(ipt_tag(network, tag))
    return [
        IptRule(FORWARD_CHAIN, ("-d", host, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", *c, "-j", "ACCEPT")),
        IptRule(FORWARD_CHAIN, ("-s", host, *c, "-j", "ACCEPT")),
    ]


def ipt_setup(admin: str) -> tuple[list[str], list[IptRule]]:
    """(chains to ensure, rules to ensure) for the forward/admin skeleton."""
    return [FORWARD_CHAIN, admin], [
        IptRule("FORWARD", (*_comment(RULES_COMMENT), "-j", FORWARD_CHAIN), first=True),
        IptRule(FORWARD_CHAIN, (*_comment(ADMIN_COMMENT), "-j", admin), first=True),
    ]


def ipt_isolation(bridge: str, policy: str) -> tuple[list[str], list[IptRule]]:
    c = _comment(ISOLATION_COMMENT)
    rules = [
        IptRule("FORWARD", (*c, "-j", STAGE1), first=True),
        IptRule(STAGE1, ("-i", bridge, "!", "-o", bridge, *c, "-j", STAGE2), first=True),
    ]
    if policy == "isolated":
        rules.append(IptRule(STAGE1, ("-i", bridge, "-o", bridge, *_comment(ISOLATED_COMMENT), "-j", "DROP"),
                             first=True))
    rules += [
        IptRule(STAGE1, (*c, "-j", "RETURN")),
        IptRule(STAGE2, ("-o", bridge, *c, "-j", "DROP"), first=True),
        IptRule(STAGE2, (*c, "-j", "RETURN")),
    ]
    return [STAGE1, STAGE2], rules


def parse_ipt_rules(text: str, chain: str) -> list[tuple[str, ...]]:
    """Rule specs of `chain` from `iptables -S <chain>` output (without the leading `-A chain`)."""
    out = []
    for line in text.splitlines():
        words = shlex.split(line)
        if len(words) >= 2 and words[0] == "-A" and words[1] == chain:
            out.append(tuple(words[2:]))
    return out


def rule_comment(spec: tuple[str, ...]) -> str:
    for i, word in enumerate(spec[:-1]):
        if word == "--comment":
            return spec[i + 1]
    return ""


def rule_tag(spec: tuple[str, ...], network: str) -> str | None:
    """The attachment tag of a pycni pod rule of `network`, else None."""
    prefix = f"{TAG_PREFIX}{network_id(network)}-"
    comment = rule_comment(spec)
    return comment[len(prefix):] if comment.startswith(prefix) else None
