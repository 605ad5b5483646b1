"""firewall against the real kernel: two pycni-bridge networks in one fake node, each chained with
firewall; ingressPolicy open / same-bridge / isolated; pod egress and replies; the admin chain;
an iptables FORWARD policy DROP of our own (nftables accepts cannot pass it, the iptables backend
can); DEL and GC leave nothing (the last one takes the network's chain and sets along, also when
an ADD races it); chained after the Go reference bridge."""

from __future__ import annotations

import json
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from cni_plugin import netns
from cni_plugin.firewall import policy_render as pr
from cni_plugin.firewall.render import attachment_tag, network_id
from tests.conftest import bare_env, free_subnet, run_plugin

from .bridge_support import GO, LockPollClock, Outside, ip_files, run_inproc

pytestmark = pytest.mark.integration


@dataclass
class Network:
    name: str
    bridge: str
    subnet: object
    data_dir: Path
    firewall: dict

    def bridge_conf(self) -> dict:
        return {"cniVersion": "1.1.0", "name": self.name, "type": "pycni-bridge", "bridge": self.bridge,
                "isGateway": True, "isDefaultGateway": True,
                "ipam": {"type": "host-local", "dataDir": str(self.data_dir),
                         "ranges": [[{"subnet": str(self.subnet)}]]}}

    def fw_conf(self, prev: dict | None = None) -> dict:
        conf = {"cniVersion": "1.1.0", "name": self.name, "type": "pycni-firewall", **self.firewall}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)


class Pod:
    def __init__(self, host, net: Network, ns, cid: str) -> None:
        self.host, self.net, self.ns, self.cid = host, net, ns, cid
        rc, bridge_result, err = run_inproc(host, "ADD", net.bridge_conf(), cid, ns.path, plugin="bridge")
        assert rc == 0, (bridge_result, err)
        rc, self.result, err = run_inproc(host, "ADD", net.fw_conf(bridge_result), cid, ns.path, plugin="firewall")
        assert rc == 0, (self.result, err)
        assert self.result == bridge_result  # passed through unchanged
        self.ip = self.result["ips"][0]["address"].split("/")[0]

    def check(self) -> None:
        rc, out, err = run_inproc(self.host, "CHECK", self.net.fw_conf(self.result), self.cid, self.ns.path,
                                  plugin="firewall")
        assert rc == 0, (out, err)

    def delete(self) -> None:
        for plugin, conf in (("firewall", self.net.fw_conf(self.result)), ("bridge", self.net.bridge_conf())):
            rc, out, err = run_inproc(self.host, "DEL", dict(conf, prevResult=self.result), self.cid, self.ns.path,
                                      plugin=plugin)
            assert rc == 0, (plugin, out, err)


def reaches(src, address: str) -> bool:
    return src.run("ping", "-c", "1", "-W", "1", address, check=False).returncode == 0


def subnets(count: int) -> list:
    found: list = []
    while len(found) < count:
        candidate = free_subnet(4)
        if not any(candidate.overlaps(s) for s in found):
            found.append(candidate)
    return found


def fw_state(host, *networks: str) -> dict:
    """Every firewall element left in the fake node: pod addresses per network, isolated ports."""
    def listing(family: str) -> dict:
        proc = host.run("nft", "-j", "list", "table", family, "pycni", check=False)
        return json.loads(proc.stdout) if proc.returncode == 0 else {}

    inet, bridge = listing("inet"), listing("bridge")
    state = {n: sorted((str(e.address), e.tag) for e in pr.parse_entries(n, inet)) for n in networks}
    state["ports"] = sorted(p.host_if for p in pr.parse_ports(bridge))
    return state


@pytest.fixture
def outside(netns_factory, host_netns):
    return Outside(netns_factory, host_netns, free_subnet(4, 30))


@pytest.mark.parametrize(
    ("policy", "backend"),
    [("open", "nftables"), ("same-bridge", "nftables"), ("isolated", "nftables"),
     ("same-bridge", "iptables"), ("isolated", "iptables")],
)
def test_ingress_policy_between_two_bridges(netns_factory, host_netns, outside, tmp_path, policy, backend):
    sa, sb = subnets(2)
    if policy == "isolated" and backend == "nftables":
        # Prove the bridge-family rule on its own: no br_netfilter for frames bridged between pods.
        # (The iptables backend, like the reference, needs br_netfilter to see bridged traffic.)
        host_netns.run("sysctl", "-w", "net.bridge.bridge-nf-call-iptables=0")
    fw = {"ingressPolicy": policy, "backend": backend}
    net_a = Network("fwnet-a", "cni-fwa", sa, tmp_path / "a", fw)
    net_b = Network("fwnet-b", "cni-fwb", sb, tmp_path / "b", fw)
    pa1 = Pod(host_netns, net_a, netns_factory("pycni-pa1"), "pa1")
    pa2 = Pod(host_netns, net_a, netns_factory("pycni-pa2"), "pa2")
    pb1 = Pod(host_netns, net_b, netns_factory("pycni-pb1"), "pb1")
    for s in (sa, sb):  # the outside world routes pod subnets back through the node (no NAT)
        outside.ns.run("ip", "route", "add", str(s), "via", str(outside.host_ip))

    # egress and its replies always work, as does the pod's own gateway
    for pod in (pa1, pa2, pb1):
        assert reaches(pod.ns, str(outside.ip)), f"{pod.cid} -> outside ({policy})"
        assert reaches(pod.ns, pod.net.gateway)
        pod.check()

    across = policy == "open"
    within = policy != "isolated"
    assert reaches(pa1.ns, pb1.ip) is across, f"{policy}: bridge A -> bridge B"
    assert reaches(pb1.ns, pa1.ip) is across, f"{policy}: bridge B -> bridge A"
    assert reaches(pa1.ns, pa2.ip) is within, f"{policy}: pods on the same bridge"

    state = fw_state(host_netns, net_a.name, net_b.name)
    if backend == "nftables":
        assert state[net_a.name] == sorted((p.ip, attachment_tag(p.cid, "eth0")) for p in (pa1, pa2))
        assert len(state["ports"]) == (3 if policy == "isolated" else 0)
    else:
        saved = host_netns.run("iptables-save", "-t", "filter").stdout
        assert saved.count("pycni-fw:") == 6 and "-A CNI-ISOLATION-STAGE-2 -o cni-fwb" in saved

    for pod in (pa1, pa2, pb1):
        pod.delete()
        pod.delete()  # twice
    assert fw_state(host_netns, net_a.name, net_b.name) == {net_a.name: [], net_b.name: [], "ports": []}
    assert "pycni-fw:" not in host_netns.run("iptables-save", "-t", "filter").stdout
    assert ip_files(tmp_path / "a", net_a.name) == []


def _admin_rule(host, backend: str, action: str, address: str) -> None:
    if backend == "nftables":
        if action == "add":
            host.run("nft", "add", "rule", "inet", "pycni", "CNI-ADMIN", "ip", "daddr", address, "drop")
        else:
            host.run("nft", "flush", "chain", "inet", "pycni", "CNI-ADMIN")
    else:
        host.run("iptables", "-w", "-A" if action == "add" else "-D", "CNI-ADMIN", "-d", address, "-j", "DROP")


@pytest.mark.parametrize("backend", ["nftables", "iptables"])
def test_admin_chain_and_a_forward_drop_policy(netns_factory, host_netns, outside, tmp_path, backend):
    (sa,) = subnets(1)
    net = Network("fwdrop", "cni-fwd", sa, tmp_path / "ipam", {"backend": backend})
    outside.ns.run("ip", "route", "add", str(sa), "via", str(outside.host_ip))
    # A node whose forward policy is DROP, like Docker's: our own iptables FORWARD chain (iptables-nft).
    host_netns.run("iptables", "-w", "-P", "FORWARD", "DROP")
    pod = Pod(host_netns, net, netns_factory("pycni-fwd"), "drop1")
    pod.check()

    if backend == "nftables":
        # Documented limit: an nftables accept ends only its own base chain; the DROP elsewhere wins.
        assert not reaches(pod.ns, str(outside.ip))
        host_netns.run("iptables", "-w", "-P", "FORWARD", "ACCEPT")
    assert reaches(pod.ns, str(outside.ip)), "egress and replies through the firewall's accept rules"

    # The admin chain runs first and is the operator's: its rules survive another ADD and count.
    _admin_rule(host_netns, backend, "add", str(outside.ip))
    assert not reaches(pod.ns, str(outside.ip))
    second = Pod(host_netns, net, netns_factory("pycni-fwd2"), "drop2")
    assert not reaches(second.ns, str(outside.ip)), "admin rule still there after another ADD"
    _admin_rule(host_netns, backend, "del", str(outside.ip))
    assert reaches(second.ns, str(outside.ip))

    for p in (pod, second):
        p.delete()
    if backend == "iptables":
        rules = host_netns.run("iptables", "-w", "-S", "CNI-FORWARD").stdout
        assert "pycni-fw:" not in rules and "-j CNI-ADMIN" in rules
        assert "-N CNI-ADMIN" in host_netns.run("iptables", "-w", "-S").stdout  # never deleted
    else:
        assert fw_state(host_netns, net.name)[net.name] == []
        # The admin chain is empty again and no firewall network is left: it goes with the rest,
        # and the table with it (issue 15; an admin chain holding rules stays, see
        # test_shared_nft_objects.py).
        assert host_netns.run("nft", "list", "table", "inet", "pycni", check=False).returncode != 0


def test_del_without_prev_result_or_netns_and_gc(netns_factory, host_netns, tmp_path):
    (sa,) = subnets(1)
    net = Network("fwgc", "cni-fwgc", sa, tmp_path / "ipam", {"ingressPolicy": "isolated"})
    pods = [Pod(host_netns, net, netns_factory(f"pycni-gc{i}"), f"gc{i}") for i in range(3)]
    tags = {p.cid: attachment_tag(p.cid, "eth0") for p in pods}

    # DEL with the pod's namespace gone and no prevResult: still removes exactly its entries.
    gone = pods[0]
    subprocess.run(["ip", "netns", "del", gone.ns.name], check=True)
    rc, out, err = run_inproc(host_netns, "DEL", net.fw_conf(), gone.cid, gone.ns.path, plugin="firewall")
    assert (rc, out) == (0, None), err
    rc, out, err = run_inproc(host_netns, "DEL", net.fw_conf(), gone.cid, "", plugin="firewall")
    assert (rc, out) == (0, None), err
    assert {t for _, t in fw_state(host_netns, net.name)[net.name]} == {tags["gc1"], tags["gc2"]}

    # GC: gc2 is an orphan (its DEL never came).
    gc_conf = dict(net.fw_conf(), **{"cni.dev/valid-attachments": [{"containerID": "gc1", "ifname": "eth0"}]})
    rc, out, err = run_inproc(host_netns, "GC", gc_conf, "", "", plugin="firewall")
    assert (rc, out) == (0, None), err
    state = fw_state(host_netns, net.name)
    assert [t for _, t in state[net.name]] == [tags["gc1"]]
    assert state["ports"] == [pods[1].result["interfaces"][1]["name"]]

    # The bridge itself goes away: GC drops its per-bridge isolation elements too.
    for p in pods[1:]:
        p.delete()
    host_netns.run("ip", "link", "del", net.bridge)
    gc_all = dict(net.fw_conf(), **{"cni.dev/valid-attachments": []})
    rc, out, err = run_inproc(host_netns, "GC", gc_all, "", "", plugin="firewall")
    assert (rc, out) == (0, None), err
    proc = host_netns.run("nft", "-j", "list", "table", "inet", "pycni", check=False)
    assert pr.parse_isolation(json.loads(proc.stdout) if proc.returncode == 0 else {}) == (set(), set())

    rc, out, _ = run_inproc(host_netns, "STATUS", net.fw_conf(), "", "", plugin="firewall")
    assert (rc, out) == (0, None)


def test_chained_after_go_bridge(installed_bin, host_netns, pod_netns, tmp_path):
    (sa,) = subnets(1)
    bridge = {"cniVersion": "1.0.0", "name": "gofw", "type": "bridge", "bridge": "cni-gofw", "isGateway": True,
              "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": str(sa)}]]}}
    fw = {"cniVersion": "1.0.0", "name": "gofw", "type": "pycni-firewall", "ingressPolicy": "same-bridge"}
    common = dict(CNI_CONTAINERID="gofw1", CNI_NETNS=pod_netns.path, CNI_IFNAME="eth0", CNI_PATH=str(GO))

    def run(exe, verb, conf):
        rc, out, err = run_plugin(exe, bare_env(CNI_COMMAND=verb, **common), conf, netns=host_netns)
        assert rc == 0, (exe, verb, out, err)
        return out

    result = run(GO / "bridge", "ADD", bridge)
    fw_exe = installed_bin / "pycni-firewall"
    passed = run(fw_exe, "ADD", dict(fw, prevResult=result))
    assert {k: v for k, v in passed.items() if v} == {k: v for k, v in result.items() if v}  # "dns": {} aside
    run(GO / "bridge", "CHECK", dict(bridge, prevResult=result))
    run(fw_exe, "CHECK", dict(fw, prevResult=result))
    pod_ip = result["ips"][0]["address"].split("/")[0]
    assert fw_state(host_netns, "gofw")["gofw"] == [(pod_ip, attachment_tag("gofw1", "eth0"))]
    listing = json.loads(host_netns.run("nft", "-j", "list", "table", "inet", "pycni").stdout)
    assert pr.parse_isolation(listing) == ({"cni-gofw"}, {"cni-gofw"})
    for _ in range(2):
        run(fw_exe, "DEL", dict(fw, prevResult=result))
    run(GO / "bridge", "DEL", dict(bridge, prevResult=result))
    assert fw_state(host_netns, "gofw")["gofw"] == []


# --- a network's last attachment takes its fw_ chain and sets along ------------------------------------------


def _fw_objects(host, network: str) -> list[str]:
    """Lines of the pycni tables naming `network`'s id or name."""
    text = host.run("nft", "list", "ruleset").stdout
    return [line.strip() for line in text.splitlines() if network_id(network) in line or f'"{network}"' in line]


def test_last_del_and_gc_remove_the_networks_firewall_objects(netns_factory, host_netns, outside, tmp_path):
    (sa,) = subnets(1)
    net = Network("fwlast", "cni-fwlast", sa, tmp_path / "ipam", {"ingressPolicy": "isolated"})
    outside.ns.run("ip", "route", "add", str(sa), "via", str(outside.host_ip))
    n = network_id(net.name)
    first = Pod(host_netns, net, netns_factory("pycni-fl1"), "fl1")
    second = Pod(host_netns, net, netns_factory("pycni-fl2"), "fl2")

    first.delete()
    left = _fw_objects(host_netns, net.name)
    for name in (f"chain fw_{n}", f"set fw4_{n}", f"set fw6_{n}"):
        assert any(line.startswith(name) for line in left), (name, left)
    assert fw_state(host_netns, net.name)[net.name] == [(second.ip, attachment_tag("fl2", "eth0"))]
    assert reaches(second.ns, str(outside.ip)), "the other pod keeps its accept rules"
    second.check()

    second.delete()
    second.delete()
    assert _fw_objects(host_netns, net.name) == []
    assert fw_state(host_netns, net.name) == {net.name: [], "ports": []}
    # The objects the firewall's networks share (the empty admin chain, its hook, the isolation
    # chain and sets, the isolated-port set) went too, and both tables with them (issue 15).
    for table in (("inet", "pycni"), ("bridge", "pycni")):
        assert host_netns.run("nft", "list", "table", *table, check=False).returncode != 0, table

    # GC keeping nobody is a last removal too.
    third = Pod(host_netns, net, netns_factory("pycni-fl3"), "fl3")
    assert any(line.startswith(f"chain fw_{n}") for line in _fw_objects(host_netns, net.name))
    gc_all = dict(net.fw_conf(), **{"cni.dev/valid-attachments": []})
    rc, out, err = run_inproc(host_netns, "GC", gc_all, "", "", plugin="firewall")
    assert (rc, out) == (0, None), err
    assert _fw_objects(host_netns, net.name) == []
    third.delete()


def test_add_racing_the_last_del_keeps_its_firewall_entries(host_netns, tmp_path, mocker):
    """The last DEL has listed the tables when another pod's ADD starts: the ADD waits for the
    firewall lock, so the DEL's teardown cannot take its element along."""
    from cni_plugin.firewall import lock
    from cni_plugin.firewall.nftables import NftRunner
    from cni_plugin.firewall.plugin import FirewallConf, NftFirewall, Target, parse_config

    conf = parse_config(FirewallConf, {"name": "fwrace"})
    (subnet,) = subnets(1)
    a, b = (Target((subnet.network_address + i,), "", "") for i in (2, 3))
    backend = NftFirewall(lock_path=str(tmp_path / "firewall.lock"))
    clock = LockPollClock()  # lock.py's time, noting when someone polls for the lock
    waiting = clock.waiting

    def in_host(fn, *args) -> threading.Thread:
        box: dict = {}

        def go() -> None:
            try:
                with netns.entered(host_netns.path):
                    fn(*args)
            except BaseException as exc:  # noqa: BLE001 - checked below
                box["exc"] = exc

        thread = threading.Thread(target=go)
        thread.box = box  # type: ignore[attr-defined]
        thread.start()
        return thread

    racer: list[threading.Thread] = []
    real_listing = NftRunner.listing

    def listing_then_race(self, family):
        found = real_listing(self, family)
        if not racer:  # the DEL's first listing: start the racing ADD, let it reach the lock (or finish)
            racer.append(in_host(backend.add, conf, "tag-b", b))
            while not waiting.wait(0.01) and racer[0].is_alive():
                pass
        return found

    mocker.patch.object(lock, "time", clock)
    first = in_host(backend.add, conf, "tag-a", a)
    first.join()
    mocker.patch.object(NftRunner, "listing", listing_then_race)
    deleter = in_host(backend.remove, conf, "tag-a")
    deleter.join()
    racer[0].join()
    mocker.stopall()
    assert not first.box and not deleter.box and not racer[0].box, (first.box, deleter.box, racer[0].box)

    assert fw_state(host_netns, "fwrace")["fwrace"] == [(str(subnet.network_address + 3), "tag-b")]
    assert waiting.is_set(), "the racing ADD waited for the DEL's lock"
    assert any(line.startswith(f"chain fw_{network_id('fwrace')}") for line in _fw_objects(host_netns, "fwrace"))
    in_host(backend.remove, conf, "tag-b").join()
    assert _fw_objects(host_netns, "fwrace") == []
