"""Frozen, validated values for network policy, parsed from the Kubernetes JSON/YAML objects.

Field names and defaults follow the Kubernetes API (networking.k8s.io/v1 NetworkPolicy,
policy.networking.k8s.io/v1alpha1 AdminNetworkPolicy / BaselineAdminNetworkPolicy, core/v1 Pod,
Namespace, Node). Validation mirrors the API server's where it matters to enforcement, and every
refusal is a PolicyError naming the field as a path (`spec.ingress[0].ports[1].endPort`), so
`pycni policy apply` can refuse a bad object before any node sees it.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

PROTOCOLS = ("TCP", "UDP", "SCTP")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
ACTIONS_ANP = ("Allow", "Deny", "Pass")
ACTIONS_BANP = ("Allow", "Deny")
NP_API = "networking.k8s.io/v1"
ANP_API = "policy.networking.k8s.io/v1alpha1"

# IANA_SVC_NAME, as the API server validates a named port: 1-15 lowercase alphanumerics or '-',
# at least one letter, no leading, trailing or doubled '-'.
_SVC_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,13}[a-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class PolicyError(ValueError):
    """An object refused by validation; `field` is the path of the bad field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# ----------------------------------------------------------------------------------------------
# label selectors


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """metav1.LabelSelector: the terms are AND'ed; an empty selector matches everything."""

    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.match_labels) and all(
            r.matches(labels) for r in self.match_expressions
        )

    @property
    def empty(self) -> bool:
        return not self.match_labels and not self.match_expressions

    def __str__(self) -> str:
        terms = [f"{k}={v}" for k, v in self.match_labels]
        for r in self.match_expressions:
            if r.operator in ("Exists", "DoesNotExist"):
                terms.append(("" if r.operator == "Exists" else "!") + r.key)
            else:
                terms.append(f"{r.key} {'in' if r.operator == 'In' else 'notin'} ({','.join(r.values)})")
        return ",".join(terms) if terms else "{}"


ALL = LabelSelector()


# ----------------------------------------------------------------------------------------------
# NetworkPolicy


@dataclass(frozen=True)
class IPBlock:
    cidr: IPNetwork
    excepts: tuple[IPNetwork, ...] = ()

    def contains(self, ip: IPAddress) -> bool:
        if ip.version != self.cidr.version or ip not in self.cidr:
            return False
        return not any(ip in e for e in self.excepts)

    def ranges(self) -> list[IPNetwork]:
        """cidr minus the excepts, as disjoint networks (what an nft interval set holds)."""
        parts: list[IPNetwork] = [self.cidr]
        for exc in self.excepts:
            nxt: list[IPNetwork] = []
            for p in parts:
                if exc.version == p.version and p.subnet_of(exc):  # type: ignore[arg-type]
                    continue
                if exc.version == p.version and exc.subnet_of(p):  # type: ignore[arg-type]
                    nxt.extend(p.address_exclude(exc))  # type: ignore[arg-type]
                else:
                    nxt.append(p)
            parts = nxt
        return sorted(parts, key=lambda n: (n.version, int(n.network_address), n.prefixlen))

    def __str__(self) -> str:
        text = str(self.cidr)
        return text + (" except " + ",".join(map(str, self.excepts)) if self.excepts else "")


@dataclass(frozen=True)
class Port:
    """NetworkPolicyPort. port None = every port of the protocol; a str is a named port,
    resolved against the destination pod's container ports; protocol "" (ANP namedPort only)
    = the named container port's own protocol."""

    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    def __str__(self) -> str:
        if self.port is None:
            return f"any/{self.protocol}"
        if not self.protocol:
            return f"{self.port}"
        if self.end_port is not None:
            return f"{self.port}-{self.end_port}/{self.protocol}"
        return f"{self.port}/{self.protocol}"


@dataclass(frozen=True)
class Peer:
    """NetworkPolicyPeer: ip_block, or pod_selector and/or namespace_selector.

    pod_selector alone selects pods of the policy's namespace; namespace_selector alone selects
    every pod of the matching namespaces; both select the matching pods of matching namespaces."""

    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None

    def __str__(self) -> str:
        if self.ip_block is not None:
            return f"ipBlock {self.ip_block}"
        parts = []
        if self.namespace_selector is not None:
            parts.append(f"namespaces {self.namespace_selector}")
        if self.pod_selector is not None:
            parts.append(f"pods {self.pod_selector}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Rule:
    """An ingress or egress rule: no peers = every source/destination, no ports = every port."""

    peers: tuple[Peer, ...] = ()
    ports: tuple[Port, ...] = ()


@dataclass(frozen=True)
class NetworkPolicy:
    namespace: str
    name: str
    pod_selector: LabelSelector
    policy_types: tuple[str, ...]
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


# ----------------------------------------------------------------------------------------------
# AdminNetworkPolicy / BaselineAdminNetworkPolicy (policy.networking.k8s.io/v1alpha1)


@dataclass(frozen=True)
class AdminSelector:
    """ANP subject or peer: `namespaces` (every pod of matching namespaces) or `pods`
    (namespaceSelector + podSelector); for egress peers also `networks` (CIDRs) or `nodes`."""

    namespaces: LabelSelector | None = None
    pod_namespaces: LabelSelector | None = None
    pods: LabelSelector | None = None
    networks: tuple[IPNetwork, ...] = ()
    nodes: LabelSelector | None = None

    def __str__(self) -> str:
        if self.namespaces is not None:
            return f"namespaces {self.namespaces}"
        if self.pods is not None:
            return f"pods {self.pods} in namespaces {self.pod_namespaces}"
        if self.nodes is not None:
            return f"nodes {self.nodes}"
        return "networks " + ",".join(map(str, self.networks))


@dataclass(frozen=True)
class AdminRule:
    name: str
    action: str
    peers: tuple[AdminSelector, ...]
    ports: tuple[Port, ...] = ()  # empty = every port; ranges via end_port, names via str port


@dataclass(frozen=True)
class AdminPolicy:
    """An AdminNetworkPolicy (priority set) or the BaselineAdminNetworkPolicy (priority None)."""

    name: str
    priority: int | None
    subject: AdminSelector
    ingress: tuple[AdminRule, ...] = ()
    egress: tuple[AdminRule, ...] = ()

    @property
    def kind(self) -> str:
        return "AdminNetworkPolicy" if self.priority is not None else "BaselineAdminNetworkPolicy"

    @property
    def key(self) -> str:
        return self.name


# ----------------------------------------------------------------------------------------------
# cluster objects


@dataclass(frozen=True)
class ContainerPort:
    name: str | None
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    ips: tuple[IPAddress, ...] = ()
    ports: tuple[ContainerPort, ...] = ()
    node_name: str | None = None
    host_network: bool = False

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def ip(self, version: int) -> IPAddress | None:
        return next((a for a in self.ips if a.version == version), None)

    def named_port(self, name: str, protocol: str) -> list[int]:
        return [p.port for p in self.ports if p.name == name and p.protocol == protocol]


@dataclass(frozen=True)
class Node:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    addresses: tuple[IPAddress, ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@dataclass(frozen=True)
class World:
    """Everything the policy decision depends on."""

    pods: tuple[Pod, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    policies: tuple[NetworkPolicy, ...] = ()
    admin_policies: tuple[AdminPolicy, ...] = ()
    baseline: AdminPolicy | None = None
    nodes: tuple[Node, ...] = ()

    def __post_init__(self) -> None:
        # An index, not a field: dataclasses.replace() rebuilds it from the new namespaces.
        object.__setattr__(self, "_ns", {n.name: n for n in self.namespaces})

    def namespace_labels(self, name: str) -> dict[str, str]:
        ns: Namespace | None = self._ns.get(name)  # type: ignore[attr-defined]
        # A namespace the world does not list still carries its automatic name label.
        return ns.label_map if ns is not None else {NAMESPACE_NAME_LABEL: name}

    def pod(self, key: str) -> Pod:
        for p in self.pods:
            if p.key == key:
                return p
        raise KeyError(key)

    def node(self, name: str) -> Node | None:
        return next((n for n in self.nodes if n.name == name), None)


def build_world(objects: Iterable[Any]) -> World:
    """A World from parsed objects of any kind (a BaselineAdminNetworkPolicy at most once)."""
    pods, nss, nps, anps, nodes = [], [], [], [], []
    banp = None
    for o in objects:
        if isinstance(o, Pod):
            pods.append(o)
        elif isinstance(o, Namespace):
            nss.append(o)
        elif isinstance(o, NetworkPolicy):
            nps.append(o)
        elif isinstance(o, AdminPolicy):
            if o.priority is None:
                banp = o
            else:
                anps.append(o)
        elif isinstance(o, Node):
            nodes.append(o)
        else:
            raise TypeError(f"not a policy object: {o!r}")
    return World(tuple(pods), tuple(nss), tuple(nps), tuple(anps), banp, tuple(nodes))


# ----------------------------------------------------------------------------------------------
# parsing


def _obj(v: Any, path: str) -> dict[str, Any]:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise PolicyError(path, f"must be an object, not {type(v).__name__}")
    return v


def _list(v: Any, path: str) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list):
        raise PolicyError(path, f"must be a list, not {type(v).__name__}")
    return v


def _str(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v:
        raise PolicyError(path, "must be a non-empty string")
    return v


def _int(v: Any, path: str, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise PolicyError(path, f"must be an integer, not {v!r}")
    if not lo <= v <= hi:
        raise PolicyError(path, f"must be between {lo} and {hi}, not {v}")
    return v


def _labels(v: Any, path: str) -> tuple[tuple[str, str], ...]:
    out = []
    for k, val in _obj(v, path).items():
        if not isinstance(k, str) or not isinstance(val, str):
            raise PolicyError(f"{path}.{k}", "label keys and values must be strings")
        out.append((k, val))
    return tuple(sorted(out))


def _label_key(key: Any, path: str) -> str:
    key = _str(key, path)
    prefix, _, name = key.rpartition("/")
    if not _LABEL_NAME.match(name) or (prefix and len(prefix) > 253):
        raise PolicyError(path, f"invalid label key {key!r}")
    return key


def parse_selector(v: Any, path: str) -> LabelSelector:
    d = _obj(v, path)
    unknown = set(d) - {"matchLabels", "matchExpressions"}
    if unknown:
        raise PolicyError(f"{path}.{sorted(unknown)[0]}", "unknown field")
    labels = _labels(d.get("matchLabels"), f"{path}.matchLabels")
    for k, _ in labels:
        _label_key(k, f"{path}.matchLabels")
    reqs = []
    for i, e in enumerate(_list(d.get("matchExpressions"), f"{path}.matchExpressions")):
        p = f"{path}.matchExpressions[{i}]"
        e = _obj(e, p)
        key = _label_key(e.get("key"), f"{p}.key")
        op = e.get("operator")
        if op not in OPERATORS:
            raise PolicyError(f"{p}.operator", f"must be one of {', '.join(OPERATORS)}, not {op!r}")
        values = _list(e.get("values"), f"{p}.values")
        if not all(isinstance(x, str) for x in values):
            raise PolicyError(f"{p}.values", "must be strings")
        if op in ("In", "NotIn") and not values:
            raise PolicyError(f"{p}.values", f"must be non-empty when operator is {op}")
        if op in ("Exists", "DoesNotExist") and values:
            raise PolicyError(f"{p}.values", f"must be empty when operator is {op}")
        reqs.append(Requirement(key, op, tuple(values)))
    return LabelSelector(labels, tuple(reqs))


def parse_cidr(v: Any, path: str) -> IPNetwork:
    if not isinstance(v, str):
        raise PolicyError(path, f"must be a CIDR string, not {v!r}")
    try:
        # The API server accepts host bits set (10.1.2.3/8) and means the network: so do we.
        return ipaddress.ip_network(v, strict=False)
    except ValueError as exc:
        raise PolicyError(path, f"invalid CIDR {v!r}") from exc


def _ip_block(v: Any, path: str) -> IPBlock:
    d = _obj(v, path)
    if "cidr" not in d:
        raise PolicyError(f"{path}.cidr", "required")
    cidr = parse_cidr(d["cidr"], f"{path}.cidr")
    excepts = []
    for i, e in enumerate(_list(d.get("except"), f"{path}.except")):
        net = parse_cidr(e, f"{path}.except[{i}]")
        # As the API server: each except must be a strict subset of cidr (same family, longer
        # prefix, inside it).
        if net.version != cidr.version or net.prefixlen <= cidr.prefixlen or not net.subnet_of(cidr):  # type: ignore[arg-type]
            raise PolicyError(f"{path}.except[{i}]", f"{net} is not a strict subset of cidr {cidr}")
        excepts.append(net)
    return IPBlock(cidr, tuple(excepts))


def _protocol(v: Any, path: str) -> str:
    if v is None:
        return "TCP"
    if v not in PROTOCOLS:
        raise PolicyError(path, f"unknown protocol {v!r}: must be one of {', '.join(PROTOCOLS)}")
    return str(v)


def _port_value(v: Any, path: str) -> int | str:
    if isinstance(v, str):
        if v.isdigit():  # "80" is how YAML users often write it; the API's IntOrString is strict,
            raise PolicyError(path, f"a port number must be an integer, not the string {v!r}")
        if not _SVC_NAME.match(v) or "--" in v or not re.search("[a-z]", v):
            raise PolicyError(path, f"invalid named port {v!r} (IANA service name: 1-15 of a-z, 0-9, '-')")
        return v
    return _int(v, path, 1, 65535)


def _np_port(v: Any, path: str) -> Port:
    d = _obj(v, path)
    proto = _protocol(d.get("protocol"), f"{path}.protocol")
    port: int | str | None = None
    if d.get("port") is not None:
        port = _port_value(d["port"], f"{path}.port")
    end = None
    if d.get("endPort") is not None:
        end = _int(d["endPort"], f"{path}.endPort", 1, 65535)
        if port is None:
            raise PolicyError(f"{path}.endPort", "may not be set without port")
        if isinstance(port, str):
            raise PolicyError(f"{path}.endPort", "may not be set when port is a named port")
        if end < port:
            raise PolicyError(f"{path}.endPort", f"must be greater than or equal to port ({port}), not {end}")
    return Port(proto, port, end)


def _np_peer(v: Any, path: str) -> Peer:
    d = _obj(v, path)
    pod = parse_selector(d["podSelector"], f"{path}.podSelector") if d.get("podSelector") is not None else None
    ns = (
        parse_selector(d["namespaceSelector"], f"{path}.namespaceSelector")
        if d.get("namespaceSelector") is not None
        else None
    )
    block = _ip_block(d["ipBlock"], f"{path}.ipBlock") if d.get("ipBlock") is not None else None
    if block is not None and (pod is not None or ns is not None):
        raise PolicyError(f"{path}.ipBlock", "may not be combined with podSelector or namespaceSelector")
    if block is None and pod is None and ns is None:
        raise PolicyError(path, "must set ipBlock, podSelector or namespaceSelector")
    return Peer(pod, ns, block)


def _np_rules(v: Any, path: str, peer_key: str) -> tuple[Rule, ...]:
    rules = []
    for i, r in enumerate(_list(v, path)):
        p = f"{path}[{i}]"
        r = _obj(r, p)
        raw_peers = _list(r.get(peer_key), f"{p}.{peer_key}")
        peers = tuple(_np_peer(x, f"{p}.{peer_key}[{j}]") for j, x in enumerate(raw_peers))
        ports = tuple(_np_port(x, f"{p}.ports[{j}]") for j, x in enumerate(_list(r.get("ports"), f"{p}.ports")))
        rules.append(Rule(peers, ports))
    return tuple(rules)


def _meta(obj: dict[str, Any], namespaced: bool, default_ns: str | None = None) -> tuple[str, str]:
    meta = _obj(obj.get("metadata"), "metadata")
    name = _str(meta.get("name"), "metadata.name")
    if len(name) > 253:
        raise PolicyError("metadata.name", "longer than 253 characters")
    if not namespaced:
        return "", name
    ns = meta.get("namespace", default_ns or "default")
    ns = _str(ns, "metadata.namespace")
    if not _DNS_LABEL.match(ns):
        raise PolicyError("metadata.namespace", f"invalid namespace name {ns!r}")
    return ns, name


def parse_network_policy(obj: dict[str, Any], default_namespace: str | None = None) -> NetworkPolicy:
    ns, name = _meta(obj, True, default_namespace)
    spec = _obj(obj.get("spec"), "spec")
    if "podSelector" not in spec:
        # Required by the API (an empty {} selects every pod of the namespace).
        raise PolicyError("spec.podSelector", "required (use {} to select every pod in the namespace)")
    selector = parse_selector(spec.get("podSelector"), "spec.podSelector")
    ingress = _np_rules(spec.get("ingress"), "spec.ingress", "from")
    egress = _np_rules(spec.get("egress"), "spec.egress", "to")
    types_raw = _list(spec.get("policyTypes"), "spec.policyTypes")
    types: list[str] = []
    for i, t in enumerate(types_raw):
        if t not in ("Ingress", "Egress"):
            raise PolicyError(f"spec.policyTypes[{i}]", f"must be Ingress or Egress, not {t!r}")
        if t in types:
            raise PolicyError(f"spec.policyTypes[{i}]", f"duplicate {t}")
        types.append(t)
    if not types:
        # The API server's default: Ingress always; Egress when the policy has egress rules.
        types = ["Ingress"] + (["Egress"] if egress else [])
    return NetworkPolicy(ns, name, selector, tuple(sorted(types, key=("Ingress", "Egress").index)), ingress, egress)


def _admin_selector(v: Any, path: str, egress_peer: bool) -> AdminSelector:
    d = _obj(v, path)
    allowed = ["namespaces", "pods"] + (["networks", "nodes"] if egress_peer else [])
    present = [k for k in d if d[k] is not None]
    bad = [k for k in present if k not in allowed]
    if bad:
        raise PolicyError(f"{path}.{bad[0]}", f"unknown field (one of {', '.join(allowed)})")
    if len(present) != 1:
        raise PolicyError(path, f"exactly one of {', '.join(allowed)} must be set")
    kind = present[0]
    if kind == "namespaces":
        return AdminSelector(namespaces=parse_selector(d[kind], f"{path}.namespaces"))
    if kind == "pods":
        pd = _obj(d[kind], f"{path}.pods")
        if "podSelector" not in pd:
            raise PolicyError(f"{path}.pods.podSelector", "required")
        return AdminSelector(
            pod_namespaces=parse_selector(pd.get("namespaceSelector"), f"{path}.pods.namespaceSelector"),
            pods=parse_selector(pd["podSelector"], f"{path}.pods.podSelector"),
        )
    if kind == "nodes":
        return AdminSelector(nodes=parse_selector(d[kind], f"{path}.nodes"))
    nets = tuple(parse_cidr(c, f"{path}.networks[{i}]") for i, c in enumerate(_list(d[kind], f"{path}.networks")))
    if not nets:
        raise PolicyError(f"{path}.networks", "must list at least one CIDR")
    return AdminSelector(networks=nets)


def _admin_port(v: Any, path: str) -> Port:
    d = _obj(v, path)
    present = [k for k in ("portNumber", "portRange", "namedPort") if d.get(k) is not None]
    if len(present) != 1:
        raise PolicyError(path, "exactly one of portNumber, portRange, namedPort must be set")
    kind = present[0]
    if kind == "namedPort":
        name = _port_value(d[kind], f"{path}.namedPort")
        if not isinstance(name, str):
            raise PolicyError(f"{path}.namedPort", "must be a port name")
        # ANP's namedPort carries no protocol: the destination container port's protocol decides
        # (protocol "" = any).
        return Port("", name)
    sub = _obj(d[kind], f"{path}.{kind}")
    proto = _protocol(sub.get("protocol"), f"{path}.{kind}.protocol")
    if kind == "portNumber":
        return Port(proto, _int(sub.get("port"), f"{path}.portNumber.port", 1, 65535))
    start = _int(sub.get("start"), f"{path}.portRange.start", 1, 65535)
    end = _int(sub.get("end"), f"{path}.portRange.end", 1, 65535)
    if end < start:
        raise PolicyError(f"{path}.portRange.end", f"must be greater than or equal to start ({start}), not {end}")
    return Port(proto, start, end)


def _admin_rules(v: Any, path: str, actions: tuple[str, ...], peer_key: str) -> tuple[AdminRule, ...]:
    rules = []
    raw = _list(v, path)
    if len(raw) > 100:
        raise PolicyError(path, "at most 100 rules")
    for i, r in enumerate(raw):
        p = f"{path}[{i}]"
        r = _obj(r, p)
        name = r.get("name", "")
        if not isinstance(name, str):
            raise PolicyError(f"{p}.name", "must be a string")
        action = r.get("action")
        if action not in actions:
            raise PolicyError(f"{p}.action", f"must be one of {', '.join(actions)}, not {action!r}")
        peers_raw = _list(r.get(peer_key), f"{p}.{peer_key}")
        if not peers_raw:
            raise PolicyError(f"{p}.{peer_key}", "must list at least one peer")
        peers = tuple(_admin_selector(x, f"{p}.{peer_key}[{j}]", peer_key == "to") for j, x in enumerate(peers_raw))
        ports = tuple(_admin_port(x, f"{p}.ports[{j}]") for j, x in enumerate(_list(r.get("ports"), f"{p}.ports")))
        rules.append(AdminRule(name, str(action), peers, ports))
    return tuple(rules)


def parse_admin_policy(obj: dict[str, Any]) -> AdminPolicy:
    baseline = obj.get("kind") == "BaselineAdminNetworkPolicy"
    _, name = _meta(obj, False)
    if baseline and name != "default":
        raise PolicyError("metadata.name", "a BaselineAdminNetworkPolicy must be named 'default'")
    spec = _obj(obj.get("spec"), "spec")
    priority = None
    if not baseline:
        if "priority" not in spec:
            raise PolicyError("spec.priority", "required")
        priority = _int(spec["priority"], "spec.priority", 0, 1000)
    if "subject" not in spec:
        raise PolicyError("spec.subject", "required")
    subject = _admin_selector(spec["subject"], "spec.subject", False)
    actions = ACTIONS_BANP if baseline else ACTIONS_ANP
    ingress = _admin_rules(spec.get("ingress"), "spec.ingress", actions, "from")
    egress = _admin_rules(spec.get("egress"), "spec.egress", actions, "to")
    return AdminPolicy(name, priority, subject, ingress, egress)


def _parse_ip(v: Any, path: str) -> IPAddress:
    try:
        return ipaddress.ip_address(v)
    except ValueError as exc:
        raise PolicyError(path, f"invalid IP address {v!r}") from exc


def parse_pod(obj: dict[str, Any], default_namespace: str | None = None) -> Pod:
    ns, name = _meta(obj, True, default_namespace)
    meta = _obj(obj.get("metadata"), "metadata")
    labels = _labels(meta.get("labels"), "metadata.labels")
    spec = _obj(obj.get("spec"), "spec")
    status = _obj(obj.get("status"), "status")
    ports = []
    for i, c in enumerate(_list(spec.get("containers"), "spec.containers")):
        c = _obj(c, f"spec.containers[{i}]")
        for j, cp in enumerate(_list(c.get("ports"), f"spec.containers[{i}].ports")):
            p = f"spec.containers[{i}].ports[{j}]"
            cp = _obj(cp, p)
            number = _int(cp.get("containerPort"), f"{p}.containerPort", 1, 65535)
            pname = cp.get("name")
            if pname is not None:
                checked = _port_value(pname, f"{p}.name")
                if not isinstance(checked, str):
                    raise PolicyError(f"{p}.name", "must be a port name")
            ports.append(ContainerPort(pname, number, _protocol(cp.get("protocol"), f"{p}.protocol")))
    ips: list[IPAddress] = []
    for i, entry in enumerate(_list(status.get("podIPs"), "status.podIPs")):
        ips.append(_parse_ip(_obj(entry, f"status.podIPs[{i}]").get("ip"), f"status.podIPs[{i}].ip"))
    if not ips and status.get("podIP"):
        ips.append(_parse_ip(status["podIP"], "status.podIP"))
    node = spec.get("nodeName")
    return Pod(
        ns,
        name,
        labels,
        tuple(ips),
        tuple(ports),
        node if isinstance(node, str) else None,
        bool(spec.get("hostNetwork", False)),
    )


def parse_namespace(obj: dict[str, Any]) -> Namespace:
    _, name = _meta(obj, False)
    labels = dict(_labels(_obj(obj.get("metadata"), "metadata").get("labels"), "metadata.labels"))
    # The API server sets this label on every namespace (immutable, = the name) since 1.21.
    labels[NAMESPACE_NAME_LABEL] = name
    return Namespace(name, tuple(sorted(labels.items())))


def parse_node(obj: dict[str, Any]) -> Node:
    _, name = _meta(obj, False)
    labels = _labels(_obj(obj.get("metadata"), "metadata").get("labels"), "metadata.labels")
    addrs = []
    for i, a in enumerate(_list(_obj(obj.get("status"), "status").get("addresses"), "status.addresses")):
        a = _obj(a, f"status.addresses[{i}]")
        if a.get("type") in ("InternalIP", "ExternalIP"):
            addrs.append(_parse_ip(a.get("address"), f"status.addresses[{i}].address"))
    return Node(name, labels, tuple(addrs))


PolicyObject = NetworkPolicy | AdminPolicy | Pod | Namespace | Node


def parse_object(obj: Any, default_namespace: str | None = None) -> PolicyObject:
    """One Kubernetes object (a dict from JSON/YAML) -> its value; PolicyError names the field."""
    obj = _obj(obj, "")
    kind, api = obj.get("kind"), obj.get("apiVersion")
    if kind == "NetworkPolicy":
        if api != NP_API:
            raise PolicyError("apiVersion", f"NetworkPolicy must be {NP_API}, not {api!r}")
        return parse_network_policy(obj, default_namespace)
    if kind in ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy"):
        if api != ANP_API:
            raise PolicyError("apiVersion", f"{kind} must be {ANP_API}, not {api!r}")
        return parse_admin_policy(obj)
    if kind == "Pod":
        return parse_pod(obj, default_namespace)
    if kind == "Namespace":
        return parse_namespace(obj)
    if kind == "Node":
        return parse_node(obj)
    raise PolicyError("kind", f"unsupported kind {kind!r}")


def documents(text: str) -> list[dict[str, Any]]:
    """The objects in a JSON or YAML text: several documents, and `kind: List` items, flattened."""
    import yaml  # noqa: PLC0415  (YAML is needed only where files are read)

    out: list[dict[str, Any]] = []
    try:
        docs = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise PolicyError("", f"not valid YAML/JSON: {exc}") from exc
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict):
            raise PolicyError("", "each document must be an object")
        if doc.get("kind") == "List" or (str(doc.get("kind", "")).endswith("List") and "items" in doc):
            out.extend(_obj(i, "items[]") for i in _list(doc.get("items"), "items"))
        else:
            out.append(doc)
    return out


def parse_text(text: str, default_namespace: str | None = None) -> list[PolicyObject]:
    """Parse every object of a file's text; the error names the object and the field."""
    out = []
    for i, doc in enumerate(documents(text)):
        try:
            out.append(parse_object(doc, default_namespace))
        except PolicyError as exc:
            meta = doc.get("metadata")
            name = meta.get("name", f"#{i}") if isinstance(meta, dict) else f"#{i}"
            where = f"{doc.get('kind', 'object')} {name}"
            raise PolicyError(f"{where}: {exc.field}" if exc.field else where, exc.reason) from exc
    return out


def load_file(path: str, default_namespace: str | None = None) -> list[PolicyObject]:
    """The one I/O helper: read a JSON/YAML file of Kubernetes objects and parse them."""
    with open(path, encoding="utf-8") as f:
        return parse_text(f.read(), default_namespace)
