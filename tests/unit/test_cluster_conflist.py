"""The node's conflist (pure render, atomic write), the status file, and bridge STATUS reading it."""

from __future__ import annotations

import ipaddress
import json
import os

import pytest

from cni_plugin import bridge
from cni_plugin.cluster import conflist, status
from cni_plugin.spec.errors import PluginNotAvailable
from tests.unit.test_bridge_verbs import _args

V4 = ipaddress.ip_network("10.244.3.0/24")
V6 = ipaddress.ip_network("fd00:10:244:3::/64")


def test_render_is_bridge_host_local_portmap_on_the_node_subnets_without_masquerade():
    settings = conflist.ConflistSettings(ipam_data_dir="/var/lib/x", status_file="/run/s.json")
    doc = conflist.render((V6, V4), 1450, settings)
    bridge_conf, portmap = doc["plugins"]
    assert doc["name"] == "pycni" and doc["cniVersion"] == "1.0.0"
    assert bridge_conf["type"] == "bridge" and bridge_conf["bridge"] == "pycni0"
    assert bridge_conf["ipMasq"] is False and bridge_conf["isGateway"] is True and bridge_conf["mtu"] == 1450
    # IPv4 first whatever order the record had: the pod's first address is stable.
    assert bridge_conf["ipam"]["ranges"] == [[{"subnet": "10.244.3.0/24"}], [{"subnet": "fd00:10:244:3::/64"}]]
    assert bridge_conf["ipam"]["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
    assert bridge_conf["ipam"]["dataDir"] == "/var/lib/x"
    assert bridge_conf["clusterStatusFile"] == "/run/s.json"
    assert portmap == {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}}


def test_render_with_prefixed_names():
    doc = conflist.render((V4,), 1500, conflist.ConflistSettings(plugin_prefix="pycni-"))
    assert [p["type"] for p in doc["plugins"]] == ["pycni-bridge", "pycni-portmap"]
    assert doc["plugins"][0]["ipam"]["type"] == "pycni-host-local"
    assert "clusterStatusFile" not in doc["plugins"][0]


def test_write_atomic_replaces_whole_and_skips_an_identical_file(tmp_path):
    path = str(tmp_path / "net.d" / "10-pycni.conflist")
    assert conflist.write_atomic(path, b"one\n") is True
    inode = os.stat(path).st_ino
    assert conflist.write_atomic(path, b"one\n") is False
    assert os.stat(path).st_ino == inode  # untouched: no inotify event for the runtime
    assert conflist.write_atomic(path, b"two\n") is True
    assert open(path, "rb").read() == b"two\n"
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"
    # No temporary is left, and none would ever be loaded (libcni reads *.conf/*.conflist/*.json).
    assert os.listdir(tmp_path / "net.d") == ["10-pycni.conflist"]


def test_write_atomic_leaves_no_temporary_when_the_write_fails(tmp_path, mocker):
    path = str(tmp_path / "c.conflist")
    mocker.patch("os.fsync", side_effect=OSError(5, "I/O error"))
    with pytest.raises(OSError):
        conflist.write_atomic(path, b"x")
    assert os.listdir(tmp_path) == []


def test_status_reason(tmp_path):
    path = str(tmp_path / "status.json")
    assert "no cluster subnet yet" in status.not_ready_reason(path)
    status.write(path, {"ready": False, "reason": "NotReady: spec.podCIDRs is not set"})
    assert status.not_ready_reason(path) == "NotReady: spec.podCIDRs is not set"
    status.write(path, {"ready": True})
    assert status.not_ready_reason(path) == ""
    assert json.loads(open(path).read())["updated"] > 0
    open(path, "w").write("{half")
    assert "not JSON" in status.not_ready_reason(path)


def test_bridge_status_answers_50_until_the_node_is_ready(tmp_path, monkeypatch):
    monkeypatch.setattr(bridge.invoke, "delegate_status", lambda *a, **k: None)
    path = str(tmp_path / "status.json")
    args = _args("STATUS", ipMasq=False, clusterStatusFile=path)
    with pytest.raises(PluginNotAvailable) as caught:
        bridge.status(args)
    assert caught.value.code == 50 and "no cluster subnet" in caught.value.details
    status.write(path, {"ready": True})
    bridge.status(args)  # ready: no error


def test_metrics_render_counts_peers_by_how_they_are_reached():
    from cni_plugin.cluster import metrics

    text = metrics.render({"node": "n1", "ready": True, "datastore": "etcd", "datastoreReachable": False,
                           "peers": [{"via": "bgp"}, {"via": "bgp"}, {"via": "unreachable"}], "reconciles": 7})
    assert 'pycni_cluster_ready{node="n1"} 1' in text
    assert 'pycni_cluster_datastore_reachable{node="n1",datastore="etcd"} 0' in text
    assert 'pycni_cluster_peers{node="n1",via="bgp"} 2' in text
    assert 'pycni_cluster_peers{node="n1",via="unreachable"} 1' in text
    assert 'pycni_cluster_peers{node="n1",via="vxlan"} 0' in text
    assert 'pycni_cluster_reconciles_total{node="n1"} 7' in text


def test_metrics_endpoint_serves_metrics_and_healthz():
    import urllib.error
    import urllib.request

    from cni_plugin.cluster import metrics

    state = {"node": "n1", "ready": False, "reason": "no subnet yet"}
    server = metrics.serve("127.0.0.1:0", lambda: state)
    try:
        port = server.server_address[1]
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert caught.value.code == 503 and b"no subnet yet" in caught.value.read()
        state["ready"] = True
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5).status == 200
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'pycni_cluster_ready{node="n1"} 1' in body
    finally:
        server.shutdown()
