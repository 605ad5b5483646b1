"""bridge.py's pure parts: config keys and defaults, MAC precedence, naming, gateway planning."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cni_plugin import bridge
from cni_plugin.spec.errors import InvalidConfig, UnsupportedField
from cni_plugin.spec.skel import CmdArgs
from cni_plugin.spec.types import DNS, Interface, IPConfig, Result, Route


def _args(config: dict, cni_args: str = "") -> CmdArgs:
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "pycni-bridge", **config}
    return CmdArgs(command="ADD", container_id="c1", netns="/run/netns/x", ifname="eth0", args=cni_args,
                   path=(), stdin_data=json.dumps(conf).encode(), config=conf, cni_version="1.0.0")


def test_defaults_match_the_reference():
    conf = bridge.load_conf(_args({}))
    assert conf.bridge == "cni0"
    assert not (conf.is_gateway or conf.ip_masq or conf.hairpin_mode or conf.promisc_mode or conf.enabledad)
    assert conf.mtu is None and conf.vlan == 0 and not conf.layer3


def test_is_default_gateway_implies_is_gateway():
    assert bridge.load_conf(_args({"isDefaultGateway": True})).is_gateway


@pytest.mark.parametrize("bad", [{"mtu": -1}, {"mtu": 65536}, {"mtu": 67}, {"mtu": "big"}, {"vlan": 4095},
                                 {"hairpinMode": True, "promiscMode": True}, {"bridge": ""},
                                 {"bridge": "has space"}, {"ipMasqBackend": "pf"},
                                 {"disableContainerInterface": True, "ipam": {"type": "host-local"}}])
def test_invalid_config_is_code_7(bad):
    with pytest.raises(InvalidConfig):
        bridge.load_conf(_args(bad))


def test_mtu_zero_means_unset():
    assert bridge.load_conf(_args({"mtu": 0})).mtu is None
    assert bridge.load_conf(_args({"mtu": 9000})).mtu == 9000


@pytest.mark.parametrize("key", [{"vlan": 100}, {"vlanTrunk": [{"id": 5}]}])
def test_unimplemented_keys_are_refused_not_ignored(key):
    with pytest.raises(UnsupportedField):
        bridge.load_conf(_args(key))


def test_iptables_backend_is_accepted():
    assert bridge.load_conf(_args({"ipMasq": True, "ipMasqBackend": "iptables"})).ip_masq


def test_mac_precedence_runtime_config_then_args_then_cni_args():
    full = {"runtimeConfig": {"mac": "0A:58:00:00:00:01"}, "args": {"cni": {"mac": "0a:58:00:00:00:02"}}}
    a = _args(full, "MAC=0a:58:00:00:00:03")
    assert bridge.container_mac(bridge.load_conf(a), a) == "0a:58:00:00:00:01"
    a = _args({"args": {"cni": {"mac": "0a:58:00:00:00:02"}}}, "MAC=0a:58:00:00:00:03")
    assert bridge.container_mac(bridge.load_conf(a), a) == "0a:58:00:00:00:02"
    a = _args({}, "IgnoreUnknown=1;K8S_POD_NAME=x;MAC=0a:58:00:00:00:03")
    assert bridge.container_mac(bridge.load_conf(a), a) == "0a:58:00:00:00:03"
    a = _args({})
    assert bridge.container_mac(bridge.load_conf(a), a) == ""


@pytest.mark.parametrize("mac", ["zz:00:00:00:00:00", "01:00:5e:00:00:01", "0a:58:00:00:00"])
def test_bad_or_multicast_mac_is_rejected(mac):
    a = _args({"runtimeConfig": {"mac": mac}})
    with pytest.raises(InvalidConfig):
        bridge.container_mac(bridge.load_conf(a), a)


def test_host_veth_name_is_stable_and_valid():
    name = bridge.host_veth_name("c1", "eth0")
    assert name == bridge.host_veth_name("c1", "eth0")
    assert name != bridge.host_veth_name("c1", "eth1") != bridge.host_veth_name("c2", "eth0")
    assert name.startswith("veth") and len(name) == 12 <= 15


def _ipam(*addrs: str, routes=()) -> Result:
    return Result(ips=tuple(IPConfig(address=ipaddress.ip_interface(a)) for a in addrs), routes=tuple(routes))


def test_plan_gateway_is_first_address_and_on_the_bridge():
    plan = bridge.plan_l3(_ipam("198.18.1.5/24", "fd00::5/64"), is_gateway=True, is_default_gateway=True)
    assert [str(ip.gateway) for ip in plan.ips] == ["198.18.1.1", "fd00::1"]
    assert all(ip.interface == 2 for ip in plan.ips)
    assert [str(a) for a in plan.bridge_addresses] == ["198.18.1.1/24", "fd00::1/64"]
    assert [(str(r.dst), str(r.gw)) for r in plan.routes] == [("0.0.0.0/0", "198.18.1.1"), ("::/0", "fd00::1")]


def test_plan_keeps_an_ipam_default_route_with_gateway():
    default = Route(dst=ipaddress.ip_network("0.0.0.0/0"), gw=ipaddress.ip_address("198.18.1.254"))
    plan = bridge.plan_l3(_ipam("198.18.1.5/24", routes=[default]), is_gateway=True, is_default_gateway=True)
    assert plan.routes == (default,)


def test_plan_without_gateway_touches_no_bridge_address():
    plan = bridge.plan_l3(_ipam("198.18.1.5/24"), is_gateway=False, is_default_gateway=False)
    assert plan.bridge_addresses == () and plan.ips[0].gateway is None and plan.routes == ()


def test_merge_prev_appends_and_reindexes():
    prev = Result(interfaces=(Interface(name="lo0"),), ips=(IPConfig(address=ipaddress.ip_interface("10.0.0.1/8"),
                                                                     interface=0),),
                  dns=DNS(nameservers=("1.1.1.1",)))
    ours = Result(interfaces=(Interface(name="br"), Interface(name="veth"), Interface(name="eth0", sandbox="/x")),
                  ips=(IPConfig(address=ipaddress.ip_interface("198.18.0.2/24"), interface=2),))
    merged = bridge.merge_prev(prev, ours)
    assert [i.name for i in merged.interfaces] == ["lo0", "br", "veth", "eth0"]
    assert [ip.interface for ip in merged.ips] == [0, 3]
    assert merged.dns.nameservers == ("1.1.1.1",)
    assert bridge.merge_prev(None, ours) is ours

