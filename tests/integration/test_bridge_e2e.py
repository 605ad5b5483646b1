"""The bridge plugin end to end on the real kernel: connectivity, masquerade, DEL sweeps, CHECK.

Every test runs the plugin inside a fake node namespace (conftest `host_netns`); IPAM is the Go
reference host-local from /usr/lib/cni with a tmp dataDir.
"""

from __future__ import annotations

import ipaddress
import os
import subprocess
import threading
import time
import uuid

import pytest

from cni_plugin import netns
from cni_plugin.firewall import attachment_tag, network_id
from cni_plugin.firewall.nftables import NftMasquerade, NftRunner
from tests.conftest import bare_env, free_subnet, run_plugin

from .bridge_support import (
    GO,
    VERSIONS,
    LockPollClock,
    Outside,
    bridge_conf,
    ip_files,
    links,
    masq_elements,
    ping,
    pod_addresses,
    run_inproc,
    spoof_elements,
    veths,
)

pytestmark = pytest.mark.integration


def _cid() -> str:
    return uuid.uuid4().hex


@pytest.mark.parametrize("version", VERSIONS)
def test_two_pods_dual_stack_host_and_outside(version, host_netns, netns_factory, tmp_path):
    """Pod-pod (v4 and v6), pod-host, pod-outside seen with the node's address; DEL leaves nothing."""
    v4, v6 = free_subnet(4), free_subnet(6)
    outside = Outside(netns_factory, host_netns, free_subnet(4, 30))
    conf = bridge_conf(version, "e2e", "cni-e2e", tmp_path, [v4, v6],
                       isGateway=True, isDefaultGateway=True, ipMasq=True)
    pods, results = [], []
    for _ in range(2):
        pod, cid = netns_factory("pycni-pod"), _cid()
        rc, result, err = run_inproc(host_netns, "ADD", conf, cid, pod.path)
        assert rc == 0, (result, err)
        pods.append((pod, cid))
        results.append(result)

    # The result: [bridge, host veth, pod iface with sandbox], every ip on interface 2.
    for (pod, _), result in zip(pods, results, strict=True):
        assert result["cniVersion"] == version
        names = [i["name"] for i in result["interfaces"]]
        assert names[0] == "cni-e2e" and names[1].startswith("veth") and names[2] == "eth0"
        assert result["interfaces"][2]["sandbox"] == pod.path
        assert all(ip["interface"] == 2 for ip in result["ips"])
        assert {a.version for a in pod_addresses(result)} == {4, 6}
        # The bridge MAC in the result is the bridge's, pinned (addr_assign_type 3 = set).
        bridge = links(host_netns)["cni-e2e"]
        assert result["interfaces"][0]["mac"] == bridge["address"]
        assert bridge["linkinfo"]["info_kind"] == "bridge"

    a4, a6 = pod_addresses(results[0])
    b4, b6 = pod_addresses(results[1])
    pod_a, pod_b = pods[0][0], pods[1][0]
    assert ping(pod_a, b4.ip), "pod-pod v4"
    assert ping(pod_a, b6.ip), "pod-pod v6"
    assert ping(pod_a, v4.network_address + 1), "pod-host (gateway on the bridge)"
    assert ping(pod_b, v6.network_address + 1), "pod-host v6"
    assert outside.connect_from(pod_a) == str(outside.host_ip), "outside must see the node's address"
    assert sorted(ip for ip, _ in masq_elements(host_netns)) == sorted([str(a4.ip), str(a6.ip), str(b4.ip), str(b6.ip)])

    # CHECK (0.4.0+) with the cached result.
    if version != "0.3.1":
        for (pod, cid), result in zip(pods, results, strict=True):
            rc, out, err = run_inproc(host_netns, "CHECK", dict(conf, prevResult=result), cid, pod.path)
            assert rc == 0, (out, err)

    for (pod, cid), result in zip(pods, results, strict=True):
        rc, out, err = run_inproc(host_netns, "DEL", dict(conf, prevResult=result), cid, pod.path)
        assert rc == 0, (out, err)
    assert veths(host_netns) == []
    assert ip_files(tmp_path, "e2e") == []
    assert masq_elements(host_netns) == []
    assert "cni-e2e" in links(host_netns), "the bridge is never deleted"


def test_mtu_follows_default_route_interface(host_netns, pod_netns, tmp_path):
    host_netns.run("ip", "link", "add", "uplink0", "mtu", "1400", "type", "veth", "peer", "name", "uplink1")
    host_netns.run("ip", "link", "set", "uplink1", "up")
    host_netns.run("ip", "link", "set", "uplink0", "up")
    up = free_subnet(4, 30)
    host_netns.run("ip", "addr", "add", f"{next(up.hosts())}/30", "dev", "uplink0")
    host_netns.run("ip", "route", "add", "default", "dev", "uplink0")
    conf = bridge_conf("1.0.0", "mtu", "cni-mtu", tmp_path, [free_subnet(4)])
    rc, result, err = run_inproc(host_netns, "ADD", conf, _cid(), pod_netns.path)
    assert rc == 0, (result, err)
    assert links(pod_netns)["eth0"]["mtu"] == 1400
    assert links(host_netns)["cni-mtu"]["mtu"] == 1400


def test_dad_off_by_default_and_hairpin(host_netns, pod_netns, tmp_path):
    conf = bridge_conf("1.1.0", "dad", "cni-dad", tmp_path, [free_subnet(6)], hairpinMode=True, portIsolation=True)
    rc, result, err = run_inproc(host_netns, "ADD", conf, "c-dad", pod_netns.path)
    assert rc == 0, (result, err)
    assert pod_netns.run("sysctl", "-n", "net.ipv6.conf.eth0.accept_dad").stdout.strip() == "0"
    addr = [a for a in pod_netns.ip_json("addr", "show", "eth0")[0]["addr_info"] if a["scope"] == "global"][0]
    assert not addr.get("tentative")
    veth = result["interfaces"][1]["name"]
    slave = links(host_netns)[veth]["linkinfo"]["info_slave_data"]
    assert slave["hairpin"] is True and slave["isolated"] is True
    assert result["interfaces"][2]["mtu"] == 1500  # 1.1.0 carries interface mtu


def _bridge_state(host, name: str, want: str) -> tuple[str, str, str, int]:
    """(operstate, MAC, STP bridge id's MAC part, addr_assign_type) as `ip -d link` shows them.

    The kernel applies a carrier change to operstate from its linkwatch work, which it runs at
    most about once a second for a bridge: give it 2 s to reach `want`, then report what it is."""
    deadline = time.monotonic() + 2
    while (link := links(host)[name])["operstate"] != want and time.monotonic() < deadline:
        time.sleep(0.02)
    bridge_id = link["linkinfo"]["info_data"]["bridge_id"].split(".", 1)[1]
    normalised = ":".join(f"{int(octet, 16):02x}" for octet in bridge_id.split(":"))
    assign = host.run("cat", f"/sys/class/net/{name}/addr_assign_type").stdout.strip()
    return link["operstate"], link["address"], normalised, int(assign)


def test_bridge_operstate_is_up_after_add_and_down_after_the_last_del_like_the_reference(
    installed_bin, host_netns, netns_factory, tmp_path
):
    """Issue 16: the same ADD/DEL through pycni and through the Go bridge, one bridge each."""
    seen = {}
    for kind, exe in (("pycni", installed_bin / "pycni-bridge"), ("go", GO / "bridge")):
        pod, cid, bridge = netns_factory("pycni-pod"), _cid(), f"cni-op-{kind}"
        conf = bridge_conf("1.0.0", f"op-{kind}", bridge, tmp_path / kind, [free_subnet(4)], isGateway=True)
        conf["type"] = exe.name
        common = dict(CNI_CONTAINERID=cid, CNI_NETNS=pod.path, CNI_IFNAME="eth0", CNI_PATH=str(GO))
        rc, result, err = run_plugin(exe, bare_env(CNI_COMMAND="ADD", **common), conf, netns=host_netns)
        assert rc == 0, (result, err)
        after_add = _bridge_state(host_netns, bridge, "UP")
        rc, out, err = run_plugin(exe, bare_env(CNI_COMMAND="DEL", **common), dict(conf, prevResult=result),
                                  netns=host_netns)
        assert rc == 0, (out, err)
        after_del = _bridge_state(host_netns, bridge, "DOWN")
        seen[kind] = (after_add, after_del, links(host_netns)[bridge]["flags"])

    for kind, ((op_add, mac, bridge_id, assign), (op_del, mac_after, _, _), flags) in seen.items():
        assert op_add == "UP", (kind, seen)
        # The MAC is pinned (3 = set) and is the STP bridge id, as the kernel does for a new address.
        assert assign == 3 and bridge_id == mac == mac_after, (kind, seen)
        # The bridge stays (neither plugin deletes it), admin up with no carrier: operstate DOWN.
        assert op_del == "DOWN" and "UP" in flags and "NO-CARRIER" in flags, (kind, seen)
    assert seen["pycni"][0][0] == seen["go"][0][0] and seen["pycni"][1][0] == seen["go"][1][0]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_installed_executable_add_check_del_del(version, installed_bin, host_netns, pod_netns, tmp_path):
    conf = bridge_conf(version, "exe", "cni-exe", tmp_path, [free_subnet(4)], isGateway=True, ipMasq=True)
    cid = _cid()
    common = dict(CNI_CONTAINERID=cid, CNI_NETNS=pod_netns.path, CNI_IFNAME="eth0", CNI_PATH=str(GO))
    exe = installed_bin / "pycni-bridge"
    rc, result, err = run_plugin(exe, bare_env(CNI_COMMAND="ADD", **common), conf, netns=host_netns)
    assert rc == 0, (result, err)
    assert result["cniVersion"] == version
    if version != "0.3.1":
        rc, out, err = run_plugin(exe, bare_env(CNI_COMMAND="CHECK", **common), dict(conf, prevResult=result),
                                  netns=host_netns)
        assert rc == 0 and out is None, (out, err)
    for _ in range(2):  # DEL, then DEL again
        rc, out, err = run_plugin(exe, bare_env(CNI_COMMAND="DEL", **common), dict(conf, prevResult=result),
                                  netns=host_netns)
        assert rc == 0, (out, err)
    assert veths(host_netns) == [] and ip_files(tmp_path, "exe") == [] and masq_elements(host_netns) == []
    assert "eth0" not in links(pod_netns)


@pytest.mark.parametrize("netns_value", ["gone", "empty"])
def test_del_after_netns_gone_leaves_nothing(netns_value, host_netns, netns_factory, tmp_path):
    pod = netns_factory("pycni-pod")
    conf = bridge_conf("1.0.0", "gone", "cni-gone", tmp_path, [free_subnet(4), free_subnet(6)],
                       isGateway=True, ipMasq=True)
    cid = _cid()
    rc, result, err = run_inproc(host_netns, "ADD", conf, cid, pod.path)
    assert rc == 0, (result, err)
    assert len(masq_elements(host_netns)) == 2 and len(ip_files(tmp_path, "gone")) == 2
    path = pod.path
    subprocess.run(["ip", "netns", "del", pod.name], check=True)
    # No prevResult either: the masquerade entries are found by their attachment tag.
    for _ in range(2):
        rc, out, err = run_inproc(host_netns, "DEL", conf, cid, path if netns_value == "gone" else "")
        assert rc == 0, (out, err)
    assert masq_elements(host_netns) == []
    assert ip_files(tmp_path, "gone") == []
    # The kernel destroys a deleted namespace's links from a workqueue, so the host end of the
    # pair can outlive a fast DEL by a moment; it must go on its own, DEL never deletes it by name.
    deadline = time.monotonic() + 10
    while veths(host_netns) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert veths(host_netns) == []


def test_check_fails_after_pod_interface_deleted(host_netns, pod_netns, tmp_path):
    conf = bridge_conf("1.0.0", "chk", "cni-chk", tmp_path, [free_subnet(4)], isGateway=True, ipMasq=True)
    cid = _cid()
    rc, result, err = run_inproc(host_netns, "ADD", conf, cid, pod_netns.path)
    assert rc == 0
    with_prev = dict(conf, prevResult=result)
    assert run_inproc(host_netns, "CHECK", with_prev, cid, pod_netns.path)[0] == 0

    # A masquerade entry removed behind our back is noticed.
    host_netns.run("nft", "flush", "set", "inet", "pycni", [s for s in _sets(host_netns) if s.startswith("pods4")][0])
    rc, out, _ = run_inproc(host_netns, "CHECK", with_prev, cid, pod_netns.path)
    assert rc == 1 and out["code"] == 108 and "masquerade" in out["msg"]

    pod_netns.run("ip", "link", "del", "eth0")
    rc, out, _ = run_inproc(host_netns, "CHECK", with_prev, cid, pod_netns.path)
    assert rc == 1 and out["code"] == 108 and "eth0" in out["msg"]
    assert run_inproc(host_netns, "DEL", with_prev, cid, pod_netns.path)[0] == 0


def _sets(ns) -> list[str]:
    import json

    out = ns.run("nft", "-j", "list", "sets", "inet").stdout
    return [i["set"]["name"] for i in json.loads(out)["nftables"] if "set" in i]


def test_32_concurrent_adds_on_fresh_node(installed_bin, host_netns, netns_factory, tmp_path):
    """32 ADDs race on a node with no bridge: all succeed, one bridge, distinct addresses."""
    subnet = free_subnet(4, 24)
    conf = bridge_conf("1.0.0", "race", "cni-race", tmp_path, [subnet], isGateway=True, ipMasq=True)
    exe = installed_bin / "pycni-bridge"
    pods = [netns_factory("pycni-pod") for _ in range(32)]
    procs = []
    import json

    for i, pod in enumerate(pods):
        env = bare_env(CNI_COMMAND="ADD", CNI_CONTAINERID=f"race{i}", CNI_NETNS=pod.path, CNI_IFNAME="eth0",
                       CNI_PATH=str(GO))
        procs.append(subprocess.Popen(["ip", "netns", "exec", host_netns.name, str(exe)], env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    for proc in procs:
        proc.stdin.write(json.dumps(conf).encode())
        proc.stdin.close()
    outcomes = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    failed = [(rc, out[:300], err[-300:]) for rc, out, err in outcomes if rc != 0]
    assert not failed, failed
    addresses = {json.loads(out)["ips"][0]["address"] for _, out, _ in outcomes}
    assert len(addresses) == 32
    bridges = [n for n, link in links(host_netns).items() if link.get("linkinfo", {}).get("info_kind") == "bridge"]
    assert bridges == ["cni-race"]
    assert len(veths(host_netns)) == 32
    assert len(masq_elements(host_netns)) == 32
    gw = ipaddress.ip_interface(f"{subnet.network_address + 1}/{subnet.prefixlen}")
    bridge_addrs = [a for a in host_netns.ip_json("addr", "show", "cni-race")[0]["addr_info"] if a["family"] == "inet"]
    assert [f"{a['local']}/{a['prefixlen']}" for a in bridge_addrs] == [str(gw)]
    assert ping(pods[0], json.loads(outcomes[31][1])["ips"][0]["address"])
    assert os.path.exists(tmp_path / "race")


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_pycni_host_local_in_process_status_and_gc(version, host_netns, netns_factory, tmp_path):
    """pycni's own IPAM is served in-process (no CNI_PATH needed); GC removes the masquerade
    entries and reservations of attachments not listed; STATUS checks IPAM and nftables."""
    from cni_plugin import invoke

    assert invoke.is_in_process("pycni-host-local")
    subnet = free_subnet(4)
    conf = bridge_conf(version, "inproc", "cni-inproc", tmp_path, [subnet], isGateway=True, ipMasq=True)
    conf["ipam"]["type"] = "pycni-host-local"
    pods = [(netns_factory("pycni-pod"), _cid()) for _ in range(2)]
    for pod, cid in pods:
        rc, result, err = run_inproc(host_netns, "ADD", conf, cid, pod.path, CNI_PATH="/nonexistent")
        assert rc == 0, (result, err)
    assert len(masq_elements(host_netns)) == 2 and len(ip_files(tmp_path, "inproc")) == 2
    assert ping(pods[0][0], subnet.network_address + 1)
    if version != "1.1.0":
        return
    rc, out, err = run_inproc(host_netns, "STATUS", conf, "", "", CNI_PATH="/nonexistent")
    assert rc == 0, (out, err)
    keep = pods[0][1]
    gc_conf = dict(conf, **{"cni.dev/valid-attachments": [{"containerID": keep, "ifname": "eth0"}]})
    rc, out, err = run_inproc(host_netns, "GC", gc_conf, "", "", CNI_PATH="/nonexistent")
    assert rc == 0, (out, err)
    assert [tag for _, tag in masq_elements(host_netns)] == [attachment_tag(keep, "eth0")]
    assert len(ip_files(tmp_path, "inproc")) == 1
    for pod, cid in pods:
        assert run_inproc(host_netns, "DEL", conf, cid, pod.path, CNI_PATH="/nonexistent")[0] == 0
    assert masq_elements(host_netns) == [] and ip_files(tmp_path, "inproc") == [] and veths(host_netns) == []


def test_macspoofchk_drops_frames_from_a_changed_mac(host_netns, netns_factory, tmp_path):
    subnet = free_subnet(4)
    conf = bridge_conf("1.0.0", "spoof", "cni-spoof", tmp_path, [subnet], isGateway=True, macspoofchk=True,
                       runtimeConfig={"mac": "0a:58:c6:12:00:aa"})
    pods = [(netns_factory("pycni-pod"), _cid()) for _ in range(2)]
    results = []
    for i, (pod, cid) in enumerate(pods):
        this = dict(conf, runtimeConfig={"mac": f"0a:58:c6:12:00:a{i}"})
        rc, result, err = run_inproc(host_netns, "ADD", this, cid, pod.path)
        assert rc == 0, (result, err)
        assert result["interfaces"][2]["mac"] == f"0a:58:c6:12:00:a{i}"
        results.append(result)
    assert len(spoof_elements(host_netns)) == 4  # per pod: its port + its (port, MAC) pair
    target = pod_addresses(results[1])[0].ip
    assert ping(pods[0][0], target)
    assert run_inproc(host_netns, "CHECK", dict(conf, prevResult=results[0]), pods[0][1], pods[0][0].path)[0] == 0

    pods[0][0].run("ip", "neigh", "flush", "all")
    pods[0][0].run("ip", "link", "set", "eth0", "address", "0a:58:c6:12:00:ff")
    assert not ping(pods[0][0], target), "a frame from another MAC must be dropped on the bridge port"
    rc, out, _ = run_inproc(host_netns, "CHECK", dict(conf, prevResult=results[0]), pods[0][1], pods[0][0].path)
    assert rc == 1 and out["code"] == 108

    gone = pods[0][0]
    subprocess.run(["ip", "netns", "del", gone.name], check=True)
    for pod, cid in pods:
        assert run_inproc(host_netns, "DEL", conf, cid, pod.path)[0] == 0
    assert spoof_elements(host_netns) == []


# --- a network's last attachment takes its nftables chain and sets along -------------------------------------


def _network_lines(ns, network: str, *subnets) -> list[str]:
    """Lines of `nft list table inet pycni` that belong to `network` (its id, a subnet, its name)."""
    proc = ns.run("nft", "list", "table", "inet", "pycni", check=False)
    needles = [network_id(network), f'"{network}"', *(str(s) for s in subnets)]
    return [line.strip() for line in proc.stdout.splitlines() if any(n in line for n in needles)]


def test_last_del_and_gc_remove_the_networks_chain_and_sets(host_netns, netns_factory, tmp_path):
    """Two pods: DEL of one keeps the network's chain and sets (the other pod is still masqueraded);
    DEL of the last leaves nothing of the network in `inet pycni`; so does a GC that keeps nobody."""
    v4, v6 = free_subnet(4), free_subnet(6)
    outside = Outside(netns_factory, host_netns, free_subnet(4, 30))
    conf = bridge_conf("1.1.0", "lastdel", "cni-lastdel", tmp_path, [v4, v6], isGateway=True,
                       isDefaultGateway=True, ipMasq=True)
    conf["ipam"]["type"] = "pycni-host-local"  # GC below: the Go host-local has none
    n = network_id("lastdel")
    pods = []
    for _ in range(2):
        pod, cid = netns_factory("pycni-pod"), _cid()
        rc, result, err = run_inproc(host_netns, "ADD", conf, cid, pod.path)
        assert rc == 0, (result, err)
        pods.append((pod, cid, result))
    (pod_a, cid_a, res_a), (pod_b, cid_b, res_b) = pods

    assert run_inproc(host_netns, "DEL", dict(conf, prevResult=res_a), cid_a, pod_a.path)[0] == 0
    left = _network_lines(host_netns, "lastdel", v4, v6)
    for name in (f"chain masq_{n}", f"set pods4_{n}", f"set pods6_{n}", f"set nets4_{n}", f"set nets6_{n}"):
        assert any(line.startswith(name) for line in left), (name, left)
    assert sorted(tag for _, tag in masq_elements(host_netns)) == [attachment_tag(cid_b, "eth0")] * 2
    assert outside.connect_from(pod_b) == str(outside.host_ip), "the survivor is still masqueraded"

    for _ in range(2):  # the last DEL, then a repeated one
        rc, out, err = run_inproc(host_netns, "DEL", dict(conf, prevResult=res_b), cid_b, pod_b.path)
        assert rc == 0, (out, err)
    assert _network_lines(host_netns, "lastdel", v4, v6) == []
    # Nothing else used it: the table went with the network's last objects (issue 15).
    assert host_netns.run("nft", "list", "table", "inet", "pycni", check=False).returncode != 0

    # GC keeping nobody is a last removal too (and a later ADD builds the skeleton again).
    pod_c, cid_c = netns_factory("pycni-pod"), _cid()
    rc, res_c, err = run_inproc(host_netns, "ADD", conf, cid_c, pod_c.path)
    assert rc == 0, (res_c, err)
    assert any(line.startswith(f"chain masq_{n}") for line in _network_lines(host_netns, "lastdel"))
    assert outside.connect_from(pod_c) == str(outside.host_ip)
    gc_conf = dict(conf, **{"cni.dev/valid-attachments": []})
    rc, out, err = run_inproc(host_netns, "GC", gc_conf, "", "")
    assert rc == 0, (out, err)
    assert _network_lines(host_netns, "lastdel", v4, v6) == []
    assert run_inproc(host_netns, "DEL", conf, cid_c, pod_c.path)[0] == 0


def test_add_racing_the_last_del_keeps_its_entries(host_netns, tmp_path, mocker):
    """The last DEL lists the table, then a second pod's ADD starts before DEL applies: the ADD
    must wait for the lock (else the DEL's teardown would delete the sets holding its element)."""
    from cni_plugin.firewall import lock

    lock_path = str(tmp_path / "masquerade.lock")
    subnet = free_subnet(4, 24)
    a, b = (ipaddress.ip_interface(f"{subnet.network_address + i}/24") for i in (2, 3))
    masq = NftMasquerade(lock_path=lock_path)

    clock = LockPollClock()  # lock.py's time, noting when someone polls for the lock
    waiting = clock.waiting
    mocker.patch.object(lock, "time", clock)
    racer: list[threading.Thread] = []
    real_listing = NftRunner.listing

    def listing_then_race(self, family):
        found = real_listing(self, family)
        if not racer:  # the DEL's listing: start the racing ADD, let it reach the lock (or finish)
            racer.append(in_netns(host_netns, masq.add, "race", "tag-b", [b]))
            while not waiting.wait(0.01) and racer[0].is_alive():
                pass
        return found

    in_netns(host_netns, masq.add, "race", "tag-a", [a]).join()
    mocker.patch.object(NftRunner, "listing", listing_then_race)
    in_netns(host_netns, masq.remove, "race", "tag-a").join()
    racer[0].join()
    mocker.stopall()

    assert masq_elements(host_netns) == [(str(b.ip), "tag-b")]
    assert waiting.is_set(), "the racing ADD waited for the DEL's lock"
    assert any(line.startswith(f"chain masq_{network_id('race')}") for line in _network_lines(host_netns, "race"))
    in_netns(host_netns, masq.remove, "race", "tag-b").join()
    assert _network_lines(host_netns, "race") == []


def in_netns(ns, fn, *args) -> threading.Thread:
    """Start `fn(*args)` on a thread inside `ns`; the thread's exception is re-raised by join()."""

    class Worker(threading.Thread):
        error: BaseException | None = None

        def run(self) -> None:
            try:
                with netns.entered(ns.path):
                    fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in join()
                self.error = exc

        def join(self, timeout: float | None = None) -> None:
            super().join(timeout)
            if self.error is not None:
                raise self.error

    worker = Worker()
    worker.start()
    return worker


def join_all(threads: list[threading.Thread]) -> None:
    """Join every thread, then re-raise the first failure (no thread is left running)."""
    errors = []
    for thread in threads:
        try:
            thread.join()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)
    if errors:
        raise errors[0]


def test_concurrent_add_del_churn_on_one_network_ends_with_the_survivors(host_netns, netns_factory, tmp_path):
    """Pods of one network come and go at once: each round the pods that are up are DELeted while
    the others are ADDed, all started together, so the network keeps emptying while ADDs land.
    After every round the masquerade holds exactly the pods that are up; at the end it works."""
    subnet = free_subnet(4, 24)
    outside = Outside(netns_factory, host_netns, free_subnet(4, 30))
    conf = bridge_conf("1.0.0", "churn", "cni-churn", tmp_path, [subnet], isGateway=True,
                       isDefaultGateway=True, ipMasq=True)
    conf["ipam"]["type"] = "pycni-host-local"
    workers, rounds = 4, 4
    pods = [netns_factory("pycni-pod") for _ in range(workers)]
    up: dict[int, dict] = {}  # worker -> its ADD result

    def step(i: int, start: threading.Barrier | None = None) -> None:
        cid = f"churn{i}"
        if start is not None:
            start.wait()
        if i in up:
            rc, out, err = run_inproc(host_netns, "DEL", dict(conf, prevResult=up[i]), cid, pods[i].path,
                                      CNI_PATH="/nonexistent")
            assert rc == 0, (out, err)
            del up[i]
        else:
            rc, up[i], err = run_inproc(host_netns, "ADD", conf, cid, pods[i].path, CNI_PATH="/nonexistent")
            assert rc == 0, (up[i], err)

    def expected() -> list[tuple[str, str]]:
        return sorted((r["ips"][0]["address"].split("/")[0], attachment_tag(f"churn{i}", "eth0"))
                      for i, r in up.items())

    for i in range(0, workers, 2):  # half the pods start up
        step(i)
    for n in range(rounds):
        start = threading.Barrier(workers)
        join_all([in_netns(host_netns, step, i, start) for i in range(workers)])
        assert sorted(masq_elements(host_netns)) == expected(), f"round {n}"
        assert len(up) == workers // 2

    for i in up:
        assert outside.connect_from(pods[i]) == str(outside.host_ip), f"churn{i} is masqueraded"
    for i, result in list(up.items()):
        assert run_inproc(host_netns, "DEL", dict(conf, prevResult=result), f"churn{i}", pods[i].path,
                          CNI_PATH="/nonexistent")[0] == 0
    assert _network_lines(host_netns, "churn", subnet) == [] and veths(host_netns) == []
    assert ip_files(tmp_path, "churn") == []
