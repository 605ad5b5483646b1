"""KubernetesDatastore: node subnets from the Kubernetes API (Node objects, by list + watch).

kube-controller-manager (`--allocate-node-cidrs`, `--cluster-cidr`) assigns every node its
`spec.podCIDRs` (one per family; `spec.podCIDR` on old clusters); this source reads them and
never allocates. What the nodes need of each other beyond that is published on the node object
itself as annotations, which only this node's agent writes:

    pycni.dev/vtep-mac    the node's VXLAN device MAC ("" or absent: no VXLAN device)
    pycni.dev/backend     the backend the node runs (informational)
    pycni.dev/public-ip   the node's underlay addresses, comma-separated, the preferred first;
                          peers use them instead of status.addresses (InternalIP, then ExternalIP)

The cluster config (CIDRs, backend) is the agent's --cluster-config file, not a cluster object.

The client is the official `kubernetes` package: its kubeconfig and in-cluster loaders, its REST
client and its Watch. Responses are read as JSON (`_preload_content=False`) and mapped by one
pure function, `record_from_node`, for the list, the get and the watch events alike: a node's
status (images, conditions) is large and this source reads four fields of it.

Only this module imports `kubernetes`; its exceptions (ApiException, urllib3's errors, the
config loaders') are translated here into the Datastore errors of model.py.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ..spec.types import IPAddress, IPNetwork
from .model import (
    ClusterConfig,
    DatastoreError,
    DatastoreUnavailable,
    NodeClaim,
    NodeRecord,
    NotReady,
    Snapshot,
)

log = logging.getLogger("pycni.cluster.kubernetes")

ANNOTATION_VTEP_MAC = "pycni.dev/vtep-mac"
ANNOTATION_BACKEND = "pycni.dev/backend"
ANNOTATION_PUBLIC_IP = "pycni.dev/public-ip"
ANNOTATIONS = (ANNOTATION_VTEP_MAC, ANNOTATION_BACKEND, ANNOTATION_PUBLIC_IP)
MERGE_PATCH = "application/merge-patch+json"

# The apiserver ends a watch after timeoutSeconds (the client then re-watches from the last
# resourceVersion); the client's own read timeout is longer, so only a dead connection trips it.
DEFAULT_WATCH_TIMEOUT = 300
WATCH_READ_SLACK = 30.0
DEFAULT_REQUEST_TIMEOUT = 10.0
# A dropped stream is re-opened from the last resourceVersion after a short backoff; this many
# failures in a row (refused, 5xx, cut again before any event) and the watch gives up with
# DatastoreUnavailable (the controller keeps the data path and retries).
RECONNECT_ATTEMPTS = 3
RECONNECT_BACKOFF = 0.2
# The stop guard (below): how often it checks that its watch is still running, and how often it
# repeats Watch.stop() once stopping.
GUARD_POLL = 1.0
STOP_POLL = 0.05
HTTP_GONE = 410
HTTP_NOT_FOUND = 404


# --- pure: Node JSON -> NodeRecord, annotations -> patch -----------------------------------------


def pod_subnets(node: Mapping[str, Any]) -> tuple[IPNetwork, ...]:
    """spec.podCIDRs (dual-stack), else spec.podCIDR; () when kube-controller-manager has not
    assigned one yet. ValueError on an unparsable CIDR."""
    spec = node.get("spec") or {}
    texts = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
    return tuple(ipaddress.ip_network(text, strict=True) for text in texts)


def status_addresses(node: Mapping[str, Any]) -> tuple[IPAddress, ...]:
    """status.addresses: every InternalIP, then every ExternalIP, each in the kubelet's order."""
    entries = (node.get("status") or {}).get("addresses") or []
    found: list[IPAddress] = []
    for kind in ("InternalIP", "ExternalIP"):
        for entry in entries:
            if entry.get("type") == kind:
                try:
                    address = ipaddress.ip_address(entry.get("address", ""))
                except ValueError:
                    continue  # a malformed entry is not an underlay address
                if address not in found:
                    found.append(address)
    return tuple(found)


def parse_address_list(text: str) -> tuple[IPAddress, ...]:
    return tuple(ipaddress.ip_address(part.strip()) for part in text.split(",") if part.strip())


def record_from_node(node: Mapping[str, Any], config: ClusterConfig) -> NodeRecord:
    """A Node object (API JSON) as a NodeRecord. ValueError, with the reason, when the node cannot
    be routed to: no pod CIDR yet, a CIDR outside the cluster config, no underlay address."""
    metadata = node.get("metadata") or {}
    name = metadata.get("name") or ""
    if not name:
        raise ValueError("a node without a name")
    subnets = pod_subnets(node)
    if not subnets:
        raise ValueError("no spec.podCIDRs yet (kube-controller-manager assigns them)")
    kept: list[IPNetwork] = []
    for subnet in subnets:
        cidr = config.cidr(subnet.version)
        if cidr is None:
            continue  # a family this cluster config does not run
        if not subnet.subnet_of(cidr):  # type: ignore[arg-type]  # same family, checked above
            raise ValueError(f"spec.podCIDRs {subnet} is outside the cluster config's {cidr} "
                             "(kube-controller-manager --cluster-cidr must match clusterCIDRs)")
        kept.append(subnet)
    if not kept:
        raise ValueError(f"spec.podCIDRs {', '.join(map(str, subnets))}: no family of the cluster config")
    annotations = metadata.get("annotations") or {}
    published = annotations.get(ANNOTATION_PUBLIC_IP, "")
    try:
        addresses = parse_address_list(published) if published else ()
    except ValueError as exc:
        raise ValueError(f"annotation {ANNOTATION_PUBLIC_IP}={published!r}: {exc}") from exc
    addresses = addresses or status_addresses(node)
    if not addresses:
        raise ValueError("no underlay address (no InternalIP/ExternalIP, no pycni.dev/public-ip)")
    return NodeRecord(
        name=name,
        subnets=tuple(kept),
        addresses=addresses,
        vtep_mac=str(annotations.get(ANNOTATION_VTEP_MAC, "") or "").lower(),
        backend=str(annotations.get(ANNOTATION_BACKEND, "") or ""),
    )


def desired_annotations(claim: NodeClaim) -> dict[str, str | None]:
    """What this node publishes; None removes a key (a merge patch's null)."""
    return {
        ANNOTATION_VTEP_MAC: claim.vtep_mac.lower() or None,
        ANNOTATION_BACKEND: claim.backend or None,
        ANNOTATION_PUBLIC_IP: ",".join(str(a) for a in claim.addresses) or None,
    }


def annotation_patch(current: Mapping[str, str], desired: Mapping[str, str | None]) -> dict[str, Any] | None:
    """The merge patch that makes `current` carry `desired`, or None when it already does."""
    changes = {key: value for key, value in desired.items() if current.get(key) != value}
    return {"metadata": {"annotations": changes}} if changes else None


def _fingerprint(node: Mapping[str, Any], config: ClusterConfig) -> NodeRecord | str:
    """What a peer's data path depends on: the record, or the reason it is skipped."""
    try:
        return record_from_node(node, config)
    except ValueError as exc:
        return f"skipped: {exc}"


# --- the datastore --------------------------------------------------------------------------------


class _Expired(Exception):
    """The watch's resourceVersion is older than the apiserver's history (410 Gone)."""


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ApiException):
        message = ""
        try:
            message = json.loads(exc.body or "").get("message", "")
        except (ValueError, AttributeError):
            pass
        return f"HTTP {exc.status} {exc.reason or ''}{': ' + message if message else ''}".strip()
    return f"{type(exc).__name__}: {exc}"


def _translate(exc: BaseException, what: str) -> DatastoreError:
    """Client errors -> Datastore errors. Unreachable, timed out, 5xx, 429, 401/403 (a token or RBAC
    an operator can fix while the data path keeps running) are DatastoreUnavailable; the rest are
    requests the apiserver refused (DatastoreError)."""
    status = exc.status if isinstance(exc, ApiException) else None
    if isinstance(status, int) and 400 <= status < 500 and status not in (401, 403, 408, 429):
        return DatastoreError(f"kubernetes: {what}: {_reason(exc)}")
    return DatastoreUnavailable(f"kubernetes: {what}: {_reason(exc)}")


def _body(response: Any) -> dict[str, Any]:
    """The JSON of a `_preload_content=False` call: the library then returns urllib3's response
    (its annotations name the model). ValueError when it is not a JSON object."""
    document = json.loads(response.data)
    if not isinstance(document, dict):
        raise ValueError(f"expected a JSON object, got {type(document).__name__}")
    return document


def _load_api_client(kubeconfig: str | None) -> k8s_client.ApiClient:
    """The library's own loaders: the in-cluster service account (token re-read as the kubelet
    rotates it, the service CA) when kubeconfig is None, else that file's current context."""
    configuration = k8s_client.Configuration()
    try:
        if kubeconfig is None:
            k8s_config.load_incluster_config(client_configuration=configuration)
        else:
            k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration,
                                        persist_config=False)
    except (ConfigException, OSError, ValueError) as exc:
        source = f"kubeconfig {kubeconfig}" if kubeconfig else "the in-cluster service account"
        raise ValueError(f"kubernetes: cannot load {source}: {exc}") from exc
    return k8s_client.ApiClient(configuration)


def _watch_kwargs(request_timeout: float, watch_timeout: int, resume: str) -> dict[str, Any]:
    """One watch request's arguments: bookmarks on, the server ends the stream after
    `watch_timeout` (so a stop or a silent partition is noticed), the read timeout a little
    longer than that, and the revision to resume from ("" lists from now)."""
    kwargs: dict[str, Any] = {
        "allow_watch_bookmarks": True,
        "timeout_seconds": watch_timeout,
        "_request_timeout": (request_timeout, watch_timeout + WATCH_READ_SLACK),
    }
    if resume:
        kwargs["resource_version"] = resume
    return kwargs


class _StopGuard:
    """Ends a blocked watch read when `stop` is set: Watch.stop() shuts the stream's socket down.

    The thread reacts to `stop` at once and otherwise wakes every GUARD_POLL seconds to see
    whether the watch has ended. Once stopping, it calls Watch.stop() again every STOP_POLL
    seconds: the stream may not be open yet, and Watch.stream() clears the flag when it starts.
    """

    def __init__(self, stop: threading.Event, watcher: k8s_watch.Watch) -> None:
        self._stop = stop
        self._watcher = watcher
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pycni-kube-watch-stop", daemon=True)

    def __enter__(self) -> _StopGuard:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()  # the thread notices within GUARD_POLL; nobody waits for it

    def _run(self) -> None:
        while not self._done.is_set():
            if self._stop.wait(GUARD_POLL):
                while not self._done.is_set():
                    self._watcher.stop()
                    self._done.wait(STOP_POLL)
                return


class KubernetesDatastore:
    """The Datastore on Node objects. Thread-safe for the controller's loop and watcher thread."""

    def __init__(self, config: ClusterConfig, node_name: str, kubeconfig: str | None = None, *,
                 request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 watch_timeout: int = DEFAULT_WATCH_TIMEOUT) -> None:
        """ValueError when the kubeconfig (or the in-cluster service account) cannot be loaded."""
        if not node_name:
            raise ValueError("kubernetes: the node name is empty")
        self._config = config
        self.node_name = node_name
        self._request_timeout = request_timeout
        self._watch_timeout = max(1, int(watch_timeout))
        self._api_client = _load_api_client(kubeconfig)
        self._core = k8s_client.CoreV1Api(self._api_client)
        self._lock = threading.Lock()
        # name -> what the last nodes() (or a later event) showed; watch() yields only when an
        # event changes one of these, so kubelet status updates cause no relist. None: no list yet.
        self._seen: dict[str, NodeRecord | str] | None = None

    # --- requests ------------------------------------------------------------------------------

    def _call(self, what: str, request: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """One request, its JSON body, its failure as a Datastore error."""
        try:
            response = request(*args, _preload_content=False, _request_timeout=self._request_timeout, **kwargs)
        except ApiException as exc:
            if exc.status == HTTP_NOT_FOUND and what != "list nodes":
                raise NotReady(f"kubernetes: node {self.node_name} is not registered (no Node object)") from exc
            raise _translate(exc, what) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _translate(exc, what) from exc
        except ValueError as exc:  # the client refused to build the request (e.g. a bad token header)
            raise DatastoreError(f"kubernetes: {what}: {exc}") from exc
        try:
            return _body(response)
        except ValueError as exc:
            raise DatastoreUnavailable(f"kubernetes: {what}: the answer is not a JSON object: {exc}") from exc

    def _get_node(self) -> dict[str, Any]:
        return self._call(f"get node {self.node_name}", self._core.read_node, self.node_name)

    def _patch_node(self, patch: dict[str, Any]) -> dict[str, Any]:
        return self._call(f"patch node {self.node_name}", self._core.patch_node, self.node_name, patch,
                          _content_type=MERGE_PATCH)

    # --- the Datastore protocol ----------------------------------------------------------------

    def cluster_config(self) -> ClusterConfig:
        """The agent's --cluster-config file: Kubernetes keeps no pycni cluster object."""
        return self._config

    def claim(self, claim: NodeClaim, config: ClusterConfig) -> NodeRecord:
        """This node's spec.podCIDRs (NotReady until kube-controller-manager sets them), its
        annotations brought up to date (one merge patch, only when something differs)."""
        node = self._get_node()
        if not pod_subnets(node):
            raise NotReady(f"kubernetes: node {self.node_name} has no spec.podCIDRs yet "
                           "(kube-controller-manager --allocate-node-cidrs assigns them)")
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        patch = annotation_patch(annotations, desired_annotations(claim))
        if patch is not None:
            node = self._patch_node(patch)
        try:
            record = record_from_node(node, config)
        except ValueError as exc:
            raise NotReady(f"kubernetes: node {self.node_name}: {exc}") from exc
        # The agent's own view of its underlay wins over what the API shows (it published it above).
        return NodeRecord(name=record.name, subnets=record.subnets,
                          addresses=claim.addresses or record.addresses,
                          vtep_mac=claim.vtep_mac.lower(), backend=claim.backend)

    def renew(self) -> None:
        """Nothing to renew: node objects live as long as the node (the node lifecycle controller
        deletes them, and kube-controller-manager frees the podCIDRs)."""

    def nodes(self) -> Snapshot:
        document = self._call("list nodes", self._core.list_node)
        records: list[NodeRecord] = []
        skipped: list[str] = []
        seen: dict[str, NodeRecord | str] = {}
        for item in document.get("items") or []:
            name = (item.get("metadata") or {}).get("name") or "?"
            found = _fingerprint(item, self._config)
            seen[name] = found
            if isinstance(found, NodeRecord):
                records.append(found)
            else:
                skipped.append(f"{name}: {found.removeprefix('skipped: ')}")
        with self._lock:
            self._seen = seen
        revision = str((document.get("metadata") or {}).get("resourceVersion") or "")
        return Snapshot(nodes=tuple(records), revision=revision, skipped=tuple(skipped))

    def watch(self, revision: str, stop: threading.Event) -> Iterator[str]:
        """Yield a resourceVersion whenever an ADDED/MODIFIED/DELETED event changes what a peer's
        data path depends on (subnets, addresses, VTEP MAC; not the kubelet's status heartbeats).

        BOOKMARK events only advance the resourceVersion the stream resumes from; they yield
        nothing. 410 Gone (an ERROR event or an HTTP 410) yields "" and returns: the controller
        relists and watches again from the new list's revision. A dropped stream is re-opened from
        the last resourceVersion with a backoff; RECONNECT_ATTEMPTS failures in a row raise
        DatastoreUnavailable. Returns within milliseconds of `stop` being set.
        """
        resume = revision
        failures = 0
        while not stop.is_set():
            try:
                for version, changed in self._stream(resume, stop):
                    resume, failures = version, 0
                    if changed:
                        yield version
                failures = 0  # the server's timeoutSeconds ended it cleanly: re-watch from resume
            except _Expired:
                log.info("watch from resourceVersion %s: 410 Gone, asking for a relist", resume or "(none)")
                yield ""
                return
            except DatastoreUnavailable as exc:
                if stop.is_set():
                    return
                failures += 1
                if failures >= RECONNECT_ATTEMPTS:
                    raise
                log.info("watch stream broke (%s); re-watching from %s", exc, resume)
                stop.wait(RECONNECT_BACKOFF * 2 ** (failures - 1))

    def _stream(self, resume: str, stop: threading.Event) -> Iterator[tuple[str, bool]]:
        """One watch request: (resourceVersion, changed) per event, until the server's
        timeoutSeconds ends it cleanly or stop is set. _Expired on 410; DatastoreUnavailable when
        the stream cannot be opened or breaks."""
        # return_type=object: events stay the API's JSON (no model per event), as in nodes().
        watcher = k8s_watch.Watch(return_type=object)
        kwargs = _watch_kwargs(self._request_timeout, self._watch_timeout, resume)
        with _StopGuard(stop, watcher):
            try:
                for event in watcher.stream(self._core.list_node, **kwargs):
                    if stop.is_set():
                        return
                    kind = event.get("type")
                    obj = event.get("raw_object") or {}
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or resume)
                    if kind == "BOOKMARK":
                        yield version, False
                    elif kind in ("ADDED", "MODIFIED", "DELETED"):
                        yield version, self._note(kind, obj)
            except ApiException as exc:
                # The library raises the ERROR event's Status (or the HTTP status) as ApiException.
                if exc.status == HTTP_GONE:
                    raise _Expired() from exc
                if stop.is_set():
                    return
                raise _translate(exc, f"watch nodes from {resume or 'now'}") from exc
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if stop.is_set():
                    return  # the stop guard shut the socket under the read
                raise DatastoreUnavailable(f"kubernetes: watch nodes from {resume or 'now'}: {_reason(exc)}") from exc

    def _note(self, kind: str, obj: Mapping[str, Any]) -> bool:
        """Remember what the event shows; True when it differs from what the controller last saw."""
        name = (obj.get("metadata") or {}).get("name") or ""
        with self._lock:
            if self._seen is None:
                return True
            if kind == "DELETED":
                return self._seen.pop(name, None) is not None
            found = _fingerprint(obj, self._config)
            if self._seen.get(name) == found:
                return False
            self._seen[name] = found
            return True

    def release(self) -> None:
        """Remove this node's pycni annotations (the node leaves pycni; its podCIDRs stay
        kube-controller-manager's to free when the Node object is deleted)."""
        try:
            node = self._get_node()
        except NotReady:
            return  # no node object: nothing published
        annotations = (node.get("metadata") or {}).get("annotations") or {}
        patch = annotation_patch(annotations, dict.fromkeys(ANNOTATIONS))
        if patch is not None:
            self._patch_node(patch)

    def close(self) -> None:
        self._api_client.close()


# --- the network-policy source: NetworkPolicy, Pod, Namespace (and ANP/BANP) by list + watch ----

POLICY_GROUP, POLICY_VERSION = "policy.networking.k8s.io", "v1alpha1"


def _trim_pod(item: Mapping[str, Any]) -> dict[str, Any]:
    """What policy reads of a Pod: identity, labels, node, host network, container ports, IPs."""
    meta = item.get("metadata") or {}
    spec = item.get("spec") or {}
    status = item.get("status") or {}
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "labels": meta.get("labels") or {}},
        "spec": {"nodeName": spec.get("nodeName"), "hostNetwork": bool(spec.get("hostNetwork")),
                 "containers": [{"ports": c.get("ports") or []} for c in spec.get("containers") or []]},
        "status": {"podIPs": status.get("podIPs") or [], **({"podIP": status["podIP"]} if status.get("podIP") else {})},
    }


def _trim(kind: str, api_version: str, item: Mapping[str, Any]) -> dict[str, Any]:
    if kind == "Pod":
        return _trim_pod(item)
    meta = item.get("metadata") or {}
    out = {"apiVersion": api_version, "kind": kind,
           "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if meta.get(k) is not None}}
    if "spec" in item:
        out["spec"] = item["spec"]
    return out


class KubernetesPolicySource:
    """PolicySource on the API's own objects (cluster.policy_source): every NetworkPolicy, Pod and
    Namespace, and AdminNetworkPolicy / BaselineAdminNetworkPolicy when the API serves them (a 404
    for their resource means the CRDs are not installed: none, not an error). Pods' addresses are
    their status.podIPs; the agent adds this node's attachments on top.

    watch() runs one stream per resource and yields only when an event changes what policy reads
    (kubelet status heartbeats do not); 410 Gone on any stream yields "" and returns (relist)."""

    def __init__(self, kubeconfig: str | None = None, *, request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
                 watch_timeout: int = DEFAULT_WATCH_TIMEOUT) -> None:
        self._api_client = _load_api_client(kubeconfig)
        core = k8s_client.CoreV1Api(self._api_client)
        net = k8s_client.NetworkingV1Api(self._api_client)
        custom = k8s_client.CustomObjectsApi(self._api_client)
        self._request_timeout = request_timeout
        self._watch_timeout = max(1, int(watch_timeout))

        def crd(plural: str) -> Callable[..., Any]:
            def call(**kwargs: Any) -> Any:
                return custom.list_cluster_custom_object(POLICY_GROUP, POLICY_VERSION, plural, **kwargs)
            return call

        # resource -> (kind, apiVersion, list function, optional)
        self._resources: dict[str, tuple[str, str, Callable[..., Any], bool]] = {
            "networkpolicies": ("NetworkPolicy", "networking.k8s.io/v1", net.list_network_policy_for_all_namespaces,
                                False),
            "pods": ("Pod", "v1", core.list_pod_for_all_namespaces, False),
            "namespaces": ("Namespace", "v1", core.list_namespace, False),
            "adminnetworkpolicies": ("AdminNetworkPolicy", f"{POLICY_GROUP}/{POLICY_VERSION}",
                                     crd("adminnetworkpolicies"), True),
            "baselineadminnetworkpolicies": ("BaselineAdminNetworkPolicy", f"{POLICY_GROUP}/{POLICY_VERSION}",
                                             crd("baselineadminnetworkpolicies"), True),
        }
        self._lock = threading.Lock()
        self._seen: dict[str, dict[str, Any]] = {}  # "resource/ns/name" -> trimmed object
        self._served: set[str] = set()

    def _list(self, resource: str) -> tuple[list[dict[str, Any]], str] | None:
        kind, api_version, func, optional = self._resources[resource]
        try:
            response = func(_preload_content=False, _request_timeout=self._request_timeout)
        except ApiException as exc:
            if optional and exc.status == HTTP_NOT_FOUND:
                return None
            raise _translate(exc, f"list {resource}") from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise _translate(exc, f"list {resource}") from exc
        try:
            document = _body(response)
        except ValueError as exc:
            raise DatastoreUnavailable(f"kubernetes: list {resource}: the answer is not a JSON object: {exc}") from exc
        items = [_trim(kind, api_version, i) for i in document.get("items") or []]
        return items, str((document.get("metadata") or {}).get("resourceVersion") or "")

    @staticmethod
    def _key(resource: str, obj: Mapping[str, Any]) -> str:
        meta = obj.get("metadata") or {}
        return f"{resource}/{meta.get('namespace') or ''}/{meta.get('name') or ''}"

    def snapshot(self) -> Any:
        from .policy_source import PolicySnapshot

        objects: list[dict[str, Any]] = []
        versions: dict[str, str] = {}
        seen: dict[str, dict[str, Any]] = {}
        served: set[str] = set()
        for resource in self._resources:
            listed = self._list(resource)
            if listed is None:
                continue
            items, version = listed
            served.add(resource)
            versions[resource] = version
            for item in items:
                seen[self._key(resource, item)] = item
            objects += items
        with self._lock:
            self._seen, self._served = seen, served
        return PolicySnapshot(tuple(objects), (), json.dumps(versions, sort_keys=True))

    def watch(self, revision: str, stop: threading.Event) -> Iterator[str]:
        import queue

        try:
            versions = json.loads(revision) if revision else {}
        except ValueError:
            versions = {}
        with self._lock:
            served = set(self._served) or {r for r, spec in self._resources.items() if not spec[3]}
        events: queue.Queue[str | BaseException] = queue.Queue()
        inner = threading.Event()

        def pump(resource: str) -> None:
            try:
                for changed in self._stream(resource, str(versions.get(resource, "")), inner):
                    if changed:
                        events.put(resource)
                events.put(StopIteration())
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                events.put(exc)

        threads = [threading.Thread(target=pump, args=(r,), name=f"pycni-kube-policy-{r}", daemon=True)
                   for r in self._resources if r in served]
        for thread in threads:
            thread.start()
        try:
            while not stop.is_set():
                try:
                    item = events.get(timeout=GUARD_POLL)
                except queue.Empty:
                    continue
                if isinstance(item, _Expired):
                    yield ""
                    return
                if isinstance(item, StopIteration):
                    continue  # that stream's server timeout: the others go on; the timer resyncs
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            inner.set()

    def _stream(self, resource: str, resume: str, stop: threading.Event) -> Iterator[bool]:
        kind, api_version, func, _ = self._resources[resource]
        while not stop.is_set():
            watcher = k8s_watch.Watch(return_type=object)
            kwargs = _watch_kwargs(self._request_timeout, self._watch_timeout, resume)
            with _StopGuard(stop, watcher):
                try:
                    for event in watcher.stream(func, **kwargs):
                        if stop.is_set():
                            return
                        obj = event.get("raw_object") or {}
                        resume = str((obj.get("metadata") or {}).get("resourceVersion") or resume)
                        typ = event.get("type")
                        if typ in ("ADDED", "MODIFIED", "DELETED"):
                            yield self._note(resource, typ, _trim(kind, api_version, obj))
                except ApiException as exc:
                    if exc.status == HTTP_GONE:
                        raise _Expired() from exc
                    if stop.is_set():
                        return
                    raise _translate(exc, f"watch {resource} from {resume or 'now'}") from exc
                except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                    if stop.is_set():
                        return
                    raise DatastoreUnavailable(
                        f"kubernetes: watch {resource} from {resume or 'now'}: {_reason(exc)}") from exc

    def _note(self, resource: str, kind: str, obj: dict[str, Any]) -> bool:
        key = self._key(resource, obj)
        with self._lock:
            if kind == "DELETED":
                return self._seen.pop(key, None) is not None
            if self._seen.get(key) == obj:
                return False
            self._seen[key] = obj
            return True

    def publish_attachments(self, node: str, records: list[dict[str, Any]]) -> None:
        """Nothing to publish: the kubelet posts every pod's status.podIPs."""

    def close(self) -> None:
        self._api_client.close()
