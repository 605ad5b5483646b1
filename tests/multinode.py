"""A multi-node cluster on one machine: node namespaces on an underlay, a real etcd, per-node plugins.

Test tooling (imported by the cluster tests and by scripts/cluster-demo; no pytest in here):

    with Topology(nodes=3, segments=1, base=tmp_path, prefix=install_prefix) as topo:
        topo.etcd.endpoint                      # etcd in the router namespace, on its gateway address
        node = topo.nodes[0]
        node.start_agent()                      # pycni-agent inside the node namespace (AGENT_FLAGS)
        node.wait_conflist(30)                  # <conf_dir>/10-pycni.conflist, written by the agent
        pod = node.add_pod("a")                 # cnitool add, run in the node namespace, as a runtime
        print(format_matrix(matrix(topo.pods, topo.pods)))

Layout (every namespace name carries the run tag `<tag>` = prefix + pid + random, so parallel runs
never collide, and teardown can prove that nothing of this run is left):

    segments=1:  <tag>-rt  bridge ul0 (gateway .1, etcd)  ── veth ── <tag>-node1 eth0 (.11), ...
    segments=2:  <tag>-rt  bridges ul0 and ul1 (two subnets, ip_forward on: the router between
                 them); nodes split across ul0/ul1, default route via their segment's gateway, so
                 nodes on different segments are not on-link (the L3 case).

Veths are created directly inside the namespaces (never in the machine's namespace). Subnets come
from the RFC 2544 pool (IPv4) and fd5c:11a0::/32 (IPv6), picked at run time to overlap no route of
this machine; the pod cluster CIDRs (a /16 and a /56) are picked the same way, apart from the
underlay. Teardown (also on failure and Ctrl-C) deletes pods, stops every process it started,
deletes every namespace, and removes cnitool's result cache files of this run's pods.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.etcd_support import EtcdServer

REPO = Path(__file__).resolve().parent.parent
CNITOOL = os.environ.get("PYCNI_CNITOOL", "/usr/local/bin/cnitool")
# libcni caches results here; cnitool has no flag to move it (removed for our pods at teardown).
CNI_RESULTS_CACHE = Path("/var/lib/cni/results")
BASE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
TEST_V4_POOL = ipaddress.ip_network("198.18.0.0/15")
TEST_V6_POOL = ipaddress.ip_network("fd5c:11a0::/32")
CONFLIST_NAME = "10-pycni.conflist"
ECHO_PORT = 7007
UNIX_PATH_MAX = 107

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


# --- the agent's command line: the contract with cni_plugin.agent (one place to adjust) ------------

RESYNC_INTERVAL = 5


def agent_argv(node: Node, etcd_endpoint: str, *extra: str, datastore: Sequence[str] | None = None) -> list[str]:
    """`ip netns exec <node> <venv>/bin/pycni-agent ...`: how every node's agent is started.
    `datastore` replaces the etcd flags (e.g. --datastore kubernetes --kubeconfig F --cluster-config F)."""
    node_ips = ",".join(str(a.ip) for a in node.uplink)
    return [
        "ip", "netns", "exec", node.netns, str(node.venv / "bin" / "pycni-agent"),
        "--socket", str(node.agent_socket),
        *(datastore if datastore is not None else ("--datastore", "etcd", "--etcd-endpoints", etcd_endpoint)),
        "--node-name", node.name,
        "--node-ip", node_ips,
        "--cni-conf-dir", str(node.conf_dir),
        "--ipam-data-dir", str(node.ipam_dir),
        "--state-dir", str(node.state_dir),
        "--status-file", str(node.status_file),
        # Each node its own: the attachment records and the sync socket a bridge ADD waits on
        # (the namespaces share this machine's /run), and the policy controller's status.
        "--attachments-dir", str(node.attachments_dir),
        "--policy-status-file", str(node.policy_status_file),
        "--resync-interval", str(RESYNC_INTERVAL),
        "--log-requests",
        *extra,
    ]


# --- small helpers --------------------------------------------------------------------------------


def sh(*argv: str, check: bool = True, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ip_json(netns: str, *argv: str) -> list[dict[str, Any]]:
    out = sh("ip", "-n", netns, "-j", *argv).stdout
    return json.loads(out or "[]")


def machine_routes() -> list[IPNetwork]:
    routes: list[IPNetwork] = []
    for family in ("-4", "-6"):
        out = sh("ip", family, "-j", "route", "show", "table", "all", check=False).stdout
        for entry in json.loads(out or "[]"):
            dst = entry.get("dst", "")
            if dst and dst != "default":
                with contextlib.suppress(ValueError):
                    routes.append(ipaddress.ip_network(dst, strict=False))
    return routes


def free_subnet(version: int = 4, prefix: int | None = None, avoid: Iterable[IPNetwork] = ()) -> IPNetwork:
    """A random subnet of the test pool that overlaps no route of this machine and nothing in `avoid`.

    The same picking as tests/conftest.py free_subnet (kept pytest-free for scripts/cluster-demo).
    """
    pool = TEST_V4_POOL if version == 4 else TEST_V6_POOL
    prefix = prefix or (24 if version == 4 else 64)
    taken = [r for r in [*machine_routes(), *avoid] if r.version == version]
    span = 2 ** (prefix - pool.prefixlen)
    for _ in range(500):
        offset = random.randrange(span) << (pool.max_prefixlen - prefix)
        subnet = ipaddress.ip_network((int(pool.network_address) + offset, prefix))
        if not any(subnet.overlaps(r) for r in taken):  # type: ignore[arg-type]
            return subnet
    raise RuntimeError(f"no free IPv{version} /{prefix} in {pool}")


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def _stop_process(proc: subprocess.Popen[Any] | None, sig: int = signal.SIGTERM, timeout: float = 10) -> None:
    """Signal a child started in its own session (the whole group) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# --- the echo server and the probe client (stdlib only; run with the venv's python -IS) ------------

ECHO_SERVER = r'''
import socket, sys, threading
port = int(sys.argv[1])
def family():
    try:
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.close(); return socket.AF_INET6
    except OSError:
        return socket.AF_INET
fam = family()
host = "::" if fam == socket.AF_INET6 else "0.0.0.0"
def bound(kind):
    s = socket.socket(fam, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind((host, port))
    return s
def plain(addr):
    return addr[7:] if addr.startswith("::ffff:") else addr
tcp = bound(socket.SOCK_STREAM); tcp.listen(64)
udp = bound(socket.SOCK_DGRAM)
def serve_udp():
    while True:
        data, peer = udp.recvfrom(512)
        udp.sendto(plain(peer[0]).encode() + b"\n", peer)
threading.Thread(target=serve_udp, daemon=True).start()
sys.stdout.write("ready\n"); sys.stdout.flush()
while True:
    conn, peer = tcp.accept()
    try:
        conn.sendall(plain(peer[0]).encode() + b"\n")
    except OSError:
        pass
    conn.close()
'''

PROBE_CLIENT = r'''
import socket, sys
kind, host, port, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
try:
    if kind == "tcp":
        s = socket.create_connection((host, port), timeout=timeout)
        data = s.recv(512)
    else:
        s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(timeout)
        s.sendto(b"?", (host, port)); data = s.recv(512)
except OSError as exc:
    sys.stderr.write(f"{exc}\n"); sys.exit(1)
sys.stdout.write(data.decode().strip())
'''


# --- nodes and pods -------------------------------------------------------------------------------


@dataclass
class Pod:
    name: str
    node: Node
    netns: str
    interface: str = "eth0"
    addresses: dict[int, list[IPInterface]] = field(default_factory=dict)
    result: dict[str, Any] = field(default_factory=dict)
    network: str = ""
    echo: subprocess.Popen[str] | None = None

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"

    def ip(self, family: int = 4) -> IPAddress:
        found = self.addresses.get(family)
        if not found:
            raise LookupError(f"pod {self.name} has no IPv{family} address: {self.result}")
        return found[0].ip

    def own_addresses(self) -> set[str]:
        return {str(a.ip) for addrs in self.addresses.values() for a in addrs}

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.netns, *argv, check=check, timeout=timeout)

    def start_echo(self, port: int = ECHO_PORT) -> None:
        """The TCP+UDP server answering each peer with the source address it saw (the no-NAT check)."""
        if self.echo is not None and self.echo.poll() is None:
            return
        script = self.node.topology.base / "echo_server.py"
        self.echo = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, str(self.node.python), "-IS", str(script), str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )
        assert self.echo.stdout is not None
        line = self.echo.stdout.readline()  # "ready" once both sockets are bound
        if line.strip() != "ready":
            _stop_process(self.echo, signal.SIGKILL)
            raise RuntimeError(f"echo server in {self.netns} did not start")

    def stop_echo(self) -> None:
        _stop_process(self.echo, signal.SIGKILL)
        self.echo = None

    def __str__(self) -> str:
        return f"{self.node.name}/{self.name}"


@dataclass
class Node:
    name: str
    netns: str
    topology: Topology
    segment: int
    uplink: list[IPInterface]   # eth0's underlay addresses: IPv4 first, then IPv6 when dual-stack
    gateway: list[IPAddress]
    root: Path
    bin_dir: Path
    agent_socket: Path
    agent: subprocess.Popen[bytes] | None = None
    pods: list[Pod] = field(default_factory=list)
    # Replaces the agent's etcd flags when set (the Kubernetes source: see agent_argv).
    datastore_args: list[str] | None = None

    # Paths the agent is given (all private to this node and this run).
    @property
    def conf_dir(self) -> Path:
        return self.root / "net.d"

    @property
    def ipam_dir(self) -> Path:
        return self.root / "ipam"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def attachments_dir(self) -> Path:
        return self.root / "attachments"

    @property
    def policy_status_file(self) -> Path:
        return self.root / "policy-status.json"

    @property
    def status_file(self) -> Path:
        return self.root / "status.json"

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    @property
    def path(self) -> str:
        return f"/run/netns/{self.netns}"

    @property
    def venv(self) -> Path:
        return self.topology.prefix / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python3"

    @property
    def conflist_path(self) -> Path:
        return self.conf_dir / CONFLIST_NAME

    def ip(self, family: int = 4) -> IPAddress:
        for a in self.uplink:
            if a.version == family:
                return a.ip
        raise LookupError(f"node {self.name} has no IPv{family} underlay address")

    def own_addresses(self) -> set[str]:
        return {a["local"] for link in ip_json(self.netns, "addr", "show") for a in link.get("addr_info", [])}

    def run(self, *argv: str, check: bool = True, timeout: float = 30,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.netns, *argv, check=check, timeout=timeout, env=env)

    def http_get(self, url: str, timeout: float = 2) -> str:
        """GET `url` from inside the node namespace (e.g. etcd's /version)."""
        code = (f"import urllib.request, sys; "
                f"sys.stdout.write(urllib.request.urlopen({url!r}, timeout={timeout}).read().decode())")
        return self.run(str(self.python), "-IS", "-c", code, timeout=timeout + 10).stdout

    # --- the agent ---------------------------------------------------------------------------------

    def agent_command(self, *extra: str) -> list[str]:
        if self.datastore_args is not None:
            return agent_argv(self, "", *extra, datastore=self.datastore_args)
        assert self.topology.etcd is not None
        return agent_argv(self, self.topology.etcd.endpoint, *extra)

    def status(self) -> dict[str, Any] | None:
        """The agent's status file (what `pycni cluster status` shows), or None before the first write."""
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return None

    def pycni(self, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """The installed `pycni` admin CLI, run inside the node namespace (as an operator on the node)."""
        return self.run(str(self.venv / "bin" / "pycni"), *argv, check=check, timeout=timeout,
                        env={"PATH": BASE_PATH})

    def bird_pids(self) -> list[int]:
        """Processes of BIRD started by this node's agent (its config lives in the node's state dir)."""
        conf = str(self.state_dir / "bird")
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmd = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"bird") and any(conf.encode() in part for part in cmd):
                found.append(int(proc.name))
        return found

    def start_agent(self, *extra_args: str, argv: Sequence[str] | None = None) -> None:
        """Start this node's agent (agent_argv + extra_args; `argv` replaces the whole command)."""
        if self.agent_running():
            raise RuntimeError(f"agent of {self.name} already runs (pid {self.agent.pid})")  # type: ignore[union-attr]
        for d in (self.conf_dir, self.ipam_dir, self.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", BASE_PATH)}
        command = list(argv) if argv is not None else self.agent_command(*extra_args)
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')}: {' '.join(command)}\n".encode())
            log.flush()
            # Own session: Ctrl-C on the demo does not reach it; teardown stops it in order.
            self.agent = subprocess.Popen(command, stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL, env=env, start_new_session=True)

    def agent_running(self) -> bool:
        return self.agent is not None and self.agent.poll() is None

    def wait_agent_socket(self, timeout: float = 30) -> None:
        """Until the agent accepts on its socket (fails early with the log if it exited)."""
        def ready() -> bool:
            if not self.agent_running():
                raise RuntimeError(f"agent of {self.name} exited ({self.agent_returncode()}):\n{self.log_tail()}")
            with socket.socket(socket.AF_UNIX) as probe:
                try:
                    probe.connect(str(self.agent_socket))
                except OSError:
                    return False
            return True
        _wait(ready, timeout, f"agent socket of {self.name}")

    def agent_returncode(self) -> int | None:
        return None if self.agent is None else self.agent.poll()

    def kill_agent(self, sig: int = signal.SIGKILL) -> None:
        _stop_process(self.agent, sig)

    def stop_agent(self) -> None:
        self.kill_agent(signal.SIGTERM)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no agent log)"

    def wait_conflist(self, timeout: float = 30) -> dict[str, Any]:
        """The conflist the agent writes (atomically) once this node has its pod subnet."""
        def read() -> dict[str, Any] | None:
            if self.agent is not None and not self.agent_running():
                raise RuntimeError(f"agent of {self.name} exited ({self.agent_returncode()}):\n{self.log_tail()}")
            try:
                return json.loads(self.conflist_path.read_text())
            except (OSError, ValueError):
                return None
        try:
            return _wait(read, timeout, f"{self.conflist_path}")
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}; status {self.status()}; agent log {self.log_path}:\n"
                               f"{self.log_tail()}") from None

    def write_conflist(self, conflist: dict[str, Any]) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.conflist_path.with_name(f".{CONFLIST_NAME}.tmp")
        tmp.write_text(json.dumps(conflist, indent=2))
        tmp.replace(self.conflist_path)

    def network_name(self) -> str:
        for path in sorted(self.conf_dir.glob("*.conflist")):
            with contextlib.suppress(OSError, ValueError, KeyError):
                return str(json.loads(path.read_text())["name"])
        raise LookupError(f"no conflist in {self.conf_dir}")

    # --- pods, as a runtime adds them -------------------------------------------------------------

    def cni_env(self, pod_name: str) -> dict[str, str]:
        return {
            "PATH": BASE_PATH,
            "NETCONFPATH": str(self.conf_dir),
            "CNI_PATH": str(self.bin_dir),
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod_name}",
        }

    def add_pod(self, name: str, network: str | None = None, echo: bool = True, timeout: float = 60) -> Pod:
        """A pod namespace wired by `cnitool add` run inside the node namespace; its echo server started."""
        network = network or self.network_name()
        pod = Pod(name=name, node=self, netns=f"{self.netns}-{name}", network=network)
        sh("ip", "netns", "add", pod.netns)
        self.pods.append(pod)  # from here on, teardown deletes it
        proc = self.run(CNITOOL, "add", network, pod.path, check=False, timeout=timeout, env=self.cni_env(name))
        if proc.returncode != 0:
            raise RuntimeError(f"cnitool add {network} {pod.path} on {self.name} failed ({proc.returncode}): "
                               f"{proc.stdout.strip()} {proc.stderr.strip()}\nagent log {self.log_path}:\n"
                               f"{self.log_tail(1500)}")
        pod.result = json.loads(proc.stdout)
        pod.addresses = parse_addresses(pod.result)
        interfaces = pod.result.get("interfaces") or []
        for entry in pod.result.get("ips", []):
            idx = entry.get("interface")
            if isinstance(idx, int) and idx < len(interfaces):
                pod.interface = interfaces[idx].get("name", pod.interface)
                break
        if echo:
            pod.start_echo()
        return pod

    def del_pod(self, pod: Pod, timeout: float = 60) -> None:
        """cnitool del, then the pod namespace goes; raises if DEL failed (the namespace goes anyway)."""
        pod.stop_echo()
        try:
            proc = self.run(CNITOOL, "del", pod.network or self.network_name(), pod.path, check=False,
                            timeout=timeout, env=self.cni_env(pod.name))
        finally:
            sh("ip", "netns", "del", pod.netns, check=False)
            if pod in self.pods:
                self.pods.remove(pod)
            _remove_cnitool_cache(pod)
        if proc.returncode != 0:
            raise RuntimeError(f"cnitool del on {self.name} failed: {proc.stdout.strip()} {proc.stderr.strip()}")

    def __str__(self) -> str:
        return self.name


def parse_addresses(result: dict[str, Any]) -> dict[int, list[IPInterface]]:
    found: dict[int, list[IPInterface]] = {}
    for entry in result.get("ips", []):
        addr = ipaddress.ip_interface(entry["address"])
        found.setdefault(addr.version, []).append(addr)
    return found


def _cnitool_container_id(netns_path: str) -> str:
    import hashlib

    return "cnitool-" + hashlib.sha512(os.path.abspath(netns_path).encode()).hexdigest()[:20]


def _remove_cnitool_cache(pod: Pod) -> None:
    # Only this run's pods: the container ID is the hash of a namespace path unique to the run.
    for path in CNI_RESULTS_CACHE.glob(f"*-{_cnitool_container_id(pod.path)}-*"):
        with contextlib.suppress(OSError):
            path.unlink()


Endpoint = Node | Pod


# --- the topology -----------------------------------------------------------------------------------


@dataclass
class Segment:
    index: int
    bridge: str
    subnets: list[IPNetwork]          # IPv4 first, IPv6 second when dual-stack
    gateways: list[IPInterface]       # the router's address on this segment, per family


class Topology:
    """Build with `with Topology(...) as topo:`; everything it made is removed on exit."""

    def __init__(
        self,
        nodes: int = 3,
        segments: int = 1,
        base: Path | None = None,
        prefix: Path | None = None,
        dual_stack: bool = False,
        etcd: bool = True,
        name_prefix: str = "pmn",
        segment_of: Sequence[int] | None = None,
        python: str = sys.executable,
    ) -> None:
        if segments not in (1, 2):
            raise ValueError("segments must be 1 or 2")
        if nodes < 1:
            raise ValueError("at least one node")
        self.node_count = nodes
        self.segment_count = segments
        self.dual_stack = dual_stack
        self.want_etcd = etcd
        self.python = python
        # Short, unique per run: namespace names derive from it, and leftovers are found by it.
        self.tag = f"{name_prefix}{os.getpid()}{uuid.uuid4().hex[:4]}"
        self._own_base = base is None
        self.base = Path(tempfile.mkdtemp(prefix=f"{self.tag}-")) if base is None else Path(base) / self.tag
        self.base.mkdir(parents=True, exist_ok=True)
        self._own_prefix = prefix is None
        self.prefix = (self.base / "prefix") if prefix is None else Path(prefix)
        if segment_of is None:
            first = (nodes + 1) // 2 if segments == 2 else nodes
            segment_of = [0 if i < first else 1 for i in range(nodes)]
        if len(segment_of) != nodes or any(s not in range(segments) for s in segment_of):
            raise ValueError(f"segment_of {segment_of} does not fit {nodes} nodes on {segments} segments")
        self.segment_of = list(segment_of)
        self.router = f"{self.tag}-rt"
        self.segments: list[Segment] = []
        self.nodes: list[Node] = []
        self.cluster_cidrs: list[IPNetwork] = []
        self.etcd: EtcdServer | None = None
        self.namespaces: list[str] = []
        self._short_dir: Path | None = None
        self._etcd_dir: Path | None = None
        self.loops: list[PingLoop] = []
        # What tests start beside the nodes (a ToR BIRD, an API server): undone before the namespaces go.
        self.cleanups: list[Any] = []
        # Links the machine's namespace had before (only new ones can be ours).
        self._root_links = {link.get("ifindex") for link in json.loads(sh("ip", "-j", "link", "show").stdout or "[]")}

    # --- build ---------------------------------------------------------------------------------

    def __enter__(self) -> Topology:
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    def _netns_add(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self.namespaces.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        (self.base / "echo_server.py").write_text(ECHO_SERVER)
        (self.base / "probe_client.py").write_text(PROBE_CLIENT)
        self._install()
        self._pick_subnets()
        self._netns_add(self.router)
        # The router forwards between segments (and answers as every node's default gateway).
        self.router_run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        if self.dual_stack:
            self.router_run("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
        for seg in self.segments:
            sh("ip", "-n", self.router, "link", "add", seg.bridge, "type", "bridge")
            for gw in seg.gateways:
                sh("ip", "-n", self.router, "addr", "add", str(gw), "dev", seg.bridge,
                   *(["nodad"] if gw.version == 6 else []))
            sh("ip", "-n", self.router, "link", "set", seg.bridge, "up")
        for i in range(self.node_count):
            self._add_node(i)
        if self.want_etcd:
            etcd_ip = self.segments[0].gateways[0].ip
            # etcd fsyncs its WAL on every write: on a disk shared with busy neighbours that can
            # stall claims for many seconds. Its data is throwaway, so it lives in memory.
            etcd_base = self.base
            if Path("/dev/shm").is_dir():
                self._etcd_dir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-etcd-", dir="/dev/shm"))
                etcd_base = self._etcd_dir
            self.etcd = EtcdServer.start(etcd_base, host=str(etcd_ip), netns=self.router)

    def _install(self) -> None:
        """One virtualenv per run (or the caller's), then one shim directory per node."""
        if (self.prefix / "venv" / "bin" / "python3").exists():
            return
        bin_dir = self.base / "bin-install"
        sh(self.python, str(REPO / "scripts" / "install.py"), "--prefix", str(self.prefix), "--bin-dir",
           str(bin_dir), "--names", "both", "--python", self.python,
           "--agent-socket", str(self.base / "unused.sock"), timeout=600)

    def _pick_subnets(self) -> None:
        # Pods first: a /16 (and a /56 when dual-stack), the largest blocks, so that they fit the
        # /15 test pool (it holds two /16s); a smaller block when this machine's routes leave no /16.
        taken: list[IPNetwork] = []
        for size in (16, 17, 18):
            try:
                taken.append(free_subnet(4, size))
                break
            except RuntimeError:
                if size == 18:
                    raise
        if self.dual_stack:
            taken.append(free_subnet(6, 56))
        self.cluster_cidrs = list(taken)
        families = (4, 6) if self.dual_stack else (4,)
        for index in range(self.segment_count):
            subnets: list[IPNetwork] = []
            for fam in families:
                subnets.append(free_subnet(fam, avoid=taken))
                taken.append(subnets[-1])
            gateways = [ipaddress.ip_interface(f"{s.network_address + 1}/{s.prefixlen}") for s in subnets]
            self.segments.append(Segment(index, f"ul{index}", subnets, gateways))

    def _socket_dir(self) -> Path:
        # The agent wants its socket's directory root-only (0700). AF_UNIX paths are short (108
        # bytes): deep tmp dirs get a short private dir under /tmp instead.
        run = self.base / "run"
        if len(str(run / "node99.sock")) <= UNIX_PATH_MAX:
            run.mkdir(mode=0o700, exist_ok=True)
            run.chmod(0o700)
            return run
        if self._short_dir is None:
            self._short_dir = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))
        return self._short_dir

    def _add_node(self, i: int) -> None:
        name = f"node{i + 1}"
        seg = self.segments[self.segment_of[i]]
        netns = f"{self.tag}-n{i + 1}"
        self._netns_add(netns)
        root = self.base / name
        root.mkdir()
        uplink = [ipaddress.ip_interface(f"{s.network_address + 11 + i}/{s.prefixlen}") for s in seg.subnets]
        node = Node(name=name, netns=netns, topology=self, segment=seg.index, uplink=uplink,
                    gateway=[g.ip for g in seg.gateways], root=root, bin_dir=root / "bin",
                    agent_socket=self._socket_dir() / f"{name}.sock")
        self.nodes.append(node)
        # The veth is made in the node namespace with its peer in the router's: never in ours.
        peer = f"{name}-ul"
        sh("ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", peer, "netns", self.router)
        sh("ip", "-n", self.router, "link", "set", peer, "master", seg.bridge, "up")
        for addr in uplink:
            sh("ip", "-n", netns, "addr", "add", str(addr), "dev", "eth0", *(["nodad"] if addr.version == 6 else []))
        sh("ip", "-n", netns, "link", "set", "eth0", "up")
        for gw in node.gateway:
            sh("ip", "-n", netns, f"-{gw.version}", "route", "add", "default", "via", str(gw))
        for d in (node.conf_dir, node.ipam_dir, node.state_dir):
            d.mkdir(parents=True, exist_ok=True)
        sh(self.python, str(REPO / "scripts" / "install.py"), "--shims-only", "--prefix", str(self.prefix),
           "--bin-dir", str(node.bin_dir), "--names", "both", "--shim", "agent",
           "--agent-socket", str(node.agent_socket))

    # --- use -------------------------------------------------------------------------------------

    @property
    def pods(self) -> list[Pod]:
        return [p for n in self.nodes for p in sorted(n.pods, key=lambda p: p.name)]

    def router_run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.router, *argv, check=check)

    def node_subnets(self, subnet_len: int = 24, ipv6_subnet_len: int = 64) -> dict[str, list[IPNetwork]]:
        """A static per-node pod subnet (per family) of the cluster CIDRs: node i gets the i-th."""
        out: dict[str, list[IPNetwork]] = {}
        for i, node in enumerate(self.nodes):
            subs: list[IPNetwork] = []
            for cidr in self.cluster_cidrs:
                size = subnet_len if cidr.version == 4 else ipv6_subnet_len
                subs.append(list(_nth_subnets(cidr, size, i + 1))[-1])
            out[node.name] = subs
        return out

    def add_hand_routes(self, subnets: dict[str, list[IPNetwork]]) -> None:
        """host-gw by hand: on-link peers get `<subnet> via <peer>`; the router gets every subnet too
        (an upstream router that knows the pod subnets), so nodes on other segments reach them via
        their default route."""
        for node in self.nodes:
            for peer in self.nodes:
                if peer is node:
                    continue
                for sub in subnets[peer.name]:
                    if peer.segment == node.segment:
                        sh("ip", "-n", node.netns, "route", "replace", str(sub), "via", str(peer.ip(sub.version)),
                           "proto", "static")
            if self.segment_count > 1:
                for sub in subnets[node.name]:
                    sh("ip", "-n", self.router, "route", "replace", str(sub), "via", str(node.ip(sub.version)),
                       "proto", "static")

    def write_etcd_config(self, backend: str, subnet_len: int = 24, ipv6_subnet_len: int = 64,
                          key: str = "/pycni/config", **backend_keys: Any) -> dict[str, Any]:
        """The cluster config document at `key`, put through etcd's v3 JSON gateway from the router ns.
        `backend_keys` go into the backend object (e.g. asNumber=64512, peers=[...] for bgp)."""
        assert self.etcd is not None
        doc = {"clusterCIDRs": [str(c) for c in self.cluster_cidrs], "subnetLen": subnet_len,
               "ipv6SubnetLen": ipv6_subnet_len, "backend": {"type": backend, **backend_keys}}
        import base64

        body = json.dumps({"key": base64.b64encode(key.encode()).decode(),
                           "value": base64.b64encode(json.dumps(doc).encode()).decode()})
        code = ("import urllib.request, sys; r = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), "
                "headers={'Content-Type': 'application/json'}); urllib.request.urlopen(r, timeout=5).read()")
        sh("ip", "netns", "exec", self.router, self.python, "-c", code, f"{self.etcd.endpoint}/v3/kv/put", body)
        return doc

    def read_etcd_key(self, key: str) -> bytes | None:
        """The value at `key` (v3 JSON gateway, from the router namespace), or None when absent."""
        assert self.etcd is not None
        import base64

        body = json.dumps({"key": base64.b64encode(key.encode()).decode()})
        code = ("import urllib.request, sys; r = urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), "
                "headers={'Content-Type': 'application/json'}); "
                "sys.stdout.write(urllib.request.urlopen(r, timeout=5).read().decode())")
        out = sh("ip", "netns", "exec", self.router, self.python, "-c", code, f"{self.etcd.endpoint}/v3/kv/range",
                 body).stdout
        kvs = json.loads(out).get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None

    # --- teardown --------------------------------------------------------------------------------

    def teardown(self) -> None:
        """Remove everything this run made; every step is tried even when an earlier one fails."""
        # A second Ctrl-C must not leave half a cluster behind.
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for loop in list(self.loops):
                with contextlib.suppress(Exception):
                    loop.stop()
            for node in self.nodes:
                for pod in list(node.pods):
                    with contextlib.suppress(Exception):
                        node.del_pod(pod, timeout=30)
            for node in self.nodes:
                with contextlib.suppress(Exception):
                    node.kill_agent(signal.SIGKILL)
                # BIRD outlives its agent on purpose (the next agent adopts it): stop it here.
                for pid in node.bird_pids():
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGKILL)
            for cleanup in reversed(self.cleanups):
                with contextlib.suppress(Exception):
                    cleanup()
            if self.etcd is not None:
                with contextlib.suppress(Exception):
                    self.etcd.kill()
            for name in reversed(self.namespaces):
                sh("ip", "netns", "del", name, check=False)
            self.namespaces.clear()
            if self._short_dir is not None:
                shutil.rmtree(self._short_dir, ignore_errors=True)
            if self._etcd_dir is not None:
                shutil.rmtree(self._etcd_dir, ignore_errors=True)
            if self._own_base:
                shutil.rmtree(self.base, ignore_errors=True)
        finally:
            if old is not None:
                signal.signal(signal.SIGINT, old)

    def leftovers(self) -> list[str]:
        """What of this run is still there: namespaces, links in the machine's namespace, processes."""
        left = [f"netns {n}" for n in sh("ip", "netns", "list").stdout.split() if n.startswith(self.tag)]
        # Our veths are made inside the namespaces; one in the machine's namespace would be a bug.
        for link in json.loads(sh("ip", "-j", "link", "show").stdout or "[]"):
            name = link.get("ifname", "")
            if (self.tag in name or re.fullmatch(r"node\d+-ul", name)) and link.get("ifindex") not in self._root_links:
                left.append(f"link {name}")
        me = os.getpid()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == me:
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if self.tag in cmdline:
                left.append(f"process {proc.name}: {cmdline[:200]}")
        return left


def _nth_subnets(cidr: IPNetwork, size: int, count: int) -> Iterator[IPNetwork]:
    subs: Iterator[IPNetwork] = cidr.subnets(new_prefix=size)  # type: ignore[assignment]
    for i, sub in enumerate(subs):
        if i >= count:
            return
        yield sub


def static_conflist(node: Node, subnets: Sequence[IPNetwork], name: str = "pycni-static",
                    bridge: str = "pycni0") -> dict[str, Any]:
    """A conflist as the agent would write it (bridge + host-local on the node's subnets, portmap)."""
    return {
        "cniVersion": "1.0.0",
        "name": name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": bridge,
                "isGateway": True,
                "isDefaultGateway": True,
                "ipMasq": False,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(node.ipam_dir),
                    "ranges": [[{"subnet": str(s)}] for s in subnets],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }


# --- probes ---------------------------------------------------------------------------------------


def ping(src: Endpoint, dst_ip: IPAddress | str, count: int = 3, timeout: float = 1) -> bool:
    """`ping` from inside src's namespace; True when any reply came back."""
    wait = max(1, int(timeout + 0.999))
    proc = sh("ip", "netns", "exec", src.netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
              "-W", str(wait), "-w", str(wait + count), str(dst_ip), check=False, timeout=wait + count + 10)
    return proc.returncode == 0


def _probe(kind: str, src: Endpoint, dst_ip: IPAddress | str, port: int, timeout: float) -> str | None:
    node = src if isinstance(src, Node) else src.node
    script, python = node.topology.base / "probe_client.py", node.python
    proc = sh("ip", "netns", "exec", src.netns, str(python), "-IS", str(script), kind, str(dst_ip), str(port),
              str(timeout), check=False, timeout=timeout + 15)
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() or None


def tcp_probe(src: Endpoint, dst_pod: Pod, port: int = ECHO_PORT, family: int = 4, timeout: float = 1) -> str | None:
    """Connect from src to dst_pod's echo server: the source address dst_pod saw, or None."""
    return _probe("tcp", src, dst_pod.ip(family), port, timeout)


def udp_probe(src: Endpoint, dst_pod: Pod, port: int = ECHO_PORT, family: int = 4, timeout: float = 1) -> str | None:
    return _probe("udp", src, dst_pod.ip(family), port, timeout)


@dataclass
class Cell:
    src: Endpoint
    dst: Endpoint
    dst_ip: str
    ping: bool
    tcp_seen: str | None = None      # only for pod targets (they run the echo server)
    udp_seen: str | None = None
    expected: set[str] = field(default_factory=set)

    @property
    def ok(self) -> bool:
        """Reached, and (for pod targets) the receiver saw the sender's own address: no NAT."""
        if not self.ping:
            return False
        if isinstance(self.dst, Pod):
            return self.tcp_seen in self.expected and self.udp_seen in self.expected
        return True

    @property
    def natted(self) -> bool:
        return self.tcp_seen is not None and self.tcp_seen not in self.expected


@dataclass
class Matrix:
    family: int
    sources: list[Endpoint]
    targets: list[Endpoint]
    cells: list[Cell]

    def cell(self, src: Endpoint, dst: Endpoint) -> Cell:
        for c in self.cells:
            if c.src is src and c.dst is dst:
                return c
        raise KeyError((str(src), str(dst)))

    def failures(self) -> list[Cell]:
        return [c for c in self.cells if not c.ok]

    @property
    def all_ok(self) -> bool:
        return not self.failures()


def _target_ip(dst: Endpoint, family: int) -> IPAddress:
    return dst.ip(family)


def matrix(sources: Sequence[Endpoint], targets: Sequence[Endpoint], family: int = 4, port: int = ECHO_PORT,
           timeout: float = 1, workers: int = 16, count: int = 2, udp: bool = True) -> Matrix:
    """Every source probes every target (not itself) concurrently: ping, and TCP/UDP echo to pods."""
    expected: dict[int, set[str]] = {}
    for src in sources:
        # A node may send from any address it owns (the route's source choice); a pod from its own.
        expected[id(src)] = src.own_addresses()
    pairs = [(s, t) for s in sources for t in targets if s is not t]

    def probe(pair: tuple[Endpoint, Endpoint]) -> Cell:
        src, dst = pair
        ip = _target_ip(dst, family)
        cell = Cell(src, dst, str(ip), ping(src, ip, count=count, timeout=timeout), expected=expected[id(src)])
        if isinstance(dst, Pod):
            cell.tcp_seen = tcp_probe(src, dst, port, family, timeout)
            if udp:
                cell.udp_seen = udp_probe(src, dst, port, family, timeout)
            else:
                cell.udp_seen = cell.tcp_seen
        return cell

    with ThreadPoolExecutor(max_workers=workers) as pool:
        cells = list(pool.map(probe, pairs))
    return Matrix(family, list(sources), list(targets), cells)


def format_matrix(m: Matrix) -> str:
    """Rows: sources; columns: targets; each cell `ok`/`NAT`/`FAIL` and the source address the target saw."""
    def label(e: Endpoint) -> str:
        return str(e)

    cols = [label(t) for t in m.targets]
    rows = []
    for src in m.sources:
        row = [label(src)]
        for dst in m.targets:
            if dst is src:
                row.append("-")
                continue
            c = m.cell(src, dst)
            if isinstance(dst, Pod):
                mark = "ok" if c.ok else ("NAT" if c.natted else "FAIL")
                seen = c.tcp_seen or "none"
                extra = "" if c.ping else " noping"
                if c.udp_seen != c.tcp_seen:
                    extra += f" udp={c.udp_seen or 'none'}"
                row.append(f"{mark} {seen}{extra}")
            else:
                row.append("ok" if c.ping else "FAIL")
        rows.append(row)
    header = [f"IPv{m.family} from\\to", *cols]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    failed = m.failures()
    lines.append(f"{len(m.cells) - len(failed)}/{len(m.cells)} pairs reached with the sender's own address"
                 + (f"; failed: {', '.join(f'{c.src}->{c.dst}' for c in failed)}" if failed else ""))
    return "\n".join(lines)


# --- continuous ping ------------------------------------------------------------------------------


@dataclass
class PingStats:
    sent: int
    received: int
    longest_gap: float          # seconds between consecutive replies (or since start / until stop)
    max_consecutive_lost: int

    @property
    def lost(self) -> int:
        return self.sent - self.received


_REPLY = re.compile(r"^\[(\d+\.\d+)\].*icmp_seq=(\d+)")
_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")


class PingLoop:
    """`ping -D -i interval` in the background from src; stop() returns PingStats.

    Used for "kill -9 the agent mid-run: no ping lost beyond one interval": assert
    stats.max_consecutive_lost <= 1 (or longest_gap <= 2 * interval).
    """

    def __init__(self, src: Endpoint, dst_ip: IPAddress | str, interval: float = 0.2) -> None:
        self.src, self.dst_ip, self.interval = src, str(dst_ip), interval
        self.proc: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._reader: threading.Thread | None = None
        self._topology = src.topology if isinstance(src, Node) else src.node.topology
        self.stats: PingStats | None = None

    def __enter__(self) -> PingLoop:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.src.netns, "ping", "-n", "-D", "-O", "-W", "1", "-i", str(self.interval),
             self.dst_ip],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
            start_new_session=True,
        )
        self._topology.loops.append(self)
        self._started = time.time()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.append(line.rstrip("\n"))

    def stop(self) -> PingStats:
        if self.stats is not None:
            return self.stats
        stopped = time.time()
        assert self.proc is not None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGINT)  # ping prints its summary on SIGINT
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                _stop_process(self.proc, signal.SIGKILL)
        if self._reader is not None:
            self._reader.join(timeout=5)
        if self in self._topology.loops:
            self._topology.loops.remove(self)
        self.stats = self._parse(stopped)
        return self.stats

    def _parse(self, stopped: float) -> PingStats:
        replies: list[tuple[float, int]] = []
        sent = received = 0
        for line in self._lines:
            if "bytes from" in line and (m := _REPLY.match(line)):
                replies.append((float(m.group(1)), int(m.group(2))))
            if m2 := _SUMMARY.search(line):
                sent, received = int(m2.group(1)), int(m2.group(2))
        if not sent:
            sent = max((seq for _, seq in replies), default=0)
            received = len(replies)
        seqs = sorted({seq for _, seq in replies})
        # Lost in a row: gaps between received sequence numbers, and from the first/to the last sent.
        bounds = [0, *seqs, sent + 1]
        max_lost = max((b - a - 1 for a, b in itertools.pairwise(bounds)), default=sent)
        times = [self._started, *sorted(t for t, _ in replies), stopped]
        gap = max((b - a for a, b in itertools.pairwise(times)), default=0.0)
        return PingStats(sent=sent, received=received, longest_gap=gap, max_consecutive_lost=max(0, max_lost))


# --- kernel state of a node (for assertions) --------------------------------------------------------


def routes(netns: str | Endpoint, proto: str | int | None = None, family: int = 4, table: str = "main") -> list[dict]:
    ns = netns if isinstance(netns, str) else netns.netns
    argv = [f"-{family}", "route", "show", "table", table]
    if proto is not None:
        argv += ["proto", str(proto)]
    return ip_json(ns, *argv)


def fdb(netns: str | Endpoint, dev: str) -> list[dict]:
    ns = netns if isinstance(netns, str) else netns.netns
    return json.loads(sh("bridge", "-n", ns, "-j", "fdb", "show", "dev", dev).stdout or "[]")


def neighbours(netns: str | Endpoint, dev: str | None = None, family: int = 4) -> list[dict]:
    ns = netns if isinstance(netns, str) else netns.netns
    argv = [f"-{family}", "neigh", "show"]
    if dev:
        argv += ["dev", dev]
    return ip_json(ns, *argv)


def links(netns: str | Endpoint, kind: str | None = None) -> list[dict]:
    ns = netns if isinstance(netns, str) else netns.netns
    argv = ["-d", "link", "show"]
    if kind:
        argv += ["type", kind]
    return ip_json(ns, *argv)


# --- installation and routers beside the nodes ------------------------------------------------------


def prefix_of(bin_dir: Path) -> Path:
    """The install prefix behind an installed bin dir (tests reuse the session's installed_bin):
    a Python shim's shebang names <prefix>/venv/bin/python3, a compiled shim's marker (in the
    first 4 KiB, scripts/install.py HEAD_BYTES) its fallback <prefix>/libexec/pycni-shim."""
    with (bin_dir / "pycni-loopback").open("rb") as f:
        head = f.read(4096)
    if head.startswith(b"#!"):
        return Path(head[2:].split(b"\n", 1)[0].split()[0].decode()).parents[2]
    marker = head[head.index(b"# pycni-shim:") :].split(b"\0", 1)[0].decode()
    return Path(marker.split("; compiled, fallback ", 1)[1].split(";", 1)[0]).parents[1]


def tor_bird_config(router_id: str, neighbours: Sequence[tuple[str, IPAddress | str]],
                    cluster_cidrs: Sequence[IPNetwork], router_as: int, node_as: int,
                    password: str | None = None) -> str:
    """A top-of-rack router's own BIRD 2: eBGP to every node, next hop self, pod routes (from the
    cluster CIDRs only) into its kernel, lab timers (sessions up and down in about a second)."""
    lines = [
        f"router id {router_id};",
        "log stderr all;",
        "protocol device { scan time 10; }",
    ]
    for family in ("ipv4", "ipv6"):
        lines += ["protocol kernel {", f"  {family} {{ import none; export where source = RTS_BGP; }};",
                  "  learn off;", "}"]
    lines += [
        "template bgp nodes {",
        f"  local as {router_as};",
        "  direct;",
        "  hold time 3; keepalive time 1; connect retry time 1; connect delay time 1; error wait time 1, 2;",
        "  graceful restart on; graceful restart time 30;",
    ]
    for cidr in cluster_cidrs:
        family, width = ("ipv4", 32) if cidr.version == 4 else ("ipv6", 128)
        lines += [f"  {family} {{ import where net ~ [ {cidr}{{{cidr.prefixlen},{width}}} ]; export all;",
                  "    next hop self; };"]
    lines.append("}")
    for name, address in neighbours:
        lines += [f"protocol bgp {re.sub(r'[^A-Za-z0-9_]', '_', name)} from nodes {{",
                  f"  neighbor {address} as {node_as};"]
        if password:
            lines.append(f'  password "{password}";')
        lines.append("}")
    return "\n".join(lines) + "\n"


def start_tor_bird(topo: Topology, node_as: int, router_as: int, nodes: Sequence[Node] | None = None) -> Any:
    """BIRD in the router namespace peering with every node (on the node's segment); stopped at teardown.
    Returns the product's Bird handle (sessions(), control.command(...))."""
    from cni_plugin.cluster.bgp import Bird

    base = topo.base / "tor-bird"
    base.mkdir(exist_ok=True)
    # The control socket in the short socket dir: AF_UNIX paths are at most 107 bytes.
    ctl = topo._socket_dir() / "tor-bird.ctl"
    bird = Bird(f"/run/netns/{topo.router}", base / "bird.conf", ctl, base / "bird.pid")
    members = list(nodes if nodes is not None else topo.nodes)
    config = tor_bird_config(str(topo.segments[0].gateways[0].ip), [(n.name, n.ip()) for n in members],
                             topo.cluster_cidrs, router_as, node_as)
    topo.cleanups.append(bird.stop)
    bird.start(config)
    bird.wait_ready()
    return bird
