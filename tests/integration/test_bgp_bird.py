"""The bgp backend on the real kernel: BIRD 2 on three nodes in two L3 segments and a ToR router.

Topology (every box a network namespace made here, removed at the end):

    pod1   pod2                      pod3
     |      |                          |
    n1     n2  (AS 64512, iBGP mesh)  n3   each node: a bridge holding its pod /24's gateway
     |      |                          |
    [ segment A bridge ]--R--[ segment B bridge ]
                          (AS 64513, BIRD: the top-of-rack peer, next hop self)

Each node runs BIRD with the config render_bird_config() makes from one cluster config (the
router's two addresses are both configured peers: each node peers with the one on its segment).
The tests share one topology and run in order: sessions and routes, traffic, an invalid config,
kill -9 and graceful restart, and last a node leaving.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cni_plugin.cluster.bgp import (
    PROTOCOL_NUMBER,
    BgpBackend,
    Bird,
    BirdConfigError,
    BirdUnavailable,
    render_bird_config,
)
from cni_plugin.cluster.model import ClusterConfig, NodeRecord, parse_cluster_config
from tests.conftest import Netns, _add_netns, _del_netns, free_subnet
from tests.multinode import tor_bird_config

pytestmark = pytest.mark.skipif(not os.path.exists("/usr/sbin/bird"), reason="bird2 is not installed")

NODE_AS, ROUTER_AS = 64512, 64513
ROUTER_PASSWORD = "pycni-test-md5"
# Test timers: sessions up and down in about a second (production defaults: see docs-bgp.md).
TIMERS = {"holdTime": 3, "keepaliveTime": 1, "connectRetryTime": 1, "gracefulRestartTime": 30}


def sh(ns: Netns, *argv: str) -> str:
    return ns.run(*argv).stdout


def ip(ns: Netns, *argv: str) -> None:
    subprocess.run(["ip", "-n", ns.name, *argv], check=True, capture_output=True)


def bird_routes(ns: Netns, family: str = "-4") -> dict[str, dict]:
    """The kernel's routes carrying BIRD's protocol number, by destination."""
    names = ("bird", str(PROTOCOL_NUMBER))
    return {r["dst"]: r for r in ns.ip_json(family, "route", "show") if r.get("protocol") in names}


def reach(ns: Netns, address: object) -> None:
    """One ping answered, within three tries (IPv6's first packet may wait on neighbour discovery)."""
    family = "-6" if ipaddress.ip_address(str(address)).version == 6 else "-4"
    for _ in range(3):
        if ns.run("ping", family, "-c", "1", "-W", "1", str(address), check=False).returncode == 0:
            return
    raise AssertionError(f"{ns.name} cannot reach {address}")


def wait_for(predicate, timeout: float, interval: float = 0.05) -> float:
    """Seconds until predicate() is true; fails the test after `timeout`."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if predicate():
            return time.monotonic() - start
        time.sleep(interval)
    raise AssertionError(f"not true after {timeout} s: {predicate.__doc__ or predicate}")


@dataclass
class Node:
    name: str
    ns: Netns
    pod: Netns
    address: ipaddress.IPv4Address
    segment: ipaddress.IPv4Network
    subnet: ipaddress.IPv4Network
    dir: Path
    address6: ipaddress.IPv6Address
    segment6: ipaddress.IPv6Network
    subnet6: ipaddress.IPv6Network
    bird: Bird | None = None

    @property
    def record(self) -> NodeRecord:
        return NodeRecord(self.name, (self.subnet, self.subnet6), (self.address, self.address6), backend="bgp")

    @property
    def pod_ip(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 2

    @property
    def pod_ip6(self) -> ipaddress.IPv6Address:
        return self.subnet6.network_address + 2


@dataclass
class Cluster:
    config: ClusterConfig
    nodes: list[Node]
    router: Netns
    router_bird: Bird
    namespaces: list[Netns] = field(default_factory=list)
    convergence: dict[str, float] = field(default_factory=dict)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def render(self, node: Node, members: list[Node] | None = None) -> str:
        others = [n.record for n in (members if members is not None else self.nodes)]
        return render_bird_config(self.config, node.record, others, local_networks=[node.segment, node.segment6])


def _router_config(router_id: str, nodes: list[Node], cluster_cidr: ipaddress.IPv4Network,
                   cluster_cidr6: ipaddress.IPv6Network) -> str:
    """The ToR's own BIRD: eBGP to every node, next hop self, pod routes into its kernel."""
    return tor_bird_config(router_id, [(n.name, n.address) for n in nodes], [cluster_cidr, cluster_cidr6],
                           ROUTER_AS, NODE_AS, password=ROUTER_PASSWORD)


def _veth(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    ip(a, "link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", b.name)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    made: list[Netns] = []

    def netns(prefix: str) -> Netns:
        made.append(_add_netns(prefix))
        return made[-1]

    birds: list[Bird] = []
    nodes: list[Node] = []
    try:
        base = tmp_path_factory.mktemp("bgp")
        cidr = free_subnet(4, 16)
        cidr6 = free_subnet(6, 56)
        seg6 = list(free_subnet(6, 63).subnets(new_prefix=64))
        while any(s.overlaps(cidr6) for s in seg6):
            seg6 = list(free_subnet(6, 63).subnets(new_prefix=64))
        seg_a, seg_b = free_subnet(4, 24), free_subnet(4, 24)
        while seg_a.overlaps(seg_b) or seg_a.overlaps(cidr) or seg_b.overlaps(cidr):
            seg_a, seg_b = free_subnet(4, 24), free_subnet(4, 24)
        pod_subnets = list(cidr.subnets(new_prefix=24))[1:4]
        pod_subnets6 = list(cidr6.subnets(new_prefix=64))[1:4]
        r_a, r_b = seg_a.network_address + 1, seg_b.network_address + 1
        r6 = {"a": seg6[0].network_address + 1, "b": seg6[1].network_address + 1}

        router = netns("pycni-bgp-r")
        sh(router, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        sh(router, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        segments = {}
        for label, seg, r_addr in (("a", seg_a, r_a), ("b", seg_b, r_b)):
            ul = netns(f"pycni-bgp-ul{label}")
            ip(ul, "link", "add", "br0", "type", "bridge")
            ip(ul, "link", "set", "br0", "up")
            _veth(router, f"seg{label}", ul, "rt")
            ip(ul, "link", "set", "rt", "master", "br0", "up")
            ip(router, "addr", "add", f"{r_addr}/{seg.prefixlen}", "dev", f"seg{label}")
            ip(router, "addr", "add", f"{r6[label]}/64", "dev", f"seg{label}", "nodad")
            ip(router, "link", "set", f"seg{label}", "up")
            segments[label] = (ul, seg, r_addr)

        config = parse_cluster_config({
            "clusterCIDRs": [str(cidr), str(cidr6)],
            "backend": {"type": "bgp", "asNumber": NODE_AS, "nodeToNodeMesh": True, **TIMERS,
                        "peers": [{"address": str(r), "asNumber": ROUTER_AS, "password": ROUTER_PASSWORD}
                                  for r in (r_a, r_b)]},
        })
        for i, (label, subnet, subnet6) in enumerate(zip(("a", "a", "b"), pod_subnets, pod_subnets6, strict=True),
                                                     start=1):
            ul, seg, r_addr = segments[label]
            segment6 = seg6[0] if label == "a" else seg6[1]
            address6 = segment6.network_address + 10 + i
            node_ns, pod_ns = netns(f"pycni-bgp-n{i}"), netns(f"pycni-bgp-p{i}")
            address = seg.network_address + 10 + i
            _veth(node_ns, "eth0", ul, f"n{i}")
            ip(ul, "link", "set", f"n{i}", "master", "br0", "up")
            ip(node_ns, "addr", "add", f"{address}/{seg.prefixlen}", "dev", "eth0")
            ip(node_ns, "link", "set", "eth0", "up")
            ip(node_ns, "addr", "add", f"{address6}/64", "dev", "eth0", "nodad")
            ip(node_ns, "route", "add", "default", "via", str(r_addr))
            ip(node_ns, "-6", "route", "add", "default", "via", str(r6[label]))
            sh(node_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
            sh(node_ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
            # The node's pod bridge (what the bridge plugin makes) and one pod behind it.
            ip(node_ns, "link", "add", "cni0", "type", "bridge")
            ip(node_ns, "addr", "add", f"{subnet.network_address + 1}/24", "dev", "cni0")
            ip(node_ns, "addr", "add", f"{subnet6.network_address + 1}/64", "dev", "cni0", "nodad")
            ip(node_ns, "link", "set", "cni0", "up")
            _veth(node_ns, "veth0", pod_ns, "eth0")
            ip(node_ns, "link", "set", "veth0", "master", "cni0", "up")
            ip(pod_ns, "addr", "add", f"{subnet.network_address + 2}/24", "dev", "eth0")
            ip(pod_ns, "addr", "add", f"{subnet6.network_address + 2}/64", "dev", "eth0", "nodad")
            ip(pod_ns, "link", "set", "eth0", "up")
            ip(pod_ns, "route", "add", "default", "via", str(subnet.network_address + 1))
            ip(pod_ns, "-6", "route", "add", "default", "via", str(subnet6.network_address + 1))
            d = base / f"n{i}"
            nodes.append(Node(f"node-{i}", node_ns, pod_ns, address, seg, subnet, d, address6, segment6, subnet6))

        router_dir = base / "router"
        router_bird = Bird(router.path, router_dir / "bird.conf", router_dir / "bird.ctl", router_dir / "bird.pid")
        birds.append(router_bird)
        router_bird.start(_router_config(str(r_a), nodes, cidr, cidr6))
        router_bird.wait_ready()
        cl = Cluster(config, nodes, router, router_bird, made)

        started = {}
        for node in nodes:
            # The controller's entry point: BgpBackend.sync() renders, starts or reloads BIRD.
            backend = BgpBackend(node.dir, node.ns.path, backoff=(0.5, 2.0))
            node.bird = backend.bird
            birds.append(node.bird)
            result = backend.sync(cl.config, node.record, [n.record for n in nodes], [node.segment, node.segment6])
            started[node.name] = time.monotonic()
            others = sorted(n.name for n in nodes if n.segment != node.segment)
            assert result.changed and list(result.unmeshed) == others
            assert len(result.other_routers) == 1 and ipaddress.ip_address(result.other_routers[0]) not in node.segment
            assert backend.status()["running"] is True
        # Convergence: from a node's BIRD start until its subnet is in every other node's kernel.
        pending = {(n.name, m.name) for n in nodes for m in nodes if n is not m}
        deadline = time.monotonic() + 30
        while pending and time.monotonic() < deadline:
            for owner, seer in sorted(pending):
                o, s = cl.node(owner), cl.node(seer).ns
                if str(o.subnet) in bird_routes(s) and str(o.subnet6) in bird_routes(s, "-6"):
                    pending.discard((owner, seer))
                    took = time.monotonic() - started[owner]
                    cl.convergence[owner] = max(cl.convergence.get(owner, 0.0), took)
            time.sleep(0.02)
        if pending:
            logs = {p.parent.name: p.read_text()[-1500:] for p in base.glob("*/bird.log")}
            raise AssertionError(f"routes never appeared (subnet owner, node): {sorted(pending)}; "
                                 f"router sessions {router_bird.sessions()}; logs {logs}"
                                 f"ROUTER {router_bird.control.command('show route all')} "
                                 f"N3 {nodes[2].bird.control.command('show route all')} "
                                 f"N3P {nodes[2].bird.control.command('show protocols all')}")
        print(f"\nconvergence (BIRD start -> subnet in every peer's kernel): {cl.convergence}")
        yield cl
    finally:
        # The BIRDs the tests run now (a test may have replaced one), then every one ever started.
        for bird in [n.bird for n in nodes if n.bird is not None] + birds[::-1]:
            bird.stop()
        for ns in reversed(made):
            _del_netns(ns)


def test_sessions_established_and_routes_carry_birds_protocol(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    sessions = {row["name"]: row for row in n1.bird.sessions()}  # type: ignore[union-attr]
    assert {row["state"] for row in sessions.values()} == {"up"}, sessions
    assert all(row["info"] == "Established" for row in sessions.values()), sessions
    # n1: mesh to n2 (same segment), the router on its segment; nothing to n3 (another segment).
    assert len(sessions) == 2 and any(name.startswith("mesh_node_2") for name in sessions), sessions
    assert [r["state"] for r in n3.bird.sessions()] == ["up"]  # type: ignore[union-attr]
    for node in cluster.nodes:
        routes = bird_routes(node.ns)
        others = {str(m.subnet) for m in cluster.nodes if m is not node}
        assert set(routes) == others, (node.name, routes)
        assert all(r["protocol"] == "bird" for r in routes.values())
        # Our own subnet stays the bridge's connected route: BIRD never installs it.
        own = node.ns.ip_json("-4", "route", "show", str(node.subnet))
        assert [r.get("protocol") for r in own] == ["kernel"] and own[0]["dev"] == "cni0"
    # Same segment: straight to the peer node; across segments: via the router.
    assert bird_routes(n1.ns)[str(n2.subnet)]["gateway"] == str(n2.address)
    assert bird_routes(n1.ns)[str(n3.subnet)]["gateway"] == str(n1.segment.network_address + 1)
    assert set(bird_routes(cluster.router)) == {str(n.subnet) for n in cluster.nodes}
    # IPv6 over the same sessions (multiprotocol): one route per other node, BIRD's protocol too.
    for node in cluster.nodes:
        routes6 = bird_routes(node.ns, "-6")
        assert set(routes6) == {str(m.subnet6) for m in cluster.nodes if m is not node}, (node.name, routes6)
    # The IPv6 next hops are the peers' global underlay addresses, on-link, like IPv4's.
    assert bird_routes(n1.ns, "-6")[str(n2.subnet6)]["gateway"] == str(n2.address6)
    assert bird_routes(n1.ns, "-6")[str(n3.subnet6)]["gateway"] == str(n1.segment6.network_address + 1)
    assert set(bird_routes(cluster.router, "-6")) == {str(n.subnet6) for n in cluster.nodes}


def _tcp_source_seen(server: Node, client: Netns) -> str:
    """Connect from `client` to a server in `server`'s pod; the source address the server saw."""
    code = (
        "import socket,sys;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
        "s.bind(('0.0.0.0',7777));s.listen(1);print('ready',flush=True);c,a=s.accept();print(a[0],flush=True)"
    )
    srv = subprocess.Popen(["ip", "netns", "exec", server.pod.name, "python3", "-c", code],
                           stdout=subprocess.PIPE, text=True)
    try:
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        client.run("python3", "-c", f"import socket;socket.create_connection(('{server.pod_ip}',7777),timeout=2)")
        return srv.stdout.readline().strip()
    finally:
        srv.kill()
        srv.wait()


def test_pods_across_segments_reach_each_other_without_nat_or_tunnel(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    for node in cluster.nodes:
        kinds = {link.get("linkinfo", {}).get("info_kind") for link in node.ns.ip_json("-d", "link", "show")}
        assert not kinds & {"vxlan", "ipip", "gre", "geneve", "wireguard"}, kinds
    for a, b in ((n1, n3), (n3, n1), (n1, n2), (n3, n2)):
        reach(a.pod, b.pod_ip)
        reach(a.pod, b.pod_ip6)
    # No NAT: the server in pod3 sees pod1's own address, and pod1's server sees pod3's.
    assert _tcp_source_seen(n3, n1.pod) == str(n1.pod_ip)
    assert _tcp_source_seen(n1, n3.pod) == str(n3.pod_ip)
    # A client outside the cluster (the router's namespace) reaches pods by their pod address.
    for node in cluster.nodes:
        reach(cluster.router, node.pod_ip)
        reach(cluster.router, node.pod_ip6)


def test_invalid_config_is_refused_and_the_running_one_stays(cluster: Cluster) -> None:
    n1 = cluster.nodes[0]
    bird = n1.bird
    assert bird is not None
    before = bird.current_config()
    broken = before.replace("keepalive time", "keepalive tiem", 1) if before else "garbage"
    with pytest.raises(BirdConfigError, match="bird.conf|syntax|error|unknown"):
        bird.reload(broken)
    assert bird.current_config() == before
    assert not list(n1.dir.glob(".bird.conf.*"))  # no temp file left behind
    assert all(r["info"] == "Established" for r in bird.sessions())
    assert bird.reload(cluster.render(n1)) is False  # unchanged: no reload at all
    n1.pod.run("ping", "-c", "1", "-W", "1", str(cluster.nodes[2].pod_ip))


def test_kill9_bird_keeps_routes_and_traffic_resumes(cluster: Cluster) -> None:
    """Graceful restart: BIRD on n3 dies with SIGKILL; its supervisor restarts it with -R."""
    n1, _, n3 = cluster.nodes
    bird = n3.bird
    assert bird is not None and bird.pid is not None
    restarts = bird.restarts
    gaps: list[str] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if str(n1.subnet) not in bird_routes(n3.ns):
                gaps.append("n3 lost its route to n1")
            if str(n3.subnet) not in bird_routes(n1.ns):
                gaps.append("n1 lost its route to n3")
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)
    watcher.start()
    ping = n1.pod.run("ping", "-c", "1", "-W", "1", str(n3.pod_ip))  # warm neighbour caches
    ping = subprocess.Popen(["ip", "netns", "exec", n1.pod.name, "ping", "-i", "0.1", "-w", "8", str(n3.pod_ip)],
                            stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(0.5)
        killed = time.monotonic()
        os.kill(bird.pid, signal.SIGKILL)
        wait_for(lambda: bird.restarts > restarts, 10)
        back = wait_for(lambda: any(r["info"] == "Established" for r in _sessions(bird)), 15)
        print(f"\nkill -9: BIRD restarted, session Established again {time.monotonic() - killed:.2f} s after the kill "
              f"({back:.2f} s after the restart)")
        # Stale routes at the router are refreshed, not flushed: n1 keeps n3's subnet throughout.
        wait_for(lambda: any(r["info"] == "Established" and r["state"] == "up" for r in _sessions(bird)), 5)
        out, _ = ping.communicate(timeout=15)
    finally:
        stop.set()
        watcher.join()
        if ping.poll() is None:
            ping.kill()
    assert not gaps, gaps[:3]
    sent = int(out.split(" packets transmitted")[0].rsplit("\n", 1)[-1])
    received = int(out.split(" received")[0].rsplit(", ", 1)[-1])
    print(f"ping every 100 ms across the kill: {received}/{sent} answered")
    assert sent - received <= 1, out
    assert set(bird_routes(n3.ns)) == {str(n.subnet) for n in cluster.nodes if n is not n3}


def _sessions(bird: Bird) -> list[dict[str, str]]:
    try:
        return bird.sessions()
    except BirdUnavailable:
        return []


def test_a_new_agent_adopts_the_running_bird_without_a_flap(cluster: Cluster) -> None:
    """The agent restarts: the new one finds BIRD on its socket and pid file and keeps it."""
    n1 = cluster.nodes[0]
    old = n1.bird
    assert old is not None and old.pid is not None
    pid, before = old.pid, {r["name"]: r["since"] for r in old.sessions()}
    old.detach()
    new = Bird(n1.ns.path, old.config_path, old.control.path, old.pid_file, backoff=(0.5, 2.0))
    n1.bird = new
    new.start(cluster.render(n1))
    assert new.pid == pid  # the same process: no second BIRD, no restart
    assert {r["name"]: r["since"] for r in new.sessions()} == before  # no session went down
    # The adopted BIRD is supervised too: killed, it is started again.
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: new.restarts == 1 and new.pid not in (None, pid), 10)
    wait_for(lambda: len(_sessions(new)) == 2 and all(r["info"] == "Established" for r in _sessions(new)), 15)


def test_node_leaving_withdraws_its_subnet_everywhere(cluster: Cluster) -> None:
    n1, n2, n3 = cluster.nodes
    assert n2.bird is not None
    gone = str(n2.subnet)
    n2.bird.stop()  # SIGTERM: BIRD says goodbye (Cease) and every peer withdraws at once
    gone6 = str(n2.subnet6)

    def withdrawn() -> bool:
        return all(gone not in bird_routes(ns) and gone6 not in bird_routes(ns, "-6")
                   for ns in (n1.ns, n3.ns, cluster.router))

    took = wait_for(withdrawn, 10)
    print(f"\nnode-2 left: its subnet withdrawn everywhere in {took:.2f} s")
    # `persist`: the stopped BIRD left its routes in node-2's kernel (they never block anything
    # there: nobody announces to it any more, and pycni's reconcile does not own them).
    assert str(n1.subnet) in bird_routes(n2.ns)
    # The rest of the cluster is untouched.
    assert str(n3.subnet) in bird_routes(n1.ns)
    n1.pod.run("ping", "-c", "1", "-W", "1", str(n3.pod_ip))
    # The config the agent renders without the node drops its session on n1.
    assert n1.bird is not None
    assert n1.bird.reload(cluster.render(n1, [n1, n3])) is True
    wait_for(lambda: not any(r["name"].startswith("mesh_") for r in n1.bird.sessions()), 5)  # type: ignore[union-attr]


def test_node_rejoining_converges_into_a_running_cluster(cluster: Cluster) -> None:
    """The realistic join: the node's BIRD starts and the peers' agents reload with it."""
    n1, n2, n3 = cluster.nodes
    assert n1.bird is not None
    backend = BgpBackend(n2.dir, n2.ns.path, backoff=(0.5, 2.0))
    records = [n.record for n in cluster.nodes]
    began = time.monotonic()
    backend.sync(cluster.config, n2.record, records, [n2.segment, n2.segment6])
    assert n1.bird.reload(cluster.render(n1)) is True  # n1's agent sees node-2 back: mesh session again
    n2.bird = backend.bird
    try:
        took = wait_for(lambda: all(str(n2.subnet) in bird_routes(ns) and str(n2.subnet6) in bird_routes(ns, "-6")
                                    for ns in (n1.ns, n3.ns, cluster.router)), 15)
        print(f"\nnode-2 rejoined: its subnets in every kernel {took:.2f} s after its BIRD started")
        wait_for(lambda: str(n2.subnet) in bird_routes(n1.ns)
                 and bird_routes(n1.ns)[str(n2.subnet)].get("gateway") == str(n2.address), 10)
        reach(n3.pod, n2.pod_ip)
        reach(n1.pod, n2.pod_ip6)
    finally:
        backend.close()
    assert time.monotonic() - began < 20
