"""pycni-portmap on the real kernel, chained the way libcni runs a conflist: the interface plugin's
ADD, then portmap's ADD with prevResult = that result and runtimeConfig.portMappings; DEL in
reverse with the cached result.

Topology, all inside throwaway namespaces: a fake node (`host_netns`) holding the bridge, pods on
it, and a "client" namespace on a veth link to the node (the node's address there is what a
remote client would dial). Servers in pods are python3 one-liners under `ip netns exec`.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from cni_plugin.firewall.nftables import NftRunner
from cni_plugin.spec.errors import FirewallFailure
from tests.conftest import bare_env, free_subnet, run_plugin

from .bridge_support import GO, run_inproc

pytestmark = pytest.mark.integration

SERVER = textwrap.dedent("""
    import socket, sys, threading
    tcp_port, udp_port, banner = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3].encode()
    def sock(kind, port):
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::", port))
        return s
    t, u = sock(socket.SOCK_STREAM, tcp_port), sock(socket.SOCK_DGRAM, udp_port)
    t.listen(16)
    def udp():
        while True:
            data, peer = u.recvfrom(2048)
            u.sendto(banner + b" " + data, peer)
    threading.Thread(target=udp, daemon=True).start()
    print("ready", flush=True)
    while True:
        conn, peer = t.accept()
        conn.sendall(banner + b" " + peer[0].encode())
        conn.close()
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    proto, host, port, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if proto == "tcp":
            s = socket.create_connection((host, port), timeout=3)
            print(s.recv(200).decode())
        else:
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.settimeout(2)
            if sport:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("", sport))
            s.sendto(b"ping", (host, port))
            print(s.recvfrom(200)[0].decode())
    except OSError as exc:
        print(f"error: {type(exc).__name__}")
""")


def dial(ns, proto: str, host: Any, port: int, sport: int = 0) -> str:
    """What a client in `ns` gets from host:port ("<banner> <peer seen>" or "error: ...")."""
    proc = ns.run("python3", "-c", CLIENT, proto, str(host), str(port), str(sport), check=False, timeout=20)
    return proc.stdout.strip()


class Server:
    """A TCP+UDP banner server on `port` in a pod; stopped in the test's finally."""

    def __init__(self, pod, tcp_port: int, udp_port: int, banner: str) -> None:
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", pod.name, "python3", "-c", SERVER, str(tcp_port), str(udp_port), banner],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        ready, _, _ = select.select([self.proc.stdout], [], [], 10)
        if not ready or self.proc.stdout.readline().strip() != "ready":  # type: ignore[union-attr]
            self.stop()
            raise RuntimeError(f"server in {pod.name} did not start: {self.proc.stderr.read()}")  # type: ignore[union-attr]

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


class Client:
    """A namespace on a veth link to the node; `node4`/`node6` are the node's addresses there,
    `other4` a second node address on the same link (for hostIP restrictions)."""

    def __init__(self, netns_factory, host) -> None:
        self.ns = netns_factory("pycni-cli")
        net4, net6 = free_subnet(4), free_subnet(6)
        h4 = list(net4.hosts())
        self.node4, self.other4, self.ip4 = h4[0], h4[2], h4[1]
        self.node6, self.ip6 = net6.network_address + 1, net6.network_address + 2
        tag = os.urandom(3).hex()
        a, b = f"cn{tag}", f"cc{tag}"
        subprocess.run(["ip", "link", "add", a, "netns", host.name, "type", "veth", "peer", "name", b,
                        "netns", self.ns.name], check=True)
        for addr in (f"{self.node4}/24", f"{self.other4}/24", f"{self.node6}/64"):
            host.run("ip", "addr", "add", addr, "dev", a, "nodad")
        self.ns.run("ip", "addr", "add", f"{self.ip4}/24", "dev", b)
        self.ns.run("ip", "addr", "add", f"{self.ip6}/64", "dev", b, "nodad")
        host.run("ip", "link", "set", a, "up")
        self.ns.run("ip", "link", "set", b, "up")


def nft_ruleset(host) -> str:
    return host.run("nft", "list", "ruleset").stdout


def portmap_elements(host) -> list[str]:
    """Every element of the portmap maps and sets, as JSON text."""
    proc = host.run("nft", "-j", "list", "table", "inet", "pycni", check=False)
    if proc.returncode != 0:
        return []
    found = []
    for item in json.loads(proc.stdout).get("nftables", []):
        obj = item.get("map") or item.get("set")
        if obj and obj["name"].startswith("host"):
            found += [json.dumps(e) for e in obj.get("elem", [])]
    return found


class Chain:
    """libcni AddNetworkList / CheckNetworkList / DelNetworkList over [interface plugin, portmap]."""

    def __init__(self, bin_dir: Path, host, iface: dict, portmap: dict, version: str = "1.1.0",
                 iface_exe: Path | None = None) -> None:
        self.bin_dir, self.host, self.version = bin_dir, host, version
        self.plugins = [iface, portmap]
        self.exes = [iface_exe or bin_dir / "pycni-bridge", bin_dir / "pycni-portmap"]

    def _run(self, index: int, verb: str, cid: str, pod, prev: dict | None, **extra) -> tuple[int, Any, str]:
        conf = dict(self.plugins[index], cniVersion=self.version, name="pmnet")
        if prev is not None:
            conf["prevResult"] = prev
        conf.update(extra)
        env = bare_env(CNI_COMMAND=verb, CNI_CONTAINERID=cid, CNI_NETNS=pod.path if pod else "",
                       CNI_IFNAME="eth0", CNI_PATH=f"{self.bin_dir}:{GO}")
        return run_plugin(self.exes[index], env, conf, netns=self.host)

    def add(self, cid: str, pod, mappings: list[dict]) -> tuple[dict, tuple[int, Any, str]]:
        rc, result, err = self._run(0, "ADD", cid, pod, None)
        assert rc == 0, (result, err)
        out = self._run(1, "ADD", cid, pod, result, runtimeConfig={"portMappings": mappings})
        return result, out

    def portmap(self, verb: str, cid: str, pod, prev: dict | None, mappings: list[dict], **extra):
        return self._run(1, verb, cid, pod, prev, runtimeConfig={"portMappings": mappings}, **extra)

    def delete(self, cid: str, pod, cached: dict | None, mappings: list[dict]) -> None:
        for index in (1, 0):
            extra = {"runtimeConfig": {"portMappings": mappings}} if index == 1 else {}
            rc, out, err = self._run(index, "DEL", cid, pod, cached, **extra)
            assert rc == 0, (index, out, err)


def bridge_plugin(tmp_path: Path, bridge: str, subnets: list[Any], kind: str = "pycni-bridge") -> dict:
    return {
        "type": kind, "bridge": bridge, "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
        "hairpinMode": True,  # with br_netfilter loaded, DNAT back to the same port is bridged (kubernetes#20475)
        "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                 "ranges": [[{"subnet": str(s)}] for s in subnets]},
    }


PORTMAP = {"type": "pycni-portmap", "capabilities": {"portMappings": True}}


def test_dual_stack_pod_reached_from_everywhere_conflicts_refused_and_cleaned_up(
    installed_bin, host_netns, netns_factory, tmp_path
):
    sub4, sub6 = free_subnet(4), free_subnet(6)
    client = Client(netns_factory, host_netns)
    bridge = "pm" + os.urandom(3).hex()
    chain = Chain(installed_bin, host_netns, bridge_plugin(tmp_path, bridge, [sub4, sub6]), PORTMAP)
    pod1, pod2 = netns_factory("pycni-pod"), netns_factory("pycni-pod")
    mappings = [
        {"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"},
        {"hostPort": 18081, "containerPort": 8081, "protocol": "udp"},
        {"hostPort": 18082, "containerPort": 8080, "protocol": "tcp", "hostIP": str(client.node4)},
    ]
    gw4 = sub4.network_address + 1
    server = None
    try:
        rc, result, err = chain._run(0, "ADD", "pm-pod1", pod1, None)
        assert rc == 0, (result, err)
        # A UDP flow to the node's 18081 before the mapping exists leaves a conntrack entry (the
        # bridge's nat chain has turned conntrack on) that, unless portmap's ADD flushes it, keeps
        # steering this client's datagrams to the node itself.
        assert dial(client.ns, "udp", client.node4, 18081, sport=40123).startswith("error")
        assert "dport=18081" in host_netns.run("conntrack", "-L", "-p", "udp").stdout

        rc, out, err = chain.portmap("ADD", "pm-pod1", pod1, result, mappings)
        assert rc == 0, (out, err)
        assert out == result, "prevResult passes through unchanged"
        server = Server(pod1, 8080, 8081, "pod1")
        pod1_ip4 = next(ip["address"].split("/")[0] for ip in result["ips"] if "." in ip["address"])

        # From another namespace, tcp and udp, IPv4 and IPv6; the pod sees the client's address.
        assert dial(client.ns, "tcp", client.node4, 18080) == f"pod1 ::ffff:{client.ip4}"
        assert dial(client.ns, "udp", client.node4, 18081, sport=40123) == "pod1 ping"  # conntrack flushed
        assert dial(client.ns, "tcp", client.node6, 18080) == f"pod1 {client.ip6}"
        assert dial(client.ns, "udp", client.node6, 18081) == "pod1 ping"
        # From the node: its own address, the bridge address and 127.0.0.1 (masqueraded).
        assert dial(host_netns, "tcp", client.node4, 18080).startswith("pod1 ")
        assert dial(host_netns, "tcp", gw4, 18080).startswith("pod1 ")
        assert dial(host_netns, "tcp", "127.0.0.1", 18080) == f"pod1 ::ffff:{gw4}"
        assert dial(host_netns, "udp", "127.0.0.1", 18081) == "pod1 ping"
        # Hairpin: the pod reaches its own host port (and sees the node, not itself).
        assert dial(pod1, "tcp", client.node4, 18080) == f"pod1 ::ffff:{gw4}"
        assert dial(pod1, "udp", client.node4, 18081) == "pod1 ping"
        # hostIP: only on that address.
        assert dial(client.ns, "tcp", client.node4, 18082).startswith("pod1 ")
        assert dial(client.ns, "tcp", client.other4, 18082) == "error: ConnectionRefusedError"
        assert dial(client.ns, "tcp", client.other4, 18080).startswith("pod1 ")

        rc, out, err = chain.portmap("CHECK", "pm-pod1", pod1, result, mappings)
        assert rc == 0, (out, err)
        before = sorted(portmap_elements(host_netns))
        assert len(before) == 3 + 2 + 3  # v4 maps, v6 map, masquerade: subnet + 127.0.0.1 (v4), subnet (v6)
        ruleset = nft_ruleset(host_netns)
        assert "tcp . 18080 comment" in ruleset and f": {pod1_ip4} . 8080" in ruleset
        (tmp_path / "ruleset.txt").write_text(ruleset)

        # A second pod asking for a taken port is refused and leaves nothing behind (the runtime
        # then DELs it); a neighbour on the same bridge reaches pod1 through the host port
        # (hairpin masquerade covers the pod's subnet).
        rc, result2, err = chain._run(0, "ADD", "pm-pod2", pod2, None)
        assert rc == 0, (result2, err)
        for wanted in ({"hostPort": 18080, "containerPort": 80, "protocol": "tcp"},
                       {"hostPort": 18080, "containerPort": 80, "protocol": "TCP", "hostIP": str(client.node4)},
                       {"hostPort": 18082, "containerPort": 80}):
            asked = [{"hostPort": 18090, "containerPort": 1}, wanted]
            rc, out, err = chain.portmap("ADD", "pm-pod2", pod2, result2, asked)
            assert rc == 1 and out["code"] == 110, (out, err)
            assert "already mapped" in out["msg"] and str(wanted["hostPort"]) in out["msg"]
            assert sorted(portmap_elements(host_netns)) == before
            rc, out, err = chain.portmap("DEL", "pm-pod2", pod2, None, asked)
            assert rc == 0, (out, err)
            assert sorted(portmap_elements(host_netns)) == before
        assert dial(pod2, "tcp", client.node4, 18080) == f"pod1 ::ffff:{gw4}"
        chain.delete("pm-pod2", pod2, result2, [])

        # CHECK notices a missing element (code 108).
        host_netns.run("nft", "delete", "element", "inet", "pycni", "hostports4", "{", "udp", ".", "18081", "}")
        rc, out, err = chain.portmap("CHECK", "pm-pod1", pod1, result, mappings)
        assert rc == 1 and out["code"] == 108 and "udp/18081" in out["msg"], out

        chain.delete("pm-pod1", pod1, result, mappings)
        chain.delete("pm-pod1", pod1, result, mappings)  # DEL is idempotent
        assert portmap_elements(host_netns) == []
        assert "1808" not in nft_ruleset(host_netns)
        assert dial(client.ns, "tcp", client.node4, 18080) == "error: ConnectionRefusedError"
    finally:
        if server:
            server.stop()


def test_chained_after_the_go_bridge_and_gc_removes_an_orphan(installed_bin, host_netns, netns_factory, tmp_path):
    sub4 = free_subnet(4)
    client = Client(netns_factory, host_netns)
    bridge = "pg" + os.urandom(3).hex()
    iface = bridge_plugin(tmp_path, bridge, [sub4], kind="bridge")
    iface.pop("ipMasq")
    chain = Chain(installed_bin, host_netns, iface, PORTMAP, version="1.0.0", iface_exe=GO / "bridge")
    pod = netns_factory("pycni-pod")
    mappings = [{"hostPort": 18180, "containerPort": 8080, "protocol": "tcp"}]
    server = None
    try:
        result, (rc, out, err) = chain.add("pm-go1", pod, mappings)
        assert rc == 0, (out, err)
        assert out == {k: v for k, v in result.items() if v != {}}, "passed through (an empty dns is omitted)"
        server = Server(pod, 8080, 8081, "gopod")
        assert dial(client.ns, "tcp", client.node4, 18180) == f"gopod ::ffff:{client.ip4}"
        assert dial(host_netns, "tcp", "127.0.0.1", 18180).startswith("gopod ")
        assert dial(pod, "tcp", client.node4, 18180).startswith("gopod ")
        rc, out, err = chain.portmap("CHECK", "pm-go1", pod, result, mappings)
        assert rc == 0, (out, err)

        # An attachment whose DEL never came (a pod the runtime lost, with another address): GC
        # with the live list removes exactly its elements.
        orphan = [{"hostPort": 18181, "containerPort": 8080, "protocol": "udp"}]
        gone = json.loads(json.dumps(result))
        gone["ips"][0]["address"] = f"{sub4.network_address + 200}/{sub4.prefixlen}"
        rc, out, err = chain.portmap("ADD", "pm-orphan", pod, gone, orphan)
        assert rc == 0, (out, err)
        mine = sorted(portmap_elements(host_netns))
        assert len(mine) == 6 and any("18181" in e for e in mine)
        gc = {"cniVersion": "1.1.0", "name": "pmnet", **PORTMAP,
              "cni.dev/valid-attachments": [{"containerID": "pm-go1", "ifname": "eth0"}]}
        rc, out, err = run_plugin(installed_bin / "pycni-portmap", bare_env(CNI_COMMAND="GC", CNI_PATH=str(GO)),
                                  gc, netns=host_netns)
        assert rc == 0, (out, err)
        left = portmap_elements(host_netns)
        assert not any("18181" in e for e in left) and any("18180" in e for e in left)
        assert len(left) == 3  # pm-go1: the DNAT element, subnet and 127.0.0.1 masquerade
        rc, out, err = run_plugin(installed_bin / "pycni-portmap", bare_env(CNI_COMMAND="STATUS", CNI_PATH=str(GO)),
                                  gc, netns=host_netns)
        assert rc == 0, (out, err)
        assert dial(client.ns, "tcp", client.node4, 18180).startswith("gopod ")

        chain.delete("pm-go1", pod, result, mappings)
        chain.delete("pm-go1", None, None, mappings)  # again, without netns or prevResult
        assert portmap_elements(host_netns) == []
    finally:
        if server:
            server.stop()


def test_concurrent_adds_for_one_host_port_have_exactly_one_winner(installed_bin, host_netns):
    """Four pods race for tcp/18300 (two on any address, two on one hostIP): the lock around
    list + check + apply lets exactly one through; the others get code 110 (HostPortTaken) and add nothing."""
    sub4 = free_subnet(4)
    node = sub4.network_address + 1
    procs = []
    for i, host_ip in enumerate(["", str(node), "", str(node)]):
        prev = {"cniVersion": "1.1.0", "ips": [{"address": f"{sub4.network_address + 10 + i}/{sub4.prefixlen}"}]}
        conf = {"cniVersion": "1.1.0", "name": "pmnet", **PORTMAP, "prevResult": prev,
                "runtimeConfig": {"portMappings": [{"hostPort": 18300, "containerPort": 80, "hostIP": host_ip}]}}
        env = bare_env(CNI_COMMAND="ADD", CNI_CONTAINERID=f"race{i}", CNI_NETNS=f"/run/netns/pycni-race-{i}",
                       CNI_IFNAME="eth0", CNI_PATH=str(GO))
        procs.append(subprocess.Popen(["ip", "netns", "exec", host_netns.name, str(installed_bin / "pycni-portmap")],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env))
        procs[-1].stdin.write(json.dumps(conf).encode())  # type: ignore[union-attr]
        procs[-1].stdin.close()  # type: ignore[union-attr]
    outcomes = []
    for proc in procs:
        out, err = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
        outcomes.append((proc.wait(timeout=60), json.loads(out), err.decode()))
    winners = [o for o in outcomes if o[0] == 0]
    assert len(winners) == 1, outcomes
    assert all(o[1]["code"] == 110 for o in outcomes if o[0] != 0), outcomes
    elements = portmap_elements(host_netns)
    assert len([e for e in elements if "18300" in e]) == 1


def test_a_failed_add_rolls_back_the_route_localnet_it_set(installed_bin, host_netns, netns_factory, tmp_path, mocker):
    """Issue 15: route_localnet goes back to 0 on a bridge where the failed ADD switched it on,
    and stays 1 where another attachment set it."""
    bridges = ["pl" + os.urandom(3).hex() for _ in range(2)]
    chains = [Chain(installed_bin, host_netns, bridge_plugin(tmp_path / b, b, [free_subnet(4)]), PORTMAP)
              for b in bridges]
    pods = [netns_factory("pycni-pod") for _ in range(3)]
    port = [{"hostPort": 18400, "containerPort": 80, "protocol": "tcp"}]

    def localnet(bridge: str) -> str:
        return host_netns.run("sysctl", "-n", f"net.ipv4.conf.{bridge}.route_localnet").stdout.strip()

    _, (rc, out, err) = chains[0].add("pl-a", pods[0], port)
    assert rc == 0, (out, err)
    assert localnet(bridges[0]) == "1"
    before = sorted(portmap_elements(host_netns))

    # Refused (the port is taken) on the second bridge: that bridge is as it was.
    result_b, (rc, out, err) = chains[1].add("pl-b", pods[1], port)
    assert rc == 1 and out["code"] == 110, (out, err)
    assert localnet(bridges[1]) == "0" and localnet(bridges[0]) == "1"
    # Refused on the first bridge: the sysctl stays, pl-a needs it.
    result_c, (rc, out, err) = chains[0].add("pl-c", pods[2], port)
    assert rc == 1 and out["code"] == 110, (out, err)
    assert localnet(bridges[0]) == "1"

    # A fault injected after the sysctl: the nft transaction fails.
    real_run = NftRunner.run

    def failing(self, argv, script="", what=""):
        if what == "host port setup":
            raise FirewallFailure("nftables: host port setup failed", "injected")
        return real_run(self, argv, script, what)

    mocker.patch.object(NftRunner, "run", failing)
    conf = dict(PORTMAP, cniVersion="1.1.0", name="pmnet", prevResult=result_b,
                runtimeConfig={"portMappings": [{"hostPort": 18401, "containerPort": 80}]})
    rc, out, err = run_inproc(host_netns, "ADD", conf, "pl-b", pods[1].path, plugin="portmap")
    assert rc == 1 and out["code"] == 106 and "injected" in json.dumps(out), (out, err)
    assert localnet(bridges[1]) == "0" and localnet(bridges[0]) == "1"
    assert sorted(portmap_elements(host_netns)) == before
