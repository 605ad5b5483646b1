"""The multi-node harness itself (tests/multinode.py), proven without the cluster agent.

Two topologies: three nodes on one underlay segment, and 2+1 nodes on two segments joined by a
router (the L3 case: nodes on different segments are not on-link). In each: nodes ping each other
over the underlay, etcd answers GET /version inside every node, each node gets a static conflist
(bridge + host-local on its own subnet of the picked cluster CIDR, portmap) and two pods added by
cnitool through the node's own shim directory (no agent listening: the shims run in-process), routes
are added by hand (host-gw between on-link nodes, plus the router for the other segment), and then
every pod reaches every pod with its own source address (no NAT). Teardown leaves no namespace,
no veth and no process of the run behind.
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests import multinode as mn

pytestmark = pytest.mark.integration


_prefix_of = mn.prefix_of  # the install prefix behind the session's installed_bin


def _wire_static(topo: mn.Topology, pods_per_node: int = 2) -> None:
    subnets = topo.node_subnets()
    for node in topo.nodes:
        node.write_conflist(mn.static_conflist(node, subnets[node.name]))
    topo.add_hand_routes(subnets)
    jobs = [(node, f"p{i}") for node in topo.nodes for i in range(pods_per_node)]
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        list(pool.map(lambda job: job[0].add_pod(job[1]), jobs))
    for node in topo.nodes:
        for pod in node.pods:
            for addr in pod.addresses.values():
                assert any(addr[0] in sub for sub in subnets[node.name]), (pod, addr, subnets[node.name])


def _assert_no_nat(m: mn.Matrix) -> None:
    print(mn.format_matrix(m))
    assert m.all_ok, mn.format_matrix(m)
    for cell in m.cells:
        assert isinstance(cell.src, mn.Pod)
        assert cell.tcp_seen == str(cell.src.ip(m.family)), cell  # the receiver saw the sender's own address


def _assert_gone(topo: mn.Topology) -> None:
    assert topo.leftovers() == []
    assert not [n for n in mn.sh("ip", "netns", "list").stdout.split() if n.startswith(topo.tag)]


def test_one_segment_three_nodes(tmp_path, installed_bin):
    with mn.Topology(nodes=3, segments=1, base=tmp_path, prefix=_prefix_of(installed_bin)) as topo:
        under = mn.matrix(topo.nodes, topo.nodes)
        assert under.all_ok, mn.format_matrix(under)
        assert len({n.ip() for n in topo.nodes}) == 3
        for node in topo.nodes:
            assert not mn.routes(node, proto="kernel", family=4) == []  # eth0's on-link subnet
            version = json.loads(node.http_get(f"{topo.etcd.endpoint}/version"))
            assert "etcdserver" in version
            assert {"bridge", "host-local", "loopback", "portmap"} <= {p.name for p in node.bin_dir.iterdir()}
            assert str(node.agent_socket).encode() in (node.bin_dir / "bridge").read_bytes()  # this node's socket

        doc = topo.write_etcd_config("host-gw")
        assert json.loads(topo.read_etcd_key("/pycni/config") or b"null") == doc
        assert doc["clusterCIDRs"] == [str(topo.cluster_cidrs[0])] and doc["backend"] == {"type": "host-gw"}

        _wire_static(topo)
        assert len(topo.pods) == 6
        _assert_no_nat(mn.matrix(topo.pods, topo.pods))
        node_to_pod = mn.matrix(topo.nodes, topo.pods)
        assert node_to_pod.all_ok, mn.format_matrix(node_to_pod)
        # Kernel-state helpers see what the test made: host-gw routes and the pods' bridge.
        n1 = topo.nodes[0]
        static = {r["dst"] for r in mn.routes(n1, proto="static")}
        assert static == {str(s[0]) for name, s in topo.node_subnets().items() if name != n1.name}
        assert [link["ifname"] for link in mn.links(n1, "bridge")] == ["pycni0"]
        assert mn.fdb(n1, "pycni0")
        assert any(n["dst"] == str(topo.nodes[1].ip()) for n in mn.neighbours(n1, "eth0"))

        # Agent helpers (today's warm pycni-agent stands in for the cluster agent here): start,
        # a pod through it, kill -9 mid-ping (the dataplane is the kernel's: nothing is lost), restart.
        warm = ["ip", "netns", "exec", n1.netns, str(n1.venv / "bin" / "pycni-agent"),
                "--socket", str(n1.agent_socket), "--log-requests"]
        n1.start_agent(argv=warm)
        n1.wait_agent_socket(60)
        assert n1.agent_running()
        pod = n1.add_pod("via-agent")
        assert "ADD" in n1.log_tail(), n1.log_tail()
        peer = topo.nodes[2].pods[0]
        with mn.PingLoop(pod, peer.ip(), interval=0.1) as loop:
            mn.time.sleep(0.6)
            n1.kill_agent(signal.SIGKILL)
            assert not n1.agent_running()
            assert n1.agent_returncode() == -signal.SIGKILL
            mn.time.sleep(0.6)
        stats = loop.stats
        assert stats is not None and stats.sent >= 8 and stats.lost == 0, stats
        assert stats.longest_gap < 0.5, stats
        n1.start_agent(argv=warm)
        n1.wait_agent_socket(60)
        n1.del_pod(pod)  # DEL through the restarted agent
        n1.stop_agent()
        assert n1.agent_returncode() == 0
        # A lost path is measured as lost: the loop sees the gap when the route goes.
        with mn.PingLoop(topo.nodes[1].pods[0], peer.ip(), interval=0.1) as loop:
            mn.time.sleep(0.4)
            sub = topo.node_subnets()[topo.nodes[2].name][0]
            mn.sh("ip", "-n", topo.nodes[1].netns, "route", "del", str(sub))
            mn.time.sleep(0.6)
        assert loop.stats is not None and loop.stats.lost >= 3 and loop.stats.max_consecutive_lost >= 3, loop.stats
    _assert_gone(topo)


def test_two_segments_routed_dual_stack(tmp_path, installed_bin):
    with mn.Topology(nodes=3, segments=2, base=tmp_path, prefix=_prefix_of(installed_bin), dual_stack=True) as topo:
        a, b, c = topo.nodes
        assert (a.segment, b.segment, c.segment) == (0, 0, 1)
        for family in (4, 6):
            under = mn.matrix(topo.nodes, topo.nodes, family=family)
            assert under.all_ok, mn.format_matrix(under)
        # Not on-link: a reaches c only through its gateway (the router), b directly.
        assert "gateway" in json.loads(a.run("ip", "-j", "route", "get", str(c.ip())).stdout)[0]
        assert "gateway" not in json.loads(a.run("ip", "-j", "route", "get", str(b.ip())).stdout)[0]
        for node in topo.nodes:
            assert "etcdserver" in json.loads(node.http_get(f"{topo.etcd.endpoint}/version"))
        assert [c.version for c in topo.cluster_cidrs] == [4, 6]
        assert topo.cluster_cidrs[0].prefixlen == 16 and topo.cluster_cidrs[1].prefixlen == 56
        for seg in topo.segments:
            assert not any(s.overlaps(c) for s in seg.subnets for c in topo.cluster_cidrs if s.version == c.version)

        _wire_static(topo)
        for pod in topo.pods:
            assert set(pod.addresses) == {4, 6}
            assert ipaddress.ip_address(pod.ip(6)) in topo.cluster_cidrs[1]
        _assert_no_nat(mn.matrix(topo.pods, topo.pods, family=4))
        _assert_no_nat(mn.matrix(topo.pods, topo.pods, family=6, udp=False))
    _assert_gone(topo)


def test_teardown_on_failure_and_interrupt(tmp_path, installed_bin):
    with pytest.raises(KeyboardInterrupt):  # noqa: PT012 - the interrupt comes from inside the block
        with mn.Topology(nodes=2, segments=2, base=tmp_path, prefix=_prefix_of(installed_bin), etcd=False) as topo:
            node = topo.nodes[0]
            node.write_conflist(mn.static_conflist(node, topo.node_subnets()[node.name]))
            node.add_pod("p0")
            raise KeyboardInterrupt
    _assert_gone(topo)


def test_cluster_demo_no_agent(installed_bin):
    """scripts/cluster-demo's topology, pods, matrix and teardown (the agent-free path)."""
    proc = subprocess.run(
        [sys.executable, str(mn.REPO / "scripts" / "cluster-demo"), "--nodes", "2", "--segments", "2",
         "--pods-per-node", "1", "--no-agent", "--prefix", str(_prefix_of(installed_bin))],
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2/2 pairs reached with the sender's own address" in proc.stdout, proc.stdout
    assert "PASS" in proc.stdout
    tag = re.search(r"netns (pcd\w+)-n1", proc.stdout)
    assert tag, proc.stdout
    assert not [n for n in mn.sh("ip", "netns", "list").stdout.split() if n.startswith(tag.group(1))]
    assert not [p for p in Path("/tmp").glob(f"{tag.group(1)}-*")]
