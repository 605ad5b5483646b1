"""pycni-bandwidth against the real kernel, run as libcni runs a conflist (ADD in order with
prevResult forwarded, DEL in reverse) inside fake node namespaces.

Throughput is measured with a TCP stream between namespaces (1 s per transfer); the other tests
use a plain veth pair as the "previous plugin", which is all bandwidth needs.
"""

from __future__ import annotations

import json
import os
import re
import socket
import struct
import subprocess
import threading
import time
from typing import Any

import pytest

from cni_plugin import netns
from cni_plugin.bandwidth import go_ifb_name, ifb_name
from cni_plugin.firewall import attachment_tag
from cni_plugin.netlink import tc
from cni_plugin.spec.errors import NetlinkFailure
from tests.conftest import GO_PLUGINS, bare_env, free_subnet, run_plugin

from .bridge_support import installed_or_go, run_conflist, run_inproc

pytestmark = pytest.mark.integration

VERSION = "1.0.0"  # the Go reference plugins stop at 1.0.0
MBIT = 1_000_000
BURST = 8 * 20_000  # bits: 20 kB, room for a dozen full-size frames
CHAIN = {"network": "bwchain", "version": VERSION}  # run_conflist's network name and cniVersion
SHAPED = {"ingressRate": 4 * MBIT, "ingressBurst": BURST, "egressRate": 1 * MBIT, "egressBurst": BURST}


# --- helpers ------------------------------------------------------------------------------------------


def tc_show(ns, *argv: str) -> str:
    return ns.run("tc", *argv).stdout


def ifbs(ns) -> dict[str, str]:
    """{name: alias} of the IFB links in `ns`, as `ip -d link show type ifb` lists them."""
    return {link["ifname"]: link.get("ifalias", "") for link in ns.ip_json("-d", "link", "show", "type", "ifb")}


def links_of(ns) -> dict[str, dict]:
    return {link["ifname"]: link for link in ns.ip_json("link", "show")}


def veth_pod(host, pod, name: str) -> dict[str, Any]:
    """A veth pair host:`name` <-> pod:eth0, up; returns the prevResult an interface plugin gives."""
    subprocess.run(["ip", "-n", host.name, "link", "add", name, "type", "veth", "peer", "name", "eth0",
                    "netns", pod.name], check=True)
    host.run("ip", "link", "set", name, "up")
    pod.run("ip", "link", "set", "eth0", "up")
    return {"cniVersion": VERSION, "interfaces": [{"name": name}, {"name": "eth0", "sandbox": pod.path}]}


def bw_conf(prev: dict | None, name: str = "bwnet", **keys: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {"cniVersion": VERSION, "name": name, "type": "pycni-bandwidth", **keys}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def run_bw(installed_bin, host, verb: str, conf: dict, cid: str, pod_path: str, ifname: str = "eth0"):
    env = bare_env(CNI_COMMAND=verb, CNI_CONTAINERID=cid, CNI_NETNS=pod_path, CNI_IFNAME=ifname,
                   CNI_PATH=str(GO_PLUGINS))
    return run_plugin(installed_bin / "pycni-bandwidth", env, conf, netns=host)


def throughput(src, dst, dst_ip: str, seconds: float = 1.0) -> float:
    """Bits per second a TCP receiver in `dst` sees from a sender in `src` during `seconds`
    (counted from its first byte; then it resets the connection, which stops the sender)."""
    with netns.entered(dst.path):
        srv = socket.socket()
    srv.bind((dst_ip, 0))
    srv.listen(1)
    srv.settimeout(10)
    seen: dict[str, float] = {"bps": 0.0}

    def receive() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(5)
            try:
                if not conn.recv(65536):
                    return
                start = now = time.monotonic()
                total = 0
                while now - start < seconds:
                    chunk = conn.recv(65536)
                    now = time.monotonic()
                    if not chunk:
                        break
                    total += len(chunk)
                seen["bps"] = total * 8 / max(now - start, 1e-6)
            except OSError:
                pass
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST

    receiver = threading.Thread(target=receive)
    receiver.start()
    with netns.entered(src.path):
        cli = socket.socket()
    buf = bytes(65536)
    try:
        cli.settimeout(5)
        cli.connect((dst_ip, srv.getsockname()[1]))
        while receiver.is_alive():
            cli.send(buf)
    except OSError:
        pass
    finally:
        cli.close()
        receiver.join()
        srv.close()
    return seen["bps"]


# --- shaping measured end to end, chained after pycni-bridge ------------------------------------------------


def test_shaped_pod_is_slower_in_both_directions(installed_bin, netns_factory, host_netns, tmp_path):
    subnet = free_subnet(4)
    gateway = str(subnet.network_address + 1)
    bridge = {"type": "pycni-bridge", "bridge": f"cbw{os.urandom(3).hex()}", "isGateway": True,
              "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": str(subnet)}]]}}

    bin_for = installed_or_go(installed_bin)
    pods, results, chains, commons = {}, {}, {}, {}
    for key, shaping in (("shaped", SHAPED), ("plain", {})):
        pods[key] = netns_factory("pycni-bwpod")
        chains[key] = [bridge, {"type": "pycni-bandwidth", **shaping}]
        commons[key] = dict(CNI_CONTAINERID=f"bw-{key}", CNI_NETNS=pods[key].path, CNI_IFNAME="eth0",
                            CNI_PATH=str(GO_PLUGINS))
        results[key] = run_conflist(host_netns, chains[key], "ADD", commons[key], exe_for=bin_for, **CHAIN)
    pod_ip = {k: r["ips"][0]["address"].split("/")[0] for k, r in results.items()}
    host_veth = results["shaped"]["interfaces"][1]["name"]
    ifb = ifb_name("bw-shaped", "eth0")

    # What an operator sees.
    qdisc = tc_show(host_netns, "qdisc", "show", "dev", host_veth)
    assert "tbf 1: root" in qdisc and "rate 4Mbit" in qdisc
    assert "ingress ffff:" in qdisc
    assert "rate 1Mbit" in tc_show(host_netns, "qdisc", "show", "dev", ifb)
    assert f"Egress Redirect to device {ifb}" in tc_show(host_netns, "filter", "show", "dev", host_veth, "ingress")
    assert ifbs(host_netns) == {ifb: f"pycni-bandwidth bwchain {attachment_tag('bw-shaped', 'eth0')}"}
    assert "tbf" not in tc_show(host_netns, "qdisc", "show", "dev", results["plain"]["interfaces"][1]["name"])

    into = {k: throughput(host_netns, pods[k], pod_ip[k]) for k in pods}
    out_of = {k: throughput(pods[k], host_netns, gateway) for k in pods}
    print(f"into pod: {into}; out of pod: {out_of} (bit/s)")
    assert SHAPED["ingressRate"] / 4 < into["shaped"] < 2 * SHAPED["ingressRate"]
    assert into["shaped"] < into["plain"] / 2
    assert SHAPED["egressRate"] / 4 < out_of["shaped"] < 2 * SHAPED["egressRate"]
    assert out_of["shaped"] < out_of["plain"] / 2

    for key in pods:
        run_conflist(host_netns, chains[key], "CHECK", commons[key], exe_for=bin_for, cached=results[key], **CHAIN)
        run_conflist(host_netns, chains[key], "DEL", commons[key], exe_for=bin_for, cached=results[key], **CHAIN)
        run_conflist(host_netns, chains[key], "DEL", commons[key], exe_for=bin_for, cached=results[key], **CHAIN)
    assert ifbs(host_netns) == {}
    assert [n for n in host_netns.ip_json("link", "show") if n["ifname"].startswith("veth")] == []


# --- tc state, CHECK, DEL ---------------------------------------------------------------------------------


def test_check_detects_changes_and_del_removes_everything(installed_bin, host_netns, pod_netns):
    prev = veth_pod(host_netns, pod_netns, "hvbw1")
    conf = bw_conf(prev, **SHAPED)
    rc, out, err = run_bw(installed_bin, host_netns, "ADD", conf, "c1", pod_netns.path)
    assert rc == 0, (out, err)
    ifb = ifb_name("c1", "eth0")
    # prevResult's entries as they were, then the IFB (as the reference appends it).
    assert out["interfaces"] == [*prev["interfaces"], {"name": ifb, "mac": links_of(host_netns)[ifb]["address"]}]
    assert run_bw(installed_bin, host_netns, "CHECK", conf, "c1", pod_netns.path)[0] == 0

    def check_fails(word: str) -> None:
        rc, out, _ = run_bw(installed_bin, host_netns, "CHECK", conf, "c1", pod_netns.path)
        assert rc == 1 and out["code"] == 108 and word in json.dumps(out), out

    # An operator changes the rate into the pod by hand.
    host_netns.run("tc", "qdisc", "change", "dev", "hvbw1", "root", "handle", "1:", "tbf", "rate", "3mbit",
                   "burst", "20000", "latency", "25ms")
    check_fails("rate")
    host_netns.run("tc", "qdisc", "del", "dev", "hvbw1", "root")
    check_fails("tbf")
    host_netns.run("tc", "qdisc", "add", "dev", "hvbw1", "root", "handle", "1:", "tbf", "rate", "4mbit",
                   "burst", "20000", "limit", "32500")  # exactly what ADD set: CHECK is happy again
    assert run_bw(installed_bin, host_netns, "CHECK", conf, "c1", pod_netns.path)[0] == 0
    # The IFB's burst, then the redirect, then the IFB itself.
    host_netns.run("tc", "qdisc", "change", "dev", ifb, "root", "handle", "1:", "tbf", "rate", "1mbit",
                   "burst", "40000", "limit", "43125")
    check_fails("burst")
    host_netns.run("tc", "qdisc", "change", "dev", ifb, "root", "handle", "1:", "tbf", "rate", "1mbit",
                   "burst", "20000", "limit", "23125")
    assert run_bw(installed_bin, host_netns, "CHECK", conf, "c1", pod_netns.path)[0] == 0
    host_netns.run("tc", "filter", "del", "dev", "hvbw1", "ingress")
    check_fails("redirect")
    host_netns.run("ip", "link", "del", ifb)
    check_fails(ifb)

    for _ in range(2):
        rc, out, err = run_bw(installed_bin, host_netns, "DEL", conf, "c1", pod_netns.path)
        assert rc == 0, (out, err)
    assert "tbf" not in tc_show(host_netns, "qdisc", "show", "dev", "hvbw1")
    assert ifbs(host_netns) == {}


def test_del_removes_qdiscs_and_ifb_then_is_idempotent(installed_bin, host_netns, pod_netns):
    prev = veth_pod(host_netns, pod_netns, "hvbw2")
    conf = bw_conf(prev, **SHAPED)
    assert run_bw(installed_bin, host_netns, "ADD", conf, "c2", pod_netns.path)[0] == 0
    assert ifb_name("c2", "eth0") in ifbs(host_netns)
    rc, out, err = run_bw(installed_bin, host_netns, "DEL", conf, "c2", pod_netns.path)
    assert rc == 0, (out, err)
    assert ifbs(host_netns) == {}
    qdisc = tc_show(host_netns, "qdisc", "show", "dev", "hvbw2")
    assert "tbf" not in qdisc and "ingress" not in qdisc
    assert run_bw(installed_bin, host_netns, "DEL", conf, "c2", pod_netns.path)[0] == 0


def test_del_without_prev_result_and_with_vanished_netns(installed_bin, netns_factory, host_netns):
    pod = netns_factory("pycni-bwpod")
    prev = veth_pod(host_netns, pod, "hvbw3")
    assert run_bw(installed_bin, host_netns, "ADD", bw_conf(prev, **SHAPED), "c3", pod.path)[0] == 0
    subprocess.run(["ip", "netns", "del", pod.name], check=True)  # the runtime already removed the pod
    for pod_path, conf in ((pod.path, bw_conf(None, **SHAPED)), ("", bw_conf(None)), (pod.path, bw_conf(prev))):
        rc, out, err = run_bw(installed_bin, host_netns, "DEL", conf, "c3", pod_path)
        assert rc == 0, (out, err)
        assert ifbs(host_netns) == {}


def test_del_leaves_an_ifb_it_did_not_make(host_netns, pod_netns):
    name = ifb_name("c4", "eth0")
    host_netns.run("ip", "link", "add", name, "type", "ifb")  # same name, no pycni alias
    assert run_inproc(host_netns, "DEL", bw_conf(None), "c4", pod_netns.path, plugin="bandwidth")[0] == 0
    assert name in ifbs(host_netns)


# --- GC -------------------------------------------------------------------------------------------------------


def test_gc_removes_orphan_ifbs_of_its_network_only(installed_bin, netns_factory, host_netns):
    for i, (cid, network) in enumerate((("keep", "bwnet"), ("orphan", "bwnet"), ("other", "othernet"))):
        pod = netns_factory("pycni-bwpod")
        prev = veth_pod(host_netns, pod, f"hvgc{i}")
        rc, out, err = run_bw(installed_bin, host_netns, "ADD", bw_conf(prev, network, **SHAPED), cid, pod.path)
        assert rc == 0, (out, err)
    host_netns.run("ip", "link", "add", "bwpforeign", "type", "ifb")  # e.g. the Go reference's
    before = set(ifbs(host_netns))

    # No attachment list at all: keep on doubt.
    assert run_bw(installed_bin, host_netns, "GC", dict(bw_conf(None), cniVersion="1.1.0"), "", "")[0] == 0
    assert set(ifbs(host_netns)) == before

    gc = bw_conf(None, cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}],
                          "cni.dev/attachments": [{"containerID": "keep", "ifname": "eth0"}]})
    rc, out, err = run_bw(installed_bin, host_netns, "GC", gc, "", "")
    assert rc == 0, (out, err)
    assert set(ifbs(host_netns)) == before - {ifb_name("orphan", "eth0")}
    assert {ifb_name("keep", "eth0"), ifb_name("other", "eth0"), "bwpforeign"} <= set(ifbs(host_netns))


def test_status(installed_bin, host_netns):
    assert run_bw(installed_bin, host_netns, "STATUS", {"cniVersion": "1.1.0", "name": "bwnet",
                                                        "type": "pycni-bandwidth"}, "", "")[0] == 0


# --- failures -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("step", ["add_redirect", "add_ingress_qdisc", "create_ifb"])
def test_failed_add_leaves_nothing(step, mocker, host_netns, pod_netns):
    prev = veth_pod(host_netns, pod_netns, "hvbw5")
    mocker.patch.object(tc.TrafficControl, step, side_effect=NetlinkFailure("injected fault"))
    rc, out, _ = run_inproc(host_netns, "ADD", bw_conf(prev, **SHAPED), "c5", pod_netns.path, plugin="bandwidth")
    assert rc == 1 and out["code"] == 103 and "injected" in out["msg"]
    assert ifbs(host_netns) == {}
    qdisc = tc_show(host_netns, "qdisc", "show", "dev", "hvbw5")
    assert "tbf" not in qdisc and "ingress" not in qdisc


@pytest.mark.parametrize(
    ("keys", "code", "word"),
    [
        ({"ingressRate": MBIT}, 7, "ingressBurst"),
        ({"runtimeConfig": {"bandwidth": {"egressBurst": BURST}}}, 7, "runtimeConfig.bandwidth.egressRate"),
        ({"egressRate": -1, "egressBurst": BURST}, 7, "egressRate"),
        ({"egressRate": MBIT, "egressBurst": 8 * 1000}, 7, "egressBurst"),  # below one 1514-byte frame
        ({"ingressRate": 8 * 2**32, "ingressBurst": BURST}, 7, "ingressRate"),
        ({**SHAPED, "shapedSubnets": ["10.0.0.0/8"]}, 2, "shapedSubnets"),
    ],
)
def test_bad_config_is_refused_and_leaves_nothing(keys, code, word, host_netns, pod_netns):
    prev = veth_pod(host_netns, pod_netns, "hvbw6")
    rc, out, _ = run_inproc(host_netns, "ADD", bw_conf(prev, **keys), "c6", pod_netns.path, plugin="bandwidth")
    assert rc == 1 and out["code"] == code and word in json.dumps(out), out
    assert ifbs(host_netns) == {}
    assert "tbf" not in tc_show(host_netns, "qdisc", "show", "dev", "hvbw6")


def test_add_without_prev_result_is_code_7(installed_bin, host_netns, pod_netns):
    rc, out, _ = run_bw(installed_bin, host_netns, "ADD", bw_conf(None, **SHAPED), "c7", pod_netns.path)
    assert rc == 1 and out["code"] == 7 and "chained" in out["msg"]


def test_a_root_qdisc_somebody_else_set_is_not_clobbered(host_netns, pod_netns):
    prev = veth_pod(host_netns, pod_netns, "hvbw8")
    host_netns.run("tc", "qdisc", "add", "dev", "hvbw8", "root", "handle", "5:", "htb")
    rc, out, _ = run_inproc(host_netns, "ADD", bw_conf(prev, **SHAPED), "c8", pod_netns.path, plugin="bandwidth")
    assert rc == 1 and out["code"] == 103 and "htb" in out["details"], out
    assert "htb" in tc_show(host_netns, "qdisc", "show", "dev", "hvbw8")
    assert ifbs(host_netns) == {}


# --- interop with the Go reference plugins --------------------------------------------------------------------


def test_chained_after_go_bridge(installed_bin, host_netns, pod_netns, tmp_path):
    subnet = free_subnet(4)
    plugins = [
        {"type": "bridge", "bridge": f"gbw{os.urandom(3).hex()}", "isGateway": True,
         "ipam": {"type": "host-local", "dataDir": str(tmp_path), "ranges": [[{"subnet": str(subnet)}]]}},
        {"type": "pycni-bandwidth", **SHAPED},
    ]

    bin_for = installed_or_go(installed_bin)
    common = dict(CNI_CONTAINERID="gobw1", CNI_NETNS=pod_netns.path, CNI_IFNAME="eth0", CNI_PATH=str(GO_PLUGINS))
    result = run_conflist(host_netns, plugins, "ADD", common, exe_for=bin_for, **CHAIN)
    host_veth = next(i["name"] for i in result["interfaces"] if i["name"].startswith("veth"))
    assert "rate 4Mbit" in tc_show(host_netns, "qdisc", "show", "dev", host_veth)
    ifb = ifb_name("gobw1", "eth0")
    assert f"Egress Redirect to device {ifb}" in tc_show(host_netns, "filter", "show", "dev", host_veth, "ingress")
    run_conflist(host_netns, plugins, "CHECK", common, exe_for=bin_for, cached=result, **CHAIN)
    run_conflist(host_netns, plugins, "DEL", common, exe_for=bin_for, cached=result, **CHAIN)
    run_conflist(host_netns, plugins, "DEL", common, exe_for=bin_for, cached=result, **CHAIN)
    assert ifbs(host_netns) == {}


def test_go_bandwidth_and_pycni_bandwidth_leave_each_others_ifb_alone(installed_bin, host_netns, netns_factory):
    """Interop record: the IFB names differ (Go: hash of network name + container ID; pycni: hash of
    container ID + ifname, owner in the alias), so neither DEL removes the other's IFB."""
    go_pods = [netns_factory("pycni-bwpod") for _ in range(2)]
    py_pod = netns_factory("pycni-bwpod")
    py_prev = veth_pod(host_netns, py_pod, "hvpy")

    def go(verb: str, i: int) -> None:
        conf = dict(bw_conf(go_prev[i], **SHAPED), type="bandwidth")
        env = bare_env(CNI_COMMAND=verb, CNI_CONTAINERID="shared", CNI_NETNS=go_pods[i].path, CNI_IFNAME="eth0",
                       CNI_PATH=str(GO_PLUGINS))
        rc, out, err = run_plugin(GO_PLUGINS / "bandwidth", env, conf, netns=host_netns)
        assert rc == 0, (verb, out, err)

    go_prev = [veth_pod(host_netns, pod, f"hvgo{i}") for i, pod in enumerate(go_pods)]
    go("ADD", 0)
    go_ifbs = set(ifbs(host_netns))
    assert len(go_ifbs) == 1
    assert run_bw(installed_bin, host_netns, "ADD", bw_conf(py_prev, **SHAPED), "shared", py_pod.path)[0] == 0
    ours = ifb_name("shared", "eth0")
    assert set(ifbs(host_netns)) == go_ifbs | {ours}

    go("DEL", 0)  # Go's DEL for the same network and container ID: our IFB stays
    assert set(ifbs(host_netns)) == {ours}
    go("ADD", 1)  # (a fresh veth: Go's DEL leaves its qdiscs on the first one)
    assert run_bw(installed_bin, host_netns, "DEL", bw_conf(py_prev, **SHAPED), "shared", py_pod.path)[0] == 0
    assert set(ifbs(host_netns)) == go_ifbs  # our DEL: Go's IFB stays
    go("DEL", 1)
    assert ifbs(host_netns) == {}


def test_the_ifb_is_appended_to_the_result_like_the_reference_does(installed_bin, host_netns, netns_factory):
    """Issue 15: same prevResult (with IPs pointing at interfaces) through Go bandwidth and pycni's."""
    results = {}
    for kind in ("go", "pycni"):
        pod = netns_factory("pycni-bwpod")
        prev = veth_pod(host_netns, pod, f"hvres{kind}")
        prev["ips"] = [{"address": "198.18.0.2/24", "gateway": "198.18.0.1", "interface": 1}]
        conf = dict(bw_conf(prev, **SHAPED), type="bandwidth" if kind == "go" else "pycni-bandwidth")
        exe = GO_PLUGINS / "bandwidth" if kind == "go" else installed_bin / "pycni-bandwidth"
        env = bare_env(CNI_COMMAND="ADD", CNI_CONTAINERID=f"res{kind}", CNI_NETNS=pod.path, CNI_IFNAME="eth0",
                       CNI_PATH=str(GO_PLUGINS))
        rc, out, err = run_plugin(exe, env, conf, netns=host_netns)
        assert rc == 0, (kind, out, err)
        results[kind] = (prev, out)
        rc, _, err = run_plugin(exe, dict(env, CNI_COMMAND="DEL"), conf, netns=host_netns)
        assert rc == 0, (kind, err)

    for kind, (prev, out) in results.items():
        *kept, ifb = out["interfaces"]
        assert kept == prev["interfaces"] and out["ips"] == prev["ips"], kind  # indexes still right
        assert set(ifb) == {"name", "mac"} and "sandbox" not in ifb, (kind, ifb)
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", ifb["mac"]), (kind, ifb)
    assert results["pycni"][1]["interfaces"][-1]["name"] == ifb_name("respycni", "eth0")


def test_after_a_switch_from_go_bandwidth_gc_and_del_remove_the_go_ifbs(installed_bin, host_netns, netns_factory):
    """Issue 15: pods shaped by the Go plugin, then the network's conflist names pycni-bandwidth.
    GC removes the Go IFBs of pods that are gone (no redirect leads to them) and keeps those in
    use, also another network's; pycni's DEL removes the Go IFB of its own attachment."""
    pods = {cid: netns_factory("pycni-bwpod") for cid in ("gone", "live", "elsewhere")}
    prevs = {cid: veth_pod(host_netns, pod, f"hvsw{i}") for i, (cid, pod) in enumerate(pods.items())}
    network = {"gone": "bwswitch", "live": "bwswitch", "elsewhere": "bwother"}

    def env(verb: str, cid: str) -> dict[str, str]:
        return bare_env(CNI_COMMAND=verb, CNI_CONTAINERID=cid, CNI_NETNS=pods[cid].path if cid else "",
                        CNI_IFNAME="eth0", CNI_PATH=str(GO_PLUGINS))

    for cid in pods:
        conf = dict(bw_conf(prevs[cid], network[cid], **SHAPED), type="bandwidth")
        rc, out, err = run_plugin(GO_PLUGINS / "bandwidth", env("ADD", cid), conf, netns=host_netns)
        assert rc == 0, (cid, out, err)
    go_names = {cid: go_ifb_name(network[cid], cid) for cid in pods}
    assert set(ifbs(host_netns)) == set(go_names.values())  # the reference's naming, as pycni reads it
    assert all(alias == "" for alias in ifbs(host_netns).values())

    subprocess.run(["ip", "netns", "del", pods["gone"].name], check=True)  # its veth and redirect go
    deadline = time.monotonic() + 10
    while "hvsw0" in links_of(host_netns) and time.monotonic() < deadline:
        time.sleep(0.05)
    gc = bw_conf(None, "bwswitch", cniVersion="1.1.0",
                 **{"cni.dev/valid-attachments": [{"containerID": "live", "ifname": "eth0"}]})
    rc, out, err = run_plugin(installed_bin / "pycni-bandwidth", env("GC", ""), gc, netns=host_netns)
    assert rc == 0, (out, err)
    assert set(ifbs(host_netns)) == {go_names["live"], go_names["elsewhere"]}

    conf = bw_conf(prevs["live"], "bwswitch", **SHAPED)
    rc, out, err = run_plugin(installed_bin / "pycni-bandwidth", env("DEL", "live"), conf, netns=host_netns)
    assert rc == 0, (out, err)
    assert set(ifbs(host_netns)) == {go_names["elsewhere"]}
