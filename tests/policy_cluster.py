"""A fake multi-node cluster for the network-policy tests and scripts/netpol-conformance.

Each node is a network namespace with pycni's bridge (made by the real bridge plugin at the first
ADD, isGateway) and its own pod subnet; the nodes are joined by one veth "underlay" with host-gw
routes to each other's pod subnet. Pods are namespaces wired by the bridge plugin run in-process
in the node's namespace, as a runtime runs it (CNI_ARGS K8S_POD_NAMESPACE/K8S_POD_NAME), so it
records the attachment and waits for the node's policy controller at ADD. One PolicyController per
node (the agent's thread) runs in-process, in its node's namespace, on a shared policy source
(etcd, or the in-memory twin).

Each pod runs one server process answering TCP and UDP (and SCTP when the kernel has it) on the
given ports; probe() connects from inside the source pod's namespace (a thread that setns()es),
so a whole matrix runs concurrently in this process.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cni_plugin import netns
from cni_plugin.cluster.policy_controller import PolicyController, PolicySettings
from tests.conftest import Netns, _add_netns, _del_netns, free_subnet
from tests.integration.bridge_support import run_inproc

BRIDGE = "pycnibr0"
NETWORK = "pycni-np"


def has_sctp() -> bool:
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        return True
    except OSError:
        return False


SERVER = r"""
import socket, sys, threading
ip = sys.argv[1]; ports = [int(p) for p in sys.argv[2].split(",")]; sctp = sys.argv[3] == "1"
fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
def tcp(port, proto):
    s = socket.socket(fam, socket.SOCK_STREAM, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, port)); s.listen(256)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b"ok")
        except OSError:
            pass
        c.close()
def udp(port):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    s.bind((ip, port))
    while True:
        data, peer = s.recvfrom(256)
        s.sendto(b"ok", peer)
for p in ports:
    threading.Thread(target=tcp, args=(p, 0), daemon=True).start()
    threading.Thread(target=udp, args=(p,), daemon=True).start()
    if sctp:
        threading.Thread(target=tcp, args=(p, socket.IPPROTO_SCTP), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


def probe_once(ns_path: str, ip: str, port: int, protocol: str, timeout: float) -> bool:
    """One connection attempt from inside `ns_path`: True when the server answered."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with netns.entered(ns_path):
        try:
            if protocol == "UDP":
                with socket.socket(fam, socket.SOCK_DGRAM) as s:
                    s.settimeout(timeout)
                    s.connect((ip, port))
                    s.send(b"ping")
                    return s.recv(16) == b"ok"
            proto = socket.IPPROTO_SCTP if protocol == "SCTP" else 0
            with socket.socket(fam, socket.SOCK_STREAM, proto) as s:
                s.settimeout(timeout)
                s.connect((ip, port))
                return protocol == "SCTP" or s.recv(16) == b"ok"
        except OSError:
            return False


@dataclass
class Pod:
    key: str
    node: str
    ns: Netns
    ip: str
    cid: str
    server: subprocess.Popen[str] | None = None


@dataclass
class Node:
    name: str
    ns: Netns
    subnet: ipaddress.IPv4Network
    underlay: str
    base: Path
    controller: PolicyController | None = None

    @property
    def attachments(self) -> Path:
        return self.base / "attachments"


@dataclass
class FakeCluster:
    base: Path
    source: Any
    node_names: tuple[str, ...] = ("node-1", "node-2")
    resync_interval: float = 30.0
    # A source per node (a stateful source such as KubernetesPolicySource must not be shared).
    source_for: Callable[[str], Any] | None = None
    nodes: dict[str, Node] = field(default_factory=dict)
    pods: dict[str, Pod] = field(default_factory=dict)
    _extra: list[Netns] = field(default_factory=list)

    # --- set-up ----------------------------------------------------------------------------

    def start(self) -> FakeCluster:
        tag = uuid.uuid4().hex[:6]
        wide = free_subnet(4, 22)
        subnets = list(wide.subnets(new_prefix=24))
        link = free_subnet(4, 29)
        hosts = list(link.hosts())
        for i, name in enumerate(self.node_names):
            ns = _add_netns(f"pycni-npn{i}")
            node = Node(name, ns, subnets[i], str(hosts[i]), self.base / name)
            node.base.mkdir(parents=True, exist_ok=True)
            self.nodes[name] = node
            ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        # The underlay: a bridge in the first node's namespace would mix roles; a veth pair for
        # two nodes, a small switch namespace for more.
        names = list(self.nodes)
        switch = _add_netns("pycni-npsw")
        self._extra.append(switch)
        switch.run("ip", "link", "add", "sw", "type", "bridge")
        switch.run("ip", "link", "set", "sw", "up")
        for i, name in enumerate(names):
            node = self.nodes[name]
            port = f"u{i}{tag}"
            subprocess.run(["ip", "-n", switch.name, "link", "add", port, "type", "veth", "peer", "name", "uplink",
                            "netns", node.ns.name], check=True)
            switch.run("ip", "link", "set", port, "master", "sw", "up")
            node.ns.run("ip", "addr", "add", f"{node.underlay}/{link.prefixlen}", "dev", "uplink")
            node.ns.run("ip", "link", "set", "uplink", "up")
        for name in names:
            for other in names:
                if other != name:
                    o = self.nodes[other]
                    self.nodes[name].ns.run("ip", "route", "add", str(o.subnet), "via", o.underlay)
        for node in self.nodes.values():
            settings = PolicySettings(node_name=node.name, attachments_dir=str(node.attachments),
                                      resync_interval=self.resync_interval, status_file=str(node.base / "status.json"),
                                      netns_path=node.ns.path)
            source = self.source_for(node.name) if self.source_for else self.source
            node.controller = PolicyController(source, settings)
            node.controller.start()
        return self

    def conf(self, node: Node) -> dict[str, Any]:
        return {
            "cniVersion": "1.0.0", "name": NETWORK, "type": "pycni-bridge", "bridge": BRIDGE, "isGateway": True,
            "attachmentsDir": str(node.attachments),
            "ipam": {"type": "host-local", "dataDir": str(node.base / "ipam"),
                     "ranges": [[{"subnet": str(node.subnet)}]], "routes": [{"dst": "0.0.0.0/0"}]},
        }

    def add_pod(self, key: str, node_name: str, ports: Iterable[int] = (), sctp: bool = False) -> Pod:
        node = self.nodes[node_name]
        ns = _add_netns("pycni-npp")
        cid = f"np{uuid.uuid4().hex[:12]}"
        namespace, name = key.split("/")
        rc, out, err = run_inproc(node.ns, "ADD", self.conf(node), cid, ns.path,
                                  CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}")
        if rc != 0:
            _del_netns(ns)
            raise RuntimeError(f"ADD {key} failed: {out} {err}")
        ip = out["ips"][0]["address"].split("/")[0]  # type: ignore[index]
        pod = Pod(key, node_name, ns, ip, cid)
        self.pods[key] = pod
        ports = list(ports)
        if ports:
            self.serve(pod, ports, sctp)
        return pod

    def serve(self, pod: Pod, ports: list[int], sctp: bool) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", pod.ns.name, sys.executable, "-c", SERVER, pod.ip,
                                 ",".join(map(str, ports)), "1" if sctp else "0"], stdout=subprocess.PIPE, text=True)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"server in {pod.key} did not start")
        pod.server = proc

    def del_pod(self, key: str) -> None:
        pod = self.pods.pop(key)
        if pod.server is not None:
            pod.server.kill()
            pod.server.wait()
        node = self.nodes[pod.node]
        run_inproc(node.ns, "DEL", self.conf(node), pod.cid, pod.ns.path)
        _del_netns(pod.ns)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.controller is not None:
                node.controller.stop()
        for pod in list(self.pods.values()):
            if pod.server is not None:
                pod.server.kill()
                with contextlib.suppress(Exception):
                    pod.server.wait(5)
            _del_netns(pod.ns)
        self.pods.clear()
        for node in self.nodes.values():
            _del_netns(node.ns)
        for ns in self._extra:
            _del_netns(ns)

    # --- driving ---------------------------------------------------------------------------

    def wait_applied(self, revision: int, timeout: float = 30.0) -> float:
        """Until every node's controller applied a snapshot at or after `revision`; seconds."""
        start = time.monotonic()
        for node in self.nodes.values():
            assert node.controller is not None
            node.controller.request()
        while time.monotonic() - start < timeout:
            done = True
            for node in self.nodes.values():
                c = node.controller
                assert c is not None
                rev = c.applied_revision
                if not c.last.ok or not rev.isdigit() or int(rev) < revision:
                    done = False
            if done:
                return time.monotonic() - start
            time.sleep(0.01)
        errors = {n.name: n.controller.last.error for n in self.nodes.values() if n.controller}
        raise TimeoutError(f"revision {revision} not applied within {timeout}s: {errors}")

    def matrix(self, port: int, protocol: str, timeout: float = 2.5,
               pairs: list[tuple[str, str]] | None = None) -> dict[tuple[str, str], bool]:
        """Every pod to every other pod (or `pairs`), concurrently.

        The default timeout outlasts TCP's first SYN retransmission (1 s): an allowed pair whose
        first SYN was lost (a neighbour entry still being resolved, on a node shared by the whole
        suite) still reads as reachable. Probes that only expect "denied" pass a short timeout."""
        if pairs is None:
            pairs = [(a, b) for a in self.pods for b in self.pods if a != b]
        with ThreadPoolExecutor(max_workers=min(96, len(pairs) or 1)) as pool:
            futures = {p: pool.submit(probe_once, self.pods[p[0]].ns.path, self.pods[p[1]].ip, port, protocol, timeout)
                       for p in pairs}
            return {p: f.result() for p, f in futures.items()}

    def nft(self, node: str) -> dict[str, Any]:
        out = self.nodes[node].ns.run("nft", "-j", "list", "table", "inet", "pycni").stdout
        return json.loads(out)  # type: ignore[no-any-return]


def pod_object(key: str, labels: dict[str, str], ports: list[tuple[str, int, str]]) -> dict[str, Any]:
    ns, name = key.split("/")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": n, "containerPort": p, "protocol": pr}
                                                            for n, p, pr in ports]}]}}


def namespace_object(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
