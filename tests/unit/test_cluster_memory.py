"""MemoryDatastore: the in-memory twin keeps etcd's rules (pure, no I/O)."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest

from cni_plugin.cluster.memory import MemoryBackend, MemoryDatastore
from cni_plugin.cluster.model import (
    DatastoreUnavailable,
    NodeClaim,
    NodeRecord,
    NotReady,
    SubnetExhausted,
    parse_cluster_config,
)

N = ipaddress.ip_network
A = ipaddress.ip_address
CFG = parse_cluster_config({"clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"]})
SMALL = parse_cluster_config({"clusterCIDRs": ["10.244.0.0/23"]})  # two /24s


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def claim(name: str, *previous: str) -> NodeClaim:
    return NodeClaim(name=name, addresses=(A("198.18.0.1"),), vtep_mac="AA:BB:CC:00:00:01",
                     previous_subnets=tuple(N(p) for p in previous))


def test_config_absent_malformed_ok():
    backend = MemoryBackend()
    ds = MemoryDatastore(backend)
    with pytest.raises(NotReady, match="no cluster config"):
        ds.cluster_config()
    backend.set_config('{"clusterCIDRs": ["10.244.0.0/16"], "subnetLen": 99}')
    with pytest.raises(NotReady, match="subnetLen"):
        ds.cluster_config()
    backend.set_config(CFG)
    assert ds.cluster_config() == CFG


def test_claim_dual_stack_is_idempotent_and_visible_to_peers():
    backend = MemoryBackend(CFG)
    a, b = MemoryDatastore(backend), MemoryDatastore(backend)
    rec = a.claim(claim("a"), CFG)
    assert [s.version for s in rec.subnets] == [4, 6]
    assert rec.vtep_mac == "aa:bb:cc:00:00:01"
    rev = backend.revision
    assert a.claim(claim("a"), CFG) == rec
    assert backend.revision == rev  # an unchanged claim writes nothing (no watch churn)
    other = b.claim(claim("b"), CFG)
    assert not set(other.subnets) & set(rec.subnets)
    names = {n.name: n for n in b.nodes().nodes}
    assert names["a"].subnets == rec.subnets and names["a"].address(4) == A("198.18.0.1")


def test_claim_updates_the_record_in_place():
    backend = MemoryBackend(CFG)
    a = MemoryDatastore(backend)
    first = a.claim(claim("a"), CFG)
    moved = NodeClaim(name="a", addresses=(A("198.18.0.9"),), vtep_mac="aa:bb:cc:00:00:09")
    second = a.claim(moved, CFG)
    assert second.subnets == first.subnets
    (node,) = a.nodes().nodes
    assert node.addresses == (A("198.18.0.9"),) and node.vtep_mac == "aa:bb:cc:00:00:09"


def test_exhaustion_and_previous_subnets():
    backend = MemoryBackend(SMALL)
    a, b, c = (MemoryDatastore(backend) for _ in range(3))
    got_a = a.claim(claim("a", "10.244.1.0/24"), SMALL)
    assert got_a.subnets == (N("10.244.1.0/24"),)
    assert b.claim(claim("b", "10.244.1.0/24"), SMALL).subnets == (N("10.244.0.0/24"),)
    with pytest.raises(SubnetExhausted):
        c.claim(claim("c"), SMALL)
    b.release()
    assert c.claim(claim("c"), SMALL).subnets == (N("10.244.0.0/24"),)


def test_lease_expires_on_the_clock_and_renew_reclaims_the_same_subnet():
    clock = Clock()
    backend = MemoryBackend(CFG, clock=clock)
    a, b = MemoryDatastore(backend, lease_ttl=10), MemoryDatastore(backend, lease_ttl=10)
    rec = a.claim(claim("a"), CFG)
    b.claim(claim("b"), CFG)
    clock.now += 8
    a.renew()  # a keeps renewing, b does not
    clock.now += 8
    assert [n.name for n in a.nodes().nodes] == ["a"]  # b "left"
    backend.expire("a")
    assert a.nodes().nodes == ()
    a.renew()
    assert a.nodes().nodes[0].subnets == rec.subnets


def test_a_peer_joins_and_leaves_and_watch_wakes():
    backend = MemoryBackend(CFG)
    a = MemoryDatastore(backend)
    a.claim(claim("a"), CFG)
    snap = a.nodes()
    stop = threading.Event()
    seen: list[str] = []

    def run() -> None:
        for rev in a.watch(snap.revision, stop):
            seen.append(rev)

    t = threading.Thread(target=run)
    t.start()
    peer = NodeRecord("b", (N("10.244.200.0/24"),), (A("198.18.0.2"),))
    backend.put_record(peer)
    _wait(lambda: len(seen) >= 1)
    assert peer in a.nodes().nodes
    backend.remove_node("b")
    _wait(lambda: len(seen) >= 2)
    assert [n.name for n in a.nodes().nodes] == ["a"]
    started = time.monotonic()
    stop.set()
    t.join(2)
    assert not t.is_alive() and time.monotonic() - started < 0.5


def test_outage_raises_from_every_call_then_recovers():
    backend = MemoryBackend(CFG)
    a = MemoryDatastore(backend)
    a.claim(claim("a"), CFG)
    backend.outage()
    for call in (a.cluster_config, a.renew, a.nodes, lambda: a.claim(claim("a"), CFG),
                 lambda: next(a.watch("1", threading.Event()))):
        with pytest.raises(DatastoreUnavailable):
            call()
    backend.restore()
    assert a.nodes().nodes[0].name == "a"


def test_unreadable_record_is_skipped_but_its_subnet_stays_taken():
    backend = MemoryBackend(SMALL)
    backend.put_raw(N("10.244.0.0/24"), "{not json")
    a = MemoryDatastore(backend)
    assert a.claim(claim("a"), SMALL).subnets == (N("10.244.1.0/24"),)
    snap = a.nodes()
    assert [n.name for n in snap.nodes] == ["a"]
    assert len(snap.skipped) == 1 and "10.244.0.0/24" in snap.skipped[0]


def _wait(cond, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
