"""Rollback and bad input: a failure at any ADD step leaves nothing behind (no veth, no IP file, no
masquerade entry, no pod interface); the bridge stays."""

from __future__ import annotations

import uuid

import pytest

from cni_plugin import invoke, netlink
from cni_plugin.firewall import nftables
from cni_plugin.spec.errors import FirewallFailure, NetlinkFailure
from tests.conftest import free_subnet

from .bridge_support import bridge_conf, ip_files, links, masq_elements, run_inproc, spoof_elements, veths

pytestmark = pytest.mark.integration

# (patched object, method, which call fails) - in ADD order. The nth call matters where a method
# is used more than once (set_up: bridge, host veth, pod iface; add_address: pod v4, pod v6, bridge).
STEPS = [
    (netlink.Netlink, "create_veth_pair", 1),
    (netlink.Netlink, "set_master", 1),
    (netlink.Netlink, "set_bridge_port", 1),
    (netlink.Netlink, "set_up", 2),
    (nftables.NftSpoofCheck, "add", 1),
    (invoke, "delegate_add", 1),
    (netlink.Netlink, "sysctl_set", 3),  # 1, 2: host accept_ra, best effort
    (netlink.Netlink, "add_address", 1),
    (netlink.Netlink, "add_address", 2),
    (netlink.Netlink, "set_up", 3),
    (netlink.Netlink, "add_route", 1),
    (netlink.Netlink, "add_address", 3),
    (nftables.NftMasquerade, "add", 1),
    (netlink.Netlink, "wait_operstate_up", 1),
]


def _failing(original, nth, exc):
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            raise exc
        return original(*args, **kwargs)

    return wrapper, calls


@pytest.mark.parametrize(("owner", "method", "nth"), STEPS, ids=[f"{m}#{n}" for _, m, n in STEPS])
def test_fault_at_each_add_step_leaves_nothing(owner, method, nth, mocker, host_netns, pod_netns, tmp_path):
    conf = bridge_conf("1.0.0", "fault", "cni-fault", tmp_path, [free_subnet(4), free_subnet(6)],
                       isGateway=True, isDefaultGateway=True, ipMasq=True, macspoofchk=True)
    nft = owner in (nftables.NftMasquerade, nftables.NftSpoofCheck)
    error = FirewallFailure("injected") if nft else NetlinkFailure("injected", method)
    wrapper, calls = _failing(getattr(owner, method), nth, error)
    if owner is invoke:
        mocker.patch("cni_plugin.bridge.invoke.delegate_add", wrapper)
    else:
        mocker.patch.object(owner, method, wrapper)
    rc, out, err = run_inproc(host_netns, "ADD", conf, uuid.uuid4().hex, pod_netns.path)
    assert calls["n"] >= nth, f"{method} was called {calls['n']} times: the step list is out of date"
    assert rc == 1, out
    assert out["msg"].startswith("injected"), out
    assert veths(host_netns) == []
    assert "eth0" not in links(pod_netns)
    assert ip_files(tmp_path, "fault") == []
    assert masq_elements(host_netns) == []
    assert spoof_elements(host_netns) == []
    assert "rollback step" not in err, err  # every undo step succeeded


def _assert_clean(host, pod, data_dir, network):
    assert veths(host) == []
    assert ip_files(data_dir, network) == []
    assert masq_elements(host) == []


def test_bridge_name_taken_by_non_bridge(host_netns, pod_netns, tmp_path):
    host_netns.run("ip", "link", "add", "cni-taken", "type", "veth", "peer", "name", "cni-taken-p")
    conf = bridge_conf("1.0.0", "bad", "cni-taken", tmp_path, [free_subnet(4)], ipMasq=True)
    rc, out, _ = run_inproc(host_netns, "ADD", conf, "c1", pod_netns.path)
    assert rc == 1 and out["code"] == 105 and "not a bridge" in out["msg"]
    _assert_clean(host_netns, pod_netns, tmp_path, "bad")
    assert "eth0" not in links(pod_netns)


def test_ifname_already_in_pod(host_netns, pod_netns, tmp_path):
    pod_netns.run("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    conf = bridge_conf("1.0.0", "bad", "cni-bad", tmp_path, [free_subnet(4)], ipMasq=True)
    rc, out, _ = run_inproc(host_netns, "ADD", conf, "c1", pod_netns.path)
    assert rc == 1 and out["code"] == 104 and "eth0" in out["msg"]
    _assert_clean(host_netns, pod_netns, tmp_path, "bad")
    assert "eth0" in links(pod_netns), "the pod's own eth0 is left alone"
    # The runtime DELs after a failed ADD (SPEC §3): the foreign eth0 must survive that too.
    rc, out, err = run_inproc(host_netns, "DEL", conf, "c1", pod_netns.path)
    assert rc == 0, (out, err)
    assert "eth0" in links(pod_netns), "DEL deletes only the peer of its own host veth"


@pytest.mark.parametrize(
    ("extra", "code", "word"),
    [
        ({"mtu": -1}, 7, "mtu"),
        ({"mtu": 70000}, 7, "mtu"),
        ({"mtu": 20}, 7, "mtu"),
        ({"vlan": 4095}, 7, "vlan"),
        ({"vlan": -3}, 7, "vlan"),
        ({"vlan": 10}, 2, "vlan"),
        ({"hairpinMode": True, "promiscMode": True}, 7, "hairpinMode"),
        ({"bridge": "a-name-longer-than-15"}, 7, "bridge"),
        ({"ipMasqBackend": "ebtables"}, 7, "ipMasqBackend"),
        ({"args": {"cni": {"mac": "zz:00:00:00:00:00"}}}, 7, "MAC"),
    ],
)
def test_bad_config_is_typed_and_leaves_nothing(extra, code, word, host_netns, pod_netns, tmp_path):
    conf = bridge_conf("1.0.0", "bad", "cni-bad", tmp_path, [free_subnet(4)], ipMasq=True)
    conf.update(extra)
    rc, out, _ = run_inproc(host_netns, "ADD", conf, "c1", pod_netns.path)
    assert rc == 1 and out["code"] == code, out
    assert word in out["msg"] + out.get("details", "")
    _assert_clean(host_netns, pod_netns, tmp_path, "bad")
    assert "eth0" not in links(pod_netns)
    assert "cni-bad" not in links(host_netns), "config errors are found before anything is created"


def test_missing_netns_is_code_8(host_netns, tmp_path):
    conf = bridge_conf("1.0.0", "bad", "cni-bad", tmp_path, [free_subnet(4)])
    rc, out, _ = run_inproc(host_netns, "ADD", conf, "c1", "/run/netns/does-not-exist-pycni")
    assert rc == 1 and out["code"] == 8
    assert ip_files(tmp_path, "bad") == []


def test_ipam_error_keeps_its_code(host_netns, pod_netns, tmp_path):
    """host-local's exhaustion error (Go: code 999 'no IP addresses available') comes back typed and
    the veth is gone."""
    conf = bridge_conf("1.0.0", "full", "cni-full", tmp_path, [free_subnet(4, 30)])
    ok = run_inproc(host_netns, "ADD", conf, "c1", pod_netns.path)
    assert ok[0] == 0, ok
    other = pod_netns  # same pod, other ifname: the /30 has one usable address after the gateway
    rc, out, _ = run_inproc(host_netns, "ADD", conf, "c2", other.path, ifname="eth1")
    assert rc == 1 and out["msg"].startswith("host-local"), out
    assert len(veths(host_netns)) == 1
    assert "eth1" not in links(pod_netns)
