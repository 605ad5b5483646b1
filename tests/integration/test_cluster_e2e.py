"""The cluster network end to end: real pycni-agents, real etcd, the real kernel, several nodes.

Each topology is built once per module (tests/multinode.py) and shared by the tests that use it:

- `cluster`, per backend: host-gw (one segment), vxlan and auto (two routed segments), IPv4 and
  dual-stack, and bgp (one segment, full mesh). Every node's agent is started at the same moment
  on a fresh cluster (a race for subnets), one pod per node. IPv4 topologies hold a fourth node
  whose agent joins and leaves later.
- `routed_hostgw`: host-gw across the router, agents started before any cluster config exists
  (STATUS answers 50 until the node has its subnet), the off-segment peer reported unreachable.
- `bgp_tor`: bgp on two segments with a top-of-rack BIRD in the router namespace.
- the Kubernetes source: tests/kube_apiserver.py in the router namespace, two agents.

What an operator would check is asserted: pods reach pods (ping, TCP, UDP) with their own source
address, the status file and `pycni cluster status`, the routes/FDB/neighbours in each node's
kernel. Measured figures (join/leave convergence, ping loss around kill -9, the etcd outage) are
printed (`pytest -s`) and collected in MEASURED.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests import multinode as mn

pytestmark = pytest.mark.integration

PROTO_PYCNI, PROTO_BIRD = "112", "12"
VXLAN_DEV = "pycni.1"
BGP_TIMERS = {"keepaliveTime": 1, "holdTime": 3, "connectRetryTime": 1}
NODE_AS, ROUTER_AS = 64512, 64513
LEASE_TTL = 3  # the joiner's: it leaves by letting its lease expire
MEASURED: dict[str, Any] = {}


def record(key: str, value: Any) -> None:
    MEASURED[key] = value
    print(f"\nMEASURED {key}: {value}")


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> float:
    """Seconds until predicate() is truthy; fails after `timeout` naming `what`."""
    start = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def proto_of(backend: str) -> str:
    return PROTO_BIRD if backend == "bgp" else PROTO_PYCNI


def route_dsts(node: mn.Node, proto: str, family: int = 4) -> list[str]:
    return [r["dst"] for r in mn.routes(node, proto=proto, family=family)]


def start_together(nodes: list[mn.Node], *extra: str) -> None:
    """Every agent's exec at the same moment (threads behind a barrier): they race for subnets."""
    barrier = threading.Barrier(len(nodes))

    def go(node: mn.Node) -> None:
        barrier.wait()
        node.start_agent(*extra)

    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        list(pool.map(go, nodes))


def ready_status(node: mn.Node, timeout: float = 60) -> dict[str, Any]:
    wait_for(lambda: (node.status() or {}).get("ready"), timeout, f"{node.name} ready\n{node.log_tail()}")
    status = node.status()
    assert status is not None
    return status


def conflist_subnets(conflist: dict[str, Any]) -> list[str]:
    return [r["subnet"] for p in conflist.get("plugins", []) for rs in p.get("ipam", {}).get("ranges", []) for r in rs]


def assert_no_nat(m: mn.Matrix) -> None:
    assert m.all_ok, mn.format_matrix(m)
    for cell in m.cells:
        if isinstance(cell.src, mn.Pod) and isinstance(cell.dst, mn.Pod):
            assert cell.tcp_seen == str(cell.src.ip(m.family)), cell  # the receiver saw the sender's pod address


def no_duplicates(items: list[Any], what: str) -> None:
    keys = [json.dumps(i, sort_keys=True) for i in items]
    assert len(keys) == len(set(keys)), f"duplicated {what}: {items}"


def kernel_snapshot(node: mn.Node, proto: str, vxlan: bool) -> dict[str, list[Any]]:
    """What pycni made in a node's kernel, comparable before/after (no duplicates allowed)."""
    snap: dict[str, list[Any]] = {"routes": sorted(route_dsts(node, proto))}
    no_duplicates(snap["routes"], f"routes on {node}")
    if vxlan and mn.links(node, "vxlan"):
        fdb = sorted((e.get("mac"), e.get("dst")) for e in mn.fdb(node, VXLAN_DEV) if e.get("dst"))
        neigh = sorted((n.get("dst"), n.get("lladdr")) for n in mn.neighbours(node, VXLAN_DEV))
        no_duplicates(fdb, f"FDB entries on {node}")
        no_duplicates(neigh, f"neighbours on {node}")
        snap["fdb"], snap["neigh"] = fdb, neigh
    return snap


# --- the per-backend clusters ------------------------------------------------------------------------


@dataclass
class Cluster:
    topo: mn.Topology
    backend: str
    dual: bool
    members: list[mn.Node]                 # agents started at build time
    joiner: mn.Node | None                 # a node whose agent joins later (IPv4 topologies)
    conflists: dict[str, dict[str, Any]] = field(default_factory=dict)
    joiner_subnet: str = ""

    @property
    def families(self) -> list[int]:
        return [4, 6] if self.dual else [4]

    @property
    def pods(self) -> list[mn.Pod]:
        return [p for n in self.members for p in n.pods]

    def expected_via(self, node: mn.Node, peer: mn.Node) -> str:
        if self.backend == "auto":
            return "host-gw" if node.segment == peer.segment else "vxlan"
        return self.backend


CLUSTERS = [
    pytest.param(("host-gw", 1, False), id="host-gw-v4"),
    pytest.param(("host-gw", 1, True), id="host-gw-dual"),
    pytest.param(("vxlan", 2, False), id="vxlan-v4"),
    pytest.param(("vxlan", 2, True), id="vxlan-dual"),
    pytest.param(("auto", 2, False), id="auto-v4"),
    pytest.param(("auto", 2, True), id="auto-dual"),
    pytest.param(("bgp", 1, False), id="bgp-mesh-v4"),
]


@pytest.fixture(scope="module")
def prefix(installed_bin) -> Any:
    return mn.prefix_of(installed_bin)


@pytest.fixture(scope="module", params=CLUSTERS)
def cluster(request, tmp_path_factory, prefix) -> Iterator[Cluster]:
    backend, segments, dual = request.param
    count = 3 if dual else 4
    segment_of = [0] * count if segments == 1 else [0, 0, 1, 1][:count] if count == 4 else [0, 0, 1]
    with mn.Topology(nodes=count, segments=segments, dual_stack=dual, prefix=prefix, segment_of=segment_of,
                     base=tmp_path_factory.mktemp(backend)) as topo:
        topo.write_etcd_config(backend, **(BGP_TIMERS if backend == "bgp" else {}))
        members = topo.nodes[:3]
        cl = Cluster(topo, backend, dual, members, topo.nodes[3] if count == 4 else None)
        start_together(members)
        with ThreadPoolExecutor(max_workers=3) as pool:
            conflists = list(pool.map(lambda n: n.wait_conflist(60), members))
        cl.conflists = {n.name: c for n, c in zip(members, conflists, strict=True)}
        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(lambda n: n.add_pod("p1"), members))
        for node in members:
            ready_status(node)
        # Every peer's route is in (bgp sessions take a moment after the conflist).
        proto = proto_of(backend)
        for node in members:
            for fam in cl.families:
                want = {s for peer in members if peer is not node for s in (peer.status() or {}).get("subnets", [])
                        if ipaddress.ip_network(s).version == fam}
                wait_for(lambda n=node, f=fam, w=want: w <= set(route_dsts(n, proto, f)), 30,
                         f"routes on {node}: {want}\n{node.log_tail()}")
        yield cl
        leftover_check = topo
    assert leftover_check.leftovers() == []


def test_subnet_race_gives_every_node_its_own_subnet(cluster: Cluster) -> None:
    """The agents were started at the same moment on a fresh cluster: never one subnet twice."""
    taken: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for node in cluster.members:
        status = node.status() or {}
        subnets = [ipaddress.ip_network(s) for s in status["subnets"]]
        assert sorted(map(str, subnets)) == sorted(conflist_subnets(cluster.conflists[node.name]))
        assert len(subnets) == len(cluster.families)
        for sub in subnets:
            assert any(sub.subnet_of(c) for c in cluster.topo.cluster_cidrs if c.version == sub.version)  # type: ignore[arg-type]
            assert not any(sub.overlaps(t) for t in taken if t.version == sub.version), (sub, taken)
            taken.append(sub)


def test_pods_reach_pods_on_every_node_without_nat(cluster: Cluster) -> None:
    pods = cluster.pods
    for fam in cluster.families:
        m = mn.matrix(pods, pods, family=fam, udp=(fam == 4))
        print(mn.format_matrix(m))
        assert_no_nat(m)
        # Node to remote pod, pod to remote node (the node answers from its underlay address).
        to_pods = mn.matrix(cluster.members, pods, family=fam, udp=False)
        assert to_pods.all_ok, mn.format_matrix(to_pods)
        to_nodes = mn.matrix(pods, cluster.members, family=fam)
        assert to_nodes.all_ok, mn.format_matrix(to_nodes)


def test_data_path_is_the_backends(cluster: Cluster) -> None:
    """host-gw/bgp: no tunnel device; vxlan: one; auto: VXLAN only where a peer is off-segment."""
    proto = proto_of(cluster.backend)
    for node in cluster.members:
        tunnels = [link["ifname"] for link in mn.links(node, "vxlan")]
        needs_vxlan = cluster.backend == "vxlan" or (
            cluster.backend == "auto" and any(p.segment != node.segment for p in cluster.members))
        assert tunnels == ([VXLAN_DEV] if needs_vxlan else []), (node, tunnels)
        for peer in cluster.members:
            if peer is node:
                continue
            for sub in (peer.status() or {})["subnets"]:
                fam = ipaddress.ip_network(sub).version
                (route,) = [r for r in mn.routes(node, proto=proto, family=fam) if r["dst"] == sub]
                via = cluster.expected_via(node, peer)
                assert route.get("dev") == (VXLAN_DEV if via == "vxlan" else "eth0"), (node, peer, route)
                if via in ("host-gw", "bgp"):
                    assert route.get("gateway") == str(peer.ip(fam)), route
        snap = kernel_snapshot(node, proto, vxlan=True)
        if "fdb" in snap:
            vxlan_peers = [p for p in cluster.members if p is not node and cluster.expected_via(node, p) == "vxlan"]
            assert {dst for _, dst in snap["fdb"]} >= {str(p.ip()) for p in vxlan_peers}


def sessions_established(node: mn.Node) -> bool:
    """The status file's BGP sessions (rewritten on every reconcile: up to one resync interval old)."""
    sessions = ((node.status() or {}).get("bgp") or {}).get("sessions") or []
    return bool(sessions) and {s["info"] for s in sessions} == {"Established"}


def test_status_file_and_cli_show_every_peer(cluster: Cluster) -> None:
    if cluster.backend == "bgp":
        # The routes are in (the fixture waited), so the sessions are up: the status file follows
        # BIRD within the controller's BGP_STATUS_REFRESH (2 s), not only at the next resync.
        for node in cluster.members:
            wait_for(lambda n=node: sessions_established(n), 4, f"{node}: sessions Established")
    for node in cluster.members:
        status = node.status() or {}
        assert status["ready"] is True and status["datastoreReachable"] is True, status
        assert status["backend"] == cluster.backend
        peers = {p["name"]: p for p in status["peers"] if p["name"] in {m.name for m in cluster.members}}
        others = {m.name: m for m in cluster.members if m is not node}
        assert set(peers) == set(others), status["peers"]
        for name, peer in peers.items():
            assert peer["via"] == cluster.expected_via(node, others[name]), peer
            assert sorted(peer["subnets"]) == sorted((others[name].status() or {})["subnets"])
        out = node.pycni("cluster", "status", "--status-file", str(node.status_file)).stdout
        assert f"{node.name}: ready" in out, out
        assert "UNREACHABLE" not in out, out
        for name in others:
            (line,) = [ln for ln in out.splitlines() if ln.startswith(name + " ")]
            assert peers[name]["subnets"][0] in line and peers[name]["via"] in line, (line, out)
        if cluster.backend == "bgp":
            bgp = status["bgp"]
            assert bgp["running"] and {s["info"] for s in bgp["sessions"]} == {"Established"}, bgp
            assert len(bgp["sessions"]) == len(others)
            assert out.count("Established") == len(others), out


def _join_and_leave(cluster: Cluster, label: str) -> None:
    """The joiner's agent starts: its routes appear on every node; it stops and its lease expires:
    its routes (and FDB/neighbour entries) go everywhere. Both times are measured."""
    joiner, proto = cluster.joiner, proto_of(cluster.backend)
    assert joiner is not None and not joiner.agent_running()
    started = time.monotonic()
    joiner.start_agent("--lease-ttl", str(LEASE_TTL))
    status = ready_status(joiner)
    (sub,) = status["subnets"]
    if cluster.joiner_subnet:  # it left before: its lease expired, its state dir remembers the subnet
        assert sub == cluster.joiner_subnet, (sub, cluster.joiner_subnet)
    cluster.joiner_subnet = sub
    reached = {}
    for node in cluster.members:
        wait_for(lambda n=node: sub in route_dsts(n, proto), 30, f"{sub} on {node}\n{node.log_tail()}")
        reached[node.name] = time.monotonic() - started
    wait_for(lambda: all((m.status() or {}).get("subnets", [None])[0] in route_dsts(joiner, proto)
                         for m in cluster.members), 30, f"routes on {joiner}")
    join_time = max(reached.values())
    if not joiner.pods:
        joiner.add_pod("p1")
    pod = joiner.pods[0]
    assert mn.ping(cluster.members[0].pods[0], pod.ip()), "a pod on node1 cannot reach the joiner's pod"
    assert mn.tcp_probe(pod, cluster.members[0].pods[0]) == str(pod.ip())

    joiner.stop_agent()
    assert joiner.agent_returncode() == 0, joiner.log_tail()
    stopped = time.monotonic()
    address = str(joiner.ip())

    def gone(node: mn.Node) -> bool:
        if sub in route_dsts(node, proto):
            return False
        if mn.links(node, "vxlan"):
            if any(e.get("dst") == address for e in mn.fdb(node, VXLAN_DEV)):
                return False
            if any(n.get("dst") == str(ipaddress.ip_network(sub).network_address) for n in
                   mn.neighbours(node, VXLAN_DEV)):
                return False
        return joiner.name not in {p["name"] for p in (node.status() or {}).get("peers", [])}

    left = {}
    for node in cluster.members:
        wait_for(lambda n=node: gone(n), LEASE_TTL + 30, f"{joiner} gone from {node}\n{node.log_tail()}")
        left[node.name] = time.monotonic() - stopped
    record(f"{label} join (agent start -> route on every node), s", round(join_time, 2))
    record(f"{label} leave (SIGTERM, lease TTL {LEASE_TTL} s -> routes/FDB/neighbours gone everywhere), s",
           round(max(left.values()), 2))


def test_etcd_outage_keeps_traffic_and_the_agents_catch_up(cluster: Cluster) -> None:
    if cluster.backend != "vxlan" or cluster.dual:
        pytest.skip("one etcd outage is enough (vxlan, IPv4)")
    topo, (n1, _, n3) = cluster.topo, cluster.members
    assert topo.etcd is not None
    with mn.PingLoop(n1.pods[0], n3.pods[0].ip(), interval=0.2) as loop:
        time.sleep(0.6)
        stopped = time.monotonic()
        topo.etcd.stop()
        wait_for(lambda: all((m.status() or {}).get("datastoreReachable") is False
                                       for m in cluster.members), 60, "every status: datastore unreachable")
        noticed = time.monotonic() - stopped
        for node in cluster.members:
            status = node.status() or {}
            assert status["ready"] is True, status  # the data path is kept as it is
            out = node.pycni("cluster", "status", "--status-file", str(node.status_file)).stdout
            assert "UNREACHABLE" in out and "ready" in out, out
        assert mn.tcp_probe(n3.pods[0], n1.pods[0]) == str(n3.pods[0].ip())
        # Long enough for a periodic reconcile to run (and fail) during the outage.
        time.sleep(max(0.0, mn.RESYNC_INTERVAL + 1 - (time.monotonic() - stopped)))
        outage = time.monotonic() - stopped
        for node in cluster.members:
            assert (node.status() or {})["ready"] is True
        topo.etcd.start_again()
        back = wait_for(lambda: all((m.status() or {}).get("datastoreReachable") is True
                                    for m in cluster.members), 60, "every status: datastore reachable again")
    stats = loop.stats
    assert stats is not None and stats.max_consecutive_lost <= 1, stats
    record("etcd outage: seconds from SIGTERM to etcd until every status said unreachable", round(noticed, 2))
    record("etcd outage: ping 0.2 s during the outage", f"{stats.sent} sent, {stats.lost} lost, "
           f"{outage:.1f} s outage")
    record("etcd back: seconds until every status said reachable", round(back, 2))
    # A peer change made after the restart is picked up: a node joins (and leaves).
    _join_and_leave(cluster, f"{cluster.backend} after an etcd restart:")


def test_a_node_joins_and_leaves(cluster: Cluster) -> None:
    if cluster.joiner is None:
        pytest.skip("joins are measured on the IPv4 topologies")
    _join_and_leave(cluster, cluster.backend)


def test_kill9_agent_loses_no_traffic_and_restart_duplicates_nothing(cluster: Cluster) -> None:
    if cluster.dual:
        pytest.skip("kill -9 on the IPv4 topologies")
    n1, victim = cluster.members[0], cluster.members[2]
    proto = proto_of(cluster.backend)
    conflist_before = victim.conflist_path.read_bytes()
    subnets_before = (victim.status() or {})["subnets"]
    kernel_before = {n.name: kernel_snapshot(n, proto, vxlan=True) for n in cluster.members}
    with mn.PingLoop(n1.pods[0], victim.pods[0].ip(), interval=0.2) as loop:
        time.sleep(1)
        victim.kill_agent(signal.SIGKILL)
        assert victim.agent_returncode() == -signal.SIGKILL
        time.sleep(2)
        restarted = time.time()
        victim.start_agent()
        wait_for(lambda: (victim.status() or {}).get("updated", 0) > restarted and victim.status()["ready"],
                 60, f"{victim} status after the restart\n{victim.log_tail()}")
        time.sleep(1)
    stats = loop.stats
    assert stats is not None and stats.sent >= 15, stats
    assert stats.max_consecutive_lost <= 1, stats
    record(f"{cluster.backend} kill -9 + restart under a 0.2 s ping",
           f"{stats.sent} sent, {stats.lost} lost, longest gap {stats.longest_gap:.2f} s")
    assert (victim.status() or {})["subnets"] == subnets_before  # from its state dir / the live lease
    assert victim.conflist_path.read_bytes() == conflist_before
    time.sleep(0.5)  # one more reconcile pass would show a duplicate
    for node in cluster.members:
        assert kernel_snapshot(node, proto, vxlan=True) == kernel_before[node.name], node
    assert mn.tcp_probe(n1.pods[0], victim.pods[0]) == str(n1.pods[0].ip())


# --- host-gw across the router; STATUS 50 until the node has its subnet ----------------------------------


def bridge_status(node: mn.Node, status_file: str) -> tuple[int, str]:
    """The bridge plugin's STATUS as a runtime calls it, with the conflist the agent renders."""
    from cni_plugin.cluster import conflist as cf

    settings = cf.ConflistSettings(ipam_data_dir=str(node.ipam_dir), status_file=status_file)
    rendered = cf.render((ipaddress.ip_network("198.18.255.0/24"),), 1500, settings)
    plugin = {"cniVersion": "1.1.0", "name": rendered["name"], **rendered["plugins"][0]}
    assert plugin["clusterStatusFile"] == status_file
    proc = mn.sh("ip", "netns", "exec", node.netns, str(node.bin_dir / "bridge"), check=False, timeout=30,
                 input=json.dumps(plugin), env={"PATH": mn.BASE_PATH, "CNI_COMMAND": "STATUS",
                                                "CNI_PATH": str(node.bin_dir)})
    return proc.returncode, proc.stdout


@pytest.fixture(scope="module")
def routed_hostgw(tmp_path_factory, prefix) -> Iterator[mn.Topology]:
    with mn.Topology(nodes=3, segments=2, prefix=prefix, base=tmp_path_factory.mktemp("routed")) as topo:
        yield topo
        leftover_check = topo
    assert leftover_check.leftovers() == []


def test_status_50_until_the_node_has_its_subnet(routed_hostgw: mn.Topology) -> None:
    topo = routed_hostgw
    start_together(topo.nodes)  # no cluster config in etcd yet
    for node in topo.nodes:
        wait_for(lambda n=node: n.status() is not None, 30, f"{node} status file\n{node.log_tail()}")
        node.wait_agent_socket(30)
    n1 = topo.nodes[0]
    status = n1.status() or {}
    assert status["ready"] is False and status["reason"], status
    assert not n1.conflist_path.exists()
    code, out = bridge_status(n1, str(n1.status_file))
    assert code != 0 and json.loads(out)["code"] == 50, out
    assert "NOT READY" in n1.pycni("cluster", "status", "--status-file", str(n1.status_file)).stdout

    topo.write_etcd_config("host-gw")
    for node in topo.nodes:
        node.wait_conflist(60)
        ready_status(node)
    code, out = bridge_status(n1, str(n1.status_file))
    assert code == 0, out


def test_hostgw_reports_the_off_segment_peer_unreachable(routed_hostgw: mn.Topology) -> None:
    topo = routed_hostgw
    n1, n2, n3 = topo.nodes
    if not all((n.status() or {}).get("ready") for n in topo.nodes):
        pytest.skip("needs the ready cluster of test_status_50_until_the_node_has_its_subnet")
    sub2, sub3 = (n2.status() or {})["subnets"][0], (n3.status() or {})["subnets"][0]
    for node, off in ((n1, n3), (n3, n1)):
        peers = {p["name"]: p for p in (node.status() or {})["peers"]}
        assert peers[off.name]["via"] == "unreachable" and peers[off.name]["reason"], peers
        assert (off.status() or {})["subnets"][0] not in route_dsts(node, PROTO_PYCNI)
        out = node.pycni("cluster", "status", "--status-file", str(node.status_file)).stdout
        off_segment = sum(1 for n in topo.nodes if n.segment != node.segment)
        assert f"{off_segment} UNREACHABLE" in out, out
        (line,) = [ln for ln in out.splitlines() if ln.startswith(off.name + " ")]
        assert "unreachable" in line, out
    assert peers_via(n1)[n2.name] == "host-gw" and sub2 in route_dsts(n1, PROTO_PYCNI)
    assert sub3 not in route_dsts(n1, PROTO_PYCNI)
    pods = [n.add_pod("p1") for n in topo.nodes]
    assert mn.tcp_probe(pods[0], pods[1]) == str(pods[0].ip())      # on-link: host-gw carries it
    assert not mn.ping(pods[0], pods[2].ip(), count=1, timeout=1)   # off-segment: no route, no silent NAT


def peers_via(node: mn.Node) -> dict[str, str]:
    return {p["name"]: p["via"] for p in (node.status() or {})["peers"]}


# --- bgp across two segments with a top-of-rack BIRD ------------------------------------------------------


@pytest.fixture(scope="module")
def bgp_tor(tmp_path_factory, prefix) -> Iterator[mn.Topology]:
    if not os.path.exists("/usr/sbin/bird"):
        pytest.skip("bird2 is not installed")
    with mn.Topology(nodes=4, segments=2, prefix=prefix, base=tmp_path_factory.mktemp("bgptor")) as topo:
        tor = mn.start_tor_bird(topo, NODE_AS, ROUTER_AS)
        topo.tor = tor  # type: ignore[attr-defined]
        peers = [{"address": str(seg.gateways[0].ip), "asNumber": ROUTER_AS} for seg in topo.segments]
        topo.write_etcd_config("bgp", asNumber=NODE_AS, peers=peers, **BGP_TIMERS)
        start_together(topo.nodes[:3])
        topo.nodes[3].start_agent("--lease-ttl", str(LEASE_TTL))
        for node in topo.nodes:
            node.wait_conflist(60)
            ready_status(node)
        for node in topo.nodes:
            wait_for(lambda n=node: sessions_established(n), 3 * mn.RESYNC_INTERVAL, f"{node}: sessions Established")
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda n: n.add_pod("p1"), topo.nodes))
        yield topo
        leftover_check = topo
    assert leftover_check.leftovers() == []


def _bgp_routes_everywhere(topo: mn.Topology, nodes: list[mn.Node]) -> None:
    for node in nodes:
        want = {(p.status() or {})["subnets"][0] for p in nodes if p is not node}
        wait_for(lambda n=node, w=want: w <= set(route_dsts(n, PROTO_BIRD)), 30,
                 f"bgp routes on {node}: {want}\n{node.log_tail()}")


def test_bgp_across_segments_via_the_tor(bgp_tor: mn.Topology) -> None:
    topo = bgp_tor
    _bgp_routes_everywhere(topo, topo.nodes)
    pods = topo.pods
    m = mn.matrix(pods, pods)
    print(mn.format_matrix(m))
    assert_no_nat(m)
    for node in topo.nodes:
        assert mn.links(node, "vxlan") == [], node  # no tunnel: native L3
        status = node.status() or {}
        sessions = status["bgp"]["sessions"]
        assert sessions and {s["info"] for s in sessions} == {"Established"}, sessions
        out = node.pycni("cluster", "status", "--status-file", str(node.status_file)).stdout
        assert out.count("Established") == len(sessions), out
        # Off-segment pod subnets come via the router on this node's segment.
        for peer in topo.nodes:
            if peer.segment != node.segment:
                sub = (peer.status() or {})["subnets"][0]
                (route,) = [r for r in mn.routes(node, proto=PROTO_BIRD) if r["dst"] == sub]
                assert route["gateway"] == str(topo.segments[node.segment].gateways[0].ip), route
    # A client outside the cluster (the router namespace) reaches a pod by its pod address.
    router = mn.Pod(name="client", node=topo.nodes[0], netns=topo.router)  # only its namespace is used
    for pod in pods:
        assert mn.ping(router, pod.ip()), pod
        assert mn.tcp_probe(router, pod) == str(topo.segments[pod.node.segment].gateways[0].ip), pod


def test_bgp_bird_killed_is_restarted_and_traffic_resumes(bgp_tor: mn.Topology) -> None:
    topo = bgp_tor
    n1, victim = topo.nodes[0], topo.nodes[2]
    (pid,) = victim.bird_pids()
    with mn.PingLoop(n1.pods[0], victim.pods[0].ip(), interval=0.2) as loop:
        time.sleep(0.6)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        restarted = wait_for(lambda: victim.bird_pids() and victim.bird_pids() != [pid], 30,
                             f"a new BIRD on {victim}\n{victim.log_tail()}")
        wait_for(lambda: victim.run("ping", "-c", "1", "-W", "1", str(n1.pods[0].ip()), check=False).returncode == 0
                 and mn.ping(n1.pods[0], victim.pods[0].ip(), count=1), 30, "traffic through the new BIRD")
        up = time.monotonic() - killed
        time.sleep(1)
    stats = loop.stats
    assert stats is not None
    record("bgp BIRD kill -9: seconds until the agent restarted it", round(restarted, 2))
    record("bgp BIRD kill -9: seconds until traffic crossed again", round(up, 2))
    record("bgp BIRD kill -9 under a 0.2 s ping", f"{stats.sent} sent, {stats.lost} lost, "
           f"longest gap {stats.longest_gap:.2f} s")
    assert mn.tcp_probe(n1.pods[0], victim.pods[0]) == str(n1.pods[0].ip())
    # The status file follows BIRD every 2 s between reconciles: the restart shows within a few.
    wait_for(lambda: (((victim.status() or {}).get("bgp") or {}).get("restarts", 0) >= 1
                      and ((victim.status() or {}).get("bgp") or {}).get("running")),
             15, f"the BIRD restart in {victim}'s status file")


def test_bgp_node_leaving_is_withdrawn_everywhere(bgp_tor: mn.Topology) -> None:
    topo = bgp_tor
    leaver = topo.nodes[3]
    sub = (leaver.status() or {})["subnets"][0]
    # The node is taken out: its agent stops (BIRD keeps routing: a stopped agent is not a leave),
    # then its BIRD (SIGTERM: a Cease to every peer, so graceful restart does not hold the routes;
    # a node that dies hard keeps its routes for gracefulRestartTime, by design).
    leaver.stop_agent()
    gone_at = time.monotonic()
    for pid in leaver.bird_pids():
        os.kill(pid, signal.SIGTERM)
    for node in topo.nodes[:3]:
        wait_for(lambda n=node: sub not in route_dsts(n, PROTO_BIRD), LEASE_TTL + 30,
                 f"{sub} withdrawn on {node}\n{node.log_tail()}")
    wait_for(lambda: sub not in [r["dst"] for r in mn.routes(topo.router)], 30, f"{sub} withdrawn on the router")
    record("bgp node leaves (agent, then BIRD stopped) -> subnet withdrawn everywhere, s",
           round(time.monotonic() - gone_at, 2))
    for node in topo.nodes[:3]:
        wait_for(lambda n=node: leaver.name not in peers_via(n), LEASE_TTL + 30, f"{leaver} out of {node}'s peers")


# --- the Kubernetes source ------------------------------------------------------------------------


def _in_netns(netns: str, fn: Callable[[], Any]) -> Any:
    """Run fn in a thread that entered `netns` (setns is per thread): sockets it binds live there."""
    out: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
                    raise OSError(ctypes.get_errno(), "setns")
            finally:
                os.close(fd)
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            out["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_kubernetes_source_two_agents(tmp_path_factory, prefix) -> None:
    from tests.kube_apiserver import KubeAPIServer

    base = tmp_path_factory.mktemp("kube")
    with mn.Topology(nodes=2, segments=1, prefix=prefix, base=base, etcd=False) as topo:
        host = str(topo.segments[0].gateways[0].ip)
        api = _in_netns(topo.router, lambda: KubeAPIServer.start(host=host))
        topo.cleanups.append(api.stop)
        kubeconfig = api.write_kubeconfig(topo.base / "kubeconfig")
        cluster_config = topo.base / "cluster.json"
        cluster_config.write_text(json.dumps({"clusterCIDRs": [str(c) for c in topo.cluster_cidrs],
                                              "backend": {"type": "vxlan"}}))
        pod_cidrs = {n.name: str(s[0]) for n, s in zip(topo.nodes, topo.node_subnets().values(), strict=True)}
        for node in topo.nodes:
            api.add_node(node.name, pod_cidrs=[pod_cidrs[node.name]], addresses=[str(node.ip())])
            node.datastore_args = ["--datastore", "kubernetes", "--kubeconfig", str(kubeconfig),
                                   "--cluster-config", str(cluster_config)]
            node.start_agent()
        for node in topo.nodes:
            assert conflist_subnets(node.wait_conflist(60)) == [pod_cidrs[node.name]]
            ready_status(node)
        pods = [n.add_pod("p1") for n in topo.nodes]
        wait_for(lambda: all(pod_cidrs[p.name] in route_dsts(n, PROTO_PYCNI)
                             for n in topo.nodes for p in topo.nodes if p is not n), 30, "vxlan routes")
        m = mn.matrix(pods, pods)
        print(mn.format_matrix(m))
        assert_no_nat(m)
        for node in topo.nodes:
            (dev,) = mn.links(node, "vxlan")
            annotations = api.node(node.name)["metadata"]["annotations"]
            assert annotations.get("pycni.dev/vtep-mac") == dev["address"], annotations
            status = node.status() or {}
            assert status["datastore"] == "kubernetes" and status["datastoreReachable"] is True, status
        leftover_check = topo
    assert leftover_check.leftovers() == []
