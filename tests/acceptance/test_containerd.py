"""Acceptance: the kubelet path. containerd's CRI plugin wires pods with the installed pycni.

A private containerd (the machine's 1.6, runc, own root/state/socket/cgroup parent, all under a
temp dir; see containerd_support.py) runs inside a fake node namespace. Its CNI conf_dir holds
`conf/10-pycni-kind.conflist` (pycni-bridge + pycni-host-local on a tmpfs dataDir, Go portmap)
with a subnet, bridge name and dataDir picked at run time; its bin_dir resolves each plugin to the
installed pycni directory first and /usr/lib/cni second. A CRI v1 client does what the kubelet does:
RunPodSandbox (containerd runs `loopback`, then the conflist: ADD), CreateContainer/StartContainer,
ExecSync, StopPodSandbox (DEL), RemovePodSandbox.

Checked as a user would: each pod's CRI-reported IP is in the subnet and on eth0 in the pod's
namespace; pod B, the node and an outside host reach pod A's HTTP server; a hostPort reaches it
through the node's own address (from the node, from outside, and hairpinned from pod B); the pycni
plugins (not Go ones) did the ADDs and DELs; after Stop+Remove (each twice) no veth, pod address,
iptables/nftables rule for the pods, IPAM reservation, pod netns or libcni cache entry is left, and
once the daemon is closed no process, cgroup, mount or temp dir of it remains. The bridge stays,
with no ports: the reference bridge plugin never deletes it either.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

from tests.acceptance.conftest import chain_types
from tests.acceptance.containerd_support import (
    RESULTS_CACHE,
    PrivateContainerd,
    cri,
    nsenter_net,
    plugin_log,
    wait_for,
)
from tests.acceptance.test_cnitool import host_veths, reservations, rewrite
from tests.conftest import GO_PLUGINS, REPO, Netns, free_subnet

CONFLIST = REPO / "conf" / "10-pycni-kind.conflist"
HTTP_PORT = 80


def wget(url: str) -> list[str]:
    # busybox wget's own -T segfaults in containers: bound it with timeout(1) instead.
    return ["timeout", "5", "busybox", "wget", "-qO-", url]


def pod_eth0(pid: int) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    proc = nsenter_net(pid, "ip", "-j", "addr", "show", "dev", "eth0")
    assert proc.returncode == 0, f"no eth0 in the pod (pid {pid}): {proc.stderr}"
    return [
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
        for link in json.loads(proc.stdout or "[]")
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    ]


def uplink(host: Netns, outside: Netns, pod_subnet) -> tuple[str, str]:
    """A veth from the fake node to an 'outside' namespace; returns (node address, outside address)."""
    while (net := free_subnet(4, 30)).overlaps(pod_subnet):
        pass
    node_ip, out_ip = (str(a) for a in list(net.hosts())[:2])
    subprocess.run(["ip", "-n", host.name, "link", "add", "pycup0", "type", "veth",
                    "peer", "name", "pycup0", "netns", outside.name], check=True)
    for ns, addr in ((host, node_ip), (outside, out_ip)):
        subprocess.run(["ip", "-n", ns.name, "addr", "add", f"{addr}/30", "dev", "pycup0"], check=True)
        subprocess.run(["ip", "-n", ns.name, "link", "set", "pycup0", "up"], check=True)
    return node_ip, out_ip


def mentions(text: str, ip: str) -> bool:
    """Whether `text` names the address `ip` (10.0.0.2 is not named by 10.0.0.25)."""
    return re.search(rf"(?<![0-9.]){re.escape(ip)}(?![0-9]|\.[0-9])", text) is not None


def host_text(host: Netns, *argv: str) -> str:
    proc = host.run(*argv, check=False)
    assert proc.returncode == 0, f"{' '.join(argv)} failed in the node namespace: {proc.stderr}"
    return proc.stdout


def test_containerd_cri_pods(host_netns, netns_factory, installed_bin, plugin_origins, record_property):
    started = time.monotonic()
    bridge = "pyc" + uuid.uuid4().hex[:8]
    data_dir = Path(tempfile.mkdtemp(prefix="pycni-ipam-", dir="/run"))  # tmpfs, as kind's dataDir
    conf, subnets = rewrite(json.loads(CONFLIST.read_text()), bridge, data_dir)
    (subnet,) = subnets
    plugin_dirs = [Path(installed_bin), GO_PLUGINS]
    # containerd runs `loopback` for every pod besides the conflist's chain.
    origins = plugin_origins("containerd", [*chain_types(conf), "loopback"], plugin_dirs)
    print("\ncontainerd: " + ", ".join(f"{t} <- {d}" for t, d in origins.items()))
    for ours in ("pycni-bridge", "pycni-host-local", "loopback"):
        assert origins[ours] == Path(installed_bin), (
            f"{ours} is not from the pycni install {installed_bin} (install with --names both)")

    outside = netns_factory("pycni-out")
    node_ip, _ = uplink(host_netns, outside, subnet)
    host_port = random.randrange(20000, 30000)
    marker = f"pycni-{uuid.uuid4().hex[:12]}"

    daemon = PrivateContainerd(host_netns, plugin_dirs, conf)
    try:
        with daemon:
            ready = time.monotonic()
            # -- pods up --------------------------------------------------------------------------
            sid_a, cfg_a = daemon.run_pod("web", port_mappings=[(HTTP_PORT, host_port)])
            sid_b, cfg_b = daemon.run_pod("client")
            sandboxes = {"web": sid_a, "client": sid_b}
            ips, netns_paths = {}, {}
            for name, sid in sandboxes.items():
                status = daemon.pod_status(sid).status
                assert status.state == cri.SANDBOX_READY, f"pod {name} is not ready: {status}"
                ip = ipaddress.ip_address(status.network.ip)
                assert ip in subnet, f"pod {name}: CRI reports {ip}, not in {subnet}"
                info = daemon.pod_info(sid)
                on_eth0 = [a.ip for a in pod_eth0(info["pid"])]
                assert ip in on_eth0, f"pod {name}: {ip} is not on eth0 in the pod ({on_eth0})"
                ips[name], netns_paths[name] = str(ip), info["netns"]
            assert ips["web"] != ips["client"]
            # The plugins containerd exec'd ran in its (fake node) namespace, not the machine's.
            assert host_netns.ip_json("link", "show", "dev", bridge), f"no bridge {bridge} in the node namespace"
            machine = subprocess.run(["ip", "link", "show", "dev", bridge], capture_output=True)
            assert machine.returncode != 0, f"bridge {bridge} appeared in the machine's own namespace"

            daemon.start_container(
                sid_a, cfg_a, "httpd",
                ["/bin/sh", "-c", f"mkdir -p /tmp/www && echo {marker} > /tmp/www/index.html"
                 f" && exec httpd -f -p {HTTP_PORT} -h /tmp/www"])
            client = daemon.start_container(sid_b, cfg_b, "sleeper", ["/bin/sleep", "2147483647"])

            # -- traffic --------------------------------------------------------------------------
            def from_client(url: str):
                return daemon.exec_sync(client, wget(url))

            pod_url = f"http://{ips['web']}:{HTTP_PORT}/"
            def served():
                res = from_client(pod_url)
                return res if res.exit_code == 0 else None

            res = wait_for(served) or from_client(pod_url)  # httpd may still be starting
            assert res.exit_code == 0 and res.stdout.decode().strip() == marker, (
                f"pod B -> pod A {pod_url}: exit {res.exit_code} {res.stdout!r} {res.stderr!r}")

            node = host_netns.run(*wget(pod_url), check=False)
            assert node.stdout.strip() == marker, f"node -> pod A {pod_url}: {node.returncode} {node.stderr}"

            port_url = f"http://{node_ip}:{host_port}/"
            node = host_netns.run(*wget(port_url), check=False)
            assert node.stdout.strip() == marker, f"node -> hostPort {port_url}: {node.returncode} {node.stderr}"
            far = outside.run(*wget(port_url), check=False)
            assert far.stdout.strip() == marker, f"outside -> hostPort {port_url}: {far.returncode} {far.stderr}"
            res = from_client(port_url)
            assert res.exit_code == 0 and res.stdout.decode().strip() == marker, (
                f"pod B -> hostPort {port_url} (hairpin): exit {res.exit_code} {res.stderr!r}")

            rules = host_text(host_netns, "iptables-save") + host_text(host_netns, "nft", "list", "ruleset")
            assert mentions(rules, ips["web"]), "no iptables/nftables rule names the web pod (hostPort DNAT)"
            assert reservations(data_dir), "host-local recorded no reservation in dataDir"

            # -- pods down: each Stop and Remove twice, as the kubelet may ------------------------
            for sid in sandboxes.values():
                daemon.stop_pod(sid)
                daemon.stop_pod(sid)
            for sid in sandboxes.values():
                daemon.remove_pod(sid)
                daemon.remove_pod(sid)
            assert daemon.list_pods() == [], "CRI still lists pods after RemovePodSandbox"

            # -- nothing left -------------------------------------------------------------------------
            veths = [v for v in host_veths(host_netns) if v != "pycup0"]
            assert veths == [], f"veths left on the node: {veths}"
            ports = host_netns.ip_json("link", "show", "master", bridge)
            assert ports == [], f"ports left on bridge {bridge}: {[p['ifname'] for p in ports]}"
            addrs = host_text(host_netns, "ip", "addr")
            rules = host_text(host_netns, "iptables-save") + host_text(host_netns, "ip6tables-save")
            ruleset = host_text(host_netns, "nft", "list", "ruleset")
            for name, ip in ips.items():
                assert f" {ip}/" not in addrs, f"pod {name}'s address {ip} is still on the node"
                for dump, what in ((rules, "iptables"), (ruleset, "nftables")):
                    assert not mentions(dump, ip), f"{what} still names pod {name}'s {ip}:\n{dump}"
            for sid in sandboxes.values():
                assert sid not in rules and sid not in ruleset, f"a rule still names sandbox {sid}"
            assert "CNI-DN-" not in rules, f"portmap's per-pod chain left:\n{rules}"
            assert reservations(data_dir) == [], f"IPAM reservations left: {reservations(data_dir)}"
            for name, path in netns_paths.items():
                assert not Path(path).exists(), f"pod {name}'s netns {path} was not removed"
            cached = [p.name for sid in sandboxes.values() for p in RESULTS_CACHE.glob(f"*-{sid}-*")]
            assert cached == [], f"libcni result cache left: {cached}"

            # -- the pycni plugins did the work ---------------------------------------------------
            runs = [(e["plugin"], e["verb"], e["containerID"], e["outcome"]) for e in plugin_log(daemon.plugin_log)]
            for sid in sandboxes.values():
                for plugin in ("bridge", "loopback"):
                    for verb in ("ADD", "DEL"):
                        assert (plugin, verb, sid, "ok") in runs, (
                            f"no successful pycni {plugin} {verb} for sandbox {sid} in the plugin log: {runs}")
            print("pycni plugin runs:", dict(Counter(f"{r[0]} {r[1]}" for r in runs)))
            failed = [r for r in runs if r[3] != "ok"]
            assert failed == [], f"pycni plugin invocations failed: {failed}"
            pods_seconds = time.monotonic() - ready

        left = daemon.leftovers()
        assert not any(left.values()), f"containerd left behind: {left}"
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)

    total = time.monotonic() - started
    record_property("containerd_total_seconds", round(total, 2))
    record_property("containerd_pods_seconds", round(pods_seconds, 2))
    print(f"containerd CRI acceptance: {total:.1f}s in all, {pods_seconds:.1f}s from daemon ready to pods removed")
