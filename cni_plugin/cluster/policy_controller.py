"""The network-policy controller: a thread of pycni-agent that keeps this node's nft policy rules
true to the policy source.

    read      the source's snapshot (NetworkPolicy, ANP, BANP, Pod, Namespace objects; in etcd
              mode the attachments every node published) and this node's attachment records
    publish   this node's attachments, for the other nodes (etcd; a no-op for Kubernetes)
    build     World = objects + addresses (policy_world.py, pure)
    compile   NodeModel = compile_node(world, this node)             (policy/compile.py, pure)
    apply     ONE `nft -f` transaction inside `table inet pycni` (render_nft; a set-element-only
              delta when just selector memberships changed); nothing else is touched

It runs on start, on every source event (the watcher only sets a flag), on every sync request of
a bridge ADD/DEL (attachments.py: the ADD waits until the new pod's rules are in the kernel), and
every `resync_interval` seconds (then always a full transaction: a table someone flushed is
rewritten). An unreachable source or an invalid object keeps the kernel as it is: nothing is
applied from a snapshot that could not be read whole, so a policy is never half-applied.
Killing the agent loses nothing: the kernel keeps the rules, and the next agent reconciles.

Pods sit on a Linux bridge: for pod-to-pod traffic of one bridge to reach the inet hooks the node
needs br_netfilter with net.bridge.bridge-nf-call-iptables/ip6tables=1 (per network namespace);
the controller sets both when it starts (through the netlink module's sysctl helpers).
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .. import attachments
from ..policy import compile as pc
from ..policy import model as pm
from . import conflist, policy_world
from .model import DatastoreError, DatastoreUnavailable
from .policy_source import PolicySnapshot, PolicySource

log = logging.getLogger("pycni.policy")

DEFAULT_STATUS_FILE = "/run/pycni/policy-status.json"
BRIDGE_NF_SYSCTLS = ("bridge/bridge-nf-call-iptables", "bridge/bridge-nf-call-ip6tables")
BACKOFF_MAX = 10.0


@dataclass(frozen=True)
class PolicySettings:
    node_name: str
    attachments_dir: str = attachments.DEFAULT_DIR
    resync_interval: float = 30.0
    status_file: str = DEFAULT_STATUS_FILE
    layout: str = "address"
    bridge_nf: bool = True
    # Tests and the conformance run: the fake node's namespace this controller's thread (and the
    # nft it runs) enters; None = the agent's own namespace (production).
    netns_path: str | None = None


@dataclass
class PassResult:
    ok: bool
    revision: str = ""
    seconds: float = 0.0
    mode: str = ""  # full | delta | unchanged
    error: str = ""
    phases: dict[str, float] = field(default_factory=dict)  # seconds: read, build, compile, apply


class PolicyController:
    def __init__(self, source: PolicySource, settings: PolicySettings, runner: Any = None) -> None:
        if runner is None:
            from ..firewall.nftables import NftRunner

            runner = NftRunner()
        self.source = source
        self.settings = settings
        self.runner = runner
        self.stop_event = threading.Event()
        self.dirty = threading.Event()
        self._cond = threading.Condition()
        self._requested = 0  # sync requests and events: the pass that starts after one serves it
        self._served = 0
        self._full_due = True
        self.snapshot: PolicySnapshot | None = None
        self.model: pc.NodeModel | None = None
        self.last: PassResult = PassResult(False, error="not run yet")
        self.applied_revision = ""
        self.passes = 0
        self.last_sync = 0.0
        self.modes: collections.Counter[str] = collections.Counter()  # passes by mode
        self._inputs: tuple[str, str] | None = None
        self._threads: list[threading.Thread] = []
        self._listener: socket.socket | None = None

    # --- life cycle ----------------------------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self.settings.attachments_dir, mode=0o755, exist_ok=True)
        self._listen()
        for target, name in ((self.run, "pycni-policy"), (self._watch_loop, "pycni-policy-watch"),
                             (self._serve_sync, "pycni-policy-sync")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        self.dirty.set()
        if self._listener is not None:
            # A clean stop: new pods are not held for policy any more (attachments.py).
            with contextlib.suppress(OSError):
                os.unlink(self._sync_path)
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
        for thread in self._threads:
            thread.join(timeout)
        with contextlib.suppress(Exception):
            self.source.close()

    @contextlib.contextmanager
    def _home(self) -> Iterator[None]:
        if self.settings.netns_path:
            from .. import netns

            with netns.entered(self.settings.netns_path):
                yield
        else:
            yield

    def run(self) -> None:
        self._bridge_nf()
        attempt = 0
        last_full = time.monotonic()
        while not self.stop_event.is_set():
            with self._cond:
                serving = self._requested
            full = self._full_due or time.monotonic() - last_full >= self.settings.resync_interval
            result = self.reconcile(full=full)
            if result.ok and full:
                last_full = time.monotonic()
                self._full_due = False
            with self._cond:
                self._served = max(self._served, serving)
                self._cond.notify_all()
            attempt = 0 if result.ok else attempt + 1
            wait = self.settings.resync_interval - (time.monotonic() - last_full)
            if not result.ok:
                wait = min(wait, BACKOFF_MAX, 0.2 * 2 ** min(attempt, 6))
            self.dirty.wait(max(0.0, wait))
            self.dirty.clear()

    def _bridge_nf(self) -> None:
        if not self.settings.bridge_nf:
            return
        from .. import netlink

        try:
            with netlink.Netlink(self.settings.netns_path) as nl:
                for key in BRIDGE_NF_SYSCTLS:
                    nl.sysctl_set(key, "1")
        except Exception as exc:  # noqa: BLE001 - reported; pods of other nodes are still filtered
            log.warning("cannot enable br_netfilter (%s): pod-to-pod traffic on one bridge is NOT "
                        "filtered (load the br_netfilter module)", exc)

    # --- triggers ------------------------------------------------------------------------------

    def request(self) -> int:
        """Ask for a pass; the ticket to wait() for."""
        with self._cond:
            self._requested += 1
            ticket = self._requested
        self.dirty.set()
        return ticket

    def wait(self, ticket: int, timeout: float) -> bool:
        """True once a pass that started after the ticket was taken succeeded."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._served < ticket:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.stop_event.is_set():
                    return False
                self._cond.wait(remaining)
        return self.last.ok

    def sync(self, timeout: float = attachments.SYNC_TIMEOUT) -> bool:
        return self.wait(self.request(), timeout)

    def _watch_loop(self) -> None:
        # Watch from what the first pass listed (a source resumes from its snapshot's revision).
        while self.snapshot is None and not self.stop_event.wait(0.05):
            pass
        attempt = 0
        while not self.stop_event.is_set():
            try:
                for _ in self.source.watch(self.applied_revision or (self.snapshot.revision if self.snapshot else ""),
                                           self.stop_event):
                    attempt = 0
                    self.request()
                if self.stop_event.is_set():
                    return
            except DatastoreError as exc:
                log.warning("policy watch broke: %s", exc)
            except Exception:  # noqa: BLE001 - the timer still resyncs
                log.exception("policy watch failed")
            self.request()
            self.stop_event.wait(min(BACKOFF_MAX, 0.5 * 2 ** min(attempt, 5)))
            attempt += 1

    # --- the sync socket (bridge ADD/DEL wait here) --------------------------------------------

    @property
    def _sync_path(self) -> str:
        return os.path.join(self.settings.attachments_dir, attachments.SYNC_SOCKET)

    def _listen(self) -> None:
        path = self._sync_path
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # a killed agent's socket
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o600)
        listener.listen(64)
        self._listener = listener

    def _serve_sync(self) -> None:
        assert self._listener is not None
        while not self.stop_event.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), name="pycni-policy-sync-req", daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(attachments.SYNC_TIMEOUT)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                ok = self.sync()
                reply = {"ok": ok} if ok else {"ok": False, "error": self.last.error or "timed out"}
                conn.sendall(json.dumps(reply).encode() + b"\n")
            except OSError:
                pass

    # --- one pass ------------------------------------------------------------------------------

    def reconcile(self, full: bool = True) -> PassResult:
        """Read, build, compile, apply. Never raises; the kernel is left as it is on failure."""
        started = time.monotonic()
        try:
            local = attachments.read_all(self.settings.attachments_dir)
            try:
                snapshot = self.source.snapshot()
                self.snapshot = snapshot
                self.source.publish_attachments(self.settings.node_name, local)
            except DatastoreUnavailable as exc:
                if self.snapshot is None:
                    raise
                # A pod ADD on this node still gets its rules from the last snapshot read.
                log.warning("policy source unreachable, compiling from the last snapshot: %s", exc)
                snapshot = self.snapshot
            phases = {"read": time.monotonic() - started}
            inputs = (snapshot.revision, json.dumps(local, sort_keys=True))
            if not full and self.last.ok and inputs == self._inputs and self.model is not None:
                # Nothing this node compiles from changed (an event of a pass already made): the
                # last pass's result stands.
                self.modes["skipped"] += 1
                return PassResult(True, snapshot.revision, time.monotonic() - started, "skipped", phases=phases)
            world = policy_world.build(snapshot.objects, snapshot.attachments, local, self.settings.node_name)
            phases["build"] = time.monotonic() - started - sum(phases.values())
            model = pc.compile_node(world, self.settings.node_name)
            phases["compile"] = time.monotonic() - started - sum(phases.values())
            with self._home():  # nft runs in the node's namespace; the datastore is reached from ours
                mode = self._apply(model, full)
            phases["apply"] = time.monotonic() - started - sum(phases.values())
        except Exception as exc:  # noqa: BLE001 - reported in the status; the kernel keeps its rules
            if not isinstance(exc, (DatastoreError, pm.PolicyError)):
                log.exception("policy pass failed")
            error = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, pm.PolicyError):
                error = f"invalid object, rules kept as they were: {exc}"
            self.last = PassResult(False, error=error, seconds=time.monotonic() - started)
            self._publish_status()
            return self.last
        self.passes += 1
        self.modes[mode] += 1
        self._inputs = inputs
        self.last_sync = time.time()
        self.applied_revision = snapshot.revision
        self.last = PassResult(True, snapshot.revision, time.monotonic() - started, mode,
                               phases={k: round(v, 4) for k, v in phases.items()})
        self._publish_status()
        return self.last

    def _apply(self, model: pc.NodeModel, full: bool) -> str:
        layout = self.settings.layout
        if not full and self.model is not None:
            if model == self.model:
                return "unchanged"
            delta = pc.render_nft_delta(self.model, model, layout)
            if delta is not None:
                if delta:
                    self.runner.run(["-f", "-"], delta, "network policy (set elements)")
                self.model = model
                return "delta"
        existing = pc.names_from_listing(self.runner.listing("inet"))
        script = pc.render_nft(model, existing, layout)
        self.runner.run(["-f", "-"], script, "network policy")
        self.model = model
        return "full"

    # --- status --------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        model = self.model
        return {
            "node": self.settings.node_name,
            "ok": self.last.ok,
            "lastError": self.last.error,
            "revision": self.applied_revision,
            "lastPassSeconds": round(self.last.seconds, 4),
            "lastMode": self.last.mode,
            "lastPhases": self.last.phases,
            "passes": self.passes,
            "passesByMode": dict(self.modes),
            "lastSync": self.last_sync,
            "pods": len(model.pods) if model else 0,
            "sets": len(model.sets) if model else 0,
            "counters": dict(model.counters) if model else {},
            "pid": os.getpid(),
        }

    def _publish_status(self) -> None:
        if not self.settings.status_file:
            return
        try:
            conflist.write_atomic(self.settings.status_file, (json.dumps(self.status()) + "\n").encode(), mode=0o644)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.settings.status_file, exc)
