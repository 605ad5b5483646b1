"""World -> per-node enforcement model -> one atomic nft script (and a simulator of that model).

The model, per local pod and direction, is an ordered list of matches in three tiers, as
evaluate.py decides: ANP matches (allow / deny / pass, by priority), then, if NetworkPolicies
isolate the pod, their allow matches and a counted drop, else the BANP's matches. A peer is never
spelled out in a rule: it is a NAMED SET of addresses, one set per (policy, rule, peer, family),
holding the selected pods' addresses or the ipBlock's ranges (cidr minus except). A pod that
joins or leaves a selector changes set elements only; rules change only when policies change.

nftables layout, in pycni's shared `table inet pycni` (every policy object starts with `np`; the
masquerade, portmap and firewall objects there are never touched):

    chain np_forward { type filter hook forward priority filter + 5; policy accept;
        ct state established,related accept      replies of allowed connections
        icmpv6 type { nd-* } accept               neighbour discovery is never policy's business
        fib saddr type local accept               the node's own addresses (probes, node-local)
        ip saddr vmap @np_egress4                 a local pod sends: its egress chain (it returns
        ip6 saddr vmap @np_egress6                when allowed, so the ingress check still runs)
        ip daddr vmap @np_ingress4                a local pod receives: its ingress chain
        ip6 daddr vmap @np_ingress6 }
    chain np_input  { type filter hook input priority filter + 5; policy accept;
        ct state established,related accept; icmpv6 nd-* accept
        ip saddr vmap @np_egress4; ip6 saddr vmap @np_egress6 }   a pod's egress to the node
    map np_egress4 / np_ingress4 { type ipv4_addr : verdict; }   pod address -> jump its chain
    map np_egress6 / np_ingress6 { type ipv6_addr : verdict; }
    chain np_e_<h(pod)> / np_i_<h(pod)>            the pod's egress / ingress chain
    chain np_et_<h(pod)> / np_it_<h(pod)>          its NetworkPolicy+BANP tier, when ANP rules
                                                  select the pod (an ANP Pass jumps here)
    set np4_<h(peer)> / np6_<h(peer)>              { type ipv4_addr|ipv6_addr; flags interval; }
    set npq4_<h(peer,port)> / npq6_...             { type ipvX_addr . inet_proto . inet_service; }
                                                  an egress named port: (pod address, protocol,
                                                  its container port of that name)
    counter np_c_<h(policy)>                       drops decided by that policy

Why by address (layout "address", the default) and not by the pod's host veth: pycni's pods sit
on a Linux bridge, and the IP layer sees the bridge as iif/oif, never the port; traffic between
pods of one bridge reaches the inet hooks only through br_netfilter (net.bridge.bridge-nf-call-
iptables/ip6tables=1 in the node's namespace). The bridge family would see the ports, but its
conntrack needs nf_conntrack_bridge, which kernels may lack. Layout "ifname" dispatches by the
host veth (iifname/oifname vmaps np_egress / np_ingress) for pods on routed veths.
Pod source addresses are trusted as the pod's: anti-spoofing is the bridge's macspoofchk/rp_filter.

Node traffic is not hooked on output: the node talking to its own pods is always allowed.
`h(x)` is the first 12 hex digits of sha256(x); every name is at most 19 characters (within the
32 that the oldest kernels allow for set names).
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from . import evaluate as ev
from .model import AdminPolicy, AdminSelector, IPAddress, IPNetwork, NetworkPolicy, Peer, Pod, Port, Rule, World

TABLE = "inet pycni"
FORWARD = "np_forward"
INPUT = "np_input"
PREFIX = "np"
PROTO_NUM = {"TCP": 6, "UDP": 17, "SCTP": 132}
COUNTERS_PER_RULE = 64  # named counters in one rule (the kernel's limit is 128 expressions)


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def chain_names(pod_key: str) -> dict[str, str]:
    x = h(pod_key)
    return {"egress": f"np_e_{x}", "ingress": f"np_i_{x}", "egress_tier": f"np_et_{x}", "ingress_tier": f"np_it_{x}"}


def counter_name(kind: str, policy: str) -> str:
    return f"np_c_{h(kind + '|' + policy)}"


# ----------------------------------------------------------------------------------------------
# the model


@dataclass(frozen=True)
class AddrSet:
    """A named set of addresses (family 4 or 6) or, with `ports`, of (address, protocol, port)."""

    name: str
    family: int
    comment: str
    networks: tuple[IPNetwork, ...] = ()
    ports: tuple[tuple[IPAddress, str, int], ...] | None = None


@dataclass(frozen=True)
class Match:
    """One rule: peer (set names per family; None = any address), protocol/ports, verdict."""

    verdict: str  # allow, deny, pass
    ref: ev.RuleRef
    peer_sets: tuple[str, ...] | None = None  # AddrSet names, both families
    protocol: str | None = None
    ports: tuple[int, int] | None = None
    port_sets: tuple[str, ...] | None = None  # named-port egress: (addr . proto . port) sets
    counter: str | None = None


@dataclass(frozen=True)
class Direction:
    anp: tuple[Match, ...] = ()
    isolated_by: tuple[str, ...] = ()  # NetworkPolicy keys that isolate the pod here
    np: tuple[Match, ...] = ()  # NetworkPolicy allow matches (used when isolated_by)
    banp: tuple[Match, ...] = ()  # BANP matches (used when not isolated)
    drop_counters: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.anp or self.isolated_by or self.banp)


@dataclass(frozen=True)
class PodRules:
    pod: str
    ifname: str | None
    addresses: tuple[IPAddress, ...]
    ingress: Direction
    egress: Direction

    @property
    def chains(self) -> dict[str, str]:
        return chain_names(self.pod)


@dataclass(frozen=True)
class NodeModel:
    node: str | None
    node_addresses: tuple[IPAddress, ...]
    families: tuple[int, ...]
    pods: tuple[PodRules, ...]
    sets: tuple[AddrSet, ...]
    counters: tuple[tuple[str, str], ...]  # (name, "Kind policy")

    def set(self, name: str) -> AddrSet:
        return self._set_index[name]

    @functools.cached_property
    def _set_index(self) -> dict[str, AddrSet]:
        # Not a field (equality and hashing ignore it); a linear search per rule made rendering
        # 10000 rules cost seconds.
        return {s.name: s for s in self.sets}


# ----------------------------------------------------------------------------------------------
# compiling


class _Builder:
    def __init__(self, world: World, families: tuple[int, ...]) -> None:
        self.world = world
        self.families = families
        self.sets: dict[str, AddrSet] = {}
        self.counters: dict[str, str] = {}
        self._peers: dict[str, list[tuple[str, list[IPNetwork], list[Pod]]]] = {}
        self._matches: dict[str, list[Match]] = {}

    def _add_sets(self, ident: str, comment: str, nets: Iterable[IPNetwork]) -> tuple[str, ...]:
        nets = list(nets)
        names = []
        for fam in self.families:
            name = f"np{fam}_{h(ident)}"
            if name not in self.sets:
                fam_nets = [n for n in nets if n.version == fam]
                collapsed = tuple(ipaddress.collapse_addresses(fam_nets)) if fam_nets else ()  # type: ignore[type-var]
                self.sets[name] = AddrSet(name, fam, comment, collapsed)
            names.append(name)
        return tuple(names)

    def _add_port_sets(self, ident: str, comment: str, elems: Iterable[tuple[IPAddress, str, int]]) -> tuple[str, ...]:
        elems = sorted(set(elems), key=lambda e: (e[0].version, int(e[0]), e[1], e[2]))
        names = []
        for fam in self.families:
            name = f"npq{fam}_{h(ident)}"
            if name not in self.sets:
                self.sets[name] = AddrSet(name, fam, comment, (), tuple(e for e in elems if e[0].version == fam))
            names.append(name)
        return tuple(names)

    def counter(self, kind: str, policy: str) -> str:
        name = counter_name(kind, policy)
        self.counters[name] = f"{kind} {policy}"
        return name

    # -- peers -> address lists

    def np_peer_pods(self, pol: NetworkPolicy, p: Peer) -> list[Pod]:
        return [q for q in self.world.pods if ev.pod_selected(self.world, q, pol.namespace, p)]

    def np_peers(self, pol: NetworkPolicy, ident: str, r: Rule) -> list[tuple[str, list[IPNetwork], list[Pod]]]:
        """A NetworkPolicy rule's peers: (peer id, networks, pods), computed once per rule (every
        pod the policy selects shares them; recomputing per pod made 1000 policies cost seconds)."""
        cached = self._peers.get(ident)
        if cached is not None:
            return cached
        w = self.world
        peers = []
        for j, p in enumerate(r.peers):
            pods = (
                self.np_peer_pods(pol, p)
                if p.ip_block is None
                else [q for q in w.pods if any(p.ip_block.contains(a) for a in q.ips)]
            )
            if p.ip_block is not None:
                nets = p.ip_block.ranges()
            else:
                nets = [ipaddress.ip_network(a) for q in pods for a in q.ips]
            peers.append((f"peer{j}", nets, pods))
        self._peers[ident] = peers
        return peers

    def admin_peer_nets(self, s: AdminSelector) -> list[IPNetwork]:
        if s.networks:
            return list(s.networks)
        if s.nodes is not None:
            return [
                ipaddress.ip_network(a) for n in self.world.nodes if s.nodes.matches(n.label_map) for a in n.addresses
            ]
        return [
            ipaddress.ip_network(a) for q in self.world.pods if ev.admin_selects_pod(self.world, s, q) for a in q.ips
        ]

    def admin_peer_pods(self, s: AdminSelector) -> list[Pod]:
        if s.networks or s.nodes is not None:
            return [q for q in self.world.pods if any(ev.admin_peer_matches(self.world, s, q, a) for a in q.ips)]
        return [q for q in self.world.pods if ev.admin_selects_pod(self.world, s, q)]

    # -- ports

    @staticmethod
    def resolve_ports(
        ports: tuple[Port, ...], target: Pod | None
    ) -> list[tuple[str | None, tuple[int, int] | None, Port]]:
        """Numeric forms of the ports (named ports against `target`; None target = egress,
        resolved per destination by a port set instead). [(protocol, range, source port)]."""
        if not ports:
            return [(None, None, Port())]
        out: list[tuple[str | None, tuple[int, int] | None, Port]] = []
        for p in ports:
            if isinstance(p.port, str):
                if target is None:
                    out.append((p.protocol or None, None, p))  # marker: a named egress port
                    continue
                for cp in target.ports:
                    if cp.name == p.port and (not p.protocol or cp.protocol == p.protocol):
                        out.append((cp.protocol, (cp.port, cp.port), p))
            elif p.port is None:
                out.append((p.protocol or None, None, p))
            else:
                out.append((p.protocol, (p.port, p.end_port or p.port), p))
        return out

    def matches(
        self,
        ref: ev.RuleRef,
        verdict: str,
        ident: str,
        peers: list[tuple[str, list[IPNetwork], list[Pod]]] | None,
        ports: tuple[Port, ...],
        subject: Pod,
        direction: str,
        counter: str | None,
    ) -> list[Match]:
        """Matches for one rule. peers: [(peer id, networks, pods)] or None for every address."""
        target = subject if direction == "ingress" else None
        out = []
        for proto, rng, src in self.resolve_ports(ports, target):
            named_egress = direction == "egress" and isinstance(src.port, str)
            if named_egress:
                assert isinstance(src.port, str)
                name = src.port
                candidates = [q for _, _, pods in peers for q in pods] if peers is not None else list(self.world.pods)
                elems = [
                    (a, cp.protocol, cp.port)
                    for q in candidates
                    for cp in q.ports
                    if cp.name == name and (not src.protocol or cp.protocol == src.protocol)
                    for a in q.ips
                ]
                pid = f"{ident}|port:{src}"
                sets = self._add_port_sets(pid, f"{ref.kind} {ref.policy} {direction}[{ref.index}] port {src}", elems)
                out.append(Match(verdict, ref, None, None, None, sets, counter))
                continue
            if peers is None:
                out.append(Match(verdict, ref, None, proto, rng, None, counter))
                continue
            for pid, nets, _ in peers:
                label = f"{ref.kind} {ref.policy} {direction}[{ref.index}] peer {pid.rsplit('|', 1)[-1]}"
                sets = self._add_sets(f"{ident}|{pid}", label, nets)
                out.append(Match(verdict, ref, sets, proto, rng, None, counter))
        return out

    def direction(self, pod: Pod, direction: str) -> Direction:
        w = self.world
        anp_matches: list[Match] = []
        for anp in ev.admin_order(w):
            if not ev.admin_selects_pod(w, anp.subject, pod):
                continue
            anp_matches += self._admin_rules(anp, pod, direction, ev.TIER_ANP)
        isolating = ev.isolating(w, pod, direction)
        np_matches: list[Match] = []
        for pol in isolating:
            rules = pol.ingress if direction == "ingress" else pol.egress
            for i, r in enumerate(rules):
                ref = ev.RuleRef(ev.TIER_NP, pol.key, direction, i, "Allow")
                ident = f"NP|{pol.key}|{direction}|{i}"
                peers = self.np_peers(pol, ident, r) if r.peers else None
                # A rule's matches are the same for every pod the policy selects, except ingress
                # named ports (resolved against the receiving pod): computed once per rule.
                if direction == "ingress" and any(isinstance(p.port, str) for p in r.ports):
                    np_matches += self.matches(ref, "allow", ident, peers, r.ports, pod, direction, None)
                else:
                    if ident not in self._matches:
                        self._matches[ident] = self.matches(ref, "allow", ident, peers, r.ports, pod, direction, None)
                    np_matches += self._matches[ident]
        banp_matches: list[Match] = []
        if not isolating and w.baseline is not None and ev.admin_selects_pod(w, w.baseline.subject, pod):
            banp_matches = self._admin_rules(w.baseline, pod, direction, ev.TIER_BANP)
        drops = tuple(self.counter(ev.TIER_NP, p.key) for p in isolating)
        return Direction(
            tuple(anp_matches), tuple(p.key for p in isolating), tuple(np_matches), tuple(banp_matches), drops
        )

    def _admin_rules(self, pol: AdminPolicy, pod: Pod, direction: str, kind: str) -> list[Match]:
        out: list[Match] = []
        rules = pol.ingress if direction == "ingress" else pol.egress
        for i, r in enumerate(rules):
            ref = ev.RuleRef(kind, pol.name, direction, i, r.action, r.name)
            peers = [(f"peer{j}", self.admin_peer_nets(s), self.admin_peer_pods(s)) for j, s in enumerate(r.peers)]
            counter = self.counter(kind, pol.name) if r.action == "Deny" else None
            out += self.matches(
                ref, r.action.lower(), f"{kind}|{pol.name}|{direction}|{i}", peers, r.ports, pod, direction, counter
            )
        return out


def families_of(world: World) -> tuple[int, ...]:
    fams = {a.version for p in world.pods for a in p.ips}
    for pol in world.policies:
        for r in pol.ingress + pol.egress:
            fams |= {p.ip_block.cidr.version for p in r.peers if p.ip_block is not None}
    for a in (*world.admin_policies, *((world.baseline,) if world.baseline else ())):
        for ar in a.ingress + a.egress:
            fams |= {n.version for s in ar.peers for n in s.networks}
    return tuple(sorted(fams)) or (4,)


def compile_node(
    world: World,
    node: str | None,
    ifnames: Mapping[str, str] | None = None,
    local_addresses: Iterable[IPAddress] = (),
) -> NodeModel:
    """The enforcement model of `node` (None: every pod of the world, for tests and explain).

    ifnames maps a pod key (ns/name) to its host-side veth; a pod without one gets its chains but
    no map element yet (the plugin installs it at ADD, before the pod's first packet).
    local_addresses: the node's own addresses beyond its Node object's (the bridge gateways):
    traffic from them to a local pod is the node's own, always allowed."""
    ifnames = ifnames or {}
    b = _Builder(world, families_of(world))
    pods = []
    for pod in sorted(world.pods, key=lambda p: p.key):
        if pod.host_network or (node is not None and pod.node_name != node):
            continue
        pods.append(
            PodRules(pod.key, ifnames.get(pod.key), pod.ips, b.direction(pod, "ingress"), b.direction(pod, "egress"))
        )
    me = world.node(node) if node is not None else None
    sets = tuple(sorted(b.sets.values(), key=lambda s: s.name))
    own = tuple(dict.fromkeys((*(me.addresses if me else ()), *local_addresses)))
    return NodeModel(node, own, b.families, tuple(pods), sets, tuple(sorted(b.counters.items())))


# ----------------------------------------------------------------------------------------------
# rendering


def _q(text: str) -> str:
    # nft refuses comments over 128 bytes: keep the start (the kind and name say the most).
    text = text.replace("\\", "").replace('"', "'")
    if len(text.encode()) > 128:
        text = text.encode()[:125].decode(errors="ignore") + "..."
    return '"' + text + '"'


def _fam_kw(fam: int) -> str:
    return "ip" if fam == 4 else "ip6"


def _render_match(m: Match, direction: str, final_allow: str, model: NodeModel, tier_chain: str | None) -> list[str]:
    verdict = {"allow": final_allow, "pass": f"goto {tier_chain}" if tier_chain else "return", "deny": "drop"}[
        m.verdict
    ]
    if m.verdict == "deny" and m.counter:
        verdict = f'counter name "{m.counter}" drop'
    comment = f" comment {_q(str(m.ref))}"
    l4 = ""
    if m.protocol:
        l4 = f"meta l4proto {m.protocol.lower()}"
        if m.ports:
            lo, hi = m.ports
            l4 += f" th dport {lo}" if lo == hi else f" th dport {lo}-{hi}"
        l4 += " "
    side = "saddr" if direction == "ingress" else "daddr"
    if m.port_sets is not None:
        return [
            f"{_fam_kw(model.set(s).family)} daddr . meta l4proto . th dport @{s} {verdict}{comment}"
            for s in m.port_sets
        ]
    if m.peer_sets is None:
        return [f"{l4}{verdict}{comment}".strip()]
    return [f"{_fam_kw(model.set(s).family)} {side} @{s} {l4}{verdict}{comment}" for s in m.peer_sets]


def chain_bodies(model: NodeModel) -> dict[str, list[str]]:
    """Every per-pod chain of the model and its rules, in order."""
    out: dict[str, list[str]] = {}
    for pr in model.pods:
        ch = pr.chains
        for direction, d in (("egress", pr.egress), ("ingress", pr.ingress)):
            allow = "return" if direction == "egress" else "accept"
            entry = ch[direction]
            tier_chain = ch[f"{direction}_tier"] if d.anp else None
            tier_rules: list[str] = []
            if d.isolated_by:
                for m in d.np:
                    tier_rules += _render_match(m, direction, allow, model, None)
                # The kernel takes at most 128 expressions per rule (NFT_RULE_MAXEXPRS): a pod
                # isolated by many policies gets its counters over several rules that only
                # count, then the drop; every isolating policy's counter still counts each drop.
                chunks = [d.drop_counters[i:i + COUNTERS_PER_RULE]
                          for i in range(0, len(d.drop_counters), COUNTERS_PER_RULE)] or [()]
                for chunk in chunks[:-1]:
                    tier_rules.append(" ".join(f'counter name "{c}"' for c in chunk))
                counters = " ".join(f'counter name "{c}"' for c in chunks[-1])
                tier_rules.append(f"{counters} drop comment {_q('isolated by ' + ', '.join(d.isolated_by))}".strip())
            else:
                for m in d.banp:
                    tier_rules += _render_match(m, direction, allow, model, None)
            if tier_chain:
                rules: list[str] = []
                for m in d.anp:
                    rules += _render_match(m, direction, allow, model, tier_chain)
                rules.append(f"goto {tier_chain}")
                out[entry] = rules
                out[tier_chain] = tier_rules
            else:
                out[entry] = tier_rules
    return out


LAYOUTS = ("address", "ifname")
# Neighbour discovery is IPv6's ARP: policies never filter it (an isolated pod must still resolve
# its peers and its gateway), so it is accepted before any pod chain.
_ND = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit, nd-router-advert } accept"


def map_names(layout: str) -> dict[str, str]:
    """The dispatch maps: key (egress4, ingress6, ... or egress/ingress) -> name."""
    if layout == "ifname":
        return {"egress": "np_egress", "ingress": "np_ingress"}
    if layout == "address":
        return {f"{d}{f}": f"np_{d}{f}" for d in ("egress", "ingress") for f in (4, 6)}
    raise ValueError(f"layout must be one of {LAYOUTS}, not {layout!r}")


def _base_chains(layout: str) -> dict[str, tuple[str, list[str]]]:
    """The hooked dispatcher chains: name -> (hook, rules)."""
    est = "ct state established,related accept"
    maps = map_names(layout)
    if layout == "ifname":
        # Pods on routed veths: the IP layer sees the pod's own veth as iif/oif.
        send = [f"iifname vmap @{maps['egress']}"]
        receive = [f"oifname vmap @{maps['ingress']}"]
    else:
        # Pods on a bridge: the IP layer sees the bridge, not the port (and sees bridged frames at
        # all only with br_netfilter), so the pod is found by its address.
        send = [f"ip saddr vmap @{maps['egress4']}", f"ip6 saddr vmap @{maps['egress6']}"]
        receive = [f"ip daddr vmap @{maps['ingress4']}", f"ip6 daddr vmap @{maps['ingress6']}"]
    return {
        FORWARD: ("forward", [est, _ND, "fib saddr type local accept", *send, *receive]),
        INPUT: ("input", [est, _ND, *send]),
    }


def object_names(model: NodeModel, layout: str = "address") -> set[str]:
    """Every policy object the model's script declares (chains, maps, sets, counters)."""
    return {
        *_base_chains(layout),
        *map_names(layout).values(),
        *chain_bodies(model),
        *(s.name for s in model.sets),
        *(c for c, _ in model.counters),
    }


def _elements(s: AddrSet) -> list[str]:
    if s.ports is not None:
        return [f"{a} . {p.lower()} . {n}" for a, p, n in s.ports]
    return [str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n) for n in s.networks]


def _dispatch_elements(model: NodeModel, layout: str) -> dict[str, list[str]]:
    """Map name -> elements: which pod chain a packet of a local pod jumps to."""
    maps = map_names(layout)
    out: dict[str, list[str]] = {name: [] for name in maps.values()}
    for p in model.pods:
        for d in ("egress", "ingress"):
            if layout == "ifname":
                if p.ifname:
                    out[maps[d]].append(f'"{p.ifname}" : jump {p.chains[d]}')
            else:
                for a in p.addresses:
                    out[maps[f"{d}{a.version}"]].append(f"{a} : jump {p.chains[d]}")
    return out


def render_nft(model: NodeModel, existing: Iterable[str] = (), layout: str = "address") -> str:
    """One atomic transaction (`nft -f`): declare every policy object (a no-op where it exists),
    flush pycni's policy chains, maps and sets, fill them again, and delete the policy objects in
    `existing` (names listed from the table, starting with "np") that the model no longer has.
    Counters are declared, never reset, so `pycni policy stats` survives resyncs.

    layout "address" (pods on a bridge; needs br_netfilter for pods of the same bridge): packets
    reach a pod's chains by the pod's address; "ifname" (pods on routed veths): by its host veth
    name. The per-pod chains are the same in both."""
    t = TABLE
    bodies = chain_bodies(model)
    base = _base_chains(layout)
    maps = map_names(layout)
    lines = [f"add table {t}"]
    for name, (hook, _) in base.items():
        lines.append(f"add chain {t} {name} {{ type filter hook {hook} priority filter + 5; policy accept; }}")
    # Counter objects carry no comment (older nft cannot parse one): model.counters maps name to
    # policy for `pycni policy stats`.
    for c, _label in model.counters:
        lines.append(f"add counter {t} {c}")
    for st in model.sets:
        if st.ports is not None:
            typ = f"{'ipv4_addr' if st.family == 4 else 'ipv6_addr'} . inet_proto . inet_service"
            lines.append(f"add set {t} {st.name} {{ type {typ}; comment {_q(st.comment)}; }}")
        else:
            typ = "ipv4_addr" if st.family == 4 else "ipv6_addr"
            lines.append(f"add set {t} {st.name} {{ type {typ}; flags interval; comment {_q(st.comment)}; }}")
    for name in bodies:
        lines.append(f"add chain {t} {name}")
    for key, name in maps.items():
        typ = "ifname" if layout == "ifname" else ("ipv4_addr" if key.endswith("4") else "ipv6_addr")
        lines.append(f"add map {t} {name} {{ type {typ} : verdict; }}")
    # Flush, then refill: one transaction, so no packet sees a half-written state.
    lines += [f"flush chain {t} {name}" for name in base]
    lines += [f"flush map {t} {name}" for name in maps.values()]
    lines += [f"flush set {t} {st.name}" for st in model.sets]
    lines += [f"flush chain {t} {name}" for name in bodies]
    for st in model.sets:
        elems = _elements(st)
        if elems:
            lines.append(f"add element {t} {st.name} {{ {', '.join(elems)} }}")
    for name, rules in bodies.items():
        lines += [f"add rule {t} {name} {r}" for r in rules]
    for name, elems in _dispatch_elements(model, layout).items():
        if elems:
            lines.append(f"add element {t} {name} {{ {', '.join(elems)} }}")
    for name, (_, rules) in base.items():
        lines += [f"add rule {t} {name} {r}" for r in rules]
    keep = object_names(model, layout)
    stale = sorted(n for n in set(existing) if n.startswith(PREFIX) and n not in keep)
    stale_chains = [n for n in stale if n.startswith(("np_e_", "np_i_", "np_et_", "np_it_"))]
    # A chain must be empty before it is deleted; sets and counters go once no rule names them.
    lines += [f"flush chain {t} {n}" for n in stale_chains]
    lines += [f"delete chain {t} {n}" for n in stale_chains]
    lines += [f"delete set {t} {n}" for n in stale if n.startswith(("np4_", "np6_", "npq4_", "npq6_"))]
    lines += [f"delete map {t} {n}" for n in stale if n.startswith(("np_egress", "np_ingress"))]
    lines += [f"delete counter {t} {n}" for n in stale if n.startswith("np_c_")]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------
# simulation: what the kernel would do with the compiled model (explain and the tests use it)


def _in_sets(model: NodeModel, names: tuple[str, ...], ip: IPAddress | None) -> bool:
    if ip is None:
        return False
    return any(model.set(n).family == ip.version and any(ip in net for net in model.set(n).networks) for n in names)


def _match_hits(
    model: NodeModel,
    m: Match,
    direction: str,
    peer_ip: IPAddress | None,
    own_ip: IPAddress | None,
    port: int,
    protocol: str,
) -> bool:
    if m.port_sets is not None:
        return peer_ip is not None and any((peer_ip, protocol, port) in (model.set(n).ports or ()) for n in m.port_sets)
    if m.protocol and m.protocol != protocol:
        return False
    if m.ports and not m.ports[0] <= port <= m.ports[1]:
        return False
    return m.peer_sets is None or _in_sets(model, m.peer_sets, peer_ip)


def run_chain(
    model: NodeModel, pod: PodRules, direction: str, peer_ip: IPAddress | None, port: int, protocol: str
) -> ev.Step:
    """Walk one pod's compiled chain as the kernel would; the Step names the deciding match."""
    d = pod.ingress if direction == "ingress" else pod.egress
    own = next((a for a in pod.addresses if peer_ip is not None and a.version == peer_ip.version), None)
    passed: tuple[ev.RuleRef, ...] = ()
    for m in d.anp:
        if _match_hits(model, m, direction, peer_ip, own, port, protocol):
            if m.verdict == "pass":
                passed = (m.ref,)
                break
            return ev.Step(direction, m.verdict == "allow", ev.TIER_ANP, (m.ref,))
    if d.isolated_by:
        hits = []
        for m in d.np:
            if _match_hits(model, m, direction, peer_ip, own, port, protocol) and m.ref not in hits:
                hits.append(m.ref)
        if hits:
            return ev.Step(direction, True, ev.TIER_NP, tuple(hits), passed)
        refs = tuple(ev.RuleRef(ev.TIER_NP, k, direction, None, "Isolate") for k in d.isolated_by)
        return ev.Step(direction, False, ev.TIER_NP, refs, passed)
    for m in d.banp:
        if _match_hits(model, m, direction, peer_ip, own, port, protocol):
            return ev.Step(direction, m.verdict == "allow", ev.TIER_BANP, (m.ref,), passed)
    return ev.Step(direction, True, ev.TIER_DEFAULT, (), passed)


def simulate(
    models: Iterable[NodeModel], src: IPAddress, dst: IPAddress, port: int, protocol: str = "TCP"
) -> ev.Decision:
    """A new connection src -> dst through the nodes' compiled models: egress on the node of
    the source pod, ingress on the node of the destination pod (the same node or another)."""
    models = list(models)

    def local(ip: IPAddress) -> tuple[NodeModel, PodRules] | None:
        return next(((nm, p) for nm in models for p in nm.pods if ip in p.addresses), None)

    s, d = local(src), local(dst)
    names = (s[1].pod if s else str(src), d[1].pod if d else str(dst), port, protocol)
    if s and d and s[1].pod == d[1].pod:
        return ev.Decision(
            True, ev.Step("egress", True, ev.TIER_LOOPBACK), ev.Step("ingress", True, ev.TIER_LOOPBACK), *names
        )
    egress = run_chain(s[0], s[1], "egress", dst, port, protocol) if s else ev.Step("egress", True, ev.TIER_NOT_POD)
    if d is None:
        ingress = ev.Step("ingress", True, ev.TIER_NOT_POD)
    elif src in d[0].node_addresses:
        ingress = ev.Step("ingress", True, ev.TIER_NODE)
    else:
        ingress = run_chain(d[0], d[1], "ingress", src, port, protocol)
    return ev.Decision(egress.allowed and ingress.allowed, egress, ingress, *names)


# ----------------------------------------------------------------------------------------------
# incremental updates and reading back what the kernel has


def render_nft_delta(old: NodeModel, new: NodeModel, layout: str = "address") -> str | None:
    """When only set CONTENTS differ (a pod joined or left a selector, a pod address changed),
    the transaction that adds and deletes just those elements; None when chains, rules, sets'
    existence, counters or veth mappings differ (then render_nft() resyncs everything)."""
    if (
        chain_bodies(old) != chain_bodies(new)
        or [(s.name, s.family, s.ports is None) for s in old.sets]
        != [(s.name, s.family, s.ports is None) for s in new.sets]
        or old.counters != new.counters
        or _dispatch_elements(old, layout) != _dispatch_elements(new, layout)
    ):
        return None
    t = TABLE
    lines: list[str] = []
    for so, sn in zip(old.sets, new.sets, strict=True):
        before, after = _elements(so), _elements(sn)
        gone = [e for e in before if e not in after]
        added = [e for e in after if e not in before]
        if gone:
            lines.append(f"delete element {t} {sn.name} {{ {', '.join(gone)} }}")
        if added:
            lines.append(f"add element {t} {sn.name} {{ {', '.join(added)} }}")
    return "\n".join(lines) + "\n" if lines else ""


def _listing_items(listing: Mapping[str, object]) -> list[tuple[str, dict[str, object]]]:
    out = []
    items = listing.get("nftables", [])
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        for kind, body in item.items():
            if isinstance(body, dict) and body.get("family") == "inet" and body.get("table") == "pycni":
                out.append((kind, body))
    return out


def names_from_listing(listing: Mapping[str, object]) -> set[str]:
    """The policy objects (chains, sets, maps, counters starting with "np") in an `nft -j list
    table inet pycni` answer: the `existing` argument of render_nft()."""
    return {
        str(body["name"])
        for kind, body in _listing_items(listing)
        if kind in ("chain", "set", "map", "counter") and str(body.get("name", "")).startswith(PREFIX)
    }


def counters_from_listing(listing: Mapping[str, object]) -> dict[str, tuple[int, int]]:
    """Drop counters (name -> (packets, bytes)) from an `nft -j list table` answer."""
    out = {}
    for kind, body in _listing_items(listing):
        if kind == "counter" and str(body.get("name", "")).startswith("np_c_"):
            packets, nbytes = body.get("packets", 0), body.get("bytes", 0)
            out[str(body["name"])] = (
                int(packets) if isinstance(packets, int) else 0,
                int(nbytes) if isinstance(nbytes, int) else 0,
            )
    return out
