"""conf/pycni-kubernetes.yaml and conf/kind-pycni.yaml against the Kubernetes schemas, and the
bundle's name table against the plugin table (no root needed)."""

from __future__ import annotations

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from cni_plugin.bundle import install
from cni_plugin.bundle.main import PLUGIN_NAMES, all_names, plugin_of
from cni_plugin.cluster.model import parse_cluster_config
from cni_plugin.entry import PLUGINS

REPO = Path(__file__).resolve().parent.parent.parent
MANIFEST = REPO / "conf" / "pycni-kubernetes.yaml"
K8S_VERSION = "1.31"  # kind v0.24+ and minikube v1.34+ default to 1.31 or newer


def docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d]


@pytest.mark.parametrize("doc", docs(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_object_validates_strictly(doc):
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_validator_catches_a_typo():
    ds = next(d for d in docs() if d["kind"] == "DaemonSet")
    ds["spec"]["template"]["spec"]["hostNetwrk"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(ds, K8S_VERSION, strict=True)


def test_daemonset_host_paths_commands_and_privileges():
    by_kind = {d["kind"]: d for d in docs()}
    pod = by_kind["DaemonSet"]["spec"]["template"]["spec"]
    assert pod["hostNetwork"] is True
    host_paths = {v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    assert host_paths == {"/opt/cni/bin", "/etc/cni/net.d", "/run/pycni", "/var/lib/cni", "/run/netns"}
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["/opt/pycni/pycni-install", "--host-root", "/host"]
    assert init["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert "privileged" not in init["securityContext"]
    (agent,) = pod["containers"]
    cmd = agent["command"]
    assert cmd[0] == "/opt/pycni/pycni-agent"
    flags = dict(zip(cmd[1::2], cmd[2::2], strict=False))
    assert flags["--socket"] == "/run/pycni/agent.sock"
    assert flags["--datastore"] == "kubernetes"
    assert flags["--node-name"] == "$(NODE_NAME)"
    assert flags["--cni-conf-dir"] == "/etc/cni/net.d"
    assert agent["readinessProbe"]["exec"]["command"][:2] == ["/opt/pycni/pycni-agent", "--check"]
    # the cluster config file the agent reads is the ConfigMap's key, and it parses
    mount = next(m for m in agent["volumeMounts"] if m["name"] == "cluster-config")
    assert flags["--cluster-config"] == f"{mount['mountPath']}/cluster.json"
    config = json.loads(by_kind["ConfigMap"]["data"]["cluster.json"])
    parse_cluster_config(config)
    rules = by_kind["ClusterRole"]["rules"]
    assert rules == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch", "patch"]},
        # the policy controller's objects: read only
        {"apiGroups": [""], "resources": ["pods", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch"]},
        {"apiGroups": ["policy.networking.k8s.io"],
         "resources": ["adminnetworkpolicies", "baselineadminnetworkpolicies"], "verbs": ["list", "watch"]},
    ]
    assert pod["serviceAccountName"] == by_kind["ServiceAccount"]["metadata"]["name"]


def test_kind_config_disables_kindnet_and_matches_the_cluster_cidr():
    kind = yaml.safe_load((REPO / "conf" / "kind-pycni.yaml").read_text())
    assert kind["apiVersion"] == "kind.x-k8s.io/v1alpha4" and kind["kind"] == "Cluster"
    assert kind["networking"]["disableDefaultCNI"] is True
    config = json.loads(next(d for d in docs() if d["kind"] == "ConfigMap")["data"]["cluster.json"])
    assert kind["networking"]["podSubnet"] in config["clusterCIDRs"]


def test_bundle_names_are_the_plugin_table():
    assert PLUGIN_NAMES == tuple(sorted(PLUGINS))
    assert all(plugin_of(f"pycni-{p}") == p and plugin_of(p) == p for p in PLUGINS)
    assert plugin_of("pycni-agent") is None and plugin_of("pycni") is None
    assert len(set(all_names())) == len(all_names())
    assert set(install.names_for("both")) == {n for n in all_names() if plugin_of(n)}


def _fake_bundle(path: Path, build_id: str) -> Path:
    path.mkdir()
    (path / "pycni").write_bytes(b"#!/bin/sh\necho " + build_id.encode() + b"\n")
    (path / "pycni").chmod(0o755)
    (path / "_internal").mkdir()
    (path / "_internal" / "lib.so").write_bytes(b"x" * 1000)
    (path / "pycni-agent").symlink_to("pycni")
    (path / "BUILD-ID").write_text(build_id + "\n")
    return path


def test_install_upgrade_uninstall_on_a_fake_bundle(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "bridge").write_text("theirs")
    first = install.install(_fake_bundle(tmp_path / "a", "1-a"), bin_dir, "both")
    assert first["skipped"] == ["bridge"] and (bin_dir / "bridge").read_text() == "theirs"
    assert (bin_dir / "pycni" / "1-a" / "_internal" / "lib.so").stat().st_size == 1000
    for n, build in enumerate(("2-b", "3-c")):
        install.install(_fake_bundle(tmp_path / f"b{n}", build), bin_dir, "both")
    assert {p.name for p in (bin_dir / "pycni").iterdir() if p.is_dir() and not p.is_symlink()} == {"2-b", "3-c"}
    assert (bin_dir / "pycni-loopback").resolve() == (bin_dir / "pycni" / "3-c" / "pycni").resolve()
    # back to prefixed names: the reference names it had installed go, the foreign file stays
    install.install(_fake_bundle(tmp_path / "c", "3-c-again"), bin_dir, "prefixed")
    assert not (bin_dir / "loopback").exists() and (bin_dir / "bridge").read_text() == "theirs"
    install.uninstall(bin_dir)
    assert sorted(p.name for p in bin_dir.iterdir()) == ["bridge"]


def test_install_refuses_a_store_it_did_not_make(tmp_path):
    bin_dir = tmp_path / "bin"
    (bin_dir / "pycni").mkdir(parents=True)
    (bin_dir / "pycni" / "something").write_text("")
    with pytest.raises(install.InstallError):
        install.install(_fake_bundle(tmp_path / "a", "1-a"), bin_dir)
