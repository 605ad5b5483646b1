"""firewall plugin: config, prevResult targets, nft/iptables rendering and parsing (pure, no root)."""

from __future__ import annotations

import io
import ipaddress
import json

import pytest

from cni_plugin import entry
from cni_plugin.firewall import plugin
from cni_plugin.firewall import policy_render as pr
from cni_plugin.firewall.render import attachment_tag, network_id
from cni_plugin.spec import skel
from cni_plugin.spec.errors import FirewallFailure, InvalidConfig
from cni_plugin.spec.types import Interface, IPConfig, Result

A4, A6 = ipaddress.ip_address("198.18.0.2"), ipaddress.ip_address("fd5c:11a0::2")


def conf(**keys):
    return plugin.parse_config(plugin.FirewallConf, {"name": "net1", **keys})


def bridge_result(*ips: str) -> Result:
    return Result(
        interfaces=(Interface("cni0", "02:00:00:00:00:01"), Interface("veth1234abcd", "02:00:00:00:00:02"),
                    Interface("eth0", "02:00:00:00:00:03", sandbox="/run/netns/p")),
        ips=tuple(IPConfig(ipaddress.ip_interface(ip), interface=2) for ip in ips),
    )


# --- config ---------------------------------------------------------------------------------------------


def test_defaults():
    c = conf()
    assert (c.backend_name, c.admin_chain, c.policy) == ("nftables", "CNI-ADMIN", "open")
    assert conf(backend="", ingressPolicy="", iptablesAdminChainName="").policy == "open"


@pytest.mark.parametrize("name", ["", "CNI-ADMIN", "MY_ADMIN.v4", "A" * 28])
def test_admin_chain_names_accepted(name):
    assert conf(iptablesAdminChainName=name).admin_chain == (name or "CNI-ADMIN")


@pytest.mark.parametrize("name", ["A" * 29, "has space", "1abc", "bad;name", "fw_mine", "masq_x", "FORWARD",
                                  "CNI-FORWARD", 'x"y'])
def test_admin_chain_names_refused(name):
    with pytest.raises(InvalidConfig) as info:
        conf(iptablesAdminChainName=name)
    assert "iptablesAdminChainName" in info.value.details


@pytest.mark.parametrize(("keys", "where"), [({"ingressPolicy": "closed"}, "ingressPolicy"),
                                             ({"backend": "ebtables"}, "backend")])
def test_bad_values_are_code_7(keys, where):
    with pytest.raises(InvalidConfig) as info:
        conf(**keys)
    assert where in info.value.details


# --- targets from prevResult ----------------------------------------------------------------------------


def test_target_open_takes_every_address_once():
    prev = bridge_result("198.18.0.2/24", "fd5c:11a0::2/64", "198.18.0.2/24")
    assert plugin.target(prev, "open") == plugin.Target((A4, A6), "", "")


def test_target_isolation_reads_bridge_and_host_port():
    prev = bridge_result("198.18.0.2/24")
    assert plugin.target(prev, "same-bridge") == plugin.Target((A4,), "cni0", "")
    assert plugin.target(prev, "isolated") == plugin.Target((A4,), "cni0", "veth1234abcd")


def test_target_isolation_needs_a_bridge_result():
    pod_only = Result(interfaces=(Interface("eth0", sandbox="/run/netns/p"),))
    with pytest.raises(InvalidConfig):
        plugin.target(pod_only, "same-bridge")
    no_port = Result(interfaces=(Interface("cni0"), Interface("eth0", sandbox="/run/netns/p")))
    assert plugin.target(no_port, "same-bridge").bridge == "cni0"
    with pytest.raises(InvalidConfig):
        plugin.target(no_port, "isolated")


# --- nft rendering --------------------------------------------------------------------------------------


def test_render_open():
    script = pr.render_add("net1", "tag1", [A4, A6], admin="CNI-ADMIN")
    n = network_id("net1")
    assert "add chain inet pycni CNI-ADMIN\n" in script  # created if missing, never flushed
    assert "flush chain inet pycni CNI-ADMIN" not in script
    assert f"add rule inet pycni {pr.admin_jump_chain('CNI-ADMIN')} jump CNI-ADMIN" in script
    assert f"add rule inet pycni fw_{n} ip daddr @fw4_{n} ct state established,related accept" in script
    assert f"add rule inet pycni fw_{n} ip6 saddr @fw6_{n} accept" in script
    assert f'add element inet pycni fw4_{n} {{ 198.18.0.2 comment "tag1" }}' in script
    assert f'add element inet pycni fw6_{n} {{ fd5c:11a0::2 comment "tag1" }}' in script
    assert pr.ISO_CHAIN not in script and "bridge pycni" not in script


def test_render_same_bridge_and_isolated():
    same = pr.render_add("net1", "t", [A4], policy="same-bridge", bridge="cni0").splitlines()
    assert 'add element inet pycni fw_iso_bridges { "cni0" }' in same
    assert same[-1] == 'add element inet pycni fw_iso_intra { "cni0" . "cni0" }'  # own traffic exempt
    iso = pr.render_add("net1", "t", [A4], policy="isolated", bridge="cni0", host_if="veth1").splitlines()
    assert 'delete element inet pycni fw_iso_intra { "cni0" . "cni0" }' in iso  # not exempt
    comment = pr.port_comment("net1", "t")
    assert iso[-1] == f'add element bridge pycni fw_isolated_ports {{ "veth1" comment "{comment}" }}'
    assert any(line.endswith("ether type { ip, ip6 } drop") for line in iso)


def test_render_delete():
    script = pr.render_delete("net1", [pr.FwEntry(A4, "t"), pr.FwEntry(A6, "t")], [pr.PortEntry("veth1", "x")])
    n = network_id("net1")
    assert script.splitlines() == [
        f"delete element inet pycni fw4_{n} {{ 198.18.0.2 }}",
        f"delete element inet pycni fw6_{n} {{ fd5c:11a0::2 }}",
        'delete element bridge pycni fw_isolated_ports { "veth1" }',
    ]
    assert pr.render_delete("net1", []) == ""


def test_distinct_networks_and_admin_chains_get_distinct_names():
    assert pr.chain_name("a") != pr.chain_name("b") and pr.set_name("a", 4) != pr.set_name("a", 6)
    assert pr.admin_jump_chain("CNI-ADMIN") != pr.admin_jump_chain("OTHER")


# --- nft listing parsing (the shape `nft -j list table` prints) -----------------------------------------------


def _listing(network: str) -> dict:
    n = network_id(network)
    return {"nftables": [
        {"metainfo": {"version": "1.0.6"}},
        {"table": {"family": "inet", "name": "pycni"}},
        {"set": {"name": f"fw4_{n}", "type": "ipv4_addr",
                 "elem": [{"elem": {"val": "198.18.0.2", "comment": "t1"}}, "198.18.0.9"]}},
        {"set": {"name": f"fw6_{n}", "type": "ipv6_addr",
                 "elem": [{"elem": {"val": "fd5c:11a0::2", "comment": "t2"}}]}},
        {"set": {"name": "fw_iso_bridges", "type": "ifname", "elem": ["cni0", "cni1"]}},
        {"set": {"name": "fw_iso_intra", "type": ["ifname", "ifname"], "elem": [{"concat": ["cni0", "cni0"]}]}},
        {"set": {"name": "fw_isolated_ports", "type": "ifname", "elem": [{"elem": {"val": "veth1", "comment": "c"}}]}},
        {"chain": {"name": f"fw_{n}"}},
        {"rule": {"chain": f"fw_{n}", "expr": []}},
        {"chain": {"name": "CNI-ADMIN"}},
    ]}


def test_parse_listing():
    listing = _listing("net1")
    assert pr.parse_entries("net1", listing) == [
        pr.FwEntry(A4, "t1"), pr.FwEntry(ipaddress.ip_address("198.18.0.9"), ""), pr.FwEntry(A6, "t2")]
    assert pr.parse_entries("other", listing) == []
    assert pr.parse_isolation(listing) == ({"cni0", "cni1"}, {"cni0"})
    assert pr.parse_ports(listing) == [pr.PortEntry("veth1", "c")]
    assert pr.chains(listing) == {f"fw_{network_id('net1')}": 1, "CNI-ADMIN": 0}
    assert pr.parse_entries("net1", {}) == [] and pr.parse_isolation({}) == (set(), set())


def _full_listing(network: str, *elems: tuple[str, str]) -> dict:
    """The inet table as ADD leaves it: shared objects, this network's, and another network's."""
    n, o = network_id(network), network_id("other")
    items: list[dict] = [{"metainfo": {}}, {"table": {"family": "inet", "name": "pycni"}}]
    for name in ("CNI-ADMIN", pr.admin_jump_chain("CNI-ADMIN"), pr.ISO_CHAIN, f"fw_{n}", f"fw_{o}"):
        items.append({"chain": {"name": name}})
    items.append({"rule": {"chain": f"fw_{n}", "expr": []}})
    v4 = [{"elem": {"val": ip, "comment": tag}} for ip, tag in elems]
    items += [{"set": {"name": f"fw4_{n}", **({"elem": v4} if v4 else {})}}, {"set": {"name": f"fw6_{n}"}},
              {"set": {"name": f"fw4_{o}", "elem": [{"elem": {"val": "10.9.0.2", "comment": "o"}}]}},
              {"set": {"name": pr.ISO_BRIDGES, "elem": ["cni0"]}}, {"set": {"name": pr.ISO_INTRA}}]
    return {"nftables": items}


BRIDGE_LISTING = {"nftables": [{"set": {"name": pr.ISO_PORTS, "elem": [
    {"elem": {"val": "vethA", "comment": pr.port_comment("net1", "t1")}},
    {"elem": {"val": "vethB", "comment": pr.port_comment("net1", "t2")}},
    {"elem": {"val": "vethO", "comment": pr.port_comment("other", "t1")}}]}}]}


def test_removal_of_one_of_two_pods_keeps_the_networks_objects():
    n = network_id("net1")
    plan = pr.plan_removal("net1", _full_listing("net1", ("198.18.0.2", "t1"), ("198.18.0.3", "t2")),
                           BRIDGE_LISTING, lambda tag: tag == "t1")
    assert not plan.teardown and plan.entries == (pr.FwEntry(A4, "t1"),)
    assert plan.script.splitlines() == [f"delete element inet pycni fw4_{n} {{ 198.18.0.2 }}",
                                        'delete element bridge pycni fw_isolated_ports { "vethA" }']


def test_removal_of_the_last_pod_deletes_the_networks_chain_and_sets_only():
    n = network_id("net1")
    plan = pr.plan_removal("net1", _full_listing("net1", ("198.18.0.2", "t1")), BRIDGE_LISTING,
                           lambda tag: tag == "t1")
    assert plan.teardown and plan.ports == (pr.PortEntry("vethA", pr.port_comment("net1", "t1")),)
    assert plan.script.splitlines() == [
        f"flush chain inet pycni fw_{n}",
        f"delete chain inet pycni fw_{n}",
        f"delete set inet pycni fw4_{n}",
        f"delete set inet pycni fw6_{n}",
        'delete element bridge pycni fw_isolated_ports { "vethA" }',  # the port set is shared
    ]
    shared = ("CNI-ADMIN", pr.admin_jump_chain("CNI-ADMIN"), pr.ISO_CHAIN, pr.ISO_BRIDGES, pr.ISO_INTRA,
              network_id("other"), "vethB", "vethO", "table")
    assert not any(name in plan.script for name in shared)


def test_gc_of_everyone_and_an_empty_leftover_are_teardowns_nothing_is_a_no_op():
    listing = _full_listing("net1", ("198.18.0.2", "t1"), ("198.18.0.3", "t2"))
    assert pr.plan_removal("net1", listing, {}, lambda tag: tag not in {"t9"}).teardown
    assert pr.plan_removal("net1", _full_listing("net1"), {}, lambda tag: tag == "t1").teardown
    assert pr.plan_removal("gone", _full_listing("net1"), {}, lambda tag: True).script == ""
    assert pr.plan_removal("net1", {}, {}, lambda tag: True).script == ""


def test_nft_backend_lists_and_applies_under_the_firewall_lock(tmp_path):
    from cni_plugin.firewall import lock
    from cni_plugin.spec.errors import TryAgainLater

    path = str(tmp_path / "firewall.lock")
    scripts: list[str] = []

    class Runner:
        def _held(self) -> None:
            with pytest.raises(TryAgainLater):
                with lock.locked(path, "probe", timeout=0):
                    pass

        def listing(self, family):
            self._held()
            return _full_listing("net1", ("198.18.0.2", "t1")) if family == "inet" else BRIDGE_LISTING

        def run(self, argv, script="", what=""):
            self._held()
            scripts.append(script)
            return ""

    backend = plugin.NftFirewall(Runner(), lock_path=path)  # type: ignore[arg-type]
    backend.add(conf(), "t1", plugin.Target((A4,), "", ""))
    backend.remove(conf(), "t1")
    assert "add element" in scripts[0] and "delete chain" in scripts[1]
    with lock.locked(path, "test", timeout=0):
        pass  # released


# --- iptables -------------------------------------------------------------------------------------------


def test_ipt_rules_and_parsing():
    rules = pr.ipt_pod_rules("net1", "t1", A6)
    assert rules[0].spec[:2] == ("-d", "fd5c:11a0::2/128") and rules[1].spec[:2] == ("-s", "fd5c:11a0::2/128")
    tag = pr.ipt_tag("net1", "t1")
    save = "\n".join([
        "-N CNI-FORWARD",
        '-A CNI-FORWARD -m comment --comment "CNI firewall plugin admin overrides" -j CNI-ADMIN',
        "-A CNI-FORWARD -d 198.18.0.2/32 -m conntrack --ctstate RELATED,ESTABLISHED "
        f"-m comment --comment {tag} -j ACCEPT",
        f"-A CNI-FORWARD -s 198.18.0.2/32 -m comment --comment {tag} -j ACCEPT",
        "-A CNI-FORWARD -s 198.18.0.3/32 -j ACCEPT",
        "-A OTHER -j ACCEPT",
    ])
    specs = pr.parse_ipt_rules(save, "CNI-FORWARD")
    assert len(specs) == 4
    assert specs[0] == ("-m", "comment", "--comment", "CNI firewall plugin admin overrides", "-j", "CNI-ADMIN")
    assert [pr.rule_tag(s, "net1") for s in specs] == [None, "t1", "t1", None]
    assert [pr.rule_tag(s, "net2") for s in specs] == [None] * 4


def test_ipt_isolation_mirrors_the_reference():
    chains, rules = pr.ipt_isolation("cni1", "same-bridge")
    assert chains == [pr.STAGE1, pr.STAGE2]
    specs = [(r.chain, r.spec[:4] if r.spec[0] != "-m" else r.spec[-2:]) for r in rules]
    assert (pr.STAGE1, ("-i", "cni1", "!", "-o")) in specs
    assert not any(r.spec[-1] == "DROP" and r.chain == pr.STAGE1 for r in rules)
    _, iso = pr.ipt_isolation("cni1", "isolated")
    assert any(r.chain == pr.STAGE1 and r.spec[:4] == ("-i", "cni1", "-o", "cni1") and r.spec[-1] == "DROP"
               for r in iso)


# --- handlers with a fake backend ------------------------------------------------------------------------


class FakeBackend:
    def __init__(self, fail_add: bool = False) -> None:
        self.calls: list[tuple] = []
        self.fail_add = fail_add

    def add(self, conf, tag, t):
        self.calls.append(("add", tag, t))
        if self.fail_add:
            raise FirewallFailure("nftables: injected", "boom")

    def remove(self, conf, tag):
        self.calls.append(("remove", tag))

    def gc(self, conf, keep):
        self.calls.append(("gc", frozenset(keep)))

    def check(self, conf, tag, t):
        self.calls.append(("check", tag))

    def usable(self):
        self.calls.append(("usable",))


def _dispatch(verb, config, cid="c1"):
    environ = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/whatever",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/bin"}
    out = io.StringIO()
    rc = skel.dispatch(entry.PLUGINS["firewall"], environ, io.BytesIO(json.dumps(config).encode()), out, io.StringIO())
    return rc, json.loads(out.getvalue()) if out.getvalue().strip() else None


PREV = {"cniVersion": "1.0.0", "interfaces": [{"name": "cni0"}, {"name": "veth1"},
                                              {"name": "eth0", "sandbox": "/run/netns/p"}],
        "ips": [{"address": "198.18.0.2/24", "interface": 2}]}


@pytest.fixture
def fake(monkeypatch):
    backend = FakeBackend()
    monkeypatch.setattr(plugin, "backend_for", lambda conf: backend)
    return backend


def test_add_passes_prev_result_through(fake):
    rc, out = _dispatch("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "firewall", "prevResult": PREV})
    assert rc == 0 and out["interfaces"] == PREV["interfaces"] and out["ips"] == PREV["ips"]
    assert fake.calls == [("add", attachment_tag("c1", "eth0"), plugin.Target((A4,), "", ""))]


def test_add_needs_prev_result_and_refuses_firewalld(fake):
    rc, out = _dispatch("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "firewall"})
    assert rc == 1 and out["code"] == 7 and "prevResult" in out["msg"]
    rc, out = _dispatch("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "firewall", "backend": "firewalld",
                                "prevResult": PREV})
    assert rc == 1 and out["code"] == 2 and "backend" in out["details"]
    rc, out = _dispatch("DEL", {"cniVersion": "1.0.0", "name": "n", "type": "firewall", "backend": "firewalld"})
    assert (rc, out) == (0, None)
    assert fake.calls == []


def test_failed_add_removes_what_it_may_have_added(monkeypatch):
    backend = FakeBackend(fail_add=True)
    monkeypatch.setattr(plugin, "backend_for", lambda conf: backend)
    rc, out = _dispatch("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "firewall", "prevResult": PREV})
    assert rc == 1 and out["code"] == 106
    assert [c[0] for c in backend.calls] == ["add", "remove"]


def test_del_and_gc_need_no_prev_result(fake):
    base = {"cniVersion": "1.1.0", "name": "n", "type": "firewall"}
    assert _dispatch("DEL", base) == (0, None)
    assert _dispatch("GC", base) == (0, None)  # no attachment list: nothing known stale, nothing done
    valid = [{"containerID": "a", "ifname": "eth0"}]
    assert _dispatch("GC", dict(base, **{"cni.dev/valid-attachments": valid})) == (0, None)
    assert fake.calls == [("remove", attachment_tag("c1", "eth0")), ("gc", frozenset({attachment_tag("a", "eth0")}))]


def test_status_reports_an_unusable_backend(monkeypatch):
    class Broken(FakeBackend):
        def usable(self):
            raise FirewallFailure("nftables is not usable", "no nft")

    monkeypatch.setattr(plugin, "backend_for", lambda conf: Broken())
    rc, out = _dispatch("STATUS", {"cniVersion": "1.1.0", "name": "n", "type": "firewall"})
    assert rc == 1 and out["code"] == 50
    rc, out = _dispatch("STATUS", {"cniVersion": "1.1.0", "name": "n", "type": "firewall", "backend": "firewalld"})
    assert rc == 1 and out["code"] == 50


def _only_network_listing(network: str, admin_rules: int = 0, *elems: tuple[str, str]) -> dict:
    """The inet table with one firewall network and its shared objects (admin chain with rules)."""
    n, jump = network_id(network), pr.admin_jump_chain("CNI-ADMIN")
    items: list[dict] = [{"table": {"family": "inet", "name": "pycni"}}]
    items += [{"chain": {"name": name}} for name in ("CNI-ADMIN", jump, pr.ISO_CHAIN, f"fw_{n}")]
    items.append({"rule": {"chain": jump, "expr": [{"jump": {"target": "CNI-ADMIN"}}]}})
    items += [{"rule": {"chain": "CNI-ADMIN", "expr": [{"drop": None}]}} for _ in range(admin_rules)]
    v4 = [{"elem": {"val": ip, "comment": tag}} for ip, tag in elems]
    items += [{"set": {"name": f"fw4_{n}", "elem": v4}}, {"set": {"name": f"fw6_{n}"}},
              {"set": {"name": pr.ISO_BRIDGES, "elem": ["cni0"]}}, {"set": {"name": pr.ISO_INTRA}}]
    return {"nftables": items}


def test_the_last_firewall_network_takes_the_shared_objects_and_the_tables_along():
    from cni_plugin.firewall.render import with_table_teardown

    inet = _only_network_listing("net1", 0, ("198.18.0.2", "t1"))
    bridge = {"nftables": [{"table": {"family": "bridge", "name": "pycni"}}, {"chain": {"name": pr.ISO_PORT_CHAIN}},
                           {"set": {"name": pr.ISO_PORTS, "elem": [
                               {"elem": {"val": "vethA", "comment": pr.port_comment("net1", "t1")}}]}}]}
    plan = pr.plan_removal("net1", inet, bridge, lambda tag: tag == "t1")
    lines = pr.render_shared_teardown(inet, bridge, plan.script.splitlines())
    jump = pr.admin_jump_chain("CNI-ADMIN")
    for wanted in (f"delete chain inet pycni {jump}", "delete chain inet pycni CNI-ADMIN",
                   f"delete chain inet pycni {pr.ISO_CHAIN}", f"delete set inet pycni {pr.ISO_BRIDGES}",
                   f"delete chain bridge pycni {pr.ISO_PORT_CHAIN}", f"delete set bridge pycni {pr.ISO_PORTS}"):
        assert wanted in lines, wanted
    assert not any(line.startswith("delete element bridge") for line in lines)  # the set goes whole
    # The jump is flushed before its target goes: a jump keeps its target in use.
    assert lines.index(f"flush chain inet pycni {jump}") < lines.index("delete chain inet pycni CNI-ADMIN")
    final = with_table_teardown(bridge, with_table_teardown(inet, lines, pr.T), pr.BRIDGE_T)
    assert final[-2:] == ["delete table inet pycni", "delete table bridge pycni"]


def test_shared_firewall_objects_stay_while_needed():
    from cni_plugin.firewall.render import with_table_teardown

    # Another address of the network is left: nothing shared goes.
    inet = _only_network_listing("net1", 0, ("198.18.0.2", "t1"), ("198.18.0.3", "t2"))
    plan = pr.plan_removal("net1", inet, {}, lambda tag: tag == "t1")
    assert pr.render_shared_teardown(inet, {}, plan.script.splitlines()) == plan.script.splitlines()
    # An operator's rule in the admin chain keeps it and its jump, and so the table.
    inet = _only_network_listing("net1", 1, ("198.18.0.2", "t1"))
    plan = pr.plan_removal("net1", inet, {}, lambda tag: True)
    lines = with_table_teardown(inet, pr.render_shared_teardown(inet, {}, plan.script.splitlines()))
    assert "delete chain inet pycni CNI-ADMIN" not in lines and not any("delete table" in x for x in lines)
    assert f"delete chain inet pycni {pr.ISO_CHAIN}" in lines
    # Another pycni part's chain in the table keeps the table.
    inet = _only_network_listing("net1", 0, ("198.18.0.2", "t1"))
    inet["nftables"].append({"chain": {"name": "cluster_masq"}})
    plan = pr.plan_removal("net1", inet, {}, lambda tag: True)
    lines = with_table_teardown(inet, pr.render_shared_teardown(inet, {}, plan.script.splitlines()))
    assert "delete chain inet pycni CNI-ADMIN" in lines and not any("delete table" in x for x in lines)
