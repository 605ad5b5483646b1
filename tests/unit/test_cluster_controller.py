"""The cluster controller's loop on the memory datastore, with a recording data plane (no root).

The data plane and the planner are the seams: their real versions are tested on the kernel in
tests/integration/test_cluster_dataplane.py; here we check what the controller decides and when.
"""

from __future__ import annotations

import ipaddress
import json
import os
import threading
import time
from dataclasses import dataclass

import pytest

from cni_plugin.cluster import conflist, status
from cni_plugin.cluster.controller import Controller, ControllerSettings
from cni_plugin.cluster.memory import MemoryBackend, MemoryDatastore
from cni_plugin.cluster.model import NodeRecord, parse_cluster_config

N = ipaddress.ip_network
A = ipaddress.ip_address
CFG = {"clusterCIDRs": ["10.244.0.0/16"], "backend": {"type": "vxlan"}}


@dataclass(frozen=True)
class Peer:
    name: str
    subnets: tuple
    address: object
    via: str
    reason: str = ""


@dataclass(frozen=True)
class Desired:
    peers: tuple
    pod_mtu: int


def fake_plan(config, me, nodes, facts):
    peers = tuple(Peer(n.name, n.subnets, n.addresses[0] if n.addresses else None,
                       "vxlan" if n.vtep_mac else "unreachable", "" if n.vtep_mac else "no VTEP MAC")
                  for n in nodes if n.name != me.name)
    return Desired(peers=peers, pod_mtu=1450)


class RecordingDataplane:
    def __init__(self):
        self.applied: list[Desired] = []
        self.torn_down = False

    def local_facts(self, node_address):
        return {"address": node_address}

    def apply(self, desired):
        self.applied.append(desired)
        return {"added": len(desired.peers)}

    def teardown(self):
        self.torn_down = True

    @property
    def peer_names(self) -> list[str]:
        return sorted(p.name for p in self.applied[-1].peers)


@pytest.fixture
def backend():
    return MemoryBackend(config=CFG)


def make(tmp_path, backend, name="n1", address="198.18.0.1", **overrides):
    settings = ControllerSettings(
        node_name=name,
        node_addresses=(A(address),),
        conf_dir=str(tmp_path / name / "net.d"),
        conflist=conflist.ConflistSettings(ipam_data_dir=str(tmp_path / name / "ipam"),
                                           status_file=str(tmp_path / name / "status.json")),
        state_dir=str(tmp_path / name / "state"),
        status_file=str(tmp_path / name / "status.json"),
        resync_interval=overrides.pop("resync_interval", 30.0),
        renew_interval=overrides.pop("renew_interval", 20.0),
    )
    dataplane = RecordingDataplane()
    controller = Controller(MemoryDatastore(backend, lease_ttl=overrides.pop("lease_ttl", 60.0)), settings, dataplane,
                            planner=fake_plan, vtep_mac=lambda n: "02:00:00:00:00:01")
    return controller, dataplane


def read_conflist(controller) -> dict:
    return json.loads(open(controller.settings.conf_path).read())


def test_claim_then_reconcile_writes_the_conflist_on_the_node_subnet(tmp_path, backend):
    controller, dataplane = make(tmp_path, backend)
    record = controller.claim()
    assert controller.reconcile() is True
    subnet = record.subnets[0]
    assert subnet.subnet_of(N("10.244.0.0/16")) and subnet.prefixlen == 24
    conf = read_conflist(controller)
    assert conf["plugins"][0]["ipam"]["ranges"] == [[{"subnet": str(subnet)}]]
    assert conf["plugins"][0]["mtu"] == 1450
    doc = status.read(controller.settings.status_file)
    assert doc["ready"] is True and doc["subnets"] == [str(subnet)] and doc["vtepMAC"] == "02:00:00:00:00:01"
    assert status.not_ready_reason(controller.settings.status_file) == ""
    # Remembered on disk for the next agent.
    assert controller.remembered_subnets() == (subnet,)


def test_peers_joining_and_leaving_reach_the_data_plane(tmp_path, backend):
    controller, dataplane = make(tmp_path, backend)
    controller.claim()
    controller.reconcile()
    assert dataplane.peer_names == []
    backend.put_record(NodeRecord("n2", (N("10.244.200.0/24"),), (A("198.18.0.2"),), "02:00:00:00:00:02"))
    backend.put_record(NodeRecord("n3", (N("10.244.201.0/24"),), (A("198.18.0.3"),), ""))
    controller.reconcile()
    assert dataplane.peer_names == ["n2", "n3"]
    doc = status.read(controller.settings.status_file)
    assert {p["name"]: p["via"] for p in doc["peers"]} == {"n2": "vxlan", "n3": "unreachable"}
    backend.remove_node("n2")
    controller.reconcile()
    assert dataplane.peer_names == ["n3"]


def test_not_ready_until_there_is_a_config(tmp_path):
    backend = MemoryBackend(config=None)
    controller, dataplane = make(tmp_path, backend)
    controller.start()
    try:
        deadline = time.monotonic() + 5
        reason = ""
        while time.monotonic() < deadline and "no cluster config" not in reason:
            time.sleep(0.01)
            reason = status.not_ready_reason(controller.settings.status_file)
        assert "no cluster config" in reason
        assert not os.path.exists(controller.settings.conf_path)
        backend.set_config(CFG)
        while time.monotonic() < deadline and status.not_ready_reason(controller.settings.status_file):
            time.sleep(0.02)
        assert status.not_ready_reason(controller.settings.status_file) == ""
        assert os.path.exists(controller.settings.conf_path)
    finally:
        controller.stop()


def test_an_outage_keeps_the_data_path_and_the_loop_catches_up(tmp_path, backend):
    controller, dataplane = make(tmp_path, backend)
    controller.claim()
    controller.reconcile()
    applies = len(dataplane.applied)
    backend.outage()
    backend_peer = NodeRecord("n2", (N("10.244.200.0/24"),), (A("198.18.0.2"),), "02:00:00:00:00:02")
    assert controller.reconcile() is False
    assert len(dataplane.applied) == applies  # nothing applied from a snapshot it could not read
    doc = status.read(controller.settings.status_file)
    assert doc["ready"] is True and doc["datastoreReachable"] is False and "unreachable" in doc["lastError"]
    assert status.not_ready_reason(controller.settings.status_file) == ""  # pods keep being added
    backend.restore()
    backend.put_record(backend_peer)
    assert controller.reconcile() is True
    assert dataplane.peer_names == ["n2"]
    assert status.read(controller.settings.status_file)["datastoreReachable"] is True


def test_a_restarted_agent_keeps_its_subnet_even_when_the_datastore_forgot_it(tmp_path, backend):
    first, _ = make(tmp_path, backend)
    subnet = first.claim().subnets[0]
    first.reconcile()
    # A new datastore (etcd lost its data, or the lease expired and the key went): the next
    # agent asks for the subnet it remembers on disk, and gets it back.
    fresh = MemoryBackend(config=CFG)
    second, _ = make(tmp_path, fresh)
    second._restore_ready()
    assert status.read(second.settings.status_file)["ready"] is True  # conflist on disk: still ready
    assert second.claim().subnets == (subnet,)


def test_an_expired_lease_is_claimed_again_on_renew(tmp_path):
    clock = [1000.0]
    backend = MemoryBackend(config=CFG, clock=lambda: clock[0])
    controller, dataplane = make(tmp_path, backend, lease_ttl=10.0, renew_interval=0.0)
    subnet = controller.claim().subnets[0]
    controller.reconcile()
    backend.expire("n1")
    assert backend.holders() == {}
    controller.reconcile()  # renew is due at every pass here: it re-claims
    assert backend.holders() == {subnet: "n1"}


def test_a_config_change_that_moves_the_cidr_claims_again(tmp_path, backend):
    controller, _ = make(tmp_path, backend)
    controller.claim()
    controller.reconcile()
    backend.set_config({"clusterCIDRs": ["10.245.0.0/16"], "backend": {"type": "host-gw"}})  # moved
    controller.reconcile()
    conf = read_conflist(controller)
    assert N(conf["plugins"][0]["ipam"]["ranges"][0][0]["subnet"]).subnet_of(N("10.245.0.0/16"))
    moved = {"clusterCIDRs": ["10.245.0.0/16"], "backend": {"type": "host-gw"}}
    assert controller.config == parse_cluster_config(moved)


def test_events_wake_the_loop_before_the_timer(tmp_path, backend):
    controller, dataplane = make(tmp_path, backend, resync_interval=60.0)
    controller.start()
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not dataplane.applied:
            time.sleep(0.01)
        backend.put_record(NodeRecord("n2", (N("10.244.200.0/24"),), (A("198.18.0.2"),), "02:00:00:00:00:02"))
        while time.monotonic() < deadline and (not dataplane.applied or dataplane.peer_names != ["n2"]):
            time.sleep(0.01)
        assert dataplane.peer_names == ["n2"]  # well before the 60 s timer
    finally:
        stopped = threading.Event()
        threading.Thread(target=lambda: (controller.stop(), stopped.set())).start()
        assert stopped.wait(5), "stop() must return promptly"


def test_release_gives_the_subnet_back_and_removes_what_it_wrote(tmp_path, backend):
    controller, dataplane = make(tmp_path, backend)
    controller.claim()
    controller.reconcile()
    controller.release()
    assert backend.holders() == {}
    assert dataplane.torn_down
    assert not os.path.exists(controller.settings.conf_path)
    assert controller.remembered_subnets() == ()


class FakeBgp:
    """Stands in for bgp.BgpBackend: session states that change with no datastore event."""

    def __init__(self):
        self.sessions = [{"name": "mesh_n2", "state": "start", "since": "t0", "info": "Active"}]

    def status(self):
        return {"running": True, "restarts": 0, "sessions": [dict(s) for s in self.sessions], "error": ""}


def test_bgp_session_changes_reach_the_status_file_between_resyncs(tmp_path, backend, monkeypatch):
    monkeypatch.setattr("cni_plugin.cluster.controller.BGP_STATUS_REFRESH", 0.05)
    controller, dataplane = make(tmp_path, backend, resync_interval=60.0)
    controller.claim()
    assert controller.reconcile() is True
    fake = FakeBgp()
    controller._bgp = fake  # what _sync_bgp holds while the backend is bgp
    assert controller.refresh_bgp_status() is True  # the file had no sessions yet
    assert controller.refresh_bgp_status() is False  # nothing changed: no rewrite
    fake.sessions[0].update(state="up", since="t1", info="Established")
    waiter = threading.Thread(target=controller._wait_for_work, args=(2.0,))
    started = time.monotonic()
    waiter.start()

    def shown():
        return (status.read(controller.settings.status_file) or {}).get("bgp", {}).get("sessions", [{}])[0].get("info")

    while time.monotonic() - started < 2 and shown() != "Established":
        time.sleep(0.01)
    assert shown() == "Established"
    assert time.monotonic() - started < 1.0  # well before the 60 s resync (and the 2 s wait)
    controller.stop_event.set()
    waiter.join(3)
    assert not waiter.is_alive()
    assert len(dataplane.applied) == 1  # a status refresh, not a reconcile


def test_without_bgp_the_wait_is_one_plain_wait(tmp_path, backend):
    controller, _ = make(tmp_path, backend)
    controller.dirty.set()
    started = time.monotonic()
    controller._wait_for_work(5.0)
    assert time.monotonic() - started < 0.5  # an event ends it at once
    assert controller.refresh_bgp_status() is False
