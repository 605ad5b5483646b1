"""The blocking rtnetlink socket (netlink/rtnl.py) and the requests Netlink now makes over it,
read back with iproute2 in a namespace of the test's own."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys

import pytest

from cni_plugin import netlink, netns
from cni_plugin.netlink.rtnl import NLM_F_DUMP, RTM_GETLINK, NetlinkError, RtnlSocket, ifinfmsg
from cni_plugin.spec.errors import InterfaceExists, LinkNotFound


def ip_json(ns, *argv: str) -> list[dict]:
    return json.loads(ns.run("ip", "-j", *argv).stdout or "[]")


def rtnl_in(ns) -> RtnlSocket:
    with netns.entered(ns.path):
        return RtnlSocket()


def by_name(name: str):
    msg = ifinfmsg()
    msg["attrs"] = [("IFLA_IFNAME", name)]
    return msg


def test_a_get_answers_the_link_and_an_error_carries_the_errno(netns_factory):
    ns = netns_factory()
    sock = rtnl_in(ns)
    try:
        (lo,) = sock.request(by_name("lo"), RTM_GETLINK)
        assert (lo["index"], lo.get_attr("IFLA_IFNAME")) == (1, "lo")
        with pytest.raises(NetlinkError) as err:
            sock.request(by_name("pt-none0"), RTM_GETLINK)
        assert err.value.code == 19  # ENODEV
    finally:
        sock.close()


def test_a_dump_spanning_several_datagrams_returns_every_link(netns_factory):
    ns = netns_factory()
    # ~120 links do not fit one dump chunk: the answer spans several recv()s until NLMSG_DONE.
    batch = "".join(f"link add pt-d{i} type veth peer name pt-e{i}\n" for i in range(60))
    subprocess.run(["ip", "-n", ns.name, "-batch", "-"], input=batch, text=True, check=True)
    sock = rtnl_in(ns)
    try:
        names = {m.get_attr("IFLA_IFNAME") for m in sock.request(ifinfmsg(), RTM_GETLINK, NLM_F_DUMP)}
    finally:
        sock.close()
    assert names == {"lo"} | {f"pt-d{i}" for i in range(60)} | {f"pt-e{i}" for i in range(60)}


def test_an_answer_to_an_abandoned_request_is_not_taken_for_the_next_one(netns_factory):
    ns = netns_factory()
    ns.run("ip", "link", "add", "pt-a0", "type", "veth", "peer", "name", "pt-b0")
    sock = rtnl_in(ns)
    try:
        # A request whose answer was never read (as after an exception mid-exchange) ...
        sock._seq += 1
        stale = by_name("lo")
        stale["header"].update(type=RTM_GETLINK, flags=1 | 4, sequence_number=sock._seq, pid=0)
        stale.encode()
        sock._sock.send(stale.data)
        # ... must not answer the next one.
        (answer,) = sock.request(by_name("pt-a0"), RTM_GETLINK)
        assert answer.get_attr("IFLA_IFNAME") == "pt-a0"
    finally:
        sock.close()


def test_changes_by_name_reach_the_kernel(netns_factory):
    ns = netns_factory()
    ns.run("ip", "link", "add", "pt-c0", "type", "veth", "peer", "name", "pt-c1")
    with netlink.Netlink(ns.path) as nl:
        nl.set_mtu("pt-c0", 1400)
        nl.set_mac("pt-c0", "02:00:00:aa:bb:cc")
        nl.set_txqlen("pt-c0", 321)
        nl.set_promisc("pt-c0", True)
        nl.set_allmulti("pt-c0", True)
        nl.set_up("pt-c0")
        assert nl.promisc("pt-c0") and nl.allmulti("pt-c0") and nl.txqlen("pt-c0") == 321
        with pytest.raises(LinkNotFound):
            nl.set_up("pt-none1")
    (link,) = ip_json(ns, "-d", "link", "show", "dev", "pt-c0")
    assert (link["mtu"], link["address"], link["txqlen"], link["promiscuity"]) == (1400, "02:00:00:aa:bb:cc", 321, 1)
    assert {"UP", "ALLMULTI"} <= set(link["flags"])
    with netlink.Netlink(ns.path) as nl:
        nl.set_promisc("pt-c0", False)
        nl.set_down("pt-c0")
    (link,) = ip_json(ns, "-d", "link", "show", "dev", "pt-c0")
    assert link["promiscuity"] == 0 and "UP" not in link["flags"]


def test_veth_pair_into_another_namespace_with_mtu_and_mac(netns_factory):
    host, pod = netns_factory(), netns_factory()
    with netlink.Netlink(host.path) as nl:
        nl.create_veth_pair("pt-h0", "eth7", pod.path, mtu=1380, peer_mac="02:11:22:33:44:55")
        with pytest.raises(InterfaceExists):
            nl.create_veth_pair("pt-h0", "eth8", pod.path)
    (h,) = ip_json(host, "link", "show", "dev", "pt-h0")
    (p,) = ip_json(pod, "link", "show", "dev", "eth7")
    assert (h["mtu"], p["mtu"], p["address"]) == (1380, 1380, "02:11:22:33:44:55")
    with netlink.Netlink(host.path) as nl:
        assert nl.delete_link("pt-h0") is True
        assert nl.delete_link("pt-h0") is False
    assert ip_json(pod, "link", "show") and not [x for x in ip_json(pod, "link", "show") if x["ifname"] == "eth7"]


def test_addresses_and_routes_as_ip_shows_them(netns_factory):
    ns = netns_factory()
    ns.run("ip", "link", "add", "pt-r0", "type", "veth", "peer", "name", "pt-r1")
    v4, v6 = ipaddress.ip_interface("10.201.7.5/24"), ipaddress.ip_interface("fd42:7::5/64")
    with netlink.Netlink(ns.path) as nl:
        nl.set_up("pt-r0")
        nl.set_up("pt-r1")
        assert nl.add_address("pt-r0", v4) is True
        assert nl.add_address("pt-r0", v4) is False  # EEXIST: already there
        assert nl.add_address("pt-r0", v6, nodad=True) is True
        assert set(nl.addresses("pt-r0", 4)) == {v4}
        assert v6 in nl.addresses("pt-r0", 6) and not nl.tentative_addresses("pt-r0")[1]
        gw = ipaddress.ip_address("10.201.7.1")
        assert nl.add_route(ipaddress.ip_network("10.202.0.0/16"), gw=gw, dev="pt-r0") is True
        assert nl.add_route(ipaddress.ip_network("10.202.0.0/16"), gw=gw, dev="pt-r0") is False
        assert nl.add_route(ipaddress.ip_network("10.203.0.0/16"), gw=gw, dev="pt-r0", table=1000, priority=7)
        assert nl.add_route(ipaddress.ip_network("0.0.0.0/0"), gw=gw, dev="pt-r0")
        assert (ipaddress.ip_network("10.202.0.0/16"), gw) in nl.routes(dev="pt-r0", family=4)
        assert all(dst != ipaddress.ip_network("10.203.0.0/16") for dst, _ in nl.routes())  # table 1000
        assert nl.default_route_mtu() == 1500
        (r,) = ip_json(ns, "route", "show", "table", "1000")
        assert (r["dst"], r["gateway"], r["metric"], r["protocol"]) == ("10.203.0.0/16", "10.201.7.1", 7, "static")
        # Removing the device's last IPv4 address makes the kernel flush its IPv4 routes too.
        assert nl.delete_address("pt-r0", v4) is True
        assert nl.delete_address("pt-r0", v4) is False
        assert not ip_json(ns, "route", "show", "table", "1000")
    (addr,) = ip_json(ns, "-6", "addr", "show", "dev", "pt-r0", "scope", "global")
    assert "nodad" in json.dumps(addr)


def test_the_netlink_module_loads_without_pyroute2s_package_root():
    # A daemonless plugin pays for every import: the three message classes, not NDB, IPDB, asyncio.
    code = (
        "import sys, cni_plugin.netlink;"
        "heavy = ('pyroute2.ndb', 'pyroute2.ipdb', 'pyroute2.iproute', 'asyncio');"
        "print(sorted(m for m in heavy if m in sys.modules));"
        "from pyroute2 import IPRoute, NDB;"  # the whole package is still there on first use
        "print(IPRoute.__name__, NDB.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:2] == ["[]", "IPRoute NDB"]
