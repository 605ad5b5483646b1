"""Network policy across real nodes of the multi-node harness (tests/multinode.py): every node runs
pycni-agent with --datastore etcd (its cluster controller and its policy controller), pods are
added with cnitool as a runtime adds them, policies are written with `pycni apply -f` into the
harness's etcd. host-gw and VXLAN: a policy holds for pods on one node and across nodes, and the
node's agent killed with -9 leaves it enforced; the next agent applies what changed meanwhile.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from tests.multinode import Topology, prefix_of, sh, tcp_probe

pytestmark = pytest.mark.integration

POLICY = """
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {role: client}}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: default, labels: {role: other}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web-from-clients, namespace: default}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{podSelector: {matchLabels: {role: client}}}]}]
"""

DENY_B = """
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-isolated, namespace: default}
spec: {podSelector: {matchLabels: {role: client}}}
"""


def _pycni(topo: Topology, *args: str) -> str:
    node = topo.nodes[0]
    assert topo.etcd is not None
    return sh("ip", "netns", "exec", topo.router, str(node.venv / "bin" / "pycni"), *args,
              "--etcd-endpoints", topo.etcd.endpoint).stdout


def _applied(node, timeout: float = 30) -> dict:  # type: ignore[no-untyped-def]
    """The node's policy status once its last pass succeeded after now."""
    path = node.policy_status_file
    start = time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status = json.loads(path.read_text())
            if status["ok"] and status["lastSync"] >= start:
                return status
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{node.name}: no policy pass: {path.read_text() if path.exists() else 'no status'}")


def _settled(src, dst, allowed: bool, timeout: float = 15) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        got = tcp_probe(src, dst, timeout=0.5) is not None
        if got == allowed or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


_prefix = prefix_of  # the install prefix behind the session's installed_bin


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_policy_across_nodes(tmp_path: Path, installed_bin: Path, backend: str) -> None:
    with Topology(nodes=2, base=tmp_path, prefix=_prefix(installed_bin)) as topo:
        topo.write_etcd_config(backend)
        for node in topo.nodes:
            node.start_agent()
        for node in topo.nodes:
            conf = node.wait_conflist(60)
            assert conf["plugins"][0]["attachmentsDir"] == str(node.attachments_dir)
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        out = _pycni(topo, "apply", "-f", str(policy))
        assert "NetworkPolicy default/web-from-clients applied" in out
        n1, n2 = topo.nodes
        a = n1.add_pod("a")
        c = n1.add_pod("c")  # same node as a, not a client
        b = n2.add_pod("b")  # the client, on the other node
        assert tcp_probe(c, a, timeout=0.5) is None  # a is isolated before anything else happened
        assert _settled(b, a, True)  # the client across nodes (node-1 learns b's address from etcd)
        assert tcp_probe(c, a, timeout=0.5) is None
        assert tcp_probe(a, b) is not None and tcp_probe(a, c) is not None
        # kill -9: the kernel keeps enforcing; a change made meanwhile is applied by the next agent.
        n1.kill_agent()
        assert tcp_probe(c, a, timeout=0.5) is None and tcp_probe(b, a) is not None
        deny = tmp_path / "deny.yaml"
        deny.write_text(DENY_B)
        _pycni(topo, "apply", "-f", str(deny))
        assert not _settled(a, b, False), (n2.policy_status_file.read_text(), n2.log_tail(2000))  # node-2 isolates b
        n1.start_agent()
        _applied(n1)
        assert tcp_probe(c, a, timeout=0.5) is None
        assert tcp_probe(b, a, timeout=0.5) is not None  # b's egress is not isolated, a allows it
        _pycni(topo, "delete", "-f", str(deny))
        _pycni(topo, "delete", "-f", str(policy))
        assert _settled(c, a, True) and _settled(a, b, True)


def test_policy_dual_stack_ipv6_too(tmp_path: Path, installed_bin: Path) -> None:
    """Dual-stack pods: the same policy holds over IPv6, same node and across nodes (VXLAN)."""
    with Topology(nodes=2, base=tmp_path, prefix=_prefix(installed_bin), dual_stack=True) as topo:
        topo.write_etcd_config("vxlan")
        for node in topo.nodes:
            node.start_agent()
        for node in topo.nodes:
            node.wait_conflist(60)
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        _pycni(topo, "apply", "-f", str(policy))
        n1, n2 = topo.nodes
        a, c, b = n1.add_pod("a"), n1.add_pod("c"), n2.add_pod("b")
        for family in (4, 6):
            assert tcp_probe(c, a, family=family, timeout=0.5) is None, family
            deadline = time.monotonic() + 15
            while tcp_probe(b, a, family=family, timeout=0.5) is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert tcp_probe(b, a, family=family) is not None, family
            assert tcp_probe(a, c, family=family) is not None, family
