"""MemoryDatastore: the Datastore twin for the controller's unit tests, with etcd's semantics.

One MemoryBackend plays the etcd cluster; each MemoryDatastore on it plays one node's agent. The
same rules as EtcdDatastore hold (one holder per subnet, keys live as long as their node's lease,
a revision that moves on every change, watch wakes on it), so a controller test written against
the twin behaves the same on etcd. The backend has the levers a test needs:

    backend = MemoryBackend(config=cfg, clock=fake_clock)
    a, b = MemoryDatastore(backend), MemoryDatastore(backend)
    a.claim(NodeClaim("a", addrs), cfg)          # a node joins
    backend.put_record(peer_record)              # a peer appears (no lease: it never expires)
    backend.remove_node("b")                     # a peer leaves
    backend.expire("a")                          # a's lease runs out: its keys go, its renew() re-claims
    backend.outage()                             # every call raises DatastoreUnavailable ...
    backend.restore()                            # ... until this

Leases run on `clock` (time.monotonic by default): a fake clock moved past lease_ttl expires a node
that did not renew, as etcd would.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ..spec.types import IPNetwork
from .model import (
    ClusterConfig,
    ClusterConfigError,
    DatastoreUnavailable,
    NodeClaim,
    NodeRecord,
    NotReady,
    Snapshot,
    parse_cluster_config,
)
from .subnets import holder_of, plan_claim, snapshot_from_entries

WATCH_POLL = 0.02  # how often a watch re-checks stop and the clock (seconds)


@dataclass(frozen=True)
class _Entry:
    value: str  # the record as stored (JSON text; a test may store garbage)
    lease: int  # 0: no lease (never expires)


class MemoryBackend:
    """The shared store: config, one entry per held subnet, leases, a revision."""

    def __init__(self, config: ClusterConfig | dict[str, Any] | str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._cond = threading.Condition()
        self._clock = clock
        self._config: str | None = None
        self._keys: dict[IPNetwork, _Entry] = {}
        self._leases: dict[int, float] = {}  # lease id -> expiry on clock
        self._lease_ids = itertools.count(1)
        self._outage: str | None = None
        self.revision = 1
        if config is not None:
            self.set_config(config)

    # --- levers for tests --------------------------------------------------------------------

    def set_config(self, config: ClusterConfig | dict[str, Any] | str | None) -> None:
        """The cluster config: a ClusterConfig, a dict, raw text (may be malformed), or None (absent)."""
        with self._cond:
            if config is None or isinstance(config, str):
                self._config = config
            else:
                data = config.to_json() if isinstance(config, ClusterConfig) else config
                self._config = json.dumps(data)
            self._bump()

    def put_record(self, record: NodeRecord) -> None:
        """A peer's record under each of its subnets, without a lease (it stays until removed)."""
        with self._cond:
            for subnet in record.subnets:
                self._keys[subnet] = _Entry(json.dumps(record.to_json()), 0)
            self._bump()

    def put_raw(self, subnet: IPNetwork, value: str) -> None:
        """Store any text under a subnet (an unreadable peer record)."""
        with self._cond:
            self._keys[subnet] = _Entry(value, 0)
            self._bump()

    def remove_node(self, name: str) -> None:
        """A peer leaves: every key whose record names it goes."""
        with self._cond:
            self._delete([s for s, e in self._keys.items() if holder_of(e.value) == name])

    def expire(self, name: str) -> None:
        """The lease of every key of node `name` runs out now (the node was away longer than the TTL)."""
        with self._cond:
            leases = {e.lease for e in self._keys.values() if holder_of(e.value) == name and e.lease}
            for lease in leases:
                self._leases[lease] = float("-inf")
            self._expire_due()

    def outage(self, reason: str = "memory datastore is down (test outage)") -> None:
        with self._cond:
            self._outage = reason
            self._cond.notify_all()

    def restore(self) -> None:
        with self._cond:
            self._outage = None
            self._cond.notify_all()

    def holders(self) -> dict[IPNetwork, str]:
        """Who holds what now (subnet -> node name, "" for an unreadable record)."""
        with self._cond:
            self._expire_due()
            return {s: holder_of(e.value) for s, e in self._keys.items()}

    # --- what the datastores use (callers hold self._cond via _enter) ------------------------

    @contextmanager
    def _enter(self) -> Iterator[threading.Condition]:
        with self._cond:
            if self._outage is not None:
                raise DatastoreUnavailable(self._outage)
            self._expire_due()
            yield self._cond

    def _bump(self) -> None:
        self.revision += 1
        self._cond.notify_all()

    def _delete(self, subnets: list[IPNetwork]) -> None:
        for subnet in subnets:
            del self._keys[subnet]
        if subnets:
            self._bump()

    def _expire_due(self) -> None:
        now = self._clock()
        dead = {lease for lease, expiry in self._leases.items() if expiry <= now}
        if not dead:
            return
        for lease in dead:
            del self._leases[lease]
        self._delete([s for s, e in self._keys.items() if e.lease in dead])

    def _grant(self, ttl: float) -> int:
        lease = next(self._lease_ids)
        self._leases[lease] = self._clock() + ttl
        return lease

    def _refresh(self, lease: int, ttl: float) -> bool:
        if lease not in self._leases:
            return False
        self._leases[lease] = self._clock() + ttl
        return True


class _Held:
    """What one datastore remembers of its node's claim."""

    def __init__(self, claim: NodeClaim, config: ClusterConfig, record: NodeRecord) -> None:
        self.claim = claim
        self.config = config
        self.record = record


class MemoryDatastore:
    """One node's view of a MemoryBackend; the Datastore protocol."""

    def __init__(self, backend: MemoryBackend | None = None, lease_ttl: float = 60.0) -> None:
        self.backend = backend if backend is not None else MemoryBackend()
        self.lease_ttl = lease_ttl
        self._lease = 0
        self._held: _Held | None = None

    @property
    def record(self) -> NodeRecord | None:
        """This node's record as last claimed (None before claim or after release)."""
        return self._held.record if self._held else None

    def cluster_config(self) -> ClusterConfig:
        with self.backend._enter():
            raw = self.backend._config
        if raw is None:
            raise NotReady("no cluster config in the memory datastore")
        try:
            return parse_cluster_config(raw)
        except ClusterConfigError as exc:
            raise NotReady(f"cluster config is malformed: {exc}") from exc

    def claim(self, claim: NodeClaim, config: ClusterConfig) -> NodeRecord:
        b = self.backend
        with b._enter():
            holders = {s: holder_of(e.value) for s, e in b._keys.items()}
            remembered = self._held.record.subnets if self._held and self._held.claim.name == claim.name else ()
            preferred = (*remembered, *claim.previous_subnets)
            plan = plan_claim(claim.name, config, holders, preferred)
            record = NodeRecord(name=claim.name, subnets=plan.subnets, addresses=claim.addresses,
                                vtep_mac=claim.vtep_mac.lower(), backend=claim.backend)
            if not b._refresh(self._lease, self.lease_ttl):
                self._lease = b._grant(self.lease_ttl)
            value = json.dumps(record.to_json())
            changed = bool(plan.drop)
            for subnet in plan.drop:
                del b._keys[subnet]
            for subnet in plan.subnets:
                entry = _Entry(value, self._lease)
                if b._keys.get(subnet) != entry:
                    b._keys[subnet] = entry
                    changed = True
            if changed:
                b._bump()
            self._held = _Held(claim, config, record)
            return record

    def renew(self) -> None:
        """Refresh the lease; when it is gone (expired) or a key is missing, claim again."""
        if self._held is None:
            return  # nothing claimed yet: nothing to keep alive
        b = self.backend
        with b._enter():
            alive = b._refresh(self._lease, self.lease_ttl)
            intact = alive and all(
                s in b._keys and b._keys[s].lease == self._lease for s in self._held.record.subnets)
        if not intact:
            self.claim(self._held.claim, self._held.config)

    def nodes(self) -> Snapshot:
        with self.backend._enter():
            entries = dict(self.backend._keys)
            revision = self.backend.revision
        return snapshot_from_entries({s: e.value for s, e in entries.items()}, str(revision))

    def watch(self, revision: str, stop: threading.Event) -> Iterator[str]:
        b = self.backend
        seen = int(revision) if revision else None
        while not stop.is_set():
            with b._enter() as cond:
                if seen is None:
                    seen = b.revision
                current = b.revision
                if current <= seen:
                    cond.wait(WATCH_POLL)
                    continue
            seen = current
            yield str(current)

    def release(self) -> None:
        b = self.backend
        if self._held is None:
            return
        with b._enter():
            name = self._held.claim.name
            b._delete([s for s, e in b._keys.items() if holder_of(e.value) == name])
            b._leases.pop(self._lease, None)
        self._lease = 0
        self._held = None

    def close(self) -> None:
        pass
