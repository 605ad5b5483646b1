"""The reference semantics: is a connection allowed, and which policies and rules decide.

Kubernetes NetworkPolicy (networking.k8s.io/v1), as the API documents it and the upstream e2e
suite checks it:
- a pod is isolated for ingress iff some NetworkPolicy of its namespace with Ingress in
  policyTypes selects it; isolated traffic is allowed iff some rule of some such policy allows it
  (peers OR'd, ports OR'd, rules OR'd, policies add up); the same for egress at the source pod;
- a connection is allowed iff egress allows it at the source AND ingress allows it at the
  destination; replies of an allowed connection pass (conntrack; not modelled per packet here);
- named ports resolve against the DESTINATION pod's container ports (name and protocol);
- traffic from a pod's own node is always allowed (kubelet probes), and a pod reaching itself
  never leaves its network namespace, so no policy sees it.

AdminNetworkPolicy / BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1), per
direction: ANPs whose subject selects the pod, by priority (lower first; ties by name), each
rule in order; the first rule that matches decides: Allow and Deny are final, Pass skips the rest
of the ANP tier. Then NetworkPolicy (if it isolates the pod, its answer is final), then the BANP's
first matching rule, then allow.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .model import (
    AdminPolicy,
    AdminRule,
    AdminSelector,
    IPAddress,
    NetworkPolicy,
    Node,
    Peer,
    Pod,
    Port,
    Rule,
    World,
)

Endpoint = Pod | Node | IPAddress

TIER_ANP = "AdminNetworkPolicy"
TIER_NP = "NetworkPolicy"
TIER_BANP = "BaselineAdminNetworkPolicy"
TIER_DEFAULT = "default"  # no policy of any tier applies: allowed
TIER_NODE = "node"  # from the destination pod's own node: always allowed
TIER_LOOPBACK = "loopback"
TIER_NOT_POD = "not-a-pod"  # this end is not a pod (an address, a node, a host-network pod)


@dataclass(frozen=True)
class RuleRef:
    """One policy rule (index None: the policy only isolates, no rule of it matched)."""

    kind: str
    policy: str
    direction: str
    index: int | None
    action: str  # Allow, Deny, Pass; "Isolate" for an isolating NetworkPolicy without a match
    name: str = ""

    def __str__(self) -> str:
        where = f"{self.kind} {self.policy}"
        if self.index is None:
            return f"{where} (selects the pod for {self.direction}; no {self.direction} rule of it matches)"
        label = f" {self.name!r}" if self.name else ""
        return f"{where} {self.direction}[{self.index}]{label} -> {self.action}"


@dataclass(frozen=True)
class Step:
    """The answer of one direction: egress at the source, or ingress at the destination."""

    direction: str
    allowed: bool
    tier: str
    rules: tuple[RuleRef, ...] = ()
    passed: tuple[RuleRef, ...] = ()  # ANP Pass rules that sent the decision on to lower tiers


@dataclass(frozen=True)
class Decision:
    allowed: bool
    egress: Step
    ingress: Step
    src: str
    dst: str
    port: int
    protocol: str

    @property
    def deciding(self) -> tuple[RuleRef, ...]:
        """The rules that decided: the refusing side's when denied, both sides' when allowed."""
        if self.allowed:
            return self.egress.rules + self.ingress.rules
        return self.egress.rules if not self.egress.allowed else self.ingress.rules


# ----------------------------------------------------------------------------------------------
# matching


def port_matches(p: Port, port: int, protocol: str, target: Pod | None) -> bool:
    """One policy port against (port, protocol) sent to `target` (the destination pod, if any)."""
    if p.protocol and p.protocol != protocol:
        return False
    if p.port is None:
        return True
    if isinstance(p.port, str):
        return target is not None and port in target.named_port(p.port, protocol)
    if p.end_port is None:
        return port == p.port
    return p.port <= port <= p.end_port


def ports_match(ports: tuple[Port, ...], port: int, protocol: str, target: Pod | None) -> bool:
    return not ports or any(port_matches(p, port, protocol, target) for p in ports)


def pod_selected(world: World, pod: Pod, namespace: str, p: Peer) -> bool:
    """A selector peer of a policy in `namespace` against a pod."""
    if pod.host_network:
        return False  # a host-network pod has the node's address: only an ipBlock can match it
    if p.namespace_selector is not None:
        if not p.namespace_selector.matches(world.namespace_labels(pod.namespace)):
            return False
    elif pod.namespace != namespace:
        return False
    return p.pod_selector is None or p.pod_selector.matches(pod.label_map)


def peer_matches(world: World, namespace: str, p: Peer, other: Endpoint, other_ip: IPAddress | None) -> bool:
    if p.ip_block is not None:
        return other_ip is not None and p.ip_block.contains(other_ip)
    return isinstance(other, Pod) and pod_selected(world, other, namespace, p)


def rule_matches(
    world: World,
    namespace: str,
    rule: Rule,
    other: Endpoint,
    other_ip: IPAddress | None,
    port: int,
    protocol: str,
    target: Pod | None,
) -> bool:
    peers_ok = not rule.peers or any(peer_matches(world, namespace, p, other, other_ip) for p in rule.peers)
    return peers_ok and ports_match(rule.ports, port, protocol, target)


def admin_selects_pod(world: World, s: AdminSelector, pod: Pod) -> bool:
    if pod.host_network:
        return False
    ns_labels = world.namespace_labels(pod.namespace)
    if s.namespaces is not None:
        return s.namespaces.matches(ns_labels)
    if s.pods is not None:
        assert s.pod_namespaces is not None
        return s.pod_namespaces.matches(ns_labels) and s.pods.matches(pod.label_map)
    return False


def admin_peer_matches(world: World, s: AdminSelector, other: Endpoint, other_ip: IPAddress | None) -> bool:
    if s.networks:
        return other_ip is not None and any(other_ip.version == n.version and other_ip in n for n in s.networks)
    if s.nodes is not None:
        return isinstance(other, Node) and s.nodes.matches(other.label_map)
    return isinstance(other, Pod) and admin_selects_pod(world, s, other)


def admin_rule_matches(
    world: World,
    rule: AdminRule,
    other: Endpoint,
    other_ip: IPAddress | None,
    port: int,
    protocol: str,
    target: Pod | None,
) -> bool:
    return any(admin_peer_matches(world, s, other, other_ip) for s in rule.peers) and ports_match(
        rule.ports, port, protocol, target
    )


def admin_order(world: World) -> list[AdminPolicy]:
    # Same priority: the API leaves the order undefined; pycni takes the name order, so every
    # node (and explain) agrees.
    return sorted(world.admin_policies, key=lambda a: (a.priority or 0, a.name))


def isolating(world: World, pod: Pod, direction: str) -> list[NetworkPolicy]:
    """The NetworkPolicies that select `pod` for `direction` ("ingress" or "egress")."""
    ptype = direction.capitalize()
    return [
        p
        for p in world.policies
        if p.namespace == pod.namespace and ptype in p.policy_types and p.pod_selector.matches(pod.label_map)
    ]


# ----------------------------------------------------------------------------------------------
# the decision


def _direction(
    world: World,
    direction: str,
    subject: Pod,
    other: Endpoint,
    other_ip: IPAddress | None,
    port: int,
    protocol: str,
    target: Pod | None,
) -> Step:
    passed: list[RuleRef] = []
    for anp in admin_order(world):
        if not admin_selects_pod(world, anp.subject, subject):
            continue
        rules = anp.ingress if direction == "ingress" else anp.egress
        hit = next(
            (
                (i, r)
                for i, r in enumerate(rules)
                if admin_rule_matches(world, r, other, other_ip, port, protocol, target)
            ),
            None,
        )
        if hit is None:
            continue
        i, r = hit
        ref = RuleRef(TIER_ANP, anp.name, direction, i, r.action, r.name)
        if r.action == "Pass":
            passed.append(ref)
            break
        return Step(direction, r.action == "Allow", TIER_ANP, (ref,), tuple(passed))

    selecting = isolating(world, subject, direction)
    if selecting:
        allowing = []
        for pol in selecting:
            np_rules = pol.ingress if direction == "ingress" else pol.egress
            for i, nr in enumerate(np_rules):
                if rule_matches(world, pol.namespace, nr, other, other_ip, port, protocol, target):
                    allowing.append(RuleRef(TIER_NP, pol.key, direction, i, "Allow"))
        if allowing:
            return Step(direction, True, TIER_NP, tuple(allowing), tuple(passed))
        refs = tuple(RuleRef(TIER_NP, p.key, direction, None, "Isolate") for p in selecting)
        return Step(direction, False, TIER_NP, refs, tuple(passed))

    banp = world.baseline
    if banp is not None and admin_selects_pod(world, banp.subject, subject):
        b_rules = banp.ingress if direction == "ingress" else banp.egress
        for i, br in enumerate(b_rules):
            if admin_rule_matches(world, br, other, other_ip, port, protocol, target):
                ref = RuleRef(TIER_BANP, banp.name, direction, i, br.action, br.name)
                return Step(direction, br.action == "Allow", TIER_BANP, (ref,), tuple(passed))
    return Step(direction, True, TIER_DEFAULT, (), tuple(passed))


def resolve(world: World, ep: Endpoint) -> Endpoint:
    """An address that belongs to a known pod or node is that pod or node (the kernel only sees
    addresses, so the reference must agree with it)."""
    if isinstance(ep, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
        for p in world.pods:
            if not p.host_network and ep in p.ips:
                return p
        for n in world.nodes:
            if ep in n.addresses:
                return n
    return ep


def _address(ep: Endpoint, version: int) -> IPAddress | None:
    if isinstance(ep, Pod):
        return ep.ip(version)
    if isinstance(ep, Node):
        return next((a for a in ep.addresses if a.version == version), None)
    return ep if ep.version == version else None


def _family(src: Endpoint, dst: Endpoint) -> int:
    for ep in (dst, src):
        if isinstance(ep, (ipaddress.IPv4Address, ipaddress.IPv6Address)):
            return ep.version
    for ep in (dst, src):
        if isinstance(ep, Pod) and ep.ips:
            return ep.ips[0].version
    return 4


def describe(ep: Endpoint) -> str:
    if isinstance(ep, Pod):
        return ep.key
    if isinstance(ep, Node):
        return f"node {ep.name}"
    return str(ep)


def verdict(
    world: World, src: Endpoint, dst: Endpoint, port: int, protocol: str = "TCP", family: int | None = None
) -> Decision:
    """Is a new connection from `src` to `dst` on port/protocol allowed? (IPv4 unless `family`,
    an address endpoint or the destination pod's first address says otherwise.)"""
    src, dst = resolve(world, src), resolve(world, dst)
    version = family or _family(src, dst)
    src_ip, dst_ip = _address(src, version), _address(dst, version)
    names = (describe(src), describe(dst), port, protocol)

    if isinstance(src, Pod) and isinstance(dst, Pod) and src.key == dst.key:
        e = Step("egress", True, TIER_LOOPBACK)
        return Decision(True, e, Step("ingress", True, TIER_LOOPBACK), *names)

    if isinstance(src, Pod) and not src.host_network:
        target = dst if isinstance(dst, Pod) else None
        egress = _direction(world, "egress", src, dst, dst_ip, port, protocol, target)
    else:
        egress = Step("egress", True, TIER_NOT_POD)

    if not isinstance(dst, Pod) or dst.host_network:
        ingress = Step("ingress", True, TIER_NOT_POD)
    elif (isinstance(src, Node) and src.name == dst.node_name) or (
        isinstance(src, Pod) and src.host_network and src.node_name == dst.node_name
    ):
        # The node itself (kubelet probes) or a host-network pod of the same node: the node's
        # own address, never filtered (compile.py accepts `fib saddr type local`).
        ingress = Step("ingress", True, TIER_NODE)
    else:
        ingress = _direction(world, "ingress", dst, src, src_ip, port, protocol, dst)
    return Decision(egress.allowed and ingress.allowed, egress, ingress, *names)
