"""Pure nftables rendering for portmap: transactions, conflicts, parsing `nft -j` (no root, no nft)."""

from __future__ import annotations

import copy
import ipaddress
import json

import pytest

from cni_plugin.firewall import portmap_render as pr
from cni_plugin.firewall import render

ip = ipaddress.ip_address
net = ipaddress.ip_network
C1 = pr.portmap_comment("net", render.attachment_tag("c1", "eth0"))
C2 = pr.portmap_comment("net", render.attachment_tag("c2", "eth0"))


def port(host_port=8080, proto="tcp", host_ip=None, pod="198.18.0.5", cport=80, comment=C1, family=None):
    pod_ip = ip(pod)
    return pr.PortEntry(
        family=family or pod_ip.version, protocol=proto, host_port=host_port,
        host_ip=ip(host_ip) if host_ip else None, pod_ip=pod_ip, container_port=cport, comment=comment,
    )


def masq(source="198.18.0.0/24", pod="198.18.0.5", comment=C1):
    return pr.HairpinEntry(family=ip(pod).version, source=net(source), pod_ip=ip(pod), comment=comment)


def test_comment_names_network_and_attachment():
    assert C1.startswith(render.network_id("net") + "-")
    assert C1.endswith(render.attachment_tag("c1", "eth0"))
    assert C1 != C2
    assert len(C1) == 29


def test_skeleton_hooks_prerouting_and_output_never_input():
    script = "\n".join(pr.render_skeleton())
    assert "hook prerouting priority dstnat" in script
    assert "hook output priority -100" in script
    assert "hook postrouting priority srcnat" in script
    assert "hook input" not in script
    # Only locally-destined packets are DNATed, in both hooks.
    assert "add rule inet pycni hostports_pre fib daddr type local jump hostports_dnat" in script
    assert "add rule inet pycni hostports_out fib daddr type local jump hostports_dnat" in script
    # Flushes come before the rules they rebuild, so a repeated ADD never duplicates a rule.
    lines = pr.render_skeleton()
    last_flush = max(i for i, line in enumerate(lines) if line.startswith("flush chain"))
    first_rule = min(i for i, line in enumerate(lines) if line.startswith("add rule"))
    assert last_flush < first_rule
    assert len([line for line in lines if line.startswith("add rule")]) == 8
    assert not any("198." in line for line in lines), "no per-pod rule"


def test_specific_host_ip_is_looked_up_before_any_address():
    lines = [line for line in pr.render_skeleton() if "hostports_dnat" in line and "dnat ip" in line]
    assert ["hostipports" in line for line in lines] == [True, True, False, False]
    assert "meta nfproto ipv4 dnat ip to meta l4proto . th dport map @hostports4" in lines[2]


@pytest.mark.parametrize(
    ("entry", "line"),
    [
        (port(), f'create element inet pycni hostports4 {{ tcp . 8080 comment "{C1}" : 198.18.0.5 . 80 }}'),
        (port(proto="udp", host_ip="192.0.2.1"),
         f'create element inet pycni hostipports4 {{ 192.0.2.1 . udp . 8080 comment "{C1}" : 198.18.0.5 . 80 }}'),
        (port(proto="sctp", pod="fd5c::5", cport=9),
         f'create element inet pycni hostports6 {{ sctp . 8080 comment "{C1}" : fd5c::5 . 9 }}'),
        (port(host_ip="2001:db8::1", pod="fd5c::5"),
         f'create element inet pycni hostipports6 {{ 2001:db8::1 . tcp . 8080 comment "{C1}" : fd5c::5 . 80 }}'),
    ],
)
def test_port_elements_are_created_never_added(entry, line):
    assert line in pr.render_add([entry], []).splitlines()


@pytest.mark.parametrize(
    ("entry", "text"),
    [
        (masq(), "198.18.0.0/24 . 198.18.0.5"),
        (masq("127.0.0.1/32"), "127.0.0.1 . 198.18.0.5"),
        (masq("0.0.0.0/0"), "0.0.0.0/0 . 198.18.0.5"),
        (masq("fd5c::/64", "fd5c::5"), "fd5c::/64 . fd5c::5"),
    ],
)
def test_masquerade_elements(entry, text):
    assert entry.key_text() == text
    set_name = f"hostports_masq{entry.family}"
    assert f'add element inet pycni {set_name} {{ {text} comment "{C1}" }}' in pr.render_add([], [entry])


def test_delete_renders_keys_only():
    script = pr.render_delete(pr.Entries(ports=(port(), port(host_ip="192.0.2.1")), masq=(masq(),)))
    assert script.splitlines() == [
        "delete element inet pycni hostports4 { tcp . 8080 }",
        "delete element inet pycni hostipports4 { 192.0.2.1 . tcp . 8080 }",
        "delete element inet pycni hostports_masq4 { 198.18.0.0/24 . 198.18.0.5 }",
    ]
    assert pr.render_delete(pr.Entries()) == ""


# --- conflicts -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "clash"),
    [
        (port(), port(comment=C2, pod="198.18.0.6"), True),                      # same any-address port
        (port(), port(host_ip="192.0.2.1", comment=C2), True),                   # any vs a specific hostIP
        (port(host_ip="192.0.2.1"), port(comment=C2), True),                     # specific vs any
        (port(host_ip="192.0.2.1"), port(host_ip="192.0.2.1", comment=C2), True),
        (port(host_ip="192.0.2.1"), port(host_ip="192.0.2.2", comment=C2), False),  # two specific hostIPs
        (port(), port(proto="udp", comment=C2), False),                          # other protocol
        (port(), port(host_port=8081, comment=C2), False),                       # other port
        (port(), port(pod="fd5c::5", comment=C2), False),                        # other family
    ],
)
def test_collisions(a, b, clash):
    assert pr.collides(a, b) is clash
    assert pr.collides(b, a) is clash


def test_own_elements_never_conflict_and_are_replaced():
    existing = pr.Entries(ports=(port(cport=81),), masq=(masq(),))
    plan = pr.plan_add(pr.Entries(ports=(port(),), masq=(masq(),)), existing)
    assert plan.conflicts == ()
    lines = plan.script.splitlines()
    delete = lines.index("delete element inet pycni hostports4 { tcp . 8080 }")
    create = next(i for i, line in enumerate(lines) if line.startswith("create element inet pycni hostports4"))
    assert delete < create


def test_another_attachments_port_is_a_conflict_and_no_script():
    held = port(comment=C2, pod="198.18.0.9")
    plan = pr.plan_add(pr.Entries(ports=(port(host_ip="192.0.2.1"),)), pr.Entries(ports=(held,)))
    assert plan.script == ""
    assert plan.conflicts == ((port(host_ip="192.0.2.1"), held),)


def test_masquerade_of_a_reused_pod_address_changes_owner():
    stale = masq(comment=C2)
    stale_all = masq("0.0.0.0/0", comment=C2)
    other_pod = masq(pod="198.18.0.6", comment=C2)
    plan = pr.plan_add(pr.Entries(masq=(masq(),)), pr.Entries(masq=(stale, stale_all, other_pod)))
    lines = plan.script.splitlines()
    assert "delete element inet pycni hostports_masq4 { 198.18.0.0/24 . 198.18.0.5 }" in lines
    assert "delete element inet pycni hostports_masq4 { 0.0.0.0/0 . 198.18.0.5 }" in lines
    assert not any("198.18.0.6" in line for line in lines)
    assert lines[-1] == f'add element inet pycni hostports_masq4 {{ 198.18.0.0/24 . 198.18.0.5 comment "{C1}" }}'


# --- parsing -------------------------------------------------------------------------------------

# Trimmed `nft -j list table inet pycni` output of nftables 1.0.6 (with a bridge masquerade set).
LISTING = {"nftables": [
    {"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
    {"table": {"family": "inet", "name": "pycni", "handle": 1}},
    {"set": {"family": "inet", "name": "pods4_abc", "table": "pycni", "type": "ipv4_addr",
             "elem": [{"elem": {"val": "198.18.0.5", "comment": "x"}}]}},
    {"map": {"family": "inet", "name": "hostports4", "table": "pycni", "type": ["inet_proto", "inet_service"],
             "map": "ipv4_addr . inet_service",
             "elem": [[{"elem": {"val": {"concat": ["tcp", 8080]}, "comment": C1}}, {"concat": ["198.18.0.5", 80]}],
                      [{"concat": ["udp", 53]}, {"concat": ["198.18.0.7", 53]}]]}},
    {"map": {"family": "inet", "name": "hostipports4", "table": "pycni",
             "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "ipv4_addr . inet_service",
             "elem": [[{"elem": {"val": {"concat": ["192.0.2.1", "sctp", 9]}, "comment": C2}},
                       {"concat": ["198.18.0.6", 99]}]]}},
    {"map": {"family": "inet", "name": "hostports6", "table": "pycni", "type": ["inet_proto", "inet_service"],
             "map": "ipv6_addr . inet_service",
             "elem": [[{"elem": {"val": {"concat": [6, 8080]}, "comment": C1}}, {"concat": ["fd5c::5", 80]}]]}},
    {"map": {"family": "inet", "name": "hostipports6", "table": "pycni",
             "type": ["ipv6_addr", "inet_proto", "inet_service"], "map": "ipv6_addr . inet_service"}},
    {"set": {"family": "inet", "name": "hostports_masq4", "table": "pycni", "type": ["ipv4_addr", "ipv4_addr"],
             "flags": ["interval"], "elem": [
                 {"elem": {"val": {"concat": [{"prefix": {"addr": "198.18.0.0", "len": 24}}, "198.18.0.5"]},
                           "comment": C1}},
                 {"elem": {"val": {"concat": ["127.0.0.1", "198.18.0.5"]}, "comment": C1}},
                 {"elem": {"val": {"concat": [{"range": ["10.0.0.0", "10.0.0.255"]}, "198.18.0.6"]},
                           "comment": C2}},
                 {"elem": {"val": {"concat": [{"range": ["10.0.0.0", "10.0.0.5"]}, "198.18.0.6"]}, "comment": C2}},
             ]}},
    {"chain": {"family": "inet", "table": "pycni", "name": "hostports_pre", "handle": 9, "type": "nat",
               "hook": "prerouting", "prio": -100, "policy": "accept"}},
]}


def test_parse_entries_reads_every_portmap_element_and_nothing_else():
    entries = pr.parse_entries(json.loads(json.dumps(LISTING)))
    assert entries.ports == (
        port(),
        port(proto="udp", host_port=53, pod="198.18.0.7", cport=53, comment=""),
        port(proto="sctp", host_port=9, host_ip="192.0.2.1", pod="198.18.0.6", cport=99, comment=C2),
        port(pod="fd5c::5"),
    )
    assert entries.masq == (
        masq(),
        masq("127.0.0.1/32"),
        masq("10.0.0.0/24", "198.18.0.6", C2),  # a range that is one prefix; the odd one is skipped
    )
    assert pr.chains_present(LISTING) == {"hostports_pre"}
    assert pr.parse_entries({}) == pr.Entries()


def test_entries_filter_by_comment_and_network():
    entries = pr.parse_entries(LISTING)
    mine = entries.with_comment(C1)
    assert len(mine.ports) == 2 and len(mine.masq) == 2
    assert len(entries.of_network("net").ports) == 3  # the comment-less element is nobody's
    assert not entries.of_network("other")


def test_parsed_entries_render_the_keys_they_were_created_with():
    parsed = pr.parse_entries(LISTING).with_comment(C1)
    assert [e.key_text() for e in parsed.ports] == ["tcp . 8080", "tcp . 8080"]
    assert [e.key_text() for e in parsed.masq] == ["198.18.0.0/24 . 198.18.0.5", "127.0.0.1 . 198.18.0.5"]


def test_the_last_mapping_takes_the_portmap_chains_and_maps_along():
    from cni_plugin.firewall.render import with_table_teardown

    listing = copy.deepcopy(LISTING)
    masq = next(i["set"] for i in listing["nftables"] if i.get("set", {}).get("name") == "hostports_masq4")
    odd = masq["elem"].pop()  # a range that is no prefix: not pycni's, so it keeps the objects
    listing["nftables"] += [{"chain": {"name": c}} for c in pr.CHAINS if c != "hostports_pre"]
    entries = pr.parse_entries(listing)
    kept = copy.deepcopy(listing)
    next(i["set"] for i in kept["nftables"] if i.get("set", {}).get("name") == "hostports_masq4")["elem"].append(odd)
    assert not any(line.startswith("delete chain") for line in pr.render_removal(kept, entries))
    some = pr.Entries(ports=entries.ports[:1])
    assert pr.render_removal(listing, some) == pr.render_delete(some).splitlines()
    lines = pr.render_removal(listing, entries)
    assert all(f"delete chain inet pycni {c}" in lines for c in pr.CHAINS)
    assert not any(line.startswith("delete element") for line in lines)
    assert with_table_teardown(listing, lines) == lines  # the masquerade set pods4_abc keeps the table
    listing["nftables"] = [i for i in listing["nftables"] if i.get("set", {}).get("name") != "pods4_abc"]
    assert with_table_teardown(listing, lines)[-1] == "delete table inet pycni"
