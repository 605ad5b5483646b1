"""EtcdDatastore against a real etcd (Debian's etcd-server on 127.0.0.1): claims, races, leases, watch, outage.

One etcd serves the module; each test works under its own key prefix, so tests never see each
other's keys. The outage test gets an etcd of its own (it stops it). Leases are 2 s, etcd's
practical minimum, so expiry tests wait seconds, not minutes.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cni_plugin.cluster.etcd import EtcdDatastore
from cni_plugin.cluster.model import (
    DatastoreUnavailable,
    NodeClaim,
    NotReady,
    SubnetExhausted,
    parse_cluster_config,
)
from cni_plugin.cluster.subnets import is_node_subnet
from tests.etcd_support import EtcdServer

pytestmark = pytest.mark.integration

N = ipaddress.ip_network
A = ipaddress.ip_address
V4 = {"clusterCIDRs": ["10.244.0.0/16"]}
DUAL = {"clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"]}
TTL = 2
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def etcd(tmp_path_factory) -> Iterator[EtcdServer]:
    with EtcdServer.start(tmp_path_factory.mktemp("etcd")) as server:
        yield server


@pytest.fixture
def prefix() -> str:
    return f"/pycni-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make(etcd, prefix):
    """EtcdDatastore factory on the module's etcd under this test's prefix; all closed at the end."""
    made: list[EtcdDatastore] = []

    def factory(**kw) -> EtcdDatastore:
        kw.setdefault("lease_ttl", TTL)
        ds = EtcdDatastore([etcd.endpoint], prefix=prefix, **kw)
        made.append(ds)
        return ds

    yield factory
    for ds in made:
        ds.close()


def node(name: str, *previous: str, address: str = "198.18.0.1") -> NodeClaim:
    return NodeClaim(name=name, addresses=(A(address),), vtep_mac="AA:BB:CC:00:00:01", backend="vxlan",
                     previous_subnets=tuple(N(p) for p in previous))


def names(ds: EtcdDatastore) -> list[str]:
    return [n.name for n in ds.nodes().nodes]


def wait_for(cond, timeout: float = 6.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def etcdctl(etcd: EtcdServer, *argv: str, **kw) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ETCDCTL_API": "3"}
    return subprocess.run(["etcdctl", f"--endpoints={etcd.endpoint}", *argv], env=env, check=True,
                          capture_output=True, text=True, **kw)


def mod_revisions(etcd: EtcdServer, prefix: str) -> dict[str, int]:
    """Each subnet key's last-write revision (etcd's global revision also moves for other tests' keys)."""
    out = json.loads(etcdctl(etcd, "get", "--prefix", f"{prefix}/subnets/", "-w", "json").stdout)
    return {base64.b64decode(kv["key"]).decode(): kv["mod_revision"] for kv in out.get("kvs", [])}


# --- config -----------------------------------------------------------------------------------


def test_config_absent_malformed_ok(etcd, make, prefix):
    ds = make()
    with pytest.raises(NotReady, match=f"{prefix}/config"):
        ds.cluster_config()
    # The operator's etcdctl path, as docs-etcd.md shows it.
    etcdctl(etcd, "put", f"{prefix}/config", json.dumps({"clusterCIDRs": ["10.244.0.0/16"], "subnetLen": 7}))
    with pytest.raises(NotReady, match=rf"{prefix}/config.*subnetLen"):
        ds.cluster_config()
    etcdctl(etcd, "put", f"{prefix}/config", "{not json")
    with pytest.raises(NotReady, match="not JSON"):
        ds.cluster_config()
    etcdctl(etcd, "put", f"{prefix}/config", json.dumps(DUAL))
    assert ds.cluster_config() == parse_cluster_config(DUAL)
    # ...and the CLI's path: validated before it is written.
    ds.set_cluster_config({"clusterCIDRs": ["10.250.0.0/16"], "subnetLen": 26})
    got = ds.cluster_config()
    assert got.cluster_cidrs == (N("10.250.0.0/16"),) and got.subnet_len == 26
    with pytest.raises(ValueError, match="subnetLen"):
        ds.set_cluster_config({"clusterCIDRs": ["10.250.0.0/16"], "subnetLen": 99})
    assert ds.cluster_config() == got  # the bad one was not written


def test_cli_config_set_get_and_nodes(etcd, make, prefix, tmp_path):
    from click.testing import CliRunner

    from cni_plugin.cli import main

    where = ["--etcd-endpoints", etcd.endpoint, "--etcd-prefix", prefix]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"clusterCIDRs": ["10.244.0.0/16"], "backend": {"type": "gre"}}))
    result = CliRunner().invoke(main, ["cluster", "config", "set", str(bad), *where])
    assert result.exit_code == 1 and "backend" in result.output
    result = CliRunner().invoke(main, ["cluster", "config", "get", *where])
    assert result.exit_code == 1 and f"{prefix}/config" in result.output  # nothing was written
    result = CliRunner().invoke(main, ["cluster", "config", "set", "-", *where], input=json.dumps(DUAL))
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["cluster", "config", "get", *where])
    assert json.loads(result.output)["clusterCIDRs"] == DUAL["clusterCIDRs"]
    record = make().claim(node("a"), make().cluster_config())
    result = CliRunner().invoke(main, ["cluster", "nodes", *where])
    header, row = result.output.splitlines()
    assert header.split() == ["NODE", "SUBNETS", "ADDRESS", "VTEP-MAC"]
    assert row.split() == ["a", ",".join(map(str, record.subnets)), "198.18.0.1", "aa:bb:cc:00:00:01"]
    result = CliRunner().invoke(main, ["cluster", "nodes", "--json"], env={
        "PYCNI_ETCD_ENDPOINTS": etcd.endpoint, "PYCNI_ETCD_PREFIX": prefix})
    assert json.loads(result.output)["nodes"][0]["name"] == "a"
    result = CliRunner().invoke(main, ["cluster", "nodes", "--etcd-endpoints", "http://127.0.0.1:9",
                                       "--timeout", "1"])
    assert result.exit_code == 1 and "unavailable" in result.output


# --- claim ------------------------------------------------------------------------------------


def test_claim_is_inside_the_cidr_reads_back_and_is_idempotent(etcd, make, prefix):
    ds = make()
    cfg = ds.set_cluster_config(V4)
    record = ds.claim(node("a"), cfg)
    (subnet,) = record.subnets
    assert is_node_subnet(N("10.244.0.0/16"), 24, subnet)
    key = f"{prefix}/subnets/{subnet.network_address}-24"
    stored = json.loads(etcdctl(etcd, "get", "--print-value-only", key).stdout)
    assert stored["name"] == "a" and stored["subnets"] == [str(subnet)] and stored["vtepMAC"] == "aa:bb:cc:00:00:01"
    # The key hangs on a lease of TTL seconds.
    lease = json.loads(etcdctl(etcd, "get", key, "-w", "json").stdout)["kvs"][0]["lease"]
    ttl = json.loads(etcdctl(etcd, "lease", "timetolive", format(lease, "x"), "-w", "json").stdout)
    assert 0 < ttl["ttl"] <= TTL
    snap = ds.nodes()
    assert [n.name for n in snap.nodes] == ["a"] and snap.nodes[0].subnets == (subnet,)
    written = mod_revisions(etcd, prefix)
    # A second claim with nothing changed writes nothing (peers' watches stay quiet).
    assert ds.claim(node("a"), cfg) == record
    assert mod_revisions(etcd, prefix) == written
    # A changed address updates the record in place: same subnet, same key, a new write.
    moved = ds.claim(node("a", address="198.18.0.7"), cfg)
    assert moved.subnets == (subnet,)
    assert ds.nodes().nodes[0].address(4) == A("198.18.0.7")
    assert list(mod_revisions(etcd, prefix)) == [key] and mod_revisions(etcd, prefix)[key] > written[key]


def test_dual_stack_claim_takes_both_families(make, prefix, etcd):
    ds = make()
    cfg = ds.set_cluster_config(DUAL)
    record = ds.claim(node("a"), cfg)
    v4, v6 = record.subnet(4), record.subnet(6)
    assert v4 is not None and is_node_subnet(N("10.244.0.0/16"), 24, v4)
    assert v6 is not None and is_node_subnet(N("fd00:10:244::/56"), 64, v6)
    keys = etcdctl(etcd, "get", "--keys-only", "--prefix", f"{prefix}/subnets/").stdout.split()
    assert sorted(keys) == sorted([f"{prefix}/subnets/{v4.network_address}-24",
                                   f"{prefix}/subnets/{v6.network_address}-64"])
    assert ds.nodes().nodes[0].subnets == (v4, v6)


def test_concurrent_claims_threads_never_share_a_subnet(make):
    cfg = make().set_cluster_config(DUAL)
    count = 32
    stores = [make() for _ in range(count)]
    barrier = threading.Barrier(count)

    def one(i: int):
        barrier.wait()
        return stores[i].claim(node(f"node-{i}"), cfg)

    started = time.monotonic()
    with ThreadPoolExecutor(count) as pool:
        records = list(pool.map(one, range(count)))
    elapsed = time.monotonic() - started
    print(f"\n{count} concurrent dual-stack claims (threads): {elapsed * 1000:.0f} ms")
    subnets = [s for r in records for s in r.subnets]
    assert len(subnets) == 2 * count and len(set(subnets)) == 2 * count
    snap = stores[0].nodes()
    assert sorted(n.name for n in snap.nodes) == sorted(f"node-{i}" for i in range(count))
    assert all(len(n.subnets) == 2 for n in snap.nodes)


def test_concurrent_claims_crowded_cidr_threads(make):
    """Eight nodes racing for eight subnets: every one gets one (many lost races on the way)."""
    cfg = make().set_cluster_config({"clusterCIDRs": ["10.244.0.0/21"]})  # 8 x /24
    stores = [make() for _ in range(8)]
    barrier = threading.Barrier(8)

    def one(i: int):
        barrier.wait()
        return stores[i].claim(node(f"n{i}"), cfg).subnets[0]

    with ThreadPoolExecutor(8) as pool:
        got = list(pool.map(one, range(8)))
    assert len(set(got)) == 8


CLAIMER = """
import ipaddress, json, os, sys, time
from cni_plugin.cluster.etcd import EtcdDatastore
from cni_plugin.cluster.model import NodeClaim, SubnetExhausted
endpoint, prefix, name, go = sys.argv[1:5]
ds = EtcdDatastore([endpoint], prefix=prefix, lease_ttl=30)
cfg = ds.cluster_config()
while not os.path.exists(go):
    time.sleep(0.005)
try:
    t = time.perf_counter()
    rec = ds.claim(NodeClaim(name, (ipaddress.ip_address("198.18.0.1"),)), cfg)
    print(json.dumps({"subnets": [str(s) for s in rec.subnets], "seconds": time.perf_counter() - t}))
except SubnetExhausted as exc:
    print(json.dumps({"exhausted": str(exc)}))
"""


def run_claimers(etcd: EtcdServer, prefix: str, tmp_path: Path, count: int) -> list[dict]:
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", CLAIMER, etcd.endpoint, prefix, f"proc-{i}", str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
             for i in range(count)]
    time.sleep(1.5)  # let the interpreters import, so the claims start together
    go.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out))
    return results


def test_concurrent_claims_processes_never_share_a_subnet(etcd, make, prefix, tmp_path):
    make().set_cluster_config(DUAL)
    results = run_claimers(etcd, prefix, tmp_path, 8)
    print(f"\n8 concurrent dual-stack claims (processes): slowest {max(r['seconds'] for r in results) * 1000:.0f} ms")
    subnets = [s for r in results for s in r["subnets"]]
    assert len(subnets) == 16 and len(set(subnets)) == 16


def test_exhaustion_raises_subnet_exhausted_for_the_losers(etcd, make, prefix, tmp_path):
    ds = make()
    ds.set_cluster_config({"clusterCIDRs": ["10.244.0.0/22"]})  # 4 x /24, 6 racing processes
    results = run_claimers(etcd, prefix, tmp_path, 6)
    won = [r["subnets"][0] for r in results if "subnets" in r]
    assert sorted(won) == [f"10.244.{i}.0/24" for i in range(4)]
    assert sum("exhausted" in r for r in results) == 2
    with pytest.raises(SubnetExhausted, match="10.244.0.0/22"):
        ds.claim(node("late"), ds.cluster_config())


# --- a node that comes back -------------------------------------------------------------------


def test_node_restarted_within_ttl_keeps_subnet_and_lease_without_a_write(make, etcd, prefix):
    first = make()
    cfg = first.set_cluster_config(DUAL)
    record = first.claim(node("a"), cfg)
    written = mod_revisions(etcd, prefix)
    first.close()  # the agent restarts: a new instance, same node name
    again = make()
    assert again.claim(node("a"), cfg).subnets == record.subnets
    assert mod_revisions(etcd, prefix) == written  # adopted the live lease: peers see no event
    time.sleep(TTL + 1.5)
    again.renew()  # the adopted lease is this instance's now; a late renew finds it gone ...
    assert again.nodes().nodes[0].subnets == record.subnets  # ... and claims the same subnets back


def test_node_back_after_ttl_gets_old_subnet_deterministically_and_via_previous(make):
    ds = make()
    cfg = ds.set_cluster_config(V4)
    record = ds.claim(node("a"), cfg)
    ds.close()  # the agent dies: nobody renews
    watcher = make(lease_ttl=30)
    wait_for(lambda: "a" not in names(watcher), TTL + 3, "a's lease to expire")  # the peer "left"
    # Back after the TTL with no memory: the same subnet, since no one took it.
    assert make().claim(node("a"), cfg).subnets == record.subnets
    # previous_subnets wins over the name-derived pick (from disk after a long absence) ...
    wanted = N("10.244.250.0/24") if record.subnets[0] != N("10.244.250.0/24") else N("10.244.251.0/24")
    assert make().claim(node("b", str(wanted)), cfg).subnets == (wanted,)
    # ... but never over another node's claim.
    other = make().claim(node("c", str(wanted)), cfg).subnets[0]
    assert other not in (wanted, record.subnets[0])


def test_renew_keeps_the_claim_alive_past_the_ttl(make, etcd, prefix):
    ds = make()
    cfg = ds.set_cluster_config(V4)
    ds.claim(node("a"), cfg)
    written = mod_revisions(etcd, prefix)
    deadline = time.monotonic() + TTL * 2
    while time.monotonic() < deadline:
        ds.renew()
        time.sleep(TTL / 4)
    snap = ds.nodes()
    assert [n.name for n in snap.nodes] == ["a"]
    assert mod_revisions(etcd, prefix) == written  # renew is a lease refresh, not a write


def test_renew_restores_a_key_deleted_under_it(etcd, make, prefix):
    ds = make()
    record = ds.claim(node("a"), ds.set_cluster_config(V4))
    etcdctl(etcd, "del", "--prefix", f"{prefix}/subnets/")
    ds.renew()
    assert ds.nodes().nodes[0].subnets == record.subnets


def test_peer_with_unreadable_record_is_skipped_and_its_subnet_stays_taken(etcd, make, prefix):
    ds = make()
    cfg = ds.set_cluster_config({"clusterCIDRs": ["10.244.0.0/23"]})
    etcdctl(etcd, "put", f"{prefix}/subnets/10.244.0.0-24", "garbage")
    etcdctl(etcd, "put", f"{prefix}/subnets/not-a-subnet", "{}")
    assert ds.claim(node("a"), cfg).subnets == (N("10.244.1.0/24"),)
    snap = ds.nodes()
    assert [n.name for n in snap.nodes] == ["a"]
    assert any("10.244.0.0/24" in s for s in snap.skipped) and any("not-a-subnet" in s for s in snap.skipped)


def test_release_deletes_keys_and_frees_the_subnet(make):
    a, b = make(), make()
    cfg = a.set_cluster_config({"clusterCIDRs": ["10.244.0.0/24"], "subnetLen": 25})  # 2 subnets
    a.claim(node("a"), cfg)
    b.claim(node("b"), cfg)
    with pytest.raises(SubnetExhausted):
        make().claim(node("c"), cfg)
    a.release()
    assert names(b) == ["b"]
    assert make().claim(node("c"), cfg).subnets[0] not in b.nodes().nodes[0].subnets


def test_forget_removes_a_departed_node_at_once_and_only_that_node(etcd, make, prefix, tmp_path):
    a, b = make(), make()
    cfg = a.set_cluster_config({"clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"]})
    a.claim(node("a"), cfg)
    b.claim(node("b"), cfg)
    # The operator's command, as an operator runs it: a's agent is gone for good.
    out = subprocess.run([sys.executable, "-m", "cni_plugin.cli", "cluster", "forget", "a",
                          "--etcd-endpoints", etcd.endpoint, "--etcd-prefix", prefix],
                         capture_output=True, text=True, check=True)
    assert "removed 2 subnet key(s) of a" in out.stdout  # both families
    assert names(b) == ["b"]
    assert make().forget("a") == 0


# --- watch ------------------------------------------------------------------------------------


class Watch:
    def __init__(self, ds: EtcdDatastore, revision: str) -> None:
        self.stop = threading.Event()
        self.revisions: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(ds, revision), daemon=True)
        self.thread.start()

    def _run(self, ds: EtcdDatastore, revision: str) -> None:
        try:
            for rev in ds.watch(revision, self.stop):
                self.revisions.append(rev)
        except BaseException as exc:  # noqa: BLE001 - the test inspects it
            self.error = exc

    def wait_count(self, n: int, timeout: float = 6.0) -> None:
        wait_for(lambda: len(self.revisions) >= n or self.error is not None, timeout, f"{n} watch events")
        assert self.error is None, self.error


def test_watch_sees_peers_join_and_leave_and_stops_promptly(make):
    me = make()
    cfg = me.set_cluster_config(V4)
    me.claim(node("me"), cfg)
    snap = me.nodes()
    watch = Watch(me, snap.revision)
    peer = make()
    peer.claim(node("peer"), cfg)  # joins
    watch.wait_count(1)
    assert int(watch.revisions[0]) > int(snap.revision)
    assert "peer" in names(me)
    peer.release()  # leaves for good
    watch.wait_count(2)
    assert names(me) == ["me"]
    gone = make()
    gone.claim(node("gone"), cfg)
    watch.wait_count(3)
    gone.close()  # dies: leaves when its lease expires
    wait_for(lambda: "gone" not in names(me), TTL + 5, "gone's lease to expire")
    # ... and the watch said so: it yielded the revision of that expiry (a claim may write more
    # than once, so counting events alone could match an earlier write).
    expired_at = int(me.nodes().revision)
    wait_for(lambda: any(int(r) >= expired_at for r in watch.revisions), 6, "the expiry's watch event")
    seen = len(watch.revisions)
    me.set_cluster_config({**V4, "backend": {"type": "host-gw"}})  # a config change wakes it too
    watch.wait_count(seen + 1)
    started = time.monotonic()
    watch.stop.set()
    watch.thread.join(2)
    assert not watch.thread.is_alive() and watch.error is None
    assert time.monotonic() - started < 0.5


def test_watch_from_a_compacted_revision_yields_the_current_one(etcd, make):
    ds = make()
    cfg = ds.set_cluster_config(V4)
    old = ds.nodes().revision
    for i in range(3):
        make().claim(node(f"n{i}"), cfg)
    current = ds.current_revision()
    etcdctl(etcd, "compaction", str(current))
    watch = Watch(ds, old)
    watch.wait_count(1)
    assert int(watch.revisions[0]) >= current  # relist from here
    make().claim(node("after"), cfg)  # and it goes on watching
    watch.wait_count(2)
    watch.stop.set()
    watch.thread.join(2)


# --- endpoints and outage ---------------------------------------------------------------------


def test_a_dead_endpoint_is_skipped_for_a_live_one(etcd, prefix):
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    ds = EtcdDatastore([dead, etcd.endpoint], prefix=prefix, lease_ttl=TTL, timeout=1)
    try:
        cfg = ds.set_cluster_config(V4)
        assert ds.claim(node("a"), cfg).subnets
    finally:
        ds.close()
    with pytest.raises(DatastoreUnavailable, match="127.0.0.1:9"):
        EtcdDatastore([dead], prefix=prefix, timeout=1).nodes()


def test_etcd_down_every_call_unavailable_then_back_with_the_claim(tmp_path):
    with EtcdServer.start(tmp_path) as server:
        ds = EtcdDatastore([server.endpoint], lease_ttl=TTL, timeout=1)
        cfg = ds.set_cluster_config(DUAL)
        record = ds.claim(node("a"), cfg)
        watch = Watch(ds, ds.nodes().revision)
        server.kill()
        wait_for(lambda: watch.error is not None, 3, "the watch to notice")
        assert isinstance(watch.error, DatastoreUnavailable) and server.endpoint in str(watch.error)
        calls = {
            "cluster_config": ds.cluster_config,
            "claim": lambda: ds.claim(node("a"), cfg),
            "renew": ds.renew,
            "nodes": ds.nodes,
            "watch": lambda: next(ds.watch("1", threading.Event())),
            "set_cluster_config": lambda: ds.set_cluster_config(cfg),
            "release": ds.release,  # fails before it changes anything: the claim stays
        }
        for call in calls.values():
            with pytest.raises(DatastoreUnavailable, match=server.endpoint):
                call()
        server.start_again()
        ds.renew()
        snap = ds.nodes()
        assert [n.name for n in snap.nodes] == ["a"] and snap.nodes[0].subnets == record.subnets
        assert ds.claim(node("a"), cfg).subnets == record.subnets
        watch.stop.set()
        ds.close()


def all_threads_stopped(pid: int) -> bool:
    # SIGSTOP reaches each thread on its way back to user space: until then one may still answer.
    states = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        stat = (task / "stat").read_text()
        states.append(stat.rsplit(")", 1)[1].split()[0])
    return all(state in ("T", "t") for state in states)


def test_hung_etcd_times_out_into_unavailable_and_the_idle_watch_notices(tmp_path):
    """etcd frozen (SIGSTOP): connections open, nothing answers, as in a silent partition."""
    with EtcdServer.start(tmp_path) as server:
        ds = EtcdDatastore([server.endpoint], lease_ttl=30, timeout=0.5)
        ds.watch_probe_interval = 0.5
        cfg = ds.set_cluster_config(V4)
        ds.claim(node("a"), cfg)
        watch = Watch(ds, ds.nodes().revision)
        time.sleep(0.2)
        assert server.proc is not None
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: all_threads_stopped(server.proc.pid), 2, "etcd to stop")
            started = time.monotonic()
            with pytest.raises(DatastoreUnavailable, match=server.endpoint):
                ds.nodes()
            assert time.monotonic() - started < 2
            wait_for(lambda: watch.error is not None, 3, "the idle watch's probe to fail")
            assert isinstance(watch.error, DatastoreUnavailable)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        assert names(ds) == ["a"]
        ds.close()


# --- numbers ------------------------------------------------------------------------------------


def test_claim_latency(make):
    cfg = make().set_cluster_config(DUAL)
    fresh, again = [], []
    for i in range(20):
        ds = make()
        t = time.perf_counter()
        ds.claim(node(f"lat-{i}"), cfg)
        fresh.append(time.perf_counter() - t)
        t = time.perf_counter()
        ds.claim(node(f"lat-{i}"), cfg)
        again.append(time.perf_counter() - t)
    print(f"\nclaim latency, new node (dual-stack, {len(fresh)} peers at most): "
          f"median {statistics.median(fresh) * 1000:.1f} ms, max {max(fresh) * 1000:.1f} ms; "
          f"unchanged re-claim: median {statistics.median(again) * 1000:.1f} ms")
    assert statistics.median(fresh) < 0.5
