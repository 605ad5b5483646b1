"""Pure nftables rendering and the in-memory fake (no root, no nft)."""

from __future__ import annotations

import ipaddress

import pytest

from cni_plugin.firewall import render
from cni_plugin.firewall.backend import MasqEntry
from cni_plugin.firewall.fake import FakeMasquerade
from cni_plugin.spec.errors import FirewallFailure

A4 = ipaddress.ip_interface("198.18.5.7/24")
A6 = ipaddress.ip_interface("fd5c:11a0::7/64")


def test_names_are_stable_and_short():
    assert render.network_id("mynet") == render.network_id("mynet")
    assert render.network_id("mynet") != render.network_id("other")
    assert len(render.network_id("x" * 200)) == 12
    assert render.attachment_tag("c1", "eth0") != render.attachment_tag("c1", "eth1")
    assert len(render.attachment_tag("c1", "eth0")) == 16


def test_add_is_one_idempotent_transaction_with_set_elements():
    script = render.render_add("mynet", "tag1", [A4, A6])
    n = render.network_id("mynet")
    lines = script.splitlines()
    assert lines[0] == "add table inet pycni"
    assert f"flush chain inet pycni masq_{n}" in lines
    # The flush precedes the rules it rebuilds: re-running ADD never duplicates a rule.
    flush = lines.index(f"flush chain inet pycni masq_{n}")
    rules = [i for i, line in enumerate(lines) if line.startswith("add rule")]
    assert rules and min(rules) > flush and len(rules) == 4
    assert f'add element inet pycni pods4_{n} {{ 198.18.5.7 comment "tag1" }}' in lines
    assert f'add element inet pycni pods6_{n} {{ fd5c:11a0::7 comment "tag1" }}' in lines
    assert f"add element inet pycni nets4_{n} {{ 198.18.5.0/24 }}" in lines
    assert f"ip saddr @pods4_{n} ip daddr != @nets4_{n} masquerade" in script
    assert "ip daddr 224.0.0.0/4 return" in script
    assert not any("chain" in line and "198.18" in line for line in lines), "no chain per pod"


def test_stale_element_is_retagged_not_duplicated():
    lines = render.render_add("n", "new", [A4]).splitlines()
    pods = [line for line in lines if "pods4" in line and "element" in line]
    assert [p.split()[0] for p in pods] == ["add", "delete", "add"]


def test_delete_renders_only_given_entries():
    n = render.network_id("n")
    script = render.render_delete("n", [MasqEntry(A4.ip, "t"), MasqEntry(A6.ip, "t")])
    assert script.splitlines() == [
        f"delete element inet pycni pods4_{n} {{ 198.18.5.7 }}",
        f"delete element inet pycni pods6_{n} {{ fd5c:11a0::7 }}",
    ]
    assert render.render_delete("n", []) == ""


def test_parse_entries_reads_nft_json():
    n = render.network_id("n")
    listing = {"nftables": [
        {"metainfo": {}},
        {"set": {"name": f"pods4_{n}", "elem": [{"elem": {"val": "198.18.5.7", "comment": "t1"}}, "198.18.5.8"]}},
        {"set": {"name": f"nets4_{n}", "elem": [{"prefix": {"addr": "198.18.5.0", "len": 24}}]}},
        {"set": {"name": "pods4_other", "elem": [{"elem": {"val": "10.0.0.1", "comment": "x"}}]}},
    ]}
    assert render.parse_entries("n", listing) == [
        MasqEntry(ipaddress.ip_address("198.18.5.7"), "t1"),
        MasqEntry(ipaddress.ip_address("198.18.5.8"), ""),
    ]


def test_quotes_cannot_break_out_of_comments():
    assert '"' not in render._quote('a"b')[1:-1]


def test_fake_remove_and_gc_by_tag():
    fake = FakeMasquerade()
    fake.add("n", "t1", [A4])
    fake.add("n", "t2", [ipaddress.ip_interface("198.18.5.9/24")])
    assert fake.remove("n", "t1") == [MasqEntry(A4.ip, "t1")]
    assert fake.remove("n", "t1") == []  # repeated DEL
    assert fake.dump() == {"n": {"198.18.5.9": "t2"}}
    assert [e.tag for e in fake.gc("n", keep={"t9"})] == ["t2"]
    assert fake.dump() == {}


def test_fake_broken_raises_firewall_failure():
    with pytest.raises(FirewallFailure):
        FakeMasquerade(broken=True).add("n", "t", [A4])


def test_spoofcheck_renders_set_elements_scoped_by_network_and_tag():
    script = render.render_spoof_add("n", "t1", "veth1234abcd", "0a:58:00:00:00:01")
    comment = render.spoof_comment("n", "t1")
    assert comment.startswith(render.network_id("n") + "-") and comment.endswith("t1")
    rule = "add rule bridge pycni prerouting iifname @spoof_ports iifname . ether saddr != @spoof_allowed drop"
    assert rule in script
    elem = f'{{ "veth1234abcd" . 0a:58:00:00:00:01 comment "{comment}" }}'
    assert f"add element bridge pycni spoof_allowed {elem}" in script
    lines = script.splitlines()
    assert lines.index("flush chain bridge pycni prerouting") < lines.index(
        "add rule bridge pycni prerouting iifname @spoof_ports iifname . ether saddr != @spoof_allowed drop")


def test_spoofcheck_parse_and_delete_round_trip():
    from cni_plugin.firewall.backend import SpoofEntry

    listing = {"nftables": [
        {"set": {"name": "spoof_ports", "elem": [{"elem": {"val": "vethA", "comment": "c"}}]}},
        {"set": {"name": "spoof_allowed",
                 "elem": [{"elem": {"val": {"concat": ["vethA", "0a:58:00:00:00:01"]}, "comment": "c"}}]}},
    ]}
    entries = render.parse_spoof_entries(listing)
    assert entries == [SpoofEntry("vethA", "", "c"), SpoofEntry("vethA", "0a:58:00:00:00:01", "c")]
    assert render.render_spoof_delete(entries).splitlines() == [
        'delete element bridge pycni spoof_ports { "vethA" }',
        'delete element bridge pycni spoof_allowed { "vethA" . 0a:58:00:00:00:01 }',
    ]
