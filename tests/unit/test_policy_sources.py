"""The policy sources' pure parts: etcd keys, the world from objects + attachment records, the
records the bridge writes, the Kubernetes objects as policy reads them, the memory twin."""

from __future__ import annotations

import ipaddress
import threading
from pathlib import Path

import pytest

from cni_plugin import attachments
from cni_plugin.cluster import policy_world
from cni_plugin.cluster.kubernetes import _trim
from cni_plugin.cluster.policy_source import MemoryPolicySource, attachment_key, object_key, with_namespace
from cni_plugin.policy.model import PolicyError

NP = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "x"},
      "spec": {"podSelector": {}}}
POD = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}},
       "spec": {"containers": [{"ports": [{"name": "http", "containerPort": 8080}]}]}}


def test_keys() -> None:
    assert object_key("/pycni", NP) == "/pycni/policy/networkpolicy/x/deny"
    assert object_key("/pycni", {"kind": "Namespace", "metadata": {"name": "x"}}) == "/pycni/policy/namespace/-/x"
    assert object_key("/p", {"kind": "BaselineAdminNetworkPolicy", "metadata": {"name": "default"}}) == \
        "/p/policy/baselineadminnetworkpolicy/-/default"
    nameless = {"kind": "Pod", "metadata": {"name": "b"}}
    assert object_key("/p", with_namespace(nameless, "y")) == "/p/policy/pod/y/b"
    assert attachment_key("/p", "n1", {"containerID": "c", "ifname": "eth0"}) == "/p/policy/attachment/n1/c-eth0"


def test_world_takes_labels_from_the_pod_object_and_addresses_from_attachments() -> None:
    local = [{"containerID": "c1", "ifname": "eth0", "namespace": "x", "name": "a", "ips": ["10.1.0.2", "fd00::2"]}]
    remote = [{"containerID": "c2", "ifname": "eth0", "namespace": "y", "name": "b", "ips": ["10.2.0.2"], "node": "n2"},
              # this node's own published record is ignored: the local file is the truth
              {"containerID": "c1", "ifname": "eth0", "namespace": "x", "name": "a", "ips": ["10.9.9.9"], "node": "n1"},
              {"containerID": "c3", "ifname": "eth0", "namespace": "", "name": "", "ips": ["10.2.0.3"], "node": "n2"}]
    world = policy_world.build([NP, POD], remote, local, "n1")
    a, b = world.pod("x/a"), world.pod("y/b")
    assert a.label_map == {"app": "web"} and a.node_name == "n1"
    assert a.ips == (ipaddress.ip_address("10.1.0.2"), ipaddress.ip_address("fd00::2"))
    assert a.ports[0].name == "http" and a.ports[0].port == 8080
    assert b.labels == () and b.node_name == "n2" and b.ips == (ipaddress.ip_address("10.2.0.2"),)
    assert len(world.pods) == 2 and len(world.policies) == 1


def test_an_invalid_object_fails_the_whole_world_naming_it() -> None:
    bad = {**NP, "metadata": {"name": "bad", "namespace": "y"},
           "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 80, "endPort": 10}]}]}}
    with pytest.raises(PolicyError) as info:
        policy_world.build([NP, bad], [], [], "n1")
    assert str(info.value).startswith("NetworkPolicy y/bad: spec.ingress[0].ports[0].endPort")


def test_attachment_records(tmp_path: Path) -> None:
    base = attachments.directory(str(tmp_path / "att"))
    assert base == str(tmp_path / "att")
    attachments.record(base, "cid", "eth0", "x", "a", ["10.1.0.2"], "veth1")
    (tmp_path / "att" / "half.json").write_text("{")  # a torn file is skipped
    assert attachments.read_all(base) == [{"containerID": "cid", "ifname": "eth0", "namespace": "x", "name": "a",
                                           "ips": ["10.1.0.2"], "hostVeth": "veth1", "network": ""}]
    assert attachments.pod_identity({"K8S_POD_NAMESPACE": "x", "K8S_POD_NAME": "a"}) == ("x", "a")
    assert attachments.sync(base, "ADD") is False  # no agent socket: nothing to wait for
    attachments.remove(base, "cid", "eth0")
    attachments.remove(base, "cid", "eth0")  # idempotent
    assert not (tmp_path / "att" / "cid-eth0.json").exists()


def test_kubernetes_objects_as_policy_reads_them() -> None:
    pod = {"metadata": {"name": "a", "namespace": "x", "labels": {"app": "web"}, "uid": "u", "managedFields": [1]},
           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]},
           "status": {"podIP": "10.1.0.2", "podIPs": [{"ip": "10.1.0.2"}], "conditions": [{"type": "Ready"}]}}
    trimmed = _trim("Pod", "v1", pod)
    assert trimmed["status"] == {"podIPs": [{"ip": "10.1.0.2"}], "podIP": "10.1.0.2"}
    assert trimmed["spec"]["containers"] == [{"ports": [{"containerPort": 80}]}]
    heartbeat = {**pod, "status": {**pod["status"], "conditions": [{"type": "Ready", "status": "False"}]}}
    assert _trim("Pod", "v1", heartbeat) == trimmed  # a status heartbeat is no change for policy
    assert _trim("NetworkPolicy", "networking.k8s.io/v1", {"metadata": {"name": "n", "namespace": "x", "uid": "u"},
                                                           "spec": {"podSelector": {}}})["kind"] == "NetworkPolicy"


def test_memory_source_watch_and_publish() -> None:
    src = MemoryPolicySource()
    stop = threading.Event()
    seen: list[str] = []

    def watch() -> None:
        for rev in src.watch("1", stop):
            seen.append(rev)
            stop.set()

    t = threading.Thread(target=watch)
    t.start()
    src.put(NP)
    t.join(5)
    assert seen == ["2"]
    src.publish_attachments("n1", [{"containerID": "c", "ifname": "eth0", "namespace": "x", "name": "a", "ips": []}])
    assert src.snapshot().attachments[0]["node"] == "n1"
    rev = src.revision
    src.publish_attachments("n1", [{"containerID": "c", "ifname": "eth0", "namespace": "x", "name": "a", "ips": []}])
    assert src.revision == rev  # unchanged records: no new revision


def test_agent_flags_build_the_policy_controller(tmp_path: Path) -> None:
    import argparse

    from cni_plugin.cluster import setup

    parser = argparse.ArgumentParser()
    setup.add_arguments(parser)
    base = ["--datastore", "etcd", "--etcd-endpoints", "http://127.0.0.1:1", "--node-name", "n1",
            "--attachments-dir", str(tmp_path / "att"), "--policy-status-file", str(tmp_path / "s.json")]
    controller = setup.build_policy_controller(parser.parse_args(base))
    assert controller is not None
    assert controller.settings.node_name == "n1" and controller.settings.attachments_dir == str(tmp_path / "att")
    assert type(controller.source).__name__ == "EtcdPolicyStore"
    # --no-network-policy: no controller, and a socket left by an earlier agent no longer holds ADDs.
    (tmp_path / "att").mkdir()
    (tmp_path / "att" / ".sync").write_text("")
    assert setup.build_policy_controller(parser.parse_args([*base, "--no-network-policy"])) is None
    assert not (tmp_path / "att" / ".sync").exists()


def test_gc_removes_this_networks_unlisted_records_only(tmp_path: Path) -> None:
    base = str(tmp_path)
    attachments.record(base, "keep", "eth0", "x", "a", ["10.1.0.2"], "v1", "net1")
    attachments.record(base, "gone", "eth0", "x", "b", ["10.1.0.3"], "v2", "net1")
    attachments.record(base, "other", "eth0", "x", "c", ["10.2.0.3"], "v3", "net2")
    removed = attachments.gc(base, "net1", {("keep", "eth0")})
    assert removed == [attachments.path(base, "gone", "eth0")]
    assert sorted(str(d["containerID"]) for d in attachments.read_all(base)) == ["keep", "other"]


def test_a_reused_address_belongs_to_the_newer_record() -> None:
    """A stale record (its DEL never ran) and a new pod on the same address: the newer wins, so the
    world never has two pods of one address (the nft dispatch map would refuse the transaction)."""
    stale = {"containerID": "old", "ifname": "eth0", "namespace": "x", "name": "old", "ips": ["10.1.0.2"]}
    new = {"containerID": "new", "ifname": "eth0", "namespace": "x", "name": "new", "ips": ["10.1.0.2"]}
    world = policy_world.build([], [], [stale, new], "n1")
    assert world.pod("x/new").ips == (ipaddress.ip_address("10.1.0.2"),)
    assert world.pod("x/old").ips == ()
