"""The cluster data plane on the real kernel: nodes are network namespaces on a bridged underlay
(segment A), a third node sits behind a router namespace (segment B); each node has a pod bridge
holding its gateway address and one pod namespace. Dataplane(node).apply(plan(...)) in every node
must let the pods reach each other without NAT, idempotently, and only ever touch what it made.

    pod1 - cni0 [n1] eth0 --+                                   +-- eth0 [n3] cni0 - pod3
    pod2 - cni0 [n2] eth0 --+-- br-a [underlay] br-b ----------+
                         rt (router: a leg on br-a, a leg on br-b, ip_forward)
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
from dataclasses import dataclass, field

import pytest

from cni_plugin.cluster import plan as planmod
from cni_plugin.cluster.dataplane import RTPROT_PYCNI, Dataplane
from cni_plugin.cluster.model import ClusterConfig, NodeRecord
from tests.conftest import Netns, free_subnet

pytestmark = pytest.mark.integration

VXLAN = "pycni.1"
SERVER = r"""
import socket, sys
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 7777)); s.listen(1); s.settimeout(5)
print("ready", flush=True)
c, peer = s.accept(); print(peer[0], flush=True)
"""
CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], 7777), timeout=2); c.close()
"""


def ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True, text=True)


def distinct(version: int, prefix: int, count: int, avoid: list) -> list:
    found: list = []
    for _ in range(1000):
        if len(found) == count:
            return found
        net = free_subnet(version, prefix)
        if not any(net.overlaps(o) for o in found + avoid if o.version == version):
            found.append(net)
    raise RuntimeError(f"no {count} distinct free IPv{version} /{prefix}")


@dataclass
class Node:
    name: str
    ns: Netns
    pod: Netns
    address: ipaddress.IPv4Address
    address6: ipaddress.IPv6Address
    subnets: tuple
    records_v6_underlay: bool = True
    dp: Dataplane = field(init=False)

    def __post_init__(self) -> None:
        self.dp = Dataplane(self.ns.path)

    def record(self, with_v6: bool = True) -> NodeRecord:
        subnets = self.subnets if with_v6 else tuple(s for s in self.subnets if s.version == 4)
        addresses = (self.address, self.address6) if self.records_v6_underlay else (self.address,)
        return NodeRecord(self.name, subnets, addresses, vtep_mac=planmod.vtep_mac(self.name))

    def pod_ip(self, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return next(s for s in self.subnets if s.version == version)[2]

    def routes(self, version: int = 4) -> dict[str, dict]:
        return {r["dst"]: r for r in self.ns.ip_json(f"-{version}", "route", "show", "proto", str(RTPROT_PYCNI))}


class Cluster:
    """The topology in the module docstring, built with `ip` (test tooling only)."""

    def __init__(self, netns_factory, dual_stack: bool = False) -> None:
        self.make = netns_factory
        self.underlay = netns_factory("pycni-ul")
        self.cidr4 = free_subnet(4, 18)
        self.cidr6 = free_subnet(6, 56)
        self.seg_a, self.seg_b = distinct(4, 24, 2, [self.cidr4])
        self.seg_a6 = distinct(6, 64, 1, [self.cidr6])[0]
        self.dual_stack = dual_stack
        self.nodes: dict[str, Node] = {}
        u = self.underlay.name
        for br in ("br-a", "br-b"):
            ip("-n", u, "link", "add", br, "type", "bridge")
            ip("-n", u, "link", "set", br, "up")
        # The router: one leg on each segment, forwarding between them.
        self.router = netns_factory("pycni-rt")
        self._leg(self.router, "a0", "br-a", [f"{self.seg_a[1]}/24"])
        self._leg(self.router, "b0", "br-b", [f"{self.seg_b[1]}/24"])
        self.router.run("sysctl", "-qw", "net.ipv4.ip_forward=1")

    def _leg(self, ns: Netns, ifname: str, bridge: str, addresses: list[str]) -> None:
        peer = f"u{len(self.underlay.ip_json('link', 'show'))}"
        ip("-n", self.underlay.name, "link", "add", peer, "type", "veth", "peer", "name", ifname, "netns", ns.name)
        ip("-n", self.underlay.name, "link", "set", peer, "master", bridge, "up")
        for address in addresses:
            extra = ["nodad"] if ":" in address else []
            ip("-n", ns.name, "addr", "add", address, "dev", ifname, *extra)
        ip("-n", ns.name, "link", "set", ifname, "up")

    def add_node(self, name: str, index: int, segment: str = "a") -> Node:
        ns, pod = self.make(f"pycni-{name}"), self.make(f"pycni-p{name}")
        seg = self.seg_a if segment == "a" else self.seg_b
        address, address6 = seg[10 + index], self.seg_a6[10 + index]
        addresses = [f"{address}/24"] + ([f"{address6}/64"] if segment == "a" else [])
        self._leg(ns, "eth0", "br-a" if segment == "a" else "br-b", addresses)
        ip("-n", ns.name, "route", "add", "default", "via", str(seg[1]))
        subnet4 = list(self.cidr4.subnets(new_prefix=24))[index]
        subnets = [subnet4] + ([list(self.cidr6.subnets(new_prefix=64))[index]] if self.dual_stack else [])
        # The node's pod bridge with its gateway addresses, and one pod behind a veth.
        ip("-n", ns.name, "link", "add", "cni0", "type", "bridge")
        ip("-n", ns.name, "link", "set", "cni0", "up")
        ip("-n", ns.name, "link", "add", "veth0", "type", "veth", "peer", "name", "eth0", "netns", pod.name)
        ip("-n", ns.name, "link", "set", "veth0", "master", "cni0", "up")
        ip("-n", pod.name, "link", "set", "eth0", "up")
        for subnet in subnets:
            extra = ["nodad"] if subnet.version == 6 else []
            ip("-n", ns.name, "addr", "add", f"{subnet[1]}/{subnet.prefixlen}", "dev", "cni0", *extra)
            ip("-n", pod.name, "addr", "add", f"{subnet[2]}/{subnet.prefixlen}", "dev", "eth0", *extra)
            ip("-n", pod.name, f"-{subnet.version}", "route", "add", "default", "via", str(subnet[1]))
        node = Node(name, ns, pod, address, address6, tuple(subnets), records_v6_underlay=segment == "a")
        self.nodes[name] = node
        return node

    def config(self, backend: str) -> ClusterConfig:
        cidrs = (self.cidr4, self.cidr6) if self.dual_stack else (self.cidr4,)
        return ClusterConfig(cluster_cidrs=cidrs, backend=backend, vxlan_device=VXLAN)

    def desired(
        self, node: Node, backend: str, names: list[str] | None = None, underlay: int = 4
    ) -> planmod.Desired:
        records = [n.record() for n in self.nodes.values() if names is None or n.name in names]
        facts = node.dp.local_facts(node.address if underlay == 4 else node.address6)
        return planmod.plan(self.config(backend), node.record(), records, facts)

    def apply_all(self, backend: str, underlay: int = 4) -> dict[str, planmod.Desired]:
        out = {}
        for node in self.nodes.values():
            desired = self.desired(node, backend, underlay=underlay)
            report = node.dp.apply(desired)
            assert not report.errors, (node.name, report.errors)
            # The pod's MTU is what the plan says (the bridge plugin gets it from the same value).
            node.pod.run("ip", "link", "set", "eth0", "mtu", str(desired.pod_mtu))
            out[node.name] = desired
        return out


def ping(src: Netns, dst, ok: bool = True) -> None:
    flag = "-6" if ipaddress.ip_address(dst).version == 6 else "-4"
    # Reachable: the first reply within 3 s (a fresh IPv6 segment settles its neighbour discovery
    # in about a second). Unreachable: no reply to two probes, 1 s each.
    timing = ["-c", "1", "-i", "0.2", "-w", "3"] if ok else ["-c", "2", "-i", "0.2", "-W", "1"]
    proc = src.run("ping", flag, *timing, str(dst), check=False)
    assert (proc.returncode == 0) == ok, (src.name, dst, proc.stdout, proc.stderr)


def seen_source(server_ns: Netns, server_ip, client_ns: Netns) -> str:
    """The source address a TCP server in `server_ns` sees for a connection from `client_ns`."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", server_ns.name, sys.executable, "-c", SERVER, str(server_ip)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        client_ns.run(sys.executable, "-c", CLIENT, str(server_ip))
        out, err = proc.communicate(timeout=5)
        return out.strip()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
def cluster(netns_factory) -> Cluster:
    return Cluster(netns_factory)


@pytest.fixture
def cluster6(netns_factory) -> Cluster:
    return Cluster(netns_factory, dual_stack=True)


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_pods_reach_each_other_without_nat(cluster, backend):
    n1, n2 = cluster.add_node("n1", 1), cluster.add_node("n2", 2)
    desired = cluster.apply_all(backend)
    assert [p.via for p in desired["n1"].peers] == [backend]

    ping(n1.pod, n2.pod_ip(4))
    ping(n2.pod, n1.pod_ip(4))
    # No NAT between pods: the server on pod2 sees pod1's own address.
    assert seen_source(n2.pod, n2.pod_ip(4), n1.pod) == str(n1.pod_ip(4))
    # Node to a remote pod is not NATed either (the source is one of node1's own addresses).
    assert seen_source(n2.pod, n2.pod_ip(4), n1.ns) in {str(n1.address), str(n1.subnets[0].network_address)}

    routes = n1.routes()
    subnet2 = str(n2.subnets[0])
    if backend == "host-gw":
        assert routes[subnet2]["gateway"] == str(n2.address) and routes[subnet2]["dev"] == "eth0"
        assert not n1.ns.ip_json("link", "show", "type", "vxlan")
        assert desired["n1"].pod_mtu == 1500
    else:
        assert routes[subnet2]["gateway"] == str(n2.subnets[0].network_address)
        assert routes[subnet2]["dev"] == VXLAN and "onlink" in routes[subnet2]["flags"]
        link = n1.ns.ip_json("-d", "link", "show", VXLAN)[0]
        assert link["mtu"] == 1450 and link["address"] == planmod.vtep_mac("n1")
        assert link["linkinfo"]["info_data"]["learning"] is False
        fdb = n1.ns.run("bridge", "-j", "fdb", "show", "dev", VXLAN).stdout
        assert planmod.vtep_mac("n2") in fdb and str(n2.address) in fdb
        assert desired["n1"].pod_mtu == 1450
        assert n1.pod.ip_json("link", "show", "eth0")[0]["mtu"] == 1450

    # A second apply with the same desired state changes nothing.
    again = n1.dp.apply(cluster.desired(n1, backend))
    assert not again.changed and not again.errors and again.unchanged > 0


def test_masquerade_only_traffic_leaving_the_cluster(cluster):
    n1, n2 = cluster.add_node("n1", 1), cluster.add_node("n2", 2)
    cluster.apply_all("host-gw")
    # The router is outside the cluster: pod1 reaches it as node1.
    assert seen_source(cluster.router, cluster.seg_a[1], n1.pod) == str(n1.address)
    # ... while pod-to-pod keeps the pod address (the rule excludes the cluster CIDR).
    assert seen_source(n2.pod, n2.pod_ip(4), n1.pod) == str(n1.pod_ip(4))
    rules = n1.ns.run("nft", "list", "chain", "inet", "pycni", "cluster_masq").stdout
    assert f"ip saddr {n1.subnets[0]} ip daddr != {{ {cluster.cidr4}, 224.0.0.0/4 }}" in rules

    n1.dp.teardown()
    assert n1.ns.run("nft", "list", "chain", "inet", "pycni", "cluster_masq", check=False).returncode != 0
    assert not n1.routes()


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_dual_stack_with_ipv6_pod_subnets(cluster6, backend):
    n1, n2 = cluster6.add_node("n1", 1), cluster6.add_node("n2", 2)
    desired = cluster6.apply_all(backend)
    assert desired["n1"].peers[0].subnets == n2.subnets  # both families routed

    ping(n1.pod, n2.pod_ip(4))
    ping(n1.pod, n2.pod_ip(6))
    assert seen_source(n2.pod, n2.pod_ip(6), n1.pod) == str(n1.pod_ip(6))
    route6 = n1.routes(6)[str(n2.subnets[1])]
    if backend == "host-gw":  # via the peer's on-link IPv6 address: a gateway is of its route's family
        assert route6["gateway"] == str(n2.address6) and route6["dev"] == "eth0"
    else:
        assert route6["dev"] == VXLAN and route6["gateway"] == str(n2.subnets[1].network_address)
    assert n1.ns.run("sysctl", "-n", "net.ipv6.conf.all.forwarding").stdout.strip() == "1"
    again = n1.dp.apply(cluster6.desired(n1, backend))
    assert not again.changed and not again.errors


def test_vxlan_over_an_ipv6_underlay(cluster6):
    n1, n2 = cluster6.add_node("n1", 1), cluster6.add_node("n2", 2)
    desired = cluster6.apply_all("vxlan", underlay=6)
    assert desired["n1"].pod_mtu == 1430  # 1500 - 70
    info = n1.ns.ip_json("-d", "link", "show", VXLAN)[0]["linkinfo"]["info_data"]
    assert str(n1.address6) in (info.get("local"), info.get("local6")), info
    assert str(n2.address6) in n1.ns.run("bridge", "fdb", "show", "dev", VXLAN).stdout
    ping(n1.pod, n2.pod_ip(4))
    ping(n1.pod, n2.pod_ip(6))
    assert seen_source(n2.pod, n2.pod_ip(4), n1.pod) == str(n1.pod_ip(4))
    assert not n1.dp.apply(cluster6.desired(n1, "vxlan", underlay=6)).changed


def test_removing_a_peer_removes_its_entries_and_foreign_routes_survive(cluster):
    n1, n2, n3 = (cluster.add_node(f"n{i}", i) for i in (1, 2, 3))
    foreign = distinct(4, 24, 1, [cluster.seg_a, cluster.seg_b, cluster.cidr4])[0]
    n1.ns.run("ip", "route", "add", str(foreign), "via", str(cluster.seg_a[1]), "proto", "static")
    n1.ns.run("ip", "neigh", "add", str(cluster.seg_a[99]), "lladdr", "02:00:00:00:00:99", "dev", "eth0")
    cluster.apply_all("vxlan")
    assert set(n1.routes()) == {str(n2.subnets[0]), str(n3.subnets[0])}

    report = n1.dp.apply(cluster.desired(n1, "vxlan", names=["n1", "n3"]))
    assert not report.errors and report.removed == 3 and report.added == 0  # route, FDB, neighbour
    assert set(n1.routes()) == {str(n3.subnets[0])}
    fdb = n1.ns.run("bridge", "fdb", "show", "dev", VXLAN).stdout
    assert planmod.vtep_mac("n2") not in fdb and planmod.vtep_mac("n3") in fdb
    neigh = n1.ns.run("ip", "neigh", "show", "dev", VXLAN).stdout
    assert str(n2.subnets[0].network_address) not in neigh and str(n3.subnets[0].network_address) in neigh
    ping(n1.pod, n3.pod_ip(4))
    ping(n1.pod, n2.pod_ip(4), ok=False)

    n1.dp.teardown()
    assert not n1.routes() and not n1.ns.ip_json("link", "show", "type", "vxlan")
    assert n1.ns.ip_json("route", "show", str(foreign))  # never pycni's to remove
    assert "02:00:00:00:00:99" in n1.ns.run("ip", "neigh", "show", "dev", "eth0").stdout


def test_a_foreign_route_in_the_way_fails_alone(cluster):
    n1, n2, n3 = (cluster.add_node(f"n{i}", i) for i in (1, 2, 3))
    n1.ns.run("ip", "route", "add", str(n2.subnets[0]), "via", str(cluster.seg_a[1]))
    report = n1.dp.apply(cluster.desired(n1, "host-gw"))
    assert len(report.errors) == 1 and str(n2.subnets[0]) in report.errors[0]
    # The foreign route is untouched, the other peer's route is in place.
    assert n1.ns.ip_json("route", "show", str(n2.subnets[0]))[0]["gateway"] == str(cluster.seg_a[1])
    assert set(n1.routes()) == {str(n3.subnets[0])}


def test_auto_uses_host_gw_on_link_and_vxlan_across_the_router(cluster):
    n1, n2 = cluster.add_node("n1", 1), cluster.add_node("n2", 2)
    n3 = cluster.add_node("n3", 3, segment="b")
    desired = cluster.apply_all("auto")
    assert {p.name: p.via for p in desired["n1"].peers} == {"n2": "host-gw", "n3": "vxlan"}
    routes = n1.routes()
    assert routes[str(n2.subnets[0])]["dev"] == "eth0"
    assert routes[str(n3.subnets[0])]["dev"] == VXLAN
    for src, dst in ((n1, n2), (n1, n3), (n3, n2)):
        ping(src.pod, dst.pod_ip(4))
    assert seen_source(n3.pod, n3.pod_ip(4), n1.pod) == str(n1.pod_ip(4))


def test_host_gw_reports_an_off_link_peer_unreachable(cluster):
    n1, n2 = cluster.add_node("n1", 1), cluster.add_node("n2", 2)
    n3 = cluster.add_node("n3", 3, segment="b")
    desired = cluster.apply_all("host-gw")
    peer3 = next(p for p in desired["n1"].peers if p.name == "n3")
    assert peer3.via == "unreachable" and "not on-link" in peer3.reason
    assert set(n1.routes()) == {str(n2.subnets[0])}
    ping(n1.pod, n2.pod_ip(4))
    ping(n1.pod, n3.pod_ip(4), ok=False)


def test_vxlan_device_is_fixed_and_recreated(cluster):
    n1, n2 = cluster.add_node("n1", 1), cluster.add_node("n2", 2)
    cluster.apply_all("vxlan")
    n1.ns.run("ip", "link", "set", VXLAN, "mtu", "1300")
    report = n1.dp.apply(cluster.desired(n1, "vxlan"))
    assert report.updated == 1 and not report.added and not report.removed
    assert n1.ns.ip_json("link", "show", VXLAN)[0]["mtu"] == 1450
    # Another VNI cannot be set on a live device: it is recreated, with its entries.
    config = cluster.config("vxlan")
    config = ClusterConfig(config.cluster_cidrs, backend="vxlan", vni=42, vxlan_device=VXLAN)
    for node in (n1, n2):
        facts = node.dp.local_facts(node.address)
        report = node.dp.apply(planmod.plan(config, node.record(), [n1.record(), n2.record()], facts))
        assert not report.errors
    assert n1.ns.ip_json("-d", "link", "show", VXLAN)[0]["linkinfo"]["info_data"]["id"] == 42
    ping(n1.pod, n2.pod_ip(4))
    # Switching to host-gw deletes pycni's VXLAN device.
    n1.dp.apply(cluster.desired(n1, "host-gw"))
    assert not n1.ns.ip_json("link", "show", "type", "vxlan")


def test_local_facts(cluster):
    n1 = cluster.add_node("n1", 1)
    facts = n1.dp.local_facts(n1.address)
    assert facts.uplink == "eth0" and facts.uplink_mtu == 1500
    assert set(facts.onlink) == {cluster.seg_a, cluster.seg_a6}
