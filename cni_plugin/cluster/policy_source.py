"""Where the policy controller reads NetworkPolicy, ANP, BANP, Pod and Namespace objects from.

One seam (PolicySource), as the node datastore has, and three implementations:

    EtcdPolicyStore        (this module) the Kubernetes JSON objects in etcd, written by
                           `pycni apply -f` / `pycni delete -f`; pods' addresses from the
                           attachments every node's agent publishes
    KubernetesPolicySource (kubernetes.py) list + watch of the API's own objects
    MemoryPolicySource     (this module) the in-memory twin for tests

etcd key layout under the prefix (default /pycni):

    <prefix>/policy/<kind>/<namespace>/<name>      one object, its Kubernetes JSON as applied
        kind: networkpolicy | pod | namespace | adminnetworkpolicy | baselineadminnetworkpolicy
        namespace: "-" for the cluster-scoped kinds (no namespace name can be "-")
    <prefix>/policy/attachment/<node>/<containerID>-<ifname>
        a pod attachment as the bridge plugin recorded it on that node (attachments.py), with
        "node" added; written and pruned by that node's agent, read by every agent (a peer pod's
        addresses)

Level-triggered, as the node datastore: watch() only says "something may have changed"; the
controller then reads the whole snapshot again.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from .model import DatastoreError

KINDS = {
    "NetworkPolicy": "networkpolicy",
    "Pod": "pod",
    "Namespace": "namespace",
    "AdminNetworkPolicy": "adminnetworkpolicy",
    "BaselineAdminNetworkPolicy": "baselineadminnetworkpolicy",
}
NAMESPACED = {"NetworkPolicy", "Pod"}
CLUSTER_SCOPED = "-"
ATTACHMENT = "attachment"


@dataclass(frozen=True)
class PolicySnapshot:
    """Every policy-relevant object (raw Kubernetes JSON) and every published attachment."""

    objects: tuple[dict[str, Any], ...]
    attachments: tuple[dict[str, Any], ...] = ()
    revision: str = ""
    skipped: tuple[str, ...] = field(default=())


class PolicySource(Protocol):
    def snapshot(self) -> PolicySnapshot:
        """Everything, at one revision. DatastoreUnavailable when unreachable."""
        ...

    def watch(self, revision: str, stop: threading.Event) -> Iterator[str]:
        """Yield whenever the objects may have changed after `revision`; return when `stop` is set."""
        ...

    def publish_attachments(self, node: str, records: list[dict[str, Any]]) -> None:
        """Make this node's attachments visible to every node (etcd); a no-op where the source
        knows pods' addresses itself (Kubernetes: status.podIPs)."""
        ...

    def close(self) -> None: ...


def object_key(prefix: str, obj: Mapping[str, Any]) -> str:
    """The etcd key of a (validated) object."""
    kind = str(obj.get("kind"))
    meta = obj.get("metadata") or {}
    ns = (meta.get("namespace") or "default") if kind in NAMESPACED else CLUSTER_SCOPED
    return f"{prefix}/policy/{KINDS[kind]}/{ns}/{meta['name']}"


def attachment_key(prefix: str, node: str, record: Mapping[str, Any]) -> str:
    return f"{prefix}/policy/{ATTACHMENT}/{node}/{record['containerID']}-{record['ifname']}"


def with_namespace(obj: dict[str, Any], default_namespace: str) -> dict[str, Any]:
    """A namespaced object as stored: metadata.namespace filled in (kubectl's default)."""
    if obj.get("kind") in NAMESPACED and not (obj.get("metadata") or {}).get("namespace"):
        obj = {**obj, "metadata": {**(obj.get("metadata") or {}), "namespace": default_namespace}}
    return obj


class EtcdPolicyStore:
    """PolicySource on etcd, and the writes of `pycni apply` / `pycni delete`."""

    # etcd's default --max-txn-ops: a file of more objects is written in several transactions
    # (each validated object set is complete before the first is written).
    MAX_TXN_OPS = 128

    def __init__(self, store: Any) -> None:
        self.store = store  # an EtcdDatastore (its connection, errors and watch)
        self.prefix = store.prefix
        self.root = f"{self.prefix}/policy/"

    def snapshot(self) -> PolicySnapshot:
        items, revision = self.store.get_prefix(self.root)
        objects, records, skipped = [], [], []
        attach_root = f"{self.root}{ATTACHMENT}/"
        for key, value in items:
            try:
                doc = json.loads(value)
            except ValueError as exc:
                skipped.append(f"{key}: not JSON ({exc})")
                continue
            if not isinstance(doc, dict):
                skipped.append(f"{key}: not an object")
            elif key.startswith(attach_root):
                records.append(doc)
            else:
                objects.append(doc)
        return PolicySnapshot(tuple(objects), tuple(records), str(revision), tuple(skipped))

    def watch(self, revision: str, stop: threading.Event) -> Iterator[str]:
        return self.store.watch(revision, stop, under=self.root)  # type: ignore[no-any-return]

    def publish_attachments(self, node: str, records: list[dict[str, Any]]) -> None:
        """Bring `<prefix>/policy/attachment/<node>/` to exactly `records` (only what differs)."""
        mine = f"{self.root}{ATTACHMENT}/{node}/"
        items, _ = self.store.get_prefix(mine)
        have = dict(items)
        want = {attachment_key(self.prefix, node, r): json.dumps({**r, "node": node}, sort_keys=True).encode()
                for r in records}
        puts = {k: v for k, v in want.items() if have.get(k) != v}
        gone = [k for k in have if k not in want]
        if puts or gone:
            self.store.write_keys(puts, gone)

    def apply(self, objects: Iterable[dict[str, Any]], default_namespace: str = "default") -> list[str]:
        """Store validated objects (create or replace); the keys written."""
        puts = {}
        for obj in objects:
            obj = with_namespace(obj, default_namespace)
            puts[object_key(self.prefix, obj)] = json.dumps(obj, sort_keys=True).encode()
        self._chunked(puts, [])
        return list(puts)

    def delete(self, objects: Iterable[dict[str, Any]], default_namespace: str = "default") -> list[str]:
        """Delete the objects' keys; the keys that existed."""
        keys = [object_key(self.prefix, with_namespace(o, default_namespace)) for o in objects]
        items, _ = self.store.get_prefix(self.root)
        present = {k for k, _ in items}
        found = [k for k in keys if k in present]
        self._chunked({}, found)
        return found

    def _chunked(self, puts: dict[str, bytes], deletes: list[str]) -> None:
        ops: list[tuple[str, bytes | None]] = [*puts.items(), *((k, None) for k in deletes)]
        for i in range(0, len(ops), self.MAX_TXN_OPS):
            part = ops[i:i + self.MAX_TXN_OPS]
            self.store.write_keys({k: v for k, v in part if v is not None}, [k for k, v in part if v is None])

    def close(self) -> None:
        self.store.close()


class MemoryPolicySource:
    """The in-memory twin: tests set objects and the controller sees them as from a datastore."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._objects: dict[str, dict[str, Any]] = {}
        self._attachments: dict[str, dict[str, Any]] = {}
        self._revision = 1
        self.unavailable = False

    def put(self, *objects: dict[str, Any]) -> int:
        with self._cond:
            for obj in objects:
                self._objects[object_key("", with_namespace(obj, "default"))] = json.loads(json.dumps(obj))
            return self._bump()

    def remove(self, *objects: dict[str, Any]) -> int:
        with self._cond:
            for obj in objects:
                self._objects.pop(object_key("", with_namespace(obj, "default")), None)
            return self._bump()

    def clear(self, kind: str | None = None) -> int:
        with self._cond:
            for key in [k for k, o in self._objects.items() if kind is None or o.get("kind") == kind]:
                del self._objects[key]
            return self._bump()

    def _bump(self) -> int:
        self._revision += 1
        self._cond.notify_all()
        return self._revision

    @property
    def revision(self) -> int:
        with self._cond:
            return self._revision

    def snapshot(self) -> PolicySnapshot:
        with self._cond:
            if self.unavailable:
                from .model import DatastoreUnavailable

                raise DatastoreUnavailable("memory: unavailable (test)")
            return PolicySnapshot(tuple(self._objects.values()), tuple(self._attachments.values()),
                                  str(self._revision))

    def watch(self, revision: str, stop: threading.Event) -> Iterator[str]:
        seen = int(revision or 0)
        while not stop.is_set():
            with self._cond:
                if self._revision <= seen:
                    self._cond.wait(0.1)
                if self._revision > seen:
                    seen = self._revision
                    current: int | None = seen
                else:
                    current = None
            if current is not None:
                yield str(current)

    def publish_attachments(self, node: str, records: list[dict[str, Any]]) -> None:
        with self._cond:
            before = {k: v for k, v in self._attachments.items() if v.get("node") == node}
            want = {attachment_key("", node, r): {**r, "node": node} for r in records}
            if before != want:
                for k in before:
                    del self._attachments[k]
                self._attachments.update(want)
                self._bump()

    def close(self) -> None:
        pass


__all__ = ["DatastoreError", "EtcdPolicyStore", "MemoryPolicySource", "PolicySnapshot", "PolicySource"]
