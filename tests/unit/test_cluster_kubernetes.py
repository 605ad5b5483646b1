"""KubernetesDatastore with the real `kubernetes` client against a local API server (tests/kube_apiserver.py)
speaking the real list/watch wire format: no kube-apiserver can be installed on the test machines.

No root, no namespaces: the server listens on 127.0.0.1 and checks a bearer token.
"""

from __future__ import annotations

import ipaddress
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cni_plugin.cluster.kubernetes import (
    ANNOTATION_BACKEND,
    ANNOTATION_PUBLIC_IP,
    ANNOTATION_VTEP_MAC,
    KubernetesDatastore,
    annotation_patch,
    record_from_node,
)
from cni_plugin.cluster.model import (
    ClusterConfig,
    DatastoreError,
    DatastoreUnavailable,
    NodeClaim,
    NotReady,
    parse_cluster_config,
)
from tests.kube_apiserver import KubeAPIServer, make_tls

V4 = parse_cluster_config({"clusterCIDRs": ["10.244.0.0/16"], "backend": {"type": "vxlan"}})
DUAL = parse_cluster_config({"clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"], "backend": {"type": "vxlan"}})
MAC = "0a:58:0a:f4:01:01"
ip = ipaddress.ip_address
net = ipaddress.ip_network


@pytest.fixture
def api() -> Iterator[KubeAPIServer]:
    server = KubeAPIServer.start()
    yield server
    server.stop()


@pytest.fixture
def kubeconfig(api: KubeAPIServer, tmp_path: Path) -> str:
    return str(api.write_kubeconfig(tmp_path / "kubeconfig"))


@pytest.fixture
def make_store(kubeconfig: str) -> Iterator:
    made: list[KubernetesDatastore] = []

    def make(node: str = "n1", config: ClusterConfig = V4, **kwargs: object) -> KubernetesDatastore:
        store = KubernetesDatastore(config, node, kubeconfig=kubeconfig, **kwargs)  # type: ignore[arg-type]
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def claim_for(name: str = "n1", addresses: tuple[str, ...] = ("198.18.0.1",), mac: str = MAC) -> NodeClaim:
    return NodeClaim(name=name, addresses=tuple(ip(a) for a in addresses), vtep_mac=mac, backend="vxlan")


@dataclass
class Watching:
    """A datastore watch on its own thread, as the controller's watcher runs it."""

    store: KubernetesDatastore
    revision: str
    stop: threading.Event = field(default_factory=threading.Event)
    yields: queue.Queue = field(default_factory=queue.Queue)
    error: BaseException | None = None
    ended: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Watching:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            for revision in self.store.watch(self.revision, self.stop):
                self.yields.put(revision)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc
        finally:
            self.ended.set()

    def next(self, timeout: float = 3.0) -> str:
        return str(self.yields.get(timeout=timeout))

    def nothing_for(self, seconds: float) -> None:
        with pytest.raises(queue.Empty):
            self.yields.get(timeout=seconds)

    def close(self) -> None:
        self.stop.set()
        self.ended.wait(3)


@pytest.fixture
def watching() -> Iterator:
    started: list[Watching] = []

    def start(store: KubernetesDatastore, revision: str) -> Watching:
        w = Watching(store, revision).start()
        started.append(w)
        return w

    yield start
    for w in started:
        w.close()


def wait_for_watches(api: KubeAPIServer, count: int, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while len(api.seen("GET", watch=True)) < count:
        assert time.monotonic() < deadline, f"expected {count} watch requests, saw {api.seen('GET', watch=True)}"
        time.sleep(0.01)


# --- claim ----------------------------------------------------------------------------------------


def test_claim_not_ready_until_pod_cidrs_then_the_record(api: KubeAPIServer, make_store) -> None:
    store = make_store("n1")
    with pytest.raises(NotReady, match="not registered"):
        store.claim(claim_for(), V4)  # no Node object yet (the kubelet has not registered)
    api.add_node("n1", pod_cidrs=[], addresses=["198.18.0.1"])
    with pytest.raises(NotReady, match="podCIDRs"):
        store.claim(claim_for(), V4)
    assert api.seen("PATCH") == []  # nothing published before the node has a subnet
    api.set_pod_cidrs("n1", ["10.244.1.0/24"])
    record = store.claim(claim_for(), V4)
    assert record.name == "n1"
    assert record.subnets == (net("10.244.1.0/24"),)
    assert record.addresses == (ip("198.18.0.1"),)
    assert record.vtep_mac == MAC
    assert record.backend == "vxlan"


def test_claim_dual_stack_pod_cidrs_and_the_old_single_field(api: KubeAPIServer, make_store) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24", "fd00:10:244:1::/64"], addresses=["198.18.0.1"])
    record = make_store("n1", DUAL).claim(claim_for(), DUAL)
    assert record.subnets == (net("10.244.1.0/24"), net("fd00:10:244:1::/64"))
    assert record.subnet(6) == net("fd00:10:244:1::/64")
    api.add_node("n2", pod_cidrs=["10.244.2.0/24"], addresses=["198.18.0.2"], pod_cidr_only=True)
    assert "podCIDRs" not in api.node("n2")["spec"]
    assert make_store("n2").claim(claim_for("n2", ("198.18.0.2",)), V4).subnets == (net("10.244.2.0/24"),)


def test_claim_refuses_a_pod_cidr_outside_the_cluster_config(api: KubeAPIServer, make_store) -> None:
    api.add_node("n1", pod_cidrs=["10.99.1.0/24"], addresses=["198.18.0.1"])
    with pytest.raises(NotReady, match="outside the cluster config"):
        make_store("n1").claim(claim_for(), V4)


def test_claim_publishes_annotations_once_and_only_changes(api: KubeAPIServer, make_store) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["10.0.0.1"],
                 annotations={"other.example/keep": "yes"})
    store = make_store("n1")
    store.claim(claim_for(addresses=("198.18.0.1",)), V4)
    annotations = api.node("n1")["metadata"]["annotations"]
    assert annotations[ANNOTATION_VTEP_MAC] == MAC
    assert annotations[ANNOTATION_BACKEND] == "vxlan"
    assert annotations[ANNOTATION_PUBLIC_IP] == "198.18.0.1"
    assert annotations["other.example/keep"] == "yes"  # a merge patch touches only our keys
    patches = api.seen("PATCH")
    assert len(patches) == 1
    assert patches[0].content_type == "application/merge-patch+json"
    assert patches[0].path == "/api/v1/nodes/n1"

    store.claim(claim_for(addresses=("198.18.0.1",)), V4)
    store.claim(claim_for(addresses=("198.18.0.1",)), V4)
    assert len(api.seen("PATCH")) == 1  # unchanged: not re-sent

    store.claim(claim_for(addresses=("198.18.0.1",), mac="0A:58:0A:F4:01:02"), V4)
    assert len(api.seen("PATCH")) == 2
    assert api.seen("PATCH")[1].body == {"metadata": {"annotations": {ANNOTATION_VTEP_MAC: "0a:58:0a:f4:01:02"}}}
    assert api.node("n1")["metadata"]["annotations"][ANNOTATION_VTEP_MAC] == "0a:58:0a:f4:01:02"


def test_release_removes_only_the_pycni_annotations(api: KubeAPIServer, make_store) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"], annotations={"other.example/keep": "yes"})
    store = make_store("n1")
    store.claim(claim_for(), V4)
    store.renew()  # a no-op: nothing is sent
    store.release()
    annotations = api.node("n1")["metadata"]["annotations"]
    assert not set(annotations) & {ANNOTATION_VTEP_MAC, ANNOTATION_BACKEND, ANNOTATION_PUBLIC_IP}
    assert annotations["other.example/keep"] == "yes"
    store.release()  # nothing left to remove: no second patch
    assert len(api.seen("PATCH")) == 2
    assert api.node("n1")["spec"]["podCIDRs"] == ["10.244.1.0/24"]  # the subnet is kube-controller-manager's


def test_wrong_token_is_unavailable_not_fatal(api: KubeAPIServer, tmp_path: Path) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    bad = api.write_kubeconfig(tmp_path / "bad", token="wrong")
    store = KubernetesDatastore(V4, "n1", kubeconfig=str(bad))
    try:
        with pytest.raises(DatastoreUnavailable, match="401"):
            store.nodes()
    finally:
        store.close()


def test_in_cluster_service_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # kubeconfig=None: the library's in-cluster loader (HTTPS to KUBERNETES_SERVICE_HOST:PORT, the
    # service account's token and CA). Its file paths point into tmp_path instead of
    # /var/run/secrets/kubernetes.io/serviceaccount, which the test must not create on the machine.
    from kubernetes.config import incluster_config

    api = KubeAPIServer.start(token="service-account-token", tls=make_tls(tmp_path))
    try:
        api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
        (tmp_path / "token").write_text("service-account-token")  # projected tokens end without a newline
        monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
        monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(api.tls.cert))  # type: ignore[union-attr]
        monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(api.port))
        store = KubernetesDatastore(V4, "n1")
        try:
            assert store.claim(claim_for(), V4).subnets == (net("10.244.1.0/24"),)
            assert [n.name for n in store.nodes().nodes] == ["n1"]
        finally:
            store.close()
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
        with pytest.raises(ValueError, match="in-cluster service account"):
            KubernetesDatastore(V4, "n1")  # not in a pod: the agent refuses to start
    finally:
        api.stop()


def test_an_unreadable_kubeconfig_refuses_to_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="kubeconfig"):
        KubernetesDatastore(V4, "n1", kubeconfig=str(tmp_path / "missing"))


# --- nodes ----------------------------------------------------------------------------------------


def test_nodes_maps_addresses_and_skips_nodes_without_pod_cidrs(api: KubeAPIServer, make_store) -> None:
    # status lists ExternalIP first; the record puts InternalIP first
    api.add_node("a", pod_cidrs=["10.244.1.0/24"],
                 addresses=[("ExternalIP", "203.0.113.7"), ("InternalIP", "198.18.0.1"),
                            ("InternalIP", "fd5c:11a0::1")],
                 annotations={ANNOTATION_VTEP_MAC: "0A:58:0A:F4:01:01", ANNOTATION_BACKEND: "vxlan"})
    api.add_node("b", pod_cidrs=["10.244.2.0/24"], addresses=["10.0.0.2"],
                 annotations={ANNOTATION_PUBLIC_IP: "198.18.0.2,fd5c:11a0::2"})
    api.add_node("c", pod_cidrs=[], addresses=["198.18.0.3"])
    snapshot = make_store("a").nodes()
    by_name = {n.name: n for n in snapshot.nodes}
    assert set(by_name) == {"a", "b"}
    assert by_name["a"].addresses == (ip("198.18.0.1"), ip("fd5c:11a0::1"), ip("203.0.113.7"))
    assert by_name["a"].vtep_mac == "0a:58:0a:f4:01:01"
    assert by_name["a"].backend == "vxlan"
    assert by_name["b"].addresses == (ip("198.18.0.2"), ip("fd5c:11a0::2"))  # the annotation wins
    assert by_name["b"].vtep_mac == ""
    assert len(snapshot.skipped) == 1 and snapshot.skipped[0].startswith("c: no spec.podCIDRs")
    assert snapshot.revision == str(api.resource_version)


def test_record_from_node_reasons() -> None:
    node: dict[str, Any] = {"metadata": {"name": "x", "annotations": {ANNOTATION_PUBLIC_IP: "not-an-ip"}},
            "spec": {"podCIDRs": ["10.244.1.0/24"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}}
    with pytest.raises(ValueError, match="public-ip"):
        record_from_node(node, V4)
    node["metadata"]["annotations"] = {}
    node["status"] = {"addresses": [{"type": "Hostname", "address": "x"}]}
    with pytest.raises(ValueError, match="no underlay address"):
        record_from_node(node, V4)
    v6_only = {"metadata": {"name": "x"}, "spec": {"podCIDRs": ["fd00:10:244:1::/64"]},
               "status": {"addresses": [{"type": "InternalIP", "address": "198.18.0.1"}]}}
    with pytest.raises(ValueError, match="no family"):
        record_from_node(v6_only, V4)
    assert annotation_patch({"a": "1"}, {"a": "1", "b": None}) is None
    assert annotation_patch({"a": "1"}, {"a": None}) == {"metadata": {"annotations": {"a": None}}}


# --- watch ----------------------------------------------------------------------------------------


def test_watch_yields_on_add_modify_delete_not_on_status_noise(api: KubeAPIServer, make_store, watching) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    store = make_store("n1", watch_timeout=30)
    w = watching(store, store.nodes().revision)
    wait_for_watches(api, 1)
    request = api.seen("GET", watch=True)[0]
    assert request.query["allowWatchBookmarks"] == "true"
    assert request.query["timeoutSeconds"] == "30"
    assert request.query["resourceVersion"] == w.revision

    added = api.add_node("n2", pod_cidrs=[], addresses=["198.18.0.2"])
    assert w.next() == str(added)
    # the kubelet's label/condition updates change nothing a peer routes by: no relist
    api.update_node("n2", lambda n: n["metadata"]["labels"].update({"example/role": "x"}))
    modified = api.set_pod_cidrs("n2", ["10.244.2.0/24"])
    assert w.next() == str(modified)
    deleted = api.delete_node("n2")
    assert w.next() == str(deleted)
    w.nothing_for(0.2)
    assert w.error is None


def test_watch_resumes_from_a_bookmark(api: KubeAPIServer, make_store, watching) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    store = make_store("n1", watch_timeout=30)
    w = watching(store, store.nodes().revision)
    wait_for_watches(api, 1)
    bookmark = api.bump(7)  # other kinds were written: the RV moved, no node event
    api.send_bookmark()
    w.nothing_for(0.3)  # a bookmark is no change
    # History before the bookmark is gone: only a watch resumed from the bookmark's RV survives.
    api.compact()
    api.drop_watches()
    wait_for_watches(api, 2)
    assert api.seen("GET", watch=True)[1].query["resourceVersion"] == str(bookmark)
    added = api.add_node("n2", pod_cidrs=["10.244.2.0/24"], addresses=["198.18.0.2"])
    assert w.next() == str(added)


@pytest.mark.parametrize("as_http", [False, True], ids=["error-event", "http-410"])
def test_watch_after_compaction_asks_for_a_relist(api: KubeAPIServer, make_store, watching, as_http: bool) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    store = make_store("n1", watch_timeout=30)
    old = store.nodes().revision
    api.add_node("n2", pod_cidrs=["10.244.2.0/24"], addresses=["198.18.0.2"])
    api.compact()
    api.gone_as_http = as_http
    w = watching(store, old)
    assert w.next() == ""  # the controller relists
    assert w.ended.wait(2) and w.error is None
    # ... and the relist's revision watches cleanly
    snapshot = store.nodes()
    assert {n.name for n in snapshot.nodes} == {"n1", "n2"}
    w2 = watching(store, snapshot.revision)
    added = api.add_node("n3", pod_cidrs=["10.244.3.0/24"], addresses=["198.18.0.3"])
    assert w2.next() == str(added)


def test_dropped_stream_reconnects_from_the_last_revision(api: KubeAPIServer, make_store, watching) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    store = make_store("n1", watch_timeout=30)
    w = watching(store, store.nodes().revision)
    first = api.add_node("n2", pod_cidrs=["10.244.2.0/24"], addresses=["198.18.0.2"])
    assert w.next() == str(first)
    api.drop_watches()
    wait_for_watches(api, 2)
    assert api.seen("GET", watch=True)[1].query["resourceVersion"] == str(first)
    second = api.add_node("n3", pod_cidrs=["10.244.3.0/24"], addresses=["198.18.0.3"])
    assert w.next() == str(second)
    assert w.error is None and not w.ended.is_set()


def test_server_timeout_ends_the_stream_and_the_watch_goes_on(api: KubeAPIServer, make_store, watching) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    store = make_store("n1", watch_timeout=1)
    w = watching(store, store.nodes().revision)
    wait_for_watches(api, 2, timeout=3)  # the first stream timed out cleanly, a second one opened
    added = api.add_node("n2", pod_cidrs=["10.244.2.0/24"], addresses=["198.18.0.2"])
    assert w.next() == str(added)
    assert w.error is None


def test_outage_is_unavailable_and_recovers(api: KubeAPIServer, make_store, watching) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    store = make_store("n1", watch_timeout=30, request_timeout=1.0)
    revision = store.nodes().revision
    w = watching(store, revision)
    wait_for_watches(api, 1)
    api.stop()
    assert w.ended.wait(5), "the watch did not give up while the server was down"
    assert isinstance(w.error, DatastoreUnavailable)
    with pytest.raises(DatastoreUnavailable):
        store.nodes()
    with pytest.raises(DatastoreUnavailable):
        store.claim(claim_for(), V4)
    api.start_again()  # same port, same objects
    assert store.claim(claim_for(), V4).subnets == (net("10.244.1.0/24"),)
    snapshot = store.nodes()
    assert [n.name for n in snapshot.nodes] == ["n1"]
    w2 = watching(store, snapshot.revision)
    added = api.add_node("n2", pod_cidrs=["10.244.2.0/24"], addresses=["198.18.0.2"])
    assert w2.next() == str(added)


def test_stop_ends_a_blocked_watch_within_a_second(api: KubeAPIServer, make_store) -> None:
    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    store = make_store("n1", watch_timeout=300)
    w = Watching(store, store.nodes().revision).start()
    wait_for_watches(api, 1)
    time.sleep(0.2)  # blocked in the stream's read
    started = time.monotonic()
    w.stop.set()
    assert w.ended.wait(1.0), "watch still running 1 s after stop"
    assert time.monotonic() - started < 1.0
    assert w.error is None
    assert len(api.seen("GET", watch=True)) == 1  # it did not re-watch after stop


def test_other_refusals_are_datastore_errors(api: KubeAPIServer, make_store, mocker) -> None:
    # Fault injection: the apiserver refuses a patch (422 Invalid); not an outage, not retried blindly.
    from kubernetes.client.exceptions import ApiException

    api.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    store = make_store("n1")
    mocker.patch.object(store._core, "patch_node", side_effect=ApiException(status=422, reason="Unprocessable Entity"))
    with pytest.raises(DatastoreError) as caught:
        store.claim(claim_for(), V4)
    assert not isinstance(caught.value, DatastoreUnavailable)
    assert isinstance(caught.value.__cause__, ApiException)


# --- the controller on this source ----------------------------------------------------------------


@dataclass(frozen=True)
class _Peer:
    name: str
    subnets: tuple
    address: object
    via: str = "vxlan"
    reason: str = ""


@dataclass(frozen=True)
class _Desired:
    peers: tuple
    pod_mtu: int = 1450


class _RecordingDataplane:
    def __init__(self) -> None:
        self.peer_names: list[str] = []

    def local_facts(self, node_address: object) -> dict:
        return {}

    def apply(self, desired: _Desired) -> dict:
        self.peer_names = sorted(p.name for p in desired.peers)
        return {}

    def apply_masquerade(self, config: object, me: object) -> None:
        pass


def _plan(config: object, me, nodes, facts) -> _Desired:  # type: ignore[no-untyped-def]
    return _Desired(tuple(_Peer(n.name, n.subnets, n.addresses[0]) for n in nodes if n.name != me.name))


def _eventually(check, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_the_controller_follows_the_nodes_by_watch(api: KubeAPIServer, kubeconfig: str, tmp_path: Path) -> None:
    # The lead's controller loop on this source: resync_interval 30 s, so only the watch can
    # bring the peers in within the test's seconds.
    from cni_plugin.cluster import conflist
    from cni_plugin.cluster.controller import Controller, ControllerSettings

    api.add_node("n1", pod_cidrs=[], addresses=["10.0.0.1"])
    settings = ControllerSettings(
        node_name="n1", node_addresses=(ip("198.18.0.1"),), conf_dir=str(tmp_path / "net.d"),
        conflist=conflist.ConflistSettings(ipam_data_dir=str(tmp_path / "ipam"),
                                           status_file=str(tmp_path / "status.json")),
        state_dir=str(tmp_path / "state"), status_file=str(tmp_path / "status.json"),
        resync_interval=30.0, datastore_name="kubernetes")
    dataplane = _RecordingDataplane()
    store = KubernetesDatastore(V4, "n1", kubeconfig=kubeconfig, watch_timeout=30)
    controller = Controller(store, settings, dataplane, planner=_plan, vtep_mac=lambda name: MAC)
    controller.start()
    try:
        _eventually(lambda: "podCIDRs" in controller.last_error)  # NotReady, retried
        api.set_pod_cidrs("n1", ["10.244.1.0/24"])  # kube-controller-manager allocates
        _eventually(lambda: controller.ready, timeout=5.0)
        annotations = api.node("n1")["metadata"]["annotations"]
        assert annotations[ANNOTATION_PUBLIC_IP] == "198.18.0.1" and annotations[ANNOTATION_VTEP_MAC] == MAC
        api.add_node("n2", pod_cidrs=["10.244.2.0/24"], addresses=["198.18.0.2"])
        _eventually(lambda: dataplane.peer_names == ["n2"])
        api.bump(5)  # other kinds were written, then etcd compacted: the watch's revision is
        compacted = api.compact()  # too old when its stream breaks -> 410 -> the controller relists
        api.drop_watches()
        api.add_node("n3", pod_cidrs=["10.244.3.0/24"], addresses=["198.18.0.3"])
        _eventually(lambda: dataplane.peer_names == ["n2", "n3"])

        def versions() -> list[int]:
            return [int(r.query.get("resourceVersion") or 0) for r in api.seen("GET", watch=True)]

        assert any(v < compacted for v in versions())  # the re-watch got its 410 ...
        _eventually(lambda: versions()[-1] >= compacted)  # ... and the relist's revision watches again
        api.delete_node("n2")
        _eventually(lambda: dataplane.peer_names == ["n3"])
    finally:
        started = time.monotonic()
        controller.stop(timeout=3)
        assert time.monotonic() - started < 2.0
