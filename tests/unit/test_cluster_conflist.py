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
