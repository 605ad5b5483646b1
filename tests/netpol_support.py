"""Loads the upstream netpol conformance cases (tests/netpol_cases/*.yaml) into pycni's policy model.

Shared by the unit test (every case through evaluate.verdict and the compiled model) and, later,
the real-kernel conformance run: a case is a list of steps; each step's world is the cluster after
that step's actions, and its expected matrix maps (from, to) to allowed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from cni_plugin.policy import model as m

CASES_DIR = Path(__file__).parent / "netpol_cases"
PODS = [f"{n}/{p}" for n in "xyz" for p in "abc"]
_TOKEN = re.compile(r"\{\{(host|large) ([xyz]/[abc])\}\}")


@dataclass
class Step:
    index: int
    world: m.World
    port: int
    protocol: str
    expect: list[dict[str, Any]]
    matrix: dict[tuple[str, str], bool]


@dataclass
class Case:
    file: str
    title: str
    context: str
    raw: dict[str, Any]

    @property
    def id(self) -> str:
        return self.file.removesuffix(".yaml")


def cluster() -> dict[str, Any]:
    return yaml.safe_load((CASES_DIR / "cluster.yaml").read_text())


def cases() -> list[Case]:
    out = []
    for path in sorted(CASES_DIR.glob("*.yaml")):
        if path.name == "cluster.yaml":
            continue
        raw = yaml.safe_load(path.read_text())
        out.append(Case(path.name, raw["title"], raw["context"], raw))
    return out


def base_world(case: Case, topo: dict[str, Any] | None = None, family: int = 4) -> m.World:
    """The cluster for a case; family 6 gives every pod and node its IPv6 address instead."""
    topo = topo or cluster()
    ip_key, node_key = ("ip", "address") if family == 4 else ("ip6", "address6")
    namespaces = tuple(
        m.parse_namespace({"metadata": {"name": name, "labels": labels}}) for name, labels in topo["namespaces"].items()
    )
    ports = tuple(
        m.ContainerPort(f"serve-{port}-{proto.lower()}", port, proto)
        for port in case.raw["ports"]
        for proto in case.raw["protocols"]
    )
    pods = []
    for key, place in topo["pods"].items():
        ns, name = key.split("/")
        pods.append(m.Pod(ns, name, (("pod", name),), (ipaddress.ip_address(place[ip_key]),), ports, place["node"]))
    nodes = tuple(
        m.Node(name, (("kubernetes.io/hostname", name),), (ipaddress.ip_address(n[node_key]),))
        for name, n in topo["nodes"].items()
    )
    return m.World(pods=tuple(pods), namespaces=namespaces, nodes=nodes)


def substitute(obj: Any, world: m.World) -> Any:
    """{{host P}} -> P's address as a host CIDR; {{large P}} -> the /4 network holding it."""

    def one(match: re.Match[str]) -> str:
        ip = world.pod(match.group(2)).ips[0]
        if match.group(1) == "host":
            return f"{ip}/{ip.max_prefixlen}"
        return str(ipaddress.ip_network(f"{ip}/4", strict=False))

    if isinstance(obj, str):
        return _TOKEN.sub(one, obj)
    if isinstance(obj, list):
        return [substitute(v, world) for v in obj]
    if isinstance(obj, dict):
        return {k: substitute(v, world) for k, v in obj.items()}
    return obj


def _merge_labels(labels: tuple[tuple[str, str], ...], add: dict[str, str]) -> tuple[tuple[str, str], ...]:
    merged = dict(labels)
    merged.update(add)
    return tuple(sorted(merged.items()))


def apply_action(world: m.World, action: dict[str, Any]) -> m.World:
    if "create" in action or "update" in action:
        pol = m.parse_network_policy(substitute(action.get("create") or action["update"], world))
        rest = tuple(p for p in world.policies if p.key != pol.key)
        if "create" in action and len(rest) != len(world.policies):
            raise AssertionError(f"create of an existing policy {pol.key}")
        return replace(world, policies=rest + (pol,))
    if action.get("delete_all_policies"):
        return replace(world, policies=())
    if "label_namespace" in action:
        spec = action["label_namespace"]
        nss = tuple(
            replace(n, labels=_merge_labels(n.labels, spec["add"])) if n.name == spec["name"] else n
            for n in world.namespaces
        )
        return replace(world, namespaces=nss)
    if "label_pod" in action:
        spec = action["label_pod"]
        pods = tuple(
            replace(p, labels=_merge_labels(p.labels, spec["add"])) if p.key == spec["pod"] else p for p in world.pods
        )
        return replace(world, pods=pods)
    raise AssertionError(f"unknown action {action}")


def parse_matrix(text: str) -> dict[tuple[str, str], bool]:
    lines = [ln.split() for ln in text.strip().splitlines()]
    header = lines[0][1:]
    assert header == PODS, header
    out = {}
    for row in lines[1:]:
        src, cells = row[0], row[1:]
        assert len(cells) == len(PODS), row
        for dst, cell in zip(PODS, cells, strict=True):
            assert cell in (".", "X"), cell
            out[(src, dst)] = cell == "."
    return out


def expected_from_ops(ops: list[dict[str, Any]]) -> dict[tuple[str, str], bool]:
    """Upstream's Reachability: default all allowed, then each expectation in order."""
    table = {(f, t): True for f in PODS for t in PODS}

    def matches(peer: dict[str, str], pod: str) -> bool:
        ns, name = pod.split("/")
        return peer.get("namespace", ns) == ns and peer.get("pod", name) == name

    for op in ops:
        allowed = bool(op["allowed"])
        for f, t in table:
            if "peer" in op:
                hit = matches(op["peer"]["from"], f) and matches(op["peer"]["to"], t)
            elif "pair" in op:
                hit = [f, t] == op["pair"]
            elif "all_ingress" in op:
                hit = t == op["all_ingress"]
            else:
                hit = f == op["all_egress"]
            if hit:
                table[(f, t)] = allowed
    return table


def steps(case: Case, family: int = 4) -> Iterator[Step]:
    world = base_world(case, family=family)
    for i, raw in enumerate(case.raw["steps"]):
        for action in raw.get("actions", []):
            world = apply_action(world, action)
        probe = raw["probe"]
        yield Step(i, world, int(probe["port"]), str(probe["protocol"]), raw["expect"], parse_matrix(raw["matrix"]))
