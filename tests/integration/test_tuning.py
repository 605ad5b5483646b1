"""tuning against the real kernel: chained after pycni-bridge and after the Go reference bridge,
values visible in the pod, the result's MAC, restore on DEL, refusals, rollback, GC."""

from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import pytest

from cni_plugin import entry, netlink, tuning
from cni_plugin.spec import skel
from cni_plugin.spec.errors import NetlinkFailure
from tests.conftest import free_subnet

from .bridge_support import GO, installed_or_go, ip_files, run_conflist, veths

pytestmark = pytest.mark.integration

NEW_MAC = "02:5c:11:a0:00:01"
SYSCTLS = {
    "net.ipv4.conf.IFNAME.arp_filter": "1",
    "net.ipv6.conf.IFNAME.accept_ra": "0",
    "net.core.somaxconn": "512",
}
SYSCTL_FILES = ["ipv4/conf/eth0/arp_filter", "ipv6/conf/eth0/accept_ra", "core/somaxconn"]


def pod_state(pod, ifname: str = "eth0") -> dict:
    link = pod.ip_json("-d", "link", "show", ifname)[0]
    sysctls = {k: pod.run("cat", f"/proc/sys/net/{k}").stdout.strip() for k in SYSCTL_FILES}
    return {"mac": link["address"], "mtu": link["mtu"], "txqlen": link.get("txqlen"),
            "promisc": "PROMISC" in link["flags"], "allmulti": "ALLMULTI" in link["flags"], **sysctls}


def tuning_conf(data_dir: Path, **extra) -> dict:
    return {"type": "pycni-tuning", "dataDir": str(data_dir), "sysctl": dict(SYSCTLS), "mac": NEW_MAC,
            "mtu": 1280, "promisc": True, "allmulti": True, "txQLen": 42, **extra}


@pytest.mark.parametrize("version", ["0.4.0", "1.1.0"])
def test_chained_after_pycni_bridge(installed_bin, host_netns, pod_netns, tmp_path, version):
    subnet = free_subnet(4)
    state_dir = tmp_path / "tuning"
    bridge = {"type": "pycni-bridge", "bridge": "cni-tun", "isGateway": True,
              "ipam": {"type": "pycni-host-local", "dataDir": str(tmp_path / "ipam"),
                       "ranges": [[{"subnet": str(subnet)}]]}}
    plugins = [bridge, tuning_conf(state_dir)]
    chain = {"network": "tun", "version": version, "exe_for": installed_or_go(installed_bin)}
    common = dict(CNI_CONTAINERID="tun1", CNI_NETNS=pod_netns.path, CNI_IFNAME="eth0", CNI_PATH=str(installed_bin))

    bridge_result = run_conflist(host_netns, plugins[:1], "ADD", common, **chain)
    before = pod_state(pod_netns)
    assert before["mac"] != NEW_MAC and before["mtu"] != 1280 and not before["promisc"] and not before["allmulti"]

    result = run_conflist(host_netns, plugins[1:], "ADD", common, cached=bridge_result, **chain)
    after = pod_state(pod_netns)
    assert after == {"mac": NEW_MAC, "mtu": 1280, "txqlen": 42, "promisc": True, "allmulti": True,
                     "ipv4/conf/eth0/arp_filter": "1", "ipv6/conf/eth0/accept_ra": "0", "core/somaxconn": "512"}
    # the pod interface's MAC in the result follows; everything else is passed through
    pod_iface = [i for i in result["interfaces"] if i.get("sandbox")][0]
    assert pod_iface["mac"] == NEW_MAC
    assert result["ips"] == bridge_result["ips"] and result["interfaces"][:2] == bridge_result["interfaces"][:2]
    assert json.loads((state_dir / "tun1_eth0.json").read_text())["mac"] == before["mac"]

    run_conflist(host_netns, plugins, "CHECK", common, cached=result, **chain)  # bridge CHECK sees the new MAC too

    run_conflist(host_netns, plugins[1:], "DEL", common, cached=result, **chain)
    assert pod_state(pod_netns) == before
    assert not (state_dir / "tun1_eth0.json").exists()
    run_conflist(host_netns, plugins, "DEL", common, cached=result, **chain)  # the list again: idempotent
    assert veths(host_netns) == [] and ip_files(tmp_path / "ipam", "tun") == []


def test_chained_after_go_bridge(installed_bin, host_netns, pod_netns, tmp_path):
    subnet = free_subnet(4)
    bridge = {"type": "bridge", "bridge": "cni-gotun", "isGateway": True,
              "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": [[{"subnet": str(subnet)}]]}}
    plugins = [bridge, tuning_conf(tmp_path / "t")]
    chain = {"network": "tun", "version": "1.0.0", "exe_for": installed_or_go(installed_bin)}
    common = dict(CNI_CONTAINERID="gotun1", CNI_NETNS=pod_netns.path, CNI_IFNAME="eth0", CNI_PATH=str(GO))
    result = run_conflist(host_netns, plugins[:1], "ADD", common, **chain)
    before = pod_state(pod_netns)
    result = run_conflist(host_netns, plugins[1:], "ADD", common, cached=result, **chain)
    assert pod_state(pod_netns)["mac"] == NEW_MAC
    assert [i["mac"] for i in result["interfaces"] if i.get("sandbox")] == [NEW_MAC]
    run_conflist(host_netns, plugins, "CHECK", common, cached=result, **chain)  # the Go bridge's CHECK agrees
    run_conflist(host_netns, plugins[1:], "DEL", common, cached=result, **chain)
    assert pod_state(pod_netns) == before
    run_conflist(host_netns, plugins[:1], "DEL", common, cached=result, **chain)


# --- in-process cases on a pod-local veth (no bridge needed) --------------------------------------------


def dispatch(verb: str, config: dict, pod_path: str, cid: str = "c1", **env: str):
    out, err = io.StringIO(), io.StringIO()
    environ = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": pod_path, "CNI_IFNAME": "eth0",
               "CNI_PATH": "/bin", **env}
    box: dict = {}

    def go() -> None:  # a thread of its own: the plugin setns()es the calling thread
        box["rc"] = skel.dispatch(entry.PLUGINS["tuning"], environ, io.BytesIO(json.dumps(config).encode()),
                                  out, err)

    thread = threading.Thread(target=go)
    thread.start()
    thread.join()
    text = out.getvalue()
    return box["rc"], (json.loads(text) if text.strip() else None), err.getvalue()


PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "mac": "02:00:00:00:00:01", "sandbox": "x"}],
        "ips": [{"address": "198.18.0.2/24", "interface": 0}]}


@pytest.fixture
def dummy_pod(pod_netns):
    # a veth pair inside the pod (this kernel has no dummy driver); tuning only cares about eth0
    pod_netns.run("ip", "link", "add", "eth0", "address", "02:00:00:00:00:01", "type", "veth", "peer", "name", "peer0")
    pod_netns.run("ip", "link", "set", "eth0", "up")
    return pod_netns


def conf_for(data_dir: Path, **extra) -> dict:
    return {"cniVersion": "1.0.0", "name": "tun", "type": "tuning", "prevResult": PREV,
            **tuning_conf(data_dir), **extra}


def test_forbidden_sysctl_refused_and_nothing_changed(dummy_pod, tmp_path):
    before = pod_state(dummy_pod)
    for key in ("kernel.hostname", "net/../kernel/hostname", "net.core.somaxconn/../../../kernel/hostname"):
        config = conf_for(tmp_path, sysctl={"net.core.somaxconn": "512", key: "x"})
        rc, out, _ = dispatch("ADD", config, dummy_pod.path)
        assert rc == 1 and out["code"] == 7 and key in out["details"], out
    assert pod_state(dummy_pod) == before
    assert list(tmp_path.iterdir()) == []


def test_failed_add_restores_everything(dummy_pod, tmp_path, mocker):
    before = pod_state(dummy_pod)
    mocker.patch.object(netlink.Netlink, "set_txqlen", side_effect=NetlinkFailure("netlink: injected", "EIO"))
    rc, out, err = dispatch("ADD", conf_for(tmp_path), dummy_pod.path)
    assert rc == 1 and out["code"] == 103, (out, err)
    assert pod_state(dummy_pod) == before
    assert list(tmp_path.glob("*.json")) == []


def test_kernel_refusal_is_reported_and_undone(dummy_pod, tmp_path):
    before = pod_state(dummy_pod)
    rc, out, _ = dispatch("ADD", conf_for(tmp_path, mtu=60000, sysctl={"net.ipv4.conf.IFNAME.arp_filter": "7x"}),
                          dummy_pod.path)
    assert rc == 1 and out["code"] == 103 and "arp_filter" in out["msg"], out
    assert pod_state(dummy_pod) == before


def test_allowlist_file(dummy_pod, tmp_path, monkeypatch):
    allow = tmp_path / "allowlist.conf"
    allow.write_text("^net\\.ipv4\\.conf\\.IFNAME\\.arp_filter$\n^net\\.ipv6\\.conf\\.IFNAME\\.accept_ra$\n")
    monkeypatch.setattr(tuning, "ALLOWLIST_PATH", str(allow))
    rc, out, _ = dispatch("ADD", conf_for(tmp_path / "d"), dummy_pod.path)  # net.core.somaxconn is not allowed
    assert rc == 1 and out["code"] == 7 and "net.core.somaxconn" in out["details"]
    assert pod_state(dummy_pod)["mac"] == "02:00:00:00:00:01"
    allowed = {k: v for k, v in SYSCTLS.items() if "IFNAME" in k}
    rc, out, _ = dispatch("ADD", conf_for(tmp_path / "d", sysctl=allowed), dummy_pod.path)
    assert rc == 0, out
    assert pod_state(dummy_pod)["ipv4/conf/eth0/arp_filter"] == "1"


def test_del_with_vanished_netns_and_without_prev_result(dummy_pod, tmp_path):
    rc, out, _ = dispatch("ADD", conf_for(tmp_path), dummy_pod.path)
    assert rc == 0, out
    state = tmp_path / "c1_eth0.json"
    assert state.exists()
    dummy_pod.run("ip", "link", "del", "eth0")  # interface gone first: DEL still succeeds
    config = {k: v for k, v in conf_for(tmp_path).items() if k != "prevResult"}
    rc, out, _ = dispatch("DEL", config, dummy_pod.path)
    assert (rc, out) == (0, None) and not state.exists()
    rc, out, _ = dispatch("ADD", conf_for(tmp_path, mac="", promisc=False), dummy_pod.path)  # no eth0: sysctls fail
    assert rc == 1
    rc, out, _ = dispatch("DEL", config, "/run/netns/pycni-gone-for-good")
    assert (rc, out) == (0, None)
    rc, out, _ = dispatch("DEL", config, "")
    assert (rc, out) == (0, None)


def test_check_detects_drift(dummy_pod, tmp_path):
    rc, result, _ = dispatch("ADD", conf_for(tmp_path), dummy_pod.path)
    assert rc == 0
    check_conf = dict(conf_for(tmp_path), prevResult=result)
    assert dispatch("CHECK", check_conf, dummy_pod.path)[0] == 0
    dummy_pod.run("ip", "link", "set", "eth0", "allmulticast", "off")
    rc, out, _ = dispatch("CHECK", check_conf, dummy_pod.path)
    assert rc == 1 and out["code"] == 108 and "allmulticast" in out["msg"]
    dummy_pod.run("sysctl", "-w", "net.core.somaxconn=100")
    rc, out, _ = dispatch("CHECK", check_conf, dummy_pod.path)
    assert rc == 1 and out["code"] == 108 and "somaxconn" in out["msg"]


def test_gc_removes_orphans_of_this_network_only(dummy_pod, tmp_path):
    for cid in ("keep", "orphan"):
        assert dispatch("ADD", conf_for(tmp_path, mac=""), dummy_pod.path, cid=cid)[0] == 0
    other = tmp_path / "x_eth0.json"
    other.write_text(json.dumps({"mtu": 1500, "pycniNetwork": "another-net"}))
    reference_file = tmp_path / "y_eth0.json"
    reference_file.write_text(json.dumps({"mtu": 1500}))
    gc_conf = {"cniVersion": "1.1.0", "name": "tun", "type": "tuning", "dataDir": str(tmp_path),
               "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    rc, out, _ = dispatch("GC", gc_conf, "")
    assert (rc, out) == (0, None)
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["keep_eth0.json", "x_eth0.json", "y_eth0.json"]
    rc, out, _ = dispatch("STATUS", gc_conf, "")
    assert (rc, out) == (0, None)
