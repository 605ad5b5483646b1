"""The cluster controller: one loop in pycni-agent that keeps this node's data path true to the datastore.

    claim      get (or keep) this node's subnet(s) and publish its address and VTEP MAC
    list       every node's record
    plan       desired = plan(config, me, nodes, local facts)               (pure, plan.py)
    apply      diff against what pycni tagged in the kernel, apply the rest, and the masquerade
               of traffic leaving the cluster CIDR                           (dataplane.py)
    conflist   the node's conflist on its subnet, written atomically          (conflist.py)
    status     the status file `pycni cluster status` and bridge STATUS read  (status.py)

It runs on start, on every datastore event (a watcher thread only sets a flag: the loop relists
the whole snapshot, so merged or missed events cannot leave the data path wrong), and every
`resync_interval` seconds. A datastore outage keeps the data path as it is: nothing is applied
from a snapshot that could not be read, and the loop catches up when the datastore returns.
Killing the agent loses nothing: the kernel keeps routes, FDB and neighbours, and the next agent
claims the same subnets (remembered in the state dir) and reconciles against them.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from ..spec.types import IPAddress, IPNetwork
from . import conflist, status
from .model import (
    ClusterConfig,
    Datastore,
    DatastoreError,
    DatastoreUnavailable,
    NodeClaim,
    NodeRecord,
    Snapshot,
)

log = logging.getLogger("pycni.cluster")

BACKOFF_START = 0.5
BACKOFF_MAX = 30.0
BGP_STATUS_REFRESH = 2.0  # seconds between looks at BIRD's sessions for the status file
STATE_FILE = "subnets.json"


class DataplanePort(Protocol):
    """What the controller needs of dataplane.Dataplane (a recording fake in the unit tests)."""

    def local_facts(self, node_address: IPAddress) -> Any: ...

    def apply(self, desired: Any) -> Any: ...


@dataclass(frozen=True)
class ControllerSettings:
    node_name: str
    node_addresses: tuple[IPAddress, ...]
    conf_dir: str = "/etc/cni/net.d"
    conf_file: str = conflist.DEFAULT_FILE_NAME
    conflist: conflist.ConflistSettings = field(default_factory=conflist.ConflistSettings)
    state_dir: str = "/var/lib/pycni/cluster"
    status_file: str = status.DEFAULT_STATUS_FILE
    resync_interval: float = 30.0
    renew_interval: float = 20.0
    datastore_name: str = "etcd"
    metrics_listen: str = ""  # HOST:PORT, or "" for no metrics endpoint

    @property
    def conf_path(self) -> str:
        return os.path.join(self.conf_dir, self.conf_file)


def _backoff(attempt: int) -> float:
    return min(BACKOFF_MAX, BACKOFF_START * (2 ** min(attempt, 10)))


class Controller:
    def __init__(
        self,
        store: Datastore,
        settings: ControllerSettings,
        dataplane: DataplanePort,
        planner: Callable[..., Any] | None = None,
        vtep_mac: Callable[[str], str] | None = None,
    ) -> None:
        if planner is None or vtep_mac is None:
            from . import plan as plan_module

            planner = planner or plan_module.plan
            vtep_mac = vtep_mac or plan_module.vtep_mac
        self.store = store
        self.settings = settings
        self.dataplane = dataplane
        self.planner = planner
        self.vtep_mac = vtep_mac
        self.stop_event = threading.Event()
        self.dirty = threading.Event()
        self.config: ClusterConfig | None = None
        self.me: NodeRecord | None = None
        self.revision = ""
        self.ready = False
        self.reachable = False
        self.last_sync = 0.0
        self.last_error = ""
        self.last_report: Any = None
        self.peers: list[dict[str, Any]] = []
        self.snapshot: Snapshot | None = None
        self.reconciles = 0
        self._threads: list[threading.Thread] = []
        self._last_renew = 0.0
        self._metrics: Any = None
        self._bgp: Any = None  # bgp.BgpBackend while the backend is bgp
        self._bgp_reported: Any = None  # its status() as last written to the status file

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._restore_ready()
        if self.settings.metrics_listen:
            from . import metrics

            self._metrics = metrics.serve(self.settings.metrics_listen, self.status)
        main = threading.Thread(target=self.run, name="pycni-cluster", daemon=True)
        self._threads = [main]
        main.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.dirty.set()
        if self._metrics is not None:
            self._metrics.shutdown()
        if self._bgp is not None:
            self._bgp.detach()  # BIRD keeps its sessions and routes; the next agent adopts it
        for thread in self._threads:
            thread.join(timeout)
        try:
            self.store.close()
        except Exception:  # noqa: BLE001 - closing a client on the way out
            log.debug("closing the datastore failed", exc_info=True)

    def run(self) -> None:
        """Claim, then reconcile on events and on the timer, until stop()."""
        if not self._claim_until_done():
            return
        watcher = threading.Thread(target=self._watch_loop, name="pycni-cluster-watch", daemon=True)
        self._threads.append(watcher)
        watcher.start()
        attempt = 0
        while not self.stop_event.is_set():
            ok = self.reconcile()
            attempt = 0 if ok else attempt + 1
            wait = self.settings.resync_interval if ok else min(self.settings.resync_interval, _backoff(attempt))
            wait = min(wait, max(0.1, self.settings.renew_interval - (time.monotonic() - self._last_renew)))
            self._wait_for_work(wait)
            self.dirty.clear()

    def _wait_for_work(self, wait: float) -> None:
        """Until the next pass is due: an event (dirty) or `wait` seconds. While BIRD runs, its
        session states go into the status file meanwhile: they change with no datastore event, and
        `pycni cluster status` would show a session Active for a whole resync interval after it
        came up (or Established after it went down)."""
        deadline = time.monotonic() + wait
        while not self.stop_event.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            step = remaining if self._bgp is None else min(remaining, BGP_STATUS_REFRESH)
            if self.dirty.wait(step):
                return
            self.refresh_bgp_status()

    def refresh_bgp_status(self) -> bool:
        """Rewrite the status file when BIRD's sessions changed since it was last written; True then."""
        if self._bgp is None:
            return False
        try:
            current = self._bgp.status()
        except Exception:  # noqa: BLE001 - a status refresh never stops the loop
            log.debug("reading BIRD's sessions failed", exc_info=True)
            return False
        if current == self._bgp_reported:
            return False
        self._publish_status(self.last_error)
        return True

    # --- claim ---------------------------------------------------------------------------------

    def _state_path(self) -> str:
        return os.path.join(self.settings.state_dir, STATE_FILE)

    def remembered_subnets(self) -> tuple[IPNetwork, ...]:
        try:
            with open(self._state_path(), "rb") as handle:
                data = json.loads(handle.read())
            if data.get("node") != self.settings.node_name:
                return ()
            return tuple(ipaddress.ip_network(s) for s in data.get("subnets", []))
        except (OSError, ValueError, AttributeError):
            return ()

    def _remember(self, record: NodeRecord) -> None:
        document = {"node": record.name, "subnets": [str(s) for s in record.subnets]}
        conflist.write_atomic(self._state_path(), (json.dumps(document) + "\n").encode(), mode=0o600)

    def _restore_ready(self) -> None:
        """After a restart: a node whose conflist is on disk for its remembered subnets stays ready
        while the datastore is being reached (the data path is the kernel's; nothing changed)."""
        subnets = self.remembered_subnets()
        self.ready = bool(subnets) and os.path.exists(self.settings.conf_path)
        self._publish_status("restarted; claiming the remembered subnets" if self.ready else "claiming a subnet")

    def claim(self) -> NodeRecord:
        config = self.store.cluster_config()
        backend = config.backend
        mac = self.vtep_mac(self.settings.node_name) if backend in ("vxlan", "auto") else ""
        record = self.store.claim(
            NodeClaim(
                name=self.settings.node_name,
                addresses=self.settings.node_addresses,
                vtep_mac=mac,
                backend=backend,
                previous_subnets=self.remembered_subnets(),
            ),
            config,
        )
        self._remember(record)
        self.config, self.me = config, record
        self._last_renew = time.monotonic()
        log.info("node %s holds %s (%s)", record.name, ", ".join(map(str, record.subnets)), backend)
        return record

    def _claim_until_done(self) -> bool:
        attempt = 0
        while not self.stop_event.is_set():
            try:
                self.claim()
                self.reachable = True
                return True
            except DatastoreUnavailable as exc:
                self.reachable = False
                self.last_error = str(exc)
            except DatastoreError as exc:  # NotReady, SubnetExhausted: the operator's to fix
                self.reachable = True
                self.last_error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # noqa: BLE001 - the agent keeps serving plugins whatever happens here
                log.exception("claim failed")
                self.last_error = f"{type(exc).__name__}: {exc}"
            self._publish_status(self.last_error)
            # Never wait longer than one resync: a node waiting for its config or its podCIDR
            # becomes ready within one resync of the operator setting it.
            self.stop_event.wait(min(self.settings.resync_interval, _backoff(attempt)))
            attempt += 1
        return False

    # --- watch ---------------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        attempt = 0
        while not self.stop_event.is_set():
            try:
                for revision in self.store.watch(self.revision, self.stop_event):
                    attempt = 0
                    self.dirty.set()
                    if revision == "":
                        log.info("the datastore asked for a relist")
                if self.stop_event.is_set():
                    return
            except DatastoreError as exc:
                log.warning("watch broke: %s", exc)
            except Exception:  # noqa: BLE001 - never let the watcher die; the timer still resyncs
                log.exception("watch failed")
            self.dirty.set()  # whatever was missed while the stream was down
            self.stop_event.wait(_backoff(attempt))
            attempt += 1

    # --- reconcile -----------------------------------------------------------------------------

    def reconcile(self) -> bool:
        """One pass; True when the snapshot was read and applied. Never raises."""
        try:
            self._renew_if_due()
            config = self.store.cluster_config()
            if config != self.config or self.me is None or not self._still_mine(config):
                self.claim()
                config = self.config or config
            snapshot = self.store.nodes()
            self.reachable = True
            # The watcher resumes from what was listed, applied or not: a failing apply must not
            # leave it watching from a revision the datastore has compacted away.
            self.revision = snapshot.revision or self.revision
        except DatastoreUnavailable as exc:
            self.reachable = False
            self.last_error = f"datastore unreachable, data path kept as it is: {exc}"
            self._publish_status(self.last_error)
            return False
        except DatastoreError as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._publish_status(self.last_error)
            return False
        except Exception as exc:  # noqa: BLE001
            log.exception("reconcile failed before apply")
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._publish_status(self.last_error)
            return False
        try:
            self._apply(config, snapshot)
        except Exception as exc:  # noqa: BLE001 - reported in the status; retried on the next pass
            log.exception("apply failed")
            self.last_error = f"apply failed: {type(exc).__name__}: {exc}"
            self._publish_status(self.last_error)
            return False
        self.last_error = ""
        self.last_sync = time.time()
        self.reconciles += 1
        self._publish_status("")
        return True

    def _renew_if_due(self) -> None:
        if time.monotonic() - self._last_renew >= self.settings.renew_interval:
            self.store.renew()
            self._last_renew = time.monotonic()

    def _still_mine(self, config: ClusterConfig) -> bool:
        me = self.me
        return me is not None and all(any(s.subnet_of(c) for c in config.cluster_cidrs if c.version == s.version)  # type: ignore[arg-type]
                                      for s in me.subnets)

    def _apply(self, config: ClusterConfig, snapshot: Snapshot) -> None:
        assert self.me is not None
        listed = next((n for n in snapshot.nodes if n.name == self.me.name), None)
        if listed is not None and listed.subnets != self.me.subnets:
            # renew() had to claim again after the lease was lost and someone else took the old
            # subnet: the new one is ours now (the conflist below follows it).
            log.warning("node %s moved from %s to %s", listed.name, ", ".join(map(str, self.me.subnets)),
                        ", ".join(map(str, listed.subnets)))
            self._remember(listed)
            self.me = listed
        me = listed or self.me
        address = self.settings.node_addresses[0]
        facts = self.dataplane.local_facts(address)
        desired = self.planner(config, me, snapshot.nodes, facts)
        self.last_report = self.dataplane.apply(desired)  # routes, FDB, neighbours, masquerade
        self._sync_bgp(config, me, snapshot, facts)
        self.peers = [
            {
                "name": p.name,
                "subnets": [str(s) for s in p.subnets],
                "address": str(p.address) if p.address else "",
                "via": p.via,
                "reason": p.reason,
            }
            for p in desired.peers
        ]
        for peer in desired.peers:
            if peer.via == "unreachable":
                log.warning("peer %s is unreachable: %s", peer.name, peer.reason)
        text = conflist.encode(conflist.render(me.subnets, desired.pod_mtu, self.settings.conflist))
        if conflist.write_atomic(self.settings.conf_path, text):
            log.info("wrote %s for %s", self.settings.conf_path, ", ".join(map(str, me.subnets)))
        self.ready = True
        self.snapshot = snapshot

    def _sync_bgp(self, config: ClusterConfig, me: NodeRecord, snapshot: Snapshot, facts: Any) -> None:
        """The bgp backend: BIRD runs the rendering of the current cluster (started on first use,
        stopped when the cluster moves to another backend, so its routes are withdrawn)."""
        if config.backend != "bgp":
            if self._bgp is not None:
                self._bgp.close()
                self._bgp = None
            return
        if self._bgp is None:
            from .bgp import BgpBackend

            self._bgp = BgpBackend(os.path.join(self.settings.state_dir, "bird"))
        self._bgp.sync(config, me, snapshot.nodes, local_networks=getattr(facts, "onlink", None))

    # --- status --------------------------------------------------------------------------------

    def status(self, reason: str = "") -> dict[str, Any]:
        me, config = self.me, self.config
        report = self.last_report
        applied: dict[str, Any] = {}
        if report is not None:
            applied = {k: v for k, v in vars(report).items() if isinstance(v, (int, str, list, tuple))} \
                if hasattr(report, "__dict__") else {"report": str(report)}
        return {
            "node": self.settings.node_name,
            "ready": self.ready,
            "reason": "" if self.ready else (reason or "the node has no subnet yet"),
            "backend": config.backend if config else "",
            "clusterCIDRs": [str(c) for c in config.cluster_cidrs] if config else [],
            "subnets": [str(s) for s in me.subnets] if me else [],
            "addresses": [str(a) for a in self.settings.node_addresses],
            "vtepMAC": me.vtep_mac if me else "",
            "datastore": self.settings.datastore_name,
            "datastoreReachable": self.reachable,
            "revision": self.revision,
            "lastSync": self.last_sync,
            "lastError": self.last_error,
            "reconciles": self.reconciles,
            "peers": self.peers,
            "bgp": self._bgp.status() if self._bgp is not None else None,
            "applied": applied,
            "pid": os.getpid(),
        }

    def _publish_status(self, reason: str) -> None:
        if not self.settings.status_file:
            return
        document = self.status(reason)
        self._bgp_reported = document["bgp"]  # what the file shows (refresh_bgp_status compares)
        try:
            status.write(self.settings.status_file, document)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.settings.status_file, exc)

    def release(self) -> None:
        """Leave the cluster: give the subnets back and remove what pycni made in the kernel."""
        self.store.release()
        if self._bgp is not None:
            self._bgp.close()  # peers withdraw this node's subnets
            self._bgp = None
        teardown = getattr(self.dataplane, "teardown", None)
        if teardown is not None:
            teardown()
        for path in (self.settings.conf_path, self._state_path()):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
