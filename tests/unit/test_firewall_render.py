"""Pure nftables rendering, the in-memory fake, and the masquerade lock (no root, no nft)."""

from __future__ import annotations

import ipaddress
import os

import pytest

from cni_plugin.firewall import lock, render
from cni_plugin.firewall.backend import MasqEntry
from cni_plugin.firewall.fake import FakeMasquerade
from cni_plugin.firewall.nftables import NftMasquerade
from cni_plugin.spec.errors import FirewallFailure, TryAgainLater

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


# --- the network's last element takes its chain and sets along -------------------------------------------


def _masq_listing(network: str, *elems: tuple[str, str], skeleton: bool = True) -> dict:
    """What `nft -j list table inet pycni` prints for `network` (plus another network and portmap)."""
    s, other = render.set_names(network), render.set_names("other")
    items: list[dict] = [{"metainfo": {"version": "1.0.6"}}, {"table": {"family": "inet", "name": "pycni"}}]
    if skeleton:
        pods = [{"elem": {"val": ip, "comment": tag}} for ip, tag in elems if ":" not in ip]
        items += [
            {"set": {"name": s["pods4"], "type": "ipv4_addr", **({"elem": pods} if pods else {})}},
            {"set": {"name": s["pods6"], "type": "ipv6_addr"}},
            {"set": {"name": s["nets4"], "type": "ipv4_addr", "elem": [{"prefix": {"addr": "198.18.5.0", "len": 24}}]}},
            {"set": {"name": s["nets6"], "type": "ipv6_addr"}},
            {"chain": {"name": render.chain_name(network), "hook": "postrouting"}},
            {"rule": {"chain": render.chain_name(network), "expr": []}},
        ]
    items += [
        {"set": {"name": other["pods4"], "elem": [{"elem": {"val": "10.9.0.2", "comment": "o"}}]}},
        {"chain": {"name": render.chain_name("other")}},
        {"map": {"name": "hostports4"}},
        {"chain": {"name": "hostports_masq"}},
    ]
    return {"nftables": items}


def test_removal_of_one_of_two_pods_keeps_the_skeleton():
    n = render.network_id("n")
    listing = _masq_listing("n", ("198.18.5.7", "t1"), ("198.18.5.8", "t2"))
    plan = render.plan_removal("n", listing, lambda tag: tag == "t1")
    assert plan.removed == (MasqEntry(A4.ip, "t1"),) and not plan.teardown
    assert plan.script.splitlines() == [f"delete element inet pycni pods4_{n} {{ 198.18.5.7 }}"]


def test_removal_of_the_last_pod_deletes_chain_and_sets_in_one_transaction():
    n = render.network_id("n")
    plan = render.plan_removal("n", _masq_listing("n", ("198.18.5.7", "t1")), lambda tag: tag == "t1")
    assert plan.removed == (MasqEntry(A4.ip, "t1"),) and plan.teardown
    assert plan.script.splitlines() == [
        f"flush chain inet pycni masq_{n}",
        f"delete chain inet pycni masq_{n}",  # its rules held the sets: gone first
        f"delete set inet pycni pods4_{n}",
        f"delete set inet pycni pods6_{n}",
        f"delete set inet pycni nets4_{n}",
        f"delete set inet pycni nets6_{n}",
    ]
    # Other networks, portmap's objects and the table itself are never named.
    other = render.network_id("other")
    assert other not in plan.script and "hostports" not in plan.script and "table" not in plan.script


def test_gc_keeping_nobody_is_a_teardown_and_an_empty_skeleton_goes_on_any_removal():
    listing = _masq_listing("n", ("198.18.5.7", "t1"), ("198.18.5.8", "t2"))
    assert render.plan_removal("n", listing, lambda tag: tag not in {"t9"}).teardown
    # A skeleton without elements (left by an older pycni): the next DEL of the network removes it.
    plan = render.plan_removal("n", _masq_listing("n"), lambda tag: tag == "t1")
    assert plan.teardown and plan.removed == () and "delete chain" in plan.script


def test_removal_names_only_objects_that_exist():
    # Nothing of the network in the table (or no table at all): nothing to do, repeated DEL is a no-op.
    assert render.plan_removal("n", _masq_listing("n", skeleton=False), lambda tag: True).script == ""
    assert render.plan_removal("n", {}, lambda tag: True) == render.RemovalPlan((), False, "")
    # A partial skeleton: only what is there is deleted (a delete of a missing object fails nft -f).
    listing = _masq_listing("n")
    listing["nftables"] = [i for i in listing["nftables"] if "chain" not in i and "rule" not in i]
    plan = render.plan_removal("n", listing, lambda tag: True)
    assert plan.teardown and "chain" not in plan.script and plan.script.count("delete set") == 4


def test_objects_lists_chains_sets_and_maps():
    chains, sets = render.objects(_masq_listing("n"))
    assert render.chain_name("n") in chains and "hostports_masq" in chains
    assert set(render.set_names("n").values()) <= sets and "hostports4" in sets
    assert render.objects({}) == (set(), set())


class RecordingRunner:
    """An NftRunner stand-in that serves a listing, records scripts, and can fail a teardown.
    Every call asserts that the masquerade lock is held by someone (this test)."""

    def __init__(self, listing: dict, lock_path: str, fail_teardown: bool = False) -> None:
        self.listing_json, self.lock_path, self.fail_teardown = listing, lock_path, fail_teardown
        self.scripts: list[str] = []

    def _assert_locked(self) -> None:
        with pytest.raises(TryAgainLater):
            with lock.locked(self.lock_path, "probe", timeout=0):
                pass

    def listing(self, family: str) -> dict:
        self._assert_locked()
        return self.listing_json

    def run(self, argv: list[str], script: str = "", what: str = "") -> str:
        self._assert_locked()
        self.scripts.append(script)
        if self.fail_teardown and "delete set" in script:
            raise FirewallFailure(f"nftables: {what} failed", "Could not process rule: Device or resource busy")
        return ""


def test_masquerade_add_and_remove_list_and_apply_under_the_lock(tmp_path):
    path = str(tmp_path / "masquerade.lock")
    runner = RecordingRunner(_masq_listing("n", ("198.18.5.7", "t1")), path)
    masq = NftMasquerade(lock_path=path, runner=runner)  # type: ignore[arg-type]
    masq.add("n", "t1", [A4])
    assert masq.remove("n", "t1") == [MasqEntry(A4.ip, "t1")]
    assert "add element" in runner.scripts[0] and "delete chain" in runner.scripts[1]
    with lock.locked(path, "test", timeout=0):
        pass  # released


def test_a_refused_teardown_still_removes_the_attachments_elements(tmp_path, capsys):
    path = str(tmp_path / "masquerade.lock")
    runner = RecordingRunner(_masq_listing("n", ("198.18.5.7", "t1")), path, fail_teardown=True)
    masq = NftMasquerade(lock_path=path, runner=runner)  # type: ignore[arg-type]
    assert masq.gc("n", keep=set()) == [MasqEntry(A4.ip, "t1")]
    assert runner.scripts[1] == render.render_delete("n", [MasqEntry(A4.ip, "t1")])
    assert "chain and sets stay" in capsys.readouterr().err


def test_a_busy_lock_is_try_again_later_and_released_on_error(tmp_path):
    path = str(tmp_path / "sub" / "x.lock")
    with lock.locked(path, "masquerade"):
        with pytest.raises(TryAgainLater) as busy:
            with lock.locked(path, "masquerade", timeout=0.05):
                pass
    assert busy.value.code == 11 and "masquerade lock" in busy.value.msg
    with pytest.raises(RuntimeError):
        with lock.locked(path, "masquerade", timeout=0):
            raise RuntimeError("boom")
    with lock.locked(path, "masquerade", timeout=0):
        pass  # the failed holder let go
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    assert lock.lock_path("masquerade") == "/run/pycni/masquerade.lock"


def test_a_table_goes_only_when_the_transaction_empties_it():
    table = {"table": {"family": "inet", "name": "pycni"}}
    listing = {"nftables": [table, {"chain": {"name": "masq_x"}}, {"set": {"name": "pods4_x"}},
                            {"map": {"name": "hostports4"}}, {"rule": {"chain": "masq_x"}}]}
    lines = render.render_teardown(["masq_x"], ["pods4_x"])
    assert render.with_table_teardown(listing, lines) == lines  # the map is left
    lines += ["delete map inet pycni hostports4"]
    assert render.with_table_teardown(listing, lines)[-1] == "delete table inet pycni"
    assert render.with_table_teardown({"nftables": [table]}, []) == ["delete table inet pycni"]  # empty
    assert render.with_table_teardown({}, []) == []  # no table at all
    other = {"nftables": [table, {"flowtable": {"name": "ft"}}]}  # anything else keeps it
    assert render.with_table_teardown(other, []) == []


def test_the_last_macspoofchk_entries_take_the_chain_and_sets_along():
    listing = {"nftables": [{"table": {"family": "bridge", "name": "pycni"}}, {"chain": {"name": "prerouting"}},
                            {"set": {"name": "spoof_ports", "elem": [{"elem": {"val": "veth1", "comment": "c"}}]}},
                            {"set": {"name": "spoof_allowed"}}]}
    entries = render.parse_spoof_entries(listing)
    lines = render.render_spoof_removal(listing, entries, everything=True)
    assert "delete chain bridge pycni prerouting" in lines and "delete set bridge pycni spoof_ports" in lines
    assert render.with_table_teardown(listing, lines, render.SPOOF_TABLE)[-1] == "delete table bridge pycni"
    assert render.render_spoof_removal(listing, entries, everything=False) == [
        'delete element bridge pycni spoof_ports { "veth1" }']
