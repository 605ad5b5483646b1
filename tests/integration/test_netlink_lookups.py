"""The netlink session's shortcuts (issue 17, fewer requests per ADD) answer as the long way did."""

from __future__ import annotations

import json

import pytest

from cni_plugin import netlink
from cni_plugin.spec.errors import LinkNotFound


def ip_link(ns, name: str) -> dict:
    return json.loads(ns.run("ip", "-j", "link", "show", "dev", name).stdout)[0]


def test_link_by_name_reads_what_ip_reads(netns_factory):
    ns = netns_factory()
    ns.run("ip", "link", "add", "pt-veth0", "type", "veth", "peer", "name", "pt-peer0")
    with netlink.Netlink(ns.path) as nl:
        info = nl.link("pt-veth0")
        assert info.index == nl.link_index("pt-veth0")
    seen = ip_link(ns, "pt-veth0")
    assert (info.index, info.name, info.mac, info.mtu) == (seen["ifindex"], "pt-veth0", seen["address"], seen["mtu"])


@pytest.mark.parametrize("name", ["pt-absent0", "x" * 20])  # absent, and longer than IFNAMSIZ
def test_link_by_name_of_a_missing_link_is_link_not_found(netns_factory, name):
    ns = netns_factory()
    with netlink.Netlink(ns.path) as nl, pytest.raises(LinkNotFound):
        nl.link(name)


def test_ensure_bridge_again_keeps_the_bridge_and_reports_it_up(netns_factory):
    ns = netns_factory()
    with netlink.Netlink(ns.path) as nl:
        first, created = nl.ensure_bridge("pt-br0")
        again, created_again = nl.ensure_bridge("pt-br0")
        assert (created, created_again) == (True, False)
        assert (again.index, again.mac, again.up) == (first.index, first.mac, True)
        # Downed by someone else: the next ADD brings it up again (the shortcut is for an up bridge only).
        ns.run("ip", "link", "set", "pt-br0", "down")
        third, _ = nl.ensure_bridge("pt-br0")
        assert third.up
    assert "UP" in ip_link(ns, "pt-br0")["flags"]


def test_set_master_by_index_enslaves_to_that_bridge(netns_factory):
    ns = netns_factory()
    ns.run("ip", "link", "add", "pt-veth1", "type", "veth", "peer", "name", "pt-peer1")
    with netlink.Netlink(ns.path) as nl:
        bridge, _ = nl.ensure_bridge("pt-br1")
        nl.set_master("pt-veth1", "pt-br1", bridge.index)
        nl.set_bridge_port("pt-veth1")  # no flag asked: nothing to set
    assert ip_link(ns, "pt-veth1").get("master") == "pt-br1"
