"""plan() on plain data: every backend rule, dual-stack, overlaps, missing MAC, off-link peers,
the VXLAN MTU per underlay family; and the pure cluster masquerade render."""

from __future__ import annotations

import ipaddress as ipa

import pytest

from cni_plugin.cluster.model import ClusterConfig, NodeRecord
from cni_plugin.cluster.plan import (
    Fdb,
    LocalFacts,
    Neighbour,
    Route,
    plan,
    vtep_mac,
)
from cni_plugin.firewall import cluster_render as cr

N = ipa.ip_network
A = ipa.ip_address
CIDR4, CIDR6 = N("10.244.0.0/16"), N("fd00:10:244::/56")
FACTS = LocalFacts(uplink="eth0", uplink_mtu=1500, onlink=(N("192.0.2.0/24"), N("2001:db8::/64")),
                   node_address=A("192.0.2.11"))


def cfg(backend: str, dual: bool = False) -> ClusterConfig:
    return ClusterConfig(cluster_cidrs=(CIDR4, CIDR6) if dual else (CIDR4,), backend=backend, vni=7,
                         vxlan_port=4789, vxlan_device="pycni.1")


def node(name: str, index: int, *, v6: bool = False, address: str | None = None, address6: str | None = None,
         mac: bool = True) -> NodeRecord:
    subnets = [N(f"10.244.{index}.0/24")] + ([N(f"fd00:10:244:{index}::/64")] if v6 else [])
    addresses = [A(address or f"192.0.2.{10 + index}")]
    if address6 is not None:
        addresses.append(A(address6))
    return NodeRecord(name, tuple(subnets), tuple(addresses), vtep_mac=vtep_mac(name) if mac else "")


ME = node("n1", 1)
ME6 = node("n1", 1, v6=True, address6="2001:db8::11")


def peer(desired, name):
    return next(p for p in desired.peers if p.name == name)


# --- vtep_mac ----------------------------------------------------------------------------------


def test_vtep_mac_is_stable_unicast_and_locally_administered():
    mac = vtep_mac("node-a")
    assert mac == vtep_mac("node-a") and mac != vtep_mac("node-b")
    first = int(mac.split(":")[0], 16)
    assert first & 0x02 and not first & 0x01
    assert len(mac.split(":")) == 6 and mac == mac.lower()


# --- host-gw -----------------------------------------------------------------------------------


def test_host_gw_routes_each_peer_subnet_via_its_underlay_address():
    desired = plan(cfg("host-gw"), ME, [ME, node("n2", 2), node("n3", 3)], FACTS)
    assert desired.routes == (
        Route(N("10.244.2.0/24"), A("192.0.2.12"), "eth0", False),
        Route(N("10.244.3.0/24"), A("192.0.2.13"), "eth0", False),
    )
    assert desired.vxlan is None and desired.fdb == () and desired.neighbours == ()
    assert [(p.name, p.via) for p in desired.peers] == [("n2", "host-gw"), ("n3", "host-gw")]
    assert desired.pod_mtu == 1500 and desired.forwarding == (4,)


def test_host_gw_off_link_peer_is_unreachable_without_a_route():
    desired = plan(cfg("host-gw"), ME, [node("n2", 2), node("n9", 9, address="198.51.100.9")], FACTS)
    assert [r.dst for r in desired.routes] == [N("10.244.2.0/24")]
    far = peer(desired, "n9")
    assert far.via == "unreachable" and "not on-link" in far.reason and far.subnets == ()


def test_host_gw_ipv6_subnet_uses_the_peers_on_link_ipv6_address():
    desired = plan(cfg("host-gw", dual=True), ME6, [node("n2", 2, v6=True, address6="2001:db8::12")], FACTS)
    assert Route(N("fd00:10:244:2::/64"), A("2001:db8::12"), "eth0", False) in desired.routes
    assert peer(desired, "n2").subnets == (N("10.244.2.0/24"), N("fd00:10:244:2::/64"))
    assert desired.forwarding == (4, 6)


def test_host_gw_ipv6_subnet_over_ipv4_underlay_without_ipv6_address_is_reasoned_and_skipped():
    desired = plan(cfg("host-gw", dual=True), ME6, [node("n2", 2, v6=True)], FACTS)
    assert [r.dst for r in desired.routes] == [N("10.244.2.0/24")]  # no IPv6 route via an IPv4 gateway
    p = peer(desired, "n2")
    assert p.via == "host-gw" and p.subnets == (N("10.244.2.0/24"),)
    assert "fd00:10:244:2::/64" in p.reason and "IPv6 address" in p.reason
    # An IPv6 address that is not on-link is no better.
    desired = plan(cfg("host-gw", dual=True), ME6, [node("n2", 2, v6=True, address6="2001:db8:1::12")], FACTS)
    assert "not on-link" in peer(desired, "n2").reason


# --- vxlan -------------------------------------------------------------------------------------


def test_vxlan_device_and_flannel_layout_per_peer():
    desired = plan(cfg("vxlan"), ME, [ME, node("n2", 2), node("n9", 9, address="198.51.100.9")], FACTS)
    dev = desired.vxlan
    assert dev is not None
    assert (dev.name, dev.vni, dev.port, dev.local, dev.uplink, dev.mtu, dev.mac) == (
        "pycni.1", 7, 4789, A("192.0.2.11"), "eth0", 1450, vtep_mac("n1"))
    assert dev.addresses == (ipa.ip_interface("10.244.1.0/32"),)
    # Off-link peers are fine over VXLAN: the underlay routes the outer packet.
    assert desired.fdb == (Fdb(vtep_mac("n2"), A("192.0.2.12"), "pycni.1"),
                           Fdb(vtep_mac("n9"), A("198.51.100.9"), "pycni.1"))
    assert Neighbour(A("10.244.2.0"), vtep_mac("n2"), "pycni.1") in desired.neighbours
    assert Route(N("10.244.2.0/24"), A("10.244.2.0"), "pycni.1", True) in desired.routes
    assert Route(N("10.244.9.0/24"), A("10.244.9.0"), "pycni.1", True) in desired.routes
    assert {p.via for p in desired.peers} == {"vxlan"} and desired.pod_mtu == 1450


def test_vxlan_dual_stack_puts_both_families_on_one_device():
    desired = plan(cfg("vxlan", dual=True), ME6, [node("n2", 2, v6=True)], FACTS)
    assert desired.vxlan is not None
    assert desired.vxlan.addresses == (ipa.ip_interface("10.244.1.0/32"), ipa.ip_interface("fd00:10:244:1::/128"))
    assert Route(N("fd00:10:244:2::/64"), A("fd00:10:244:2::"), "pycni.1", True) in desired.routes
    assert Neighbour(A("fd00:10:244:2::"), vtep_mac("n2"), "pycni.1") in desired.neighbours
    assert len(desired.fdb) == 1  # one FDB entry per peer, whatever the number of subnets


def test_vxlan_peer_without_mac_is_unreachable():
    desired = plan(cfg("vxlan"), ME, [node("n2", 2, mac=False), node("n3", 3)], FACTS)
    p = peer(desired, "n2")
    assert p.via == "unreachable" and "VTEP MAC" in p.reason
    assert [r.dst for r in desired.routes] == [N("10.244.3.0/24")]


def test_vxlan_mtu_over_an_ipv6_underlay_is_70_less():
    facts6 = LocalFacts("eth0", 9000, (N("2001:db8::/64"),), A("2001:db8::11"))
    me = node("n1", 1, address6="2001:db8::11")
    p2 = node("n2", 2, address6="2001:db8::12")
    desired = plan(cfg("vxlan"), me, [p2], facts6)
    assert desired.vxlan is not None and desired.vxlan.mtu == 8930 and desired.pod_mtu == 8930
    assert desired.vxlan.local == A("2001:db8::11")
    assert desired.fdb == (Fdb(vtep_mac("n2"), A("2001:db8::12"), "pycni.1"),)
    # A peer with no IPv6 underlay address cannot be reached over an IPv6 underlay.
    desired = plan(cfg("vxlan"), me, [node("n3", 3)], facts6)
    assert peer(desired, "n3").via == "unreachable" and "IPv6 underlay" in peer(desired, "n3").reason


# --- auto --------------------------------------------------------------------------------------


def test_auto_host_gw_on_link_vxlan_otherwise_and_device_always_present():
    nodes = [node("n2", 2), node("n9", 9, address="198.51.100.9")]
    desired = plan(cfg("auto"), ME, nodes, FACTS)
    assert {p.name: p.via for p in desired.peers} == {"n2": "host-gw", "n9": "vxlan"}
    assert Route(N("10.244.2.0/24"), A("192.0.2.12"), "eth0", False) in desired.routes
    assert Route(N("10.244.9.0/24"), A("10.244.9.0"), "pycni.1", True) in desired.routes
    assert desired.fdb == (Fdb(vtep_mac("n9"), A("198.51.100.9"), "pycni.1"),)
    assert desired.vxlan is not None and desired.pod_mtu == 1450
    # Every peer on-link: still the device, still the VXLAN MTU (stable pod MTU).
    only_local = plan(cfg("auto"), ME, [node("n2", 2)], FACTS)
    assert only_local.vxlan is not None and only_local.pod_mtu == 1450 and only_local.fdb == ()


def test_auto_dual_stack_peer_without_on_link_ipv6_goes_vxlan_whole():
    desired = plan(cfg("auto", dual=True), ME6, [node("n2", 2, v6=True)], FACTS)
    p = peer(desired, "n2")
    assert p.via == "vxlan" and p.subnets == (N("10.244.2.0/24"), N("fd00:10:244:2::/64"))
    assert all(r.device == "pycni.1" for r in desired.routes)


def test_auto_off_link_peer_without_mac_keeps_what_host_gw_can_route_or_is_unreachable():
    desired = plan(cfg("auto"), ME, [node("n9", 9, address="198.51.100.9", mac=False)], FACTS)
    assert peer(desired, "n9").via == "unreachable" and desired.routes == ()
    desired = plan(cfg("auto", dual=True), ME6, [node("n2", 2, v6=True, mac=False)], FACTS)
    p = peer(desired, "n2")
    assert p.via == "host-gw" and p.subnets == (N("10.244.2.0/24"),) and "VTEP MAC" in p.reason


# --- peers that cannot be used -------------------------------------------------------------------


def test_peer_without_subnet_or_underlay_address_is_reported_not_dropped():
    no_subnet = NodeRecord("n2", (), (A("192.0.2.12"),), vtep_mac("n2"))
    no_address = NodeRecord("n3", (N("10.244.3.0/24"),), (A("2001:db8::13"),), vtep_mac("n3"))
    same = NodeRecord("n4", (N("10.244.4.0/24"),), (A("192.0.2.11"),), vtep_mac("n4"))
    for backend in ("host-gw", "vxlan", "auto"):
        desired = plan(cfg(backend), ME, [no_subnet, no_address, same], FACTS)
        assert [p.via for p in desired.peers] == ["unreachable"] * 3
        assert "no pod subnet" in peer(desired, "n2").reason
        assert "IPv4 underlay" in peer(desired, "n3").reason
        assert "own underlay address" in peer(desired, "n4").reason
        assert desired.routes == () and desired.fdb == ()


@pytest.mark.parametrize("backend", ["host-gw", "vxlan"])
def test_overlapping_subnets_are_never_routed(backend):
    mine = node("n2", 1, address="192.0.2.12")  # claims my 10.244.1.0/24
    a = NodeRecord("n3", (N("10.244.3.0/24"),), (A("192.0.2.13"),), vtep_mac("n3"))
    b = NodeRecord("n4", (N("10.244.3.128/25"),), (A("192.0.2.14"),), vtep_mac("n4"))
    ok = node("n5", 5)
    desired = plan(cfg(backend), ME, [mine, a, b, ok], FACTS)
    assert [r.dst for r in desired.routes] == [N("10.244.5.0/24")]
    assert "overlaps this node's 10.244.1.0/24" in peer(desired, "n2").reason
    assert "overlaps node n4's" in peer(desired, "n3").reason
    assert "overlaps node n3's" in peer(desired, "n4").reason
    assert {peer(desired, n).via for n in ("n2", "n3", "n4")} == {"unreachable"}
    assert len({r.dst for r in desired.routes}) == len(desired.routes)


def test_an_overlapping_ipv6_subnet_is_skipped_alone():
    p2 = node("n2", 2, v6=True, address6="2001:db8::12")
    clash = NodeRecord("n2", (p2.subnets[0], N("fd00:10:244:1::/64")), p2.addresses, p2.vtep_mac)
    desired = plan(cfg("host-gw", dual=True), ME6, [clash], FACTS)
    p = peer(desired, "n2")
    assert p.via == "host-gw" and p.subnets == (N("10.244.2.0/24"),) and "overlaps this node's" in p.reason


def test_plan_is_deterministic_and_ignores_order():
    nodes = [node("n3", 3), node("n2", 2)]
    assert plan(cfg("vxlan"), ME, nodes, FACTS) == plan(cfg("vxlan"), ME, list(reversed(nodes)), FACTS)


# --- masquerade ---------------------------------------------------------------------------------


def test_masquerade_rules_keep_cluster_and_every_pod_subnet():
    outside = NodeRecord("n7", (N("10.99.7.0/24"),), (A("192.0.2.17"),), vtep_mac("n7"))
    desired = plan(cfg("host-gw", dual=True), ME6, [node("n2", 2), outside], FACTS)
    v4, v6 = desired.masquerade
    assert v4.source == N("10.244.1.0/24")
    assert v4.keep == (CIDR4, N("10.99.7.0/24"), N("224.0.0.0/4"))
    assert v6.source == N("fd00:10:244:1::/64") and v6.keep == (CIDR6, N("ff00::/8"))


def test_cluster_masquerade_render_is_one_replacing_transaction():
    rules = [(N("10.244.1.0/24"), [CIDR4, N("224.0.0.0/4")]), (N("fd00:10:244:1::/64"), [CIDR6])]
    lines = cr.render_apply(rules).splitlines()
    tag = cr.digest(rules)
    assert lines[:3] == [
        "add table inet pycni",
        "add chain inet pycni cluster_masq { type nat hook postrouting priority srcnat; policy accept; }",
        "flush chain inet pycni cluster_masq",
    ]
    assert lines[3] == (f"add rule inet pycni cluster_masq ip saddr 10.244.1.0/24 "
                        f'ip daddr != {{ 10.244.0.0/16, 224.0.0.0/4 }} masquerade comment "{tag}"')
    assert lines[4].startswith("add rule inet pycni cluster_masq ip6 saddr fd00:10:244:1::/64 ip6 daddr != {")
    assert cr.digest(rules) != cr.digest(rules[:1])


def test_cluster_masquerade_current_and_removal_from_a_listing():
    rules = [(N("10.244.1.0/24"), [CIDR4])]
    tag = cr.digest(rules)
    listing = {"nftables": [
        {"chain": {"family": "inet", "table": "pycni", "name": "cluster_masq"}},
        {"rule": {"family": "inet", "table": "pycni", "chain": "cluster_masq", "comment": tag}},
        {"rule": {"family": "inet", "table": "pycni", "chain": "masq_abc", "comment": "x"}},
    ]}
    assert cr.is_current(listing, rules)
    assert not cr.is_current(listing, [(N("10.244.2.0/24"), [CIDR4])])
    assert not cr.is_current({"nftables": []}, rules)
    assert cr.render_remove(listing) == "flush chain inet pycni cluster_masq\ndelete chain inet pycni cluster_masq\n"
    assert cr.render_remove({"nftables": []}) == ""
