"""The compiled policy model on the real kernel: a fake node (a namespace with a bridge, like
pycni-bridge's), four pods on it, and an "other node" reached by routing; the nft script of
compile.render_nft loaded into the fake node; TCP probes between every pair must match what
compile.simulate (and so `pycni policy explain`) says, before and after a pod joins a selector
(a set-element-only delta) and after the policies go.

This is the enforcement proof for the pure engine; the agent wiring comes later.
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from cni_plugin.policy import compile as pc
from cni_plugin.policy import model as m
from tests.conftest import Netns, free_subnet

pytestmark = pytest.mark.integration

SERVER = (
    "import socket,sys\n"
    "s=socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)\n"
    "s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind((sys.argv[1],int(sys.argv[2])));s.listen(64)\n"
    "print('ready',flush=True)\n"
    "while True:\n"
    "    c,_=s.accept();c.close()\n"
)
CLIENT = (
    "import socket,sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1).close()\n"
    "except OSError:\n"
    "    sys.exit(1)\n"
)

POLICIES = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}], ports: [{port: serve-80-tcp}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: y-egress-to-x-only, namespace: y}
spec:
  podSelector: {}
  policyTypes: [Egress]
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: x}}}]}]
"""


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, text=True)


@pytest.fixture(params=[4, 6], ids=["ipv4", "ipv6"])
def cluster(netns_factory, request) -> Iterator[dict]:  # type: ignore[no-untyped-def]
    family = request.param
    node: Netns = netns_factory("pycni-np-node")
    other: Netns = netns_factory("pycni-np-other")
    pods_net = free_subnet(family, 24 if family == 4 else 64)
    link_net = free_subnet(family, 30 if family == 4 else 126)
    hosts = [pods_net[i] for i in range(1, 20)]
    gw, link = hosts[0], [link_net[1], link_net[2]]
    nodad = [] if family == 4 else ["nodad"]
    n = node.name
    _sh("ip", "-n", n, "link", "add", "br-np", "type", "bridge")
    _sh("ip", "-n", n, "addr", "add", f"{gw}/{pods_net.prefixlen}", "dev", "br-np", *nodad)
    _sh("ip", "-n", n, "link", "set", "br-np", "up")
    _sh("ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
    # Pods of one bridge reach the inet hooks only through br_netfilter (see compile.py).
    _sh(
        "ip",
        "netns",
        "exec",
        n,
        "sysctl",
        "-qw",
        "net.bridge.bridge-nf-call-iptables=1",
        "net.bridge.bridge-nf-call-ip6tables=1",
    )
    pods: dict[str, tuple[Netns, ipaddress.IPv4Address | ipaddress.IPv6Address, str]] = {}
    for i, key in enumerate(["x/a", "x/b", "x/c", "y/a"]):
        pns: Netns = netns_factory("pycni-np-pod")
        ip = hosts[10 + i]
        host_if = f"vnp{i}{pns.name[-4:]}"
        _sh("ip", "-n", n, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", pns.name)
        _sh("ip", "-n", n, "link", "set", host_if, "master", "br-np", "up")
        _sh("ip", "-n", pns.name, "addr", "add", f"{ip}/{pods_net.prefixlen}", "dev", "eth0", *nodad)
        _sh("ip", "-n", pns.name, "link", "set", "eth0", "up")
        _sh("ip", "-n", pns.name, "route", "add", "default", "via", str(gw))
        pods[key] = (pns, ip, host_if)
    # the "other node": routed through the fake node
    _sh("ip", "-n", n, "link", "add", "vnp-up", "type", "veth", "peer", "name", "eth0", "netns", other.name)
    _sh("ip", "-n", n, "addr", "add", f"{link[0]}/{link_net.prefixlen}", "dev", "vnp-up", *nodad)
    _sh("ip", "-n", n, "link", "set", "vnp-up", "up")
    _sh("ip", "-n", other.name, "addr", "add", f"{link[1]}/{link_net.prefixlen}", "dev", "eth0", *nodad)
    _sh("ip", "-n", other.name, "link", "set", "eth0", "up")
    _sh("ip", "-n", other.name, "route", "add", str(pods_net), "via", str(link[0]))
    servers = []
    try:
        for ns, ip in [(p[0], p[1]) for p in pods.values()] + [(other, link[1])]:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns.name, sys.executable, "-c", SERVER, str(ip), "80"],
                stdout=subprocess.PIPE,
                text=True,
            )
            servers.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield {"node": node, "other": other, "other_ip": link[1], "gw": gw, "pods": pods}
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()


def _world(c: dict) -> m.World:
    docs = [
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: y, labels: {ns: y}}",
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1}\n"
        f"status: {{addresses: [{{type: InternalIP, address: {c['gw']}}}]}}",
    ]
    for key, (_, ip, _) in c["pods"].items():
        ns, name = key.split("/")
        docs.append(
            f"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: {ns}, labels: {{pod: {name}}}}}\n"
            "spec: {nodeName: n1, containers: [{name: c, ports: [{name: serve-80-tcp, containerPort: 80}]}]}\n"
            f"status: {{podIP: {ip}}}"
        )
    return m.build_world(m.parse_text("\n---\n".join(docs)))


def _nft(node: Netns, script: str) -> None:
    res = subprocess.run(
        ["ip", "netns", "exec", node.name, "nft", "-f", "-"], input=script, text=True, capture_output=True
    )
    assert res.returncode == 0, res.stderr + script


def _probe(ns: Netns, ip: object) -> bool:
    res = subprocess.run(
        ["ip", "netns", "exec", ns.name, sys.executable, "-c", CLIENT, str(ip), "80"], capture_output=True, timeout=20
    )
    return res.returncode == 0


def _matrix(c: dict) -> dict[tuple[str, str], bool]:
    ends = {k: (v[0], v[1]) for k, v in c["pods"].items()}
    ends["other"] = (c["other"], c["other_ip"])
    pairs = [(s, d) for s in ends for d in ends if s != d]
    with ThreadPoolExecutor(len(pairs)) as ex:
        results = list(ex.map(lambda p: _probe(ends[p[0]][0], ends[p[1]][1]), pairs))
    node = c["node"]
    with ThreadPoolExecutor(len(c["pods"])) as ex:
        from_node = list(ex.map(lambda k: _probe(node, c["pods"][k][1]), c["pods"]))
    out = dict(zip(pairs, results, strict=True))
    out.update({("node", k): r for k, r in zip(c["pods"], from_node, strict=True)})
    return out


def _expected(c: dict, world: m.World) -> dict[tuple[str, str], bool]:
    model = pc.compile_node(world, "n1")
    ips = {k: v[1] for k, v in c["pods"].items()} | {"other": c["other_ip"], "node": c["gw"]}
    out = {}
    for s in ips:
        for d in ips:
            if s != d and d != "node" and not (s == "node" and d == "other"):
                out[(s, d)] = pc.simulate([model], ips[s], ips[d], 80).allowed
    return out


def test_kernel_enforces_what_the_model_says(cluster: dict) -> None:
    c = cluster
    base = _world(c)
    everything = _matrix(c)
    assert all(everything.values()), [k for k, v in everything.items() if not v]

    world = replace(base, policies=tuple(p for p in m.parse_text(POLICIES) if isinstance(p, m.NetworkPolicy)))
    model = pc.compile_node(world, "n1")
    _nft(c["node"], pc.render_nft(model))
    want = _expected(c, world)
    # the model is not trivial: a-from-b and y's egress both deny something, the node always passes
    assert not want[("x/c", "x/a")] and not want[("other", "x/a")] and not want[("y/a", "other")]
    assert want[("x/b", "x/a")] and want[("y/a", "x/b")] and want[("node", "x/a")] and want[("x/a", "other")]
    assert _matrix(c) == want

    # x/c joins the selector of a-from-b's peer: only set elements change, and x/c gets in
    moved = replace(world, pods=tuple(replace(p, labels=(("pod", "b"),)) if p.key == "x/c" else p for p in world.pods))
    delta = pc.render_nft_delta(model, pc.compile_node(moved, "n1"))
    assert delta and all(ln.startswith("add element") or ln.startswith("delete element") for ln in delta.splitlines())
    _nft(c["node"], delta)
    want = _expected(c, moved)
    assert want[("x/c", "x/a")]
    assert _matrix(c) == want

    # every policy deleted: one resync transaction removes the pods' chains and sets
    listing = subprocess.run(
        ["ip", "netns", "exec", c["node"].name, "nft", "-j", "list", "table", "inet", "pycni"],
        capture_output=True,
        text=True,
        check=True,
    )
    import json

    existing = pc.names_from_listing(json.loads(listing.stdout))
    empty = pc.compile_node(base, "n1")
    _nft(c["node"], pc.render_nft(empty, existing))
    time.sleep(0.1)
    assert all(_matrix(c).values())
