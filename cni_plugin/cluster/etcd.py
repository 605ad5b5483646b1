"""EtcdDatastore: node subnets in etcd v3 through its HTTP gRPC gateway (etcd3gw).

Key layout under `prefix` (default /pycni):

    <prefix>/config                          the cluster config JSON (model.py), set by the operator
    <prefix>/subnets/<network>-<prefixlen>   one key per held node subnet, e.g. 10.244.3.0-24 and
                                             fd00:10:244:3::-64 (IPv6 keeps its colons: etcd keys
                                             are bytes); value = the holder's NodeRecord JSON;
                                             attached to the holder's lease

Why one key per subnet and not one per node: the key *is* the exclusive claim. Creating it with
"create_revision == 0" in a transaction is etcd's compare-and-swap, so two nodes racing for one
subnet cannot both win, and a dual-stack node takes both its keys in ONE transaction (all or
nothing). A node is the union of the keys whose record names it.

Lease: every key of a node hangs on one lease of `lease_ttl` seconds that renew() refreshes. An
agent that dies stops refreshing; after the TTL etcd deletes its keys, peers see the node leave
and its subnets become free. An agent restarted within the TTL adopts its still-live lease (no
write, peers see nothing). One back after the TTL asks for the subnets it remembers (its own
memory, then NodeClaim.previous_subnets from disk) and gets them unless another node took them
meanwhile; without either it still lands on the same subnet when the taken set is unchanged,
because its search starts at a position derived from its name (subnets.py).

Errors at this boundary: every requests/etcd3gw failure becomes DatastoreUnavailable (cannot
reach etcd, or etcd cannot serve: no leader, timeout) or DatastoreError (etcd refused the
request), raised from the original, naming the endpoint.

etcd3gw does the unary calls (range, txn, lease). The watch stream is read here on the client's
own transport instead of etcd3gw's watch(): that one drops the response header revision,
ignores a cancel for compaction and swallows a broken stream in a worker thread, and the
controller needs all three.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import queue
import random
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_exc

from ..spec.types import IPNetwork
from .model import (
    ClusterConfig,
    ClusterConfigError,
    DatastoreError,
    DatastoreUnavailable,
    NodeClaim,
    NodeRecord,
    NotReady,
    Snapshot,
    parse_cluster_config,
)
from .subnets import holder_of, plan_claim, snapshot_from_entries

log = logging.getLogger("pycni.cluster.etcd")

API_PATH = "/v3/"  # etcd >= 3.4 serves the gateway here; set, so no /version discovery round trip
DEFAULT_PORT = 2379
# Racing claimers: each lost round means another node won a subnet, so rounds are bounded by the
# number of racers; this only stops a pathological livelock.
MAX_CLAIM_ATTEMPTS = 20
WATCH_POLL = 0.1  # how often a waiting watch looks at `stop` (seconds)
WATCH_PROBE_INTERVAL = 10.0  # a silent watch asks etcd for its revision this often, to notice a dead peer

T = TypeVar("T")


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _unb64(data: str) -> bytes:
    return base64.b64decode(data)


def _prefix_end(prefix: str) -> str:
    """The range_end that selects every key starting with `prefix` (its last byte plus one)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return _b64(bytes(raw))


@dataclass(frozen=True)
class _KV:
    key: str
    value: bytes
    mod_revision: int
    lease: int


class _LeaseGone(DatastoreError):
    """A put named a lease etcd no longer has (it expired between our check and the write)."""


@dataclass
class _Held:
    claim: NodeClaim
    config: ClusterConfig
    record: NodeRecord


def _endpoint(text: str) -> tuple[str, str, int]:
    """"http://host:port" (or "host:port", "https://[v6]:port") -> (protocol, host, port)."""
    parts = urlsplit(text if "://" in text else f"http://{text}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an etcd endpoint (http[s]://host:port): {text!r}")
    return parts.scheme, parts.hostname, parts.port or DEFAULT_PORT


class EtcdDatastore:
    """The Datastore protocol on etcd v3 (several endpoints: the first that answers serves)."""

    def __init__(self, endpoints: list[str] | str, prefix: str = "/pycni", lease_ttl: int = 60,
                 timeout: float = 5.0, *, ca_cert: str | None = None, cert_cert: str | None = None,
                 cert_key: str | None = None) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("no etcd endpoints")
        if lease_ttl < 1:
            raise ValueError(f"lease_ttl must be at least 1 s, not {lease_ttl}")
        self.endpoints = [e.strip() for e in endpoints]
        self.prefix = "/" + prefix.strip("/")
        self.config_key = f"{self.prefix}/config"
        self.subnets_prefix = f"{self.prefix}/subnets/"
        self.lease_ttl = int(lease_ttl)
        self.timeout = timeout
        self.watch_probe_interval = WATCH_PROBE_INTERVAL
        self._clients = []
        for text in self.endpoints:
            protocol, host, port = _endpoint(text)
            self._clients.append(etcd3gw.client(
                host=host, port=port, protocol=protocol, timeout=timeout, api_path=API_PATH,
                ca_cert=ca_cert, cert_cert=cert_cert, cert_key=cert_key))
        self._current = 0  # the endpoint that answered last: asked first next time
        self._lock = threading.RLock()  # claim/renew/release change the lease and the held record
        self._lease = 0
        self._held: _Held | None = None
        self._closed = threading.Event()

    # --- the boundary: every call to etcd goes through here -----------------------------------

    def _call(self, what: str, op: Callable[[etcd3gw.Etcd3Client], T]) -> T:
        failures: list[str] = []
        last: Exception | None = None
        for offset in range(len(self._clients)):
            index = (self._current + offset) % len(self._clients)
            client, endpoint = self._clients[index], self.endpoints[index]
            try:
                result = op(client)
            except (etcd_exc.ConnectionFailedError, etcd_exc.ConnectionTimeoutError,
                    etcd_exc.InternalServerError, requests.RequestException) as exc:
                # Unreachable, or reachable but unable to serve (503 no leader, 504 timeout):
                # another member may do better.
                failures.append(f"{endpoint}: {_describe(exc)}")
                last = exc
                continue
            except etcd_exc.Etcd3Exception as exc:
                detail = _describe(exc)
                if "lease not found" in detail:
                    raise _LeaseGone(f"etcd at {endpoint}: {detail}") from exc
                raise DatastoreError(f"etcd at {endpoint} refused {what}: {detail}") from exc
            except (ValueError, KeyError, TypeError) as exc:  # a reply that is not what the API says
                raise DatastoreError(f"etcd at {endpoint}: unexpected reply to {what}: {exc}") from exc
            self._current = index
            return result
        raise DatastoreUnavailable(f"etcd unavailable ({what}): {'; '.join(failures)}") from last

    def _post(self, what: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call(what, lambda c: c.post(c.get_url(path), json=body))

    def _range(self, what: str, key: str, prefix: bool = False, **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"key": _b64(key), **extra}
        if prefix:
            body["range_end"] = _prefix_end(key)
        return self._post(what, "/kv/range", body)

    def _txn(self, what: str, txn: dict[str, Any]) -> dict[str, Any]:
        return self._post(what, "/kv/txn", txn)

    # --- config -------------------------------------------------------------------------------

    def cluster_config(self) -> ClusterConfig:
        reply = self._range("read the cluster config", self.config_key)
        kvs = reply.get("kvs") or []
        if not kvs:
            raise NotReady(f"no cluster config at {self.config_key} in etcd ({self._where()}); "
                           f"set one with `pycni cluster config set` or etcdctl put")
        raw = _unb64(kvs[0].get("value", ""))
        try:
            return parse_cluster_config(raw)
        except ClusterConfigError as exc:
            raise NotReady(f"cluster config at {self.config_key} is malformed: {exc}") from exc

    def set_cluster_config(self, config: ClusterConfig | Mapping[str, Any] | str | bytes) -> ClusterConfig:
        """Validate and store the cluster config (the operator's `pycni cluster config set`).

        ClusterConfigError (naming the key) when it does not validate; nothing is written then."""
        parsed = config if isinstance(config, ClusterConfig) else parse_cluster_config(
            dict(config) if isinstance(config, Mapping) else config)
        text = json.dumps(parsed.to_json(), indent=2)
        self._post("write the cluster config", "/kv/put", {"key": _b64(self.config_key), "value": _b64(text)})
        return parsed

    # --- subnet keys --------------------------------------------------------------------------

    def subnet_key(self, subnet: IPNetwork) -> str:
        return f"{self.subnets_prefix}{subnet.network_address}-{subnet.prefixlen}"

    def _subnet_of_key(self, key: str) -> IPNetwork:
        name = key[len(self.subnets_prefix):]
        address, _, length = name.rpartition("-")
        return ipaddress.ip_network(f"{address}/{length}", strict=True)

    def _list(self) -> tuple[dict[IPNetwork, _KV], list[str], int]:
        """Every subnet key: subnet -> KV, the keys that are not subnets, the revision."""
        reply = self._range("list the node subnets", self.subnets_prefix, prefix=True)
        held: dict[IPNetwork, _KV] = {}
        bad: list[str] = []
        for item in reply.get("kvs") or []:
            key = _unb64(item["key"]).decode(errors="replace")
            kv = _KV(key, _unb64(item.get("value", "")), int(item.get("mod_revision", 0)),
                     int(item.get("lease", 0)))
            try:
                held[self._subnet_of_key(key)] = kv
            except ValueError as exc:
                bad.append(f"{key}: not a subnet key ({exc})")
        return held, bad, int(reply["header"]["revision"])

    # --- claim --------------------------------------------------------------------------------

    def claim(self, claim: NodeClaim, config: ClusterConfig) -> NodeRecord:
        with self._lock:
            for attempt in range(1, MAX_CLAIM_ATTEMPTS + 1):
                try:
                    record = self._claim_once(claim, config)
                except _LeaseGone:
                    self._lease = 0  # expired between the check and the write: take a new one
                    continue
                if record is not None:
                    self._held = _Held(claim, config, record)
                    return record
                # Lost a race: another node took a subnet (or changed a key) since the read.
                time.sleep(random.uniform(0, 0.005 * attempt))
            raise DatastoreError(f"could not claim subnets for {claim.name} in {MAX_CLAIM_ATTEMPTS} "
                                 f"attempts: every transaction lost a race ({self._where()})")

    def _claim_once(self, claim: NodeClaim, config: ClusterConfig) -> NodeRecord | None:
        held, _, _ = self._list()
        holders = {subnet: holder_of(kv.value) for subnet, kv in held.items()}
        remembered = self._held.record.subnets if self._held and self._held.claim.name == claim.name else ()
        plan = plan_claim(claim.name, config, holders, (*remembered, *claim.previous_subnets))
        record = NodeRecord(name=claim.name, subnets=plan.subnets, addresses=claim.addresses,
                            vtep_mac=claim.vtep_mac.lower(), backend=claim.backend)
        value = json.dumps(record.to_json(), sort_keys=True).encode()
        mine = [held[s] for s in (*plan.subnets, *plan.drop) if holders.get(s) == claim.name]
        lease = self._live_lease([kv.lease for kv in mine])

        compare: list[dict[str, Any]] = []
        success: list[dict[str, Any]] = []
        for subnet in plan.subnets:
            key = self.subnet_key(subnet)
            kv = held.get(subnet)
            if kv is not None and holders[subnet] == claim.name:
                # Ours already: unchanged unless someone wrote it since we read it.
                compare.append({"key": _b64(key), "target": "MOD", "result": "EQUAL",
                                "mod_revision": kv.mod_revision})
                if kv.value == value and kv.lease == lease:
                    continue
            else:
                compare.append({"key": _b64(key), "target": "CREATE", "result": "EQUAL",
                                "create_revision": 0})
            success.append({"request_put": {"key": _b64(key), "value": _b64(value), "lease": lease}})
        for subnet in plan.drop:
            kv = held[subnet]
            compare.append({"key": _b64(kv.key), "target": "MOD", "result": "EQUAL",
                            "mod_revision": kv.mod_revision})
            success.append({"request_delete_range": {"key": _b64(kv.key)}})
        if not success:
            return record  # everything is as it should be: write nothing, peers see no event
        reply = self._txn(f"claim {', '.join(map(str, plan.subnets))} for {claim.name}",
                          {"compare": compare, "success": success, "failure": []})
        return record if reply.get("succeeded") else None

    def _live_lease(self, candidates: list[int]) -> int:
        """Our lease if it still lives, else one our keys hang on that still lives (an agent
        restarted within the TTL adopts its predecessor's), else a new one."""
        if self._lease and self._keepalive(self._lease) > 0:
            return self._lease
        for lease in dict.fromkeys(c for c in candidates if c and c != self._lease):
            if self._keepalive(lease) > 0:
                self._lease = lease
                return lease
        reply = self._post("grant a lease", "/lease/grant", {"TTL": self.lease_ttl, "ID": 0})
        self._lease = int(reply["ID"])
        return self._lease

    def _keepalive(self, lease: int) -> int:
        """Refresh a lease; its new TTL, or -1 when etcd no longer has it."""
        reply = self._post("refresh the lease", "/lease/keepalive", {"ID": lease})
        return int((reply.get("result") or {}).get("TTL", -1))

    # --- renew --------------------------------------------------------------------------------

    def renew(self) -> None:
        """Refresh the lease; claim again when it expired or a key of ours went missing.

        Before any claim this does nothing. After a re-claim the node's subnets are the same
        unless another node took them while ours were gone; `record` then says what they are."""
        with self._lock:
            held = self._held
            if held is None:
                return
            alive = self._lease != 0 and self._keepalive(self._lease) > 0
            if alive:
                reply = self._post("list the lease's keys", "/kv/lease/timetolive",
                                   {"ID": self._lease, "keys": True})
                attached = {_unb64(k).decode(errors="replace") for k in reply.get("keys") or []}
                if all(self.subnet_key(s) in attached for s in held.record.subnets):
                    return
                log.warning("etcd: keys of %s missing from lease %x; claiming again", held.claim.name, self._lease)
            else:
                log.warning("etcd: lease of %s expired; claiming %s again", held.claim.name,
                            ", ".join(map(str, held.record.subnets)))
                self._lease = 0
            record = self.claim(held.claim, held.config)
            if record.subnets != held.record.subnets:
                log.warning("etcd: %s now holds %s (was %s: taken while its lease was gone)",
                            held.claim.name, ", ".join(map(str, record.subnets)),
                            ", ".join(map(str, held.record.subnets)))

    @property
    def record(self) -> NodeRecord | None:
        """This node's record as last claimed (None before claim or after release)."""
        held = self._held
        return held.record if held else None

    # --- nodes and watch ----------------------------------------------------------------------

    def nodes(self) -> Snapshot:
        held, bad, revision = self._list()
        snapshot = snapshot_from_entries({s: kv.value for s, kv in held.items()}, str(revision))
        if bad:
            snapshot = Snapshot(snapshot.nodes, snapshot.revision, (*snapshot.skipped, *bad))
        return snapshot

    def current_revision(self) -> int:
        reply = self._range("read the revision", self.config_key, count_only=True)
        return int(reply["header"]["revision"])

    def watch(self, revision: str, stop: threading.Event, under: str = "") -> Iterator[str]:
        """Yield the revision of each batch of changes under the prefix after `revision` (node
        subnet keys, and the config: a changed config wakes the controller as well).

        Compaction (etcd no longer has `revision`): yield the current revision once, so the
        controller relists, and go on watching from there. A broken stream or an etcd that stops
        answering the idle probe: DatastoreUnavailable."""
        start = int(revision) + 1 if revision else self.current_revision() + 1
        while not stop.is_set() and not self._closed.is_set():
            stream = self._open_watch(start, under)
            try:
                for kind, rev in self._read_watch(stream, stop):
                    start = rev + 1
                    if kind == "compacted":
                        log.warning("etcd: watch revision %s compacted; relist at %s", revision, rev)
                    yield str(rev)
                    if kind == "compacted":
                        break  # reopen from the current revision
                else:
                    return  # stopped
            finally:
                stream.close()

    def _open_watch(self, start: int, under: str = "") -> _WatchStream:
        # The whole prefix: subnet keys and the config, so a config change wakes the controller too.
        key = under or self.prefix + "/"
        body = {"create_request": {"key": _b64(key), "range_end": _prefix_end(key), "start_revision": start}}

        def op(client: etcd3gw.Etcd3Client) -> _WatchStream:
            return _WatchStream(client, body, self.timeout)

        return self._call("watch the node subnets", op)

    def _read_watch(self, stream: _WatchStream, stop: threading.Event) -> Iterator[tuple[str, int]]:
        last_heard = time.monotonic()
        while not stop.is_set() and not self._closed.is_set():
            try:
                message = stream.messages.get(timeout=WATCH_POLL)
            except queue.Empty:
                if time.monotonic() - last_heard >= self.watch_probe_interval:
                    self.current_revision()  # DatastoreUnavailable when etcd is gone silently
                    last_heard = time.monotonic()
                continue
            last_heard = time.monotonic()
            if isinstance(message, BaseException):
                raise DatastoreUnavailable(
                    f"etcd watch stream from {stream.endpoint} broke: {_describe(message)}") from message
            if "error" in message:
                raise DatastoreUnavailable(f"etcd watch from {stream.endpoint} failed: {message['error']}")
            result = message.get("result") or {}
            if result.get("canceled"):
                if result.get("compact_revision"):
                    yield "compacted", self.current_revision()
                    return
                reason = result.get("cancel_reason", "no reason given")
                raise DatastoreUnavailable(f"etcd at {stream.endpoint} cancelled the watch: {reason}")
            if result.get("events"):
                yield "events", int(result["header"]["revision"])

    # --- plain keys under the prefix (the policy objects of etcd_policy.py) --------------------

    def get_prefix(self, key: str) -> tuple[list[tuple[str, bytes]], int]:
        """Every (key, value) starting with `key`, and the revision they were read at."""
        reply = self._range(f"list {key}", key, prefix=True)
        items = [(_unb64(i["key"]).decode(errors="replace"), _unb64(i.get("value", "")))
                 for i in reply.get("kvs") or []]
        return items, int(reply["header"]["revision"])

    def write_keys(self, puts: Mapping[str, bytes], deletes: Iterable[str] = ()) -> int:
        """Put and delete keys in ONE transaction (all or nothing); the revision it made."""
        ops: list[dict[str, Any]] = [{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in puts.items()]
        ops += [{"request_delete_range": {"key": _b64(k)}} for k in deletes]
        if not ops:
            return self.current_revision()
        reply = self._txn(f"write {len(ops)} keys", {"compare": [], "success": ops, "failure": []})
        return int(reply["header"]["revision"])

    # --- release and close --------------------------------------------------------------------

    def release(self) -> None:
        """Delete this node's subnet keys and revoke its lease (the node leaves for good)."""
        with self._lock:
            held = self._held
            if held is None:
                return
            self.forget(held.claim.name)
            if self._lease:
                try:
                    self._post("revoke the lease", "/kv/lease/revoke", {"ID": self._lease})
                except _LeaseGone:
                    pass  # already expired: nothing to revoke
            self._lease = 0
            self._held = None

    def forget(self, name: str) -> int:
        """Delete every subnet key node `name` holds, now (an operator removing a node that is gone
        for good, instead of waiting one lease TTL); returns how many went. A key that changes
        while this runs is read again, so a claim racing it is never deleted by mistake."""
        for _ in range(MAX_CLAIM_ATTEMPTS):
            keys, _, _ = self._list()
            doomed = [kv for kv in keys.values() if holder_of(kv.value) == name]
            if not doomed:
                return 0
            reply = self._txn(f"release the subnets of {name}", {
                "compare": [{"key": _b64(kv.key), "target": "MOD", "result": "EQUAL",
                             "mod_revision": kv.mod_revision} for kv in doomed],
                "success": [{"request_delete_range": {"key": _b64(kv.key)}} for kv in doomed],
                "failure": []})
            if reply.get("succeeded"):
                return len(doomed)
        raise DatastoreError(f"the subnets of {name} kept changing; try again")

    def close(self) -> None:
        """Stop watches and drop connections. The claim stays: it lives until the lease TTL runs
        out, so an agent restarted within it keeps its subnets without peers noticing."""
        self._closed.set()
        for client in self._clients:
            client.session.close()

    def _where(self) -> str:
        return ", ".join(self.endpoints)


class _WatchStream:
    """One open gateway watch: a reader thread turns the newline-delimited JSON into messages
    (dicts), ending with the exception that ended the stream."""

    def __init__(self, client: etcd3gw.Etcd3Client, body: dict[str, Any], timeout: float) -> None:
        self.endpoint = client.base_url
        # A session of its own: closing its socket to end the watch touches no pooled connection.
        self._session = requests.Session()
        self._session.verify = client.session.verify
        self._session.cert = client.session.cert
        self.messages: queue.Queue[dict[str, Any] | BaseException] = queue.Queue()
        try:
            # connect timeout only: the stream is silent for as long as nothing changes
            self._response = self._session.post(client.get_url("/watch"), json=body, stream=True,
                                                timeout=(timeout, None))
        except requests.RequestException as exc:
            self._session.close()
            raise etcd_exc.ConnectionFailedError(str(exc)) from exc
        if self._response.status_code != 200:
            text = self._response.text
            self._response.close()
            self._session.close()
            raise etcd_exc.Etcd3Exception(text, self._response.reason)
        self._thread = threading.Thread(target=self._read, name="pycni-etcd-watch", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        buffer = b""
        try:
            for chunk in self._response.iter_content(chunk_size=None):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self.messages.put(json.loads(line))
            raise ConnectionError("etcd closed the watch stream")
        except Exception as exc:  # noqa: BLE001 - handed to the reader, which raises it as DatastoreUnavailable
            self.messages.put(exc)

    def close(self) -> None:
        # Shut the socket down so the reader thread's blocking read returns now.
        connection = getattr(self._response.raw, "connection", None)
        sock = getattr(connection, "sock", None)
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._response.close()
        self._session.close()


def _describe(exc: BaseException) -> str:
    detail = getattr(exc, "detail_text", None)
    if detail:
        try:
            parsed = json.loads(detail)
            return str(parsed.get("message") or parsed.get("error") or detail)
        except (ValueError, AttributeError):
            return str(detail)
    return str(exc) or type(exc).__name__
