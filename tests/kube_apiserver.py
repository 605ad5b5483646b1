"""A small Kubernetes API server for the tests: Node objects only, speaking the real wire format.

No kube-apiserver can be installed on the test machines, so the Kubernetes datastore is tested
with the real client library against this server on 127.0.0.1 (plain HTTP, a bearer token the
server checks). What it speaks is the API's own JSON:

    GET   /api/v1/nodes                      NodeList, metadata.resourceVersion = the global counter
    GET   /api/v1/nodes/{name}               Node, or a 404 Status
    PATCH /api/v1/nodes/{name}               merge-patch+json / strategic-merge-patch+json
                                             (RFC 7386 on the object; a no-op patch writes nothing
                                             and keeps the resourceVersion, as the apiserver does)
    GET   /api/v1/nodes?watch=true&resourceVersion=N&allowWatchBookmarks=true&timeoutSeconds=S
          chunked, one {"type": ADDED|MODIFIED|DELETED|BOOKMARK|ERROR, "object": ...} per line;
          from N the history after N is replayed; no N (or "0") starts with an ADDED per node;
          N older than the last compaction -> an ERROR event with a 410 Expired Status (or, with
          gone_as_http, an HTTP 410); timeoutSeconds ends the stream cleanly (terminating chunk)

    server = KubeAPIServer.start()
    server.write_kubeconfig(tmp_path / "kubeconfig")
    server.add_node("n1", pod_cidrs=["10.244.1.0/24"], addresses=["198.18.0.1"])
    server.put_object("pods", {...})          # the policy resources (below): create or replace
    server.delete_object("pods", "x", "a")
    server.drop_watches()        # streams cut without their terminating chunk
    server.stop(); server.start_again()   # an outage: connections refused, state kept
    KubeAPIServer.start(tls=make_tls(tmp_path))  # HTTPS (the in-cluster loader insists on it)

The network-policy resources, list and watch only (the same wire format as nodes; objects are
written by the test with put_object/delete_object, each write a new global resourceVersion):

    GET /apis/networking.k8s.io/v1/networkpolicies                     NetworkPolicyList
    GET /api/v1/pods, /api/v1/namespaces                               PodList, NamespaceList
    GET /apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies   (and baselineadmin...):
        served only with serve_admin=True; else 404, as an apiserver without the CRDs answers
"""

from __future__ import annotations

import copy
import json
import socket
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "pycni-test-token"  # noqa: S105 - a test server's token
CREATED = "2026-01-01T00:00:00Z"


@dataclass(frozen=True)
class TLS:
    cert: Path  # self-signed for IP 127.0.0.1: the CA file a client trusts, too
    key: Path


def make_tls(directory: Path) -> TLS:
    """A throwaway self-signed certificate for 127.0.0.1 (openssl CLI)."""
    cert, key = directory / "apiserver.crt", directory / "apiserver.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return TLS(cert, key)


@dataclass(frozen=True)
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: Any = None


def status_object(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (a strategic merge patch is the same on maps such as annotations)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class KubeAPIServer:
    def __init__(self, token: str = TOKEN, tls: TLS | None = None, host: str = "127.0.0.1") -> None:
        self.token = token
        self.host = host  # another address for the multi-node tests (bound inside the router namespace)
        self.tls = tls
        self.port = 0
        self.gone_as_http = False  # answer a too-old watch with HTTP 410 instead of an ERROR event
        self.requests: list[Seen] = []
        self._cond = threading.Condition()
        self._rv = 100
        self._nodes: dict[str, dict[str, Any]] = {}
        self._history: list[tuple[int, str, dict[str, Any]]] = []
        self._compacted = 0
        self._bookmarks = 0  # generation counters the watch handlers compare against
        self._drops = 0
        self._stopping = False
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self.serve_admin = False
        self._objects: dict[str, dict[str, dict[str, Any]]] = {r: {} for r in RESOURCES}
        self._rhistory: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, resource, type, object)

    # --- lifecycle -----------------------------------------------------------------------------

    @classmethod
    def start(cls, token: str = TOKEN, tls: TLS | None = None, host: str = "127.0.0.1") -> KubeAPIServer:
        server = cls(token, tls, host)
        server.start_again()
        return server

    def start_again(self) -> None:
        handler = type("Handler", (_Handler,), {"api": self})
        httpd = ThreadingHTTPServer((self.host, self.port), handler)
        httpd.daemon_threads = True
        self.port = httpd.server_address[1]
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        with self._cond:
            self._stopping = False
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="kube-apiserver", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """An outage: the port refuses connections and every open connection is cut."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
        with self._cond:
            connections = list(self._connections)
        for conn in connections:
            _cut(conn)

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig for this server (JSON is YAML): the tests pass it to the datastore."""
        document = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "pycni", "user": {"token": token or self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "pycni"}}],
        }
        path.write_text(json.dumps(document))
        return path

    # --- the cluster, as the test drives it ----------------------------------------------------

    def add_node(self, name: str, pod_cidrs: Sequence[str] = (),
                 addresses: Iterable[str | tuple[str, str]] = (), annotations: dict[str, str] | None = None,
                 labels: dict[str, str] | None = None, pod_cidr_only: bool = False) -> int:
        """Register a node as the kubelet would; addresses are InternalIPs unless given as (type, address).
        pod_cidr_only: set only the old single-stack spec.podCIDR field."""
        status_addresses = [{"type": "InternalIP", "address": a} if isinstance(a, str)
                            else {"type": a[0], "address": a[1]} for a in addresses]
        status_addresses.append({"type": "Hostname", "address": name})
        node: dict[str, Any] = {
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "uid": str(uuid.uuid4()), "creationTimestamp": CREATED,
                         "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", **(labels or {})},
                         "annotations": {"node.alpha.kubernetes.io/ttl": "0", **(annotations or {})}},
            "spec": {},
            "status": {"addresses": status_addresses,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                       "lastHeartbeatTime": CREATED, "lastTransitionTime": CREATED}],
                       "nodeInfo": {"kubeletVersion": "v1.31.0", "architecture": "amd64", "bootID": "b",
                                    "containerRuntimeVersion": "containerd://1.7.0", "kernelVersion": "6.1.0",
                                    "kubeProxyVersion": "", "machineID": "m", "operatingSystem": "linux",
                                    "osImage": "Debian GNU/Linux 12", "systemUUID": "s"}},
        }
        _set_cidrs(node, list(pod_cidrs), pod_cidr_only)
        with self._cond:
            if name in self._nodes:
                raise ValueError(f"node {name} exists")
            self._nodes[name] = node
            return self._record("ADDED", node)

    def update_node(self, name: str, change: Callable[[dict[str, Any]], None]) -> int:
        """Change a node in place (as kube-controller-manager or the kubelet would); returns the new RV."""
        with self._cond:
            node = self._nodes[name]
            change(node)
            return self._record("MODIFIED", node)

    def set_pod_cidrs(self, name: str, pod_cidrs: Sequence[str], pod_cidr_only: bool = False) -> int:
        return self.update_node(name, lambda node: _set_cidrs(node, list(pod_cidrs), pod_cidr_only))

    def delete_node(self, name: str) -> int:
        with self._cond:
            node = self._nodes.pop(name)
            return self._record("DELETED", node)

    def bump(self, writes: int = 1) -> int:
        """Writes to other kinds (pods, leases): the global resourceVersion moves, no node event."""
        with self._cond:
            self._rv += writes
            return self._rv

    def send_bookmark(self) -> int:
        """A BOOKMARK at the current resourceVersion to every watch that allowed bookmarks."""
        with self._cond:
            self._bookmarks += 1
            self._cond.notify_all()
            return self._rv

    def drop_watches(self) -> None:
        """Cut every open watch stream mid-way (no terminating chunk), as a broken connection would."""
        with self._cond:
            self._drops += 1
            self._cond.notify_all()

    def compact(self) -> int:
        """Forget the event history up to now: a watch from an older resourceVersion gets 410 Gone."""
        with self._cond:
            self._compacted = self._rv
            self._history.clear()
            self._rhistory.clear()
            self._cond.notify_all()
            return self._rv

    def put_object(self, resource: str, obj: dict[str, Any]) -> int:
        """Create or replace a policy-resource object (kind/apiVersion filled in); the new RV."""
        kind, api_version = RESOURCES[resource]
        obj = copy.deepcopy(obj)
        obj["kind"], obj["apiVersion"] = kind, api_version
        meta = obj.setdefault("metadata", {})
        key = f"{meta.get('namespace') or ''}/{meta['name']}"
        with self._cond:
            existed = key in self._objects[resource]
            meta.setdefault("uid", str(uuid.uuid4()))
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._objects[resource][key] = obj
            self._rhistory.append((self._rv, resource, "MODIFIED" if existed else "ADDED", copy.deepcopy(obj)))
            self._cond.notify_all()
            return self._rv

    def delete_object(self, resource: str, namespace: str, name: str) -> int:
        with self._cond:
            obj = self._objects[resource].pop(f"{namespace}/{name}")
            self._rv += 1
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._rhistory.append((self._rv, resource, "DELETED", copy.deepcopy(obj)))
            self._cond.notify_all()
            return self._rv

    def node(self, name: str) -> dict[str, Any]:
        with self._cond:
            return copy.deepcopy(self._nodes[name])

    @property
    def resource_version(self) -> int:
        with self._cond:
            return self._rv

    def seen(self, method: str, watch: bool | None = None) -> list[Seen]:
        with self._cond:
            found = [r for r in self.requests if r.method == method]
        if watch is not None:
            found = [r for r in found if (r.query.get("watch") in ("true", "1")) == watch]
        return found

    # --- internals (called with self._cond held) -----------------------------------------------

    def _record(self, kind: str, node: dict[str, Any]) -> int:
        self._rv += 1
        node["metadata"]["resourceVersion"] = str(self._rv)
        self._history.append((self._rv, kind, copy.deepcopy(node)))
        self._cond.notify_all()
        return self._rv


RESOURCES = {  # resource -> (kind, apiVersion)
    "networkpolicies": ("NetworkPolicy", "networking.k8s.io/v1"),
    "pods": ("Pod", "v1"),
    "namespaces": ("Namespace", "v1"),
    "adminnetworkpolicies": ("AdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1"),
    "baselineadminnetworkpolicies": ("BaselineAdminNetworkPolicy", "policy.networking.k8s.io/v1alpha1"),
}
RESOURCE_PATHS = {
    "/apis/networking.k8s.io/v1/networkpolicies": "networkpolicies",
    "/api/v1/pods": "pods",
    "/api/v1/namespaces": "namespaces",
    "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies": "adminnetworkpolicies",
    "/apis/policy.networking.k8s.io/v1alpha1/baselineadminnetworkpolicies": "baselineadminnetworkpolicies",
}
ADMIN = ("adminnetworkpolicies", "baselineadminnetworkpolicies")


def _set_cidrs(node: dict[str, Any], cidrs: list[str], pod_cidr_only: bool) -> None:
    spec = node["spec"]
    spec.pop("podCIDR", None)
    spec.pop("podCIDRs", None)
    if cidrs:
        spec["podCIDR"] = cidrs[0]
        if not pod_cidr_only:
            spec["podCIDRs"] = cidrs


def _cut(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _list_item(node: dict[str, Any]) -> dict[str, Any]:
    item = copy.deepcopy(node)  # a NodeList's items carry no kind/apiVersion
    item.pop("kind", None)
    item.pop("apiVersion", None)
    return item


class _Handler(BaseHTTPRequestHandler):
    api: KubeAPIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass

    def setup(self) -> None:
        super().setup()
        with self.api._cond:
            self.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.api._cond:
            self.api._connections.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # --- plumbing --------------------------------------------------------------------------

    def _send_json(self, code: int, document: Any) -> None:
        body = json.dumps(document).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send_status(self, code: int, reason: str, message: str) -> None:
        self._send_json(code, status_object(code, reason, message))

    def _begin(self, method: str) -> tuple[str, dict[str, str], Any] | None:
        parts = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        body: Any = None
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            raw = self.rfile.read(length)
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        with self.api._cond:
            self.api.requests.append(Seen(method, parts.path, query, content_type, body))
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or token != self.api.token:  # the scheme is case-insensitive
            self._send_status(401, "Unauthorized", "Unauthorized")
            return None
        return parts.path, query, body

    # --- verbs -----------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        begun = self._begin("GET")
        if begun is None:
            return
        path, query, _ = begun
        if path == "/api/v1/nodes":
            if query.get("watch") in ("true", "1"):
                self._watch(query)
                return
            with self.api._cond:
                document = {"kind": "NodeList", "apiVersion": "v1",
                            "metadata": {"resourceVersion": str(self.api._rv)},
                            "items": [_list_item(n) for _, n in sorted(self.api._nodes.items())]}
            self._send_json(200, document)
            return
        resource = RESOURCE_PATHS.get(path)
        if resource is not None and (resource not in ADMIN or self.api.serve_admin):
            if query.get("watch") in ("true", "1"):
                self._watch_resource(resource, query)
                return
            kind, api_version = RESOURCES[resource]
            with self.api._cond:
                document = {"kind": f"{kind}List", "apiVersion": api_version,
                            "metadata": {"resourceVersion": str(self.api._rv)},
                            "items": [_list_item(o) for _, o in sorted(self.api._objects[resource].items())]}
            self._send_json(200, document)
            return
        name = path.removeprefix("/api/v1/nodes/")
        if path.startswith("/api/v1/nodes/") and "/" not in name:
            with self.api._cond:
                node = copy.deepcopy(self.api._nodes.get(name))
            if node is None:
                self._send_status(404, "NotFound", f'nodes "{name}" not found')
            else:
                self._send_json(200, node)
            return
        self._send_status(404, "NotFound", "the server could not find the requested resource")

    def do_PATCH(self) -> None:  # noqa: N802
        begun = self._begin("PATCH")
        if begun is None:
            return
        path, _, patch = begun
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if content_type not in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            self._send_status(415, "UnsupportedMediaType",
                              f"the body of the request was in an unknown format: {content_type}")
            return
        name = path.removeprefix("/api/v1/nodes/")
        if not path.startswith("/api/v1/nodes/") or "/" in name or not isinstance(patch, dict):
            self._send_status(400, "BadRequest", "not a node patch")
            return
        api = self.api
        with api._cond:
            node = api._nodes.get(name)
            if node is None:
                self._send_status(404, "NotFound", f'nodes "{name}" not found')
                return
            patched = merge_patch(node, patch)
            patched["metadata"]["name"] = name
            patched["metadata"]["resourceVersion"] = node["metadata"]["resourceVersion"]
            if patched != node:  # the apiserver writes (and bumps the RV) only on a real change
                api._nodes[name] = patched
                api._record("MODIFIED", patched)
            result = copy.deepcopy(api._nodes[name])
        self._send_json(200, result)

    # --- watch -----------------------------------------------------------------------------

    def _chunk(self, event: dict[str, Any]) -> None:
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def _watch_resource(self, resource: str, query: dict[str, str]) -> None:
        """The watch of a policy resource: replay after resourceVersion (or ADDED for every
        object from "0"), then new events, until timeoutSeconds; 410 as an ERROR event."""
        api = self.api
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 1800)
        since = query.get("resourceVersion") or "0"
        with api._cond:
            if since != "0" and int(since) < api._compacted:
                pending = [{"type": "ERROR", "object": status_object(410, "Expired", "too old resource version")}]
                gone = True
            elif since == "0":
                pending = [{"type": "ADDED", "object": copy.deepcopy(o)}
                           for _, o in sorted(api._objects[resource].items())]
                gone = False
            else:
                pending = [{"type": t, "object": copy.deepcopy(o)}
                           for rv, r, t, o in api._rhistory if r == resource and rv > int(since)]
                gone = False
            last = api._rv
            drops = api._drops
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                for event in pending:
                    self._chunk(event)
                if gone:
                    break
                with api._cond:
                    pending = []
                    while not pending:
                        if api._stopping or api._drops != drops:
                            _cut(self.connection)
                            self.close_connection = True
                            return
                        fresh = [(rv, t, o) for rv, r, t, o in api._rhistory if rv > last and r == resource]
                        last = api._rv
                        if fresh:
                            pending = [{"type": t, "object": copy.deepcopy(o)} for _, t, o in fresh]
                            break
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            break
                        api._cond.wait(remaining)
                if not pending:
                    break
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True

    def _watch(self, query: dict[str, str]) -> None:
        api = self.api
        timeout = float(query.get("timeoutSeconds") or 1800)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        since = query.get("resourceVersion") or "0"
        deadline = time.monotonic() + timeout
        with api._cond:
            gone = since != "0" and int(since) < api._compacted
            if gone and api.gone_as_http:
                pending: list[dict[str, Any]] | None = None
            elif gone:
                pending = [{"type": "ERROR", "object": status_object(410, "Expired", "too old resource version")}]
            elif since == "0":  # "start at most recent": the current state as ADDED events first
                pending = [{"type": "ADDED", "object": copy.deepcopy(n)} for _, n in sorted(api._nodes.items())]
                last = api._rv
            else:
                last = int(since)
                pending = [{"type": t, "object": copy.deepcopy(o)} for rv, t, o in api._history if rv > last]
                last = max([last, *(rv for rv, _, _ in api._history)])
            drops, marks = api._drops, api._bookmarks
        if pending is None:
            self._send_status(410, "Expired", "too old resource version")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                for event in pending:
                    self._chunk(event)
                if gone:
                    break
                with api._cond:
                    while True:
                        if api._stopping or api._drops != drops:
                            _cut(self.connection)  # no terminating chunk: a broken stream
                            self.close_connection = True
                            return
                        if last < api._compacted and any(rv > last for rv, _, _ in api._history):
                            gone = True
                            pending = [{"type": "ERROR",
                                        "object": status_object(410, "Expired", "too old resource version")}]
                            break
                        fresh = [(rv, t, o) for rv, t, o in api._history if rv > last]
                        if fresh:
                            pending = [{"type": t, "object": copy.deepcopy(o)} for _, t, o in fresh]
                            last = fresh[-1][0]
                            break
                        if api._bookmarks != marks:
                            marks = api._bookmarks
                            if bookmarks:
                                last = api._rv
                                pending = [{"type": "BOOKMARK", "object": {
                                    "kind": "Node", "apiVersion": "v1",
                                    "metadata": {"resourceVersion": str(api._rv), "creationTimestamp": None}}}]
                                break
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            pending = []
                            break
                        api._cond.wait(remaining)
                if not pending:
                    break
            self.wfile.write(b"0\r\n\r\n")  # the clean end of a timed-out watch
        except OSError:
            self.close_connection = True
