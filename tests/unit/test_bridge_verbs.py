"""DEL/STATUS/GC orchestration with fakes (no root): the sweep always finishes, errors are collected,
masquerade entries are found by tag."""

from __future__ import annotations

import ipaddress
import json

import pytest

from cni_plugin import bridge
from cni_plugin.firewall import attachment_tag
from cni_plugin.firewall.fake import FakeMasquerade
from cni_plugin.spec.errors import DelegateFailure, FirewallFailure, NetnsNotFound, PluginNotAvailable
from cni_plugin.spec.skel import CmdArgs


def _args(verb: str, netns: str = "", **config) -> CmdArgs:
    conf = {"cniVersion": "1.1.0", "name": "n", "type": "pycni-bridge", "ipMasq": True,
            "ipam": {"type": "fake-ipam"}, **config}
    return CmdArgs(command=verb, container_id="c1", netns=netns, ifname="eth0", args="", path=(),
                   stdin_data=json.dumps(conf).encode(), config=conf, cni_version="1.1.0")


class FakeNetlink:
    deleted: list[str] = []

    def __init__(self, netns_path=None):
        if netns_path and "gone" in netns_path:
            raise NetnsNotFound(netns_path)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def delete_link(self, name):
        FakeNetlink.deleted.append(name)
        return False


@pytest.fixture
def fakes(monkeypatch):
    masq = FakeMasquerade()
    calls: list[str] = []
    FakeNetlink.deleted = []
    monkeypatch.setattr(bridge, "masquerade", lambda: masq)
    monkeypatch.setattr(bridge.netlink, "Netlink", FakeNetlink)
    monkeypatch.setattr(bridge.invoke, "delegate_del", lambda t, a, c=None: calls.append(f"DEL {t}"))
    monkeypatch.setattr(bridge.invoke, "delegate_gc", lambda t, a, c=None: calls.append(f"GC {t}"))
    monkeypatch.setattr(bridge.invoke, "delegate_status", lambda t, a, c=None: calls.append(f"STATUS {t}"))
    return masq, calls


def test_del_without_netns_still_removes_masquerade_and_releases_ipam(fakes):
    masq, calls = fakes
    masq.add("n", attachment_tag("c1", "eth0"), [ipaddress.ip_interface("198.18.0.2/24")])
    masq.add("n", attachment_tag("c2", "eth0"), [ipaddress.ip_interface("198.18.0.3/24")])
    bridge.delete(_args("DEL", netns=""))
    assert masq.dump() == {"n": {"198.18.0.3": attachment_tag("c2", "eth0")}}, "only its own entry"
    assert calls == ["DEL fake-ipam"]
    assert FakeNetlink.deleted == [], "no netns: the pair is gone with it, nothing is deleted by name"
    bridge.delete(_args("DEL", netns="/run/netns/gone"))  # repeated DEL, netns gone: still fine


def test_del_sweep_finishes_and_reports_every_error(fakes, monkeypatch):
    masq, calls = fakes
    masq.broken = True

    def ipam_fails(t, a, c=None):
        calls.append("DEL attempted")
        raise DelegateFailure("ipam down")

    monkeypatch.setattr(bridge.invoke, "delegate_del", ipam_fails)
    with pytest.raises(FirewallFailure) as info:
        bridge.delete(_args("DEL"))
    assert calls == ["DEL attempted"], "IPAM DEL runs although the masquerade step failed"
    assert "ipam down" in info.value.details


def test_del_tolerates_unimplemented_keys(fakes):
    bridge.delete(_args("DEL", vlan=100))


def test_status_reports_unusable_nftables_as_code_50(fakes):
    masq, calls = fakes
    bridge.status(_args("STATUS"))
    assert calls == ["STATUS fake-ipam"]
    masq.broken = True
    with pytest.raises(PluginNotAvailable) as info:
        bridge.status(_args("STATUS"))
    assert info.value.code == 50


def test_gc_keeps_listed_attachments_only(fakes):
    masq, calls = fakes
    for cid, ip in (("c1", "198.18.0.2/24"), ("c2", "198.18.0.3/24"), ("c3", "198.18.0.4/24")):
        masq.add("n", attachment_tag(cid, "eth0"), [ipaddress.ip_interface(ip)])
    bridge.gc(_args("GC", **{"cni.dev/valid-attachments": [{"containerID": "c2", "ifname": "eth0"}]}))
    assert masq.dump() == {"n": {"198.18.0.3": attachment_tag("c2", "eth0")}}
    assert calls == ["GC fake-ipam"]
    bridge.gc(_args("GC", **{"cni.dev/valid-attachments": []}))  # empty list: everything is stale
    assert masq.dump() == {}
