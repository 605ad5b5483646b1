"""compile.py: the per-node model, the nft script's structure, and its syntax (nft -c)."""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
from dataclasses import replace

import pytest

from cni_plugin.policy import compile as pc
from cni_plugin.policy import model as m
from tests import netpol_support as ns


def _case_world(file: str, step: int = 0) -> m.World:
    case = next(c for c in ns.cases() if c.file == file)
    return list(ns.steps(case))[step].world


def _ifnames(world: m.World) -> dict[str, str]:
    return {p.key: f"veth{pc.h(p.key)[:8]}" for p in world.pods}


def _rich_world() -> m.World:
    """Both families, ipBlock with except, named ports both ways, ANP with Pass/Deny, BANP."""
    docs = """
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {ns: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {ns: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {pod: a}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]
status: {podIPs: [{ip: 10.244.1.2}, {ip: "fd00::2"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {pod: b}}
spec:
  nodeName: n2
  containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]
status: {podIPs: [{ip: 10.244.2.3}, {ip: "fd00::3"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: web, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {ns: y}}}, {ipBlock: {cidr: 192.0.2.0/24, except: [192.0.2.128/25]}}]
    ports: [{port: http}, {port: 7000, endPort: 7010, protocol: SCTP}]
  egress:
  - to: [{podSelector: {}, namespaceSelector: {}}]
    ports: [{port: http}]
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: ops}
spec:
  priority: 10
  subject: {namespaces: {}}
  ingress:
  - {name: pass-y, action: Pass, from: [{namespaces: {matchLabels: {ns: y}}}]}
  - name: deny-rest
    action: Deny
    from: [{namespaces: {}}]
    ports: [{portRange: {protocol: TCP, start: 1, end: 1023}}]
  egress:
  - {name: no-metadata, action: Deny, to: [{networks: [169.254.169.254/32]}]}
---
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject: {namespaces: {}}
  ingress:
  - {name: baseline-deny, action: Deny, from: [{namespaces: {}}]}
"""
    return m.build_world(m.parse_text(docs))


def test_names_are_stable_short_and_prefixed() -> None:
    world = _rich_world()
    a = pc.compile_node(world, "n1", _ifnames(world))
    b = pc.compile_node(world, "n1", _ifnames(world))
    assert a == b
    names = pc.object_names(a)
    assert all(n.startswith("np") and len(n) <= 31 for n in names), names
    assert pc.chain_names("x/a")["ingress"] == "np_i_" + pc.h("x/a")


def test_only_the_nodes_own_pods_get_chains() -> None:
    world = _rich_world()
    assert [p.pod for p in pc.compile_node(world, "n1").pods] == ["x/a"]
    assert [p.pod for p in pc.compile_node(world, "n2").pods] == ["y/b"]


def test_ipblock_except_becomes_disjoint_ranges() -> None:
    world = _rich_world()
    model = pc.compile_node(world, "n1")
    s4 = [
        s
        for s in model.sets
        if s.family == 4 and s.ports is None and ipaddress.ip_network("192.0.2.0/25") in s.networks
    ]
    assert len(s4) == 1
    assert s4[0].networks == (ipaddress.ip_network("192.0.2.0/25"),)


def test_named_ports_resolve_at_the_destination() -> None:
    world = _rich_world()
    model = pc.compile_node(world, "n1")
    ing = model.pods[0].ingress.np
    # ingress: x/a's own container port named http (8080)
    assert any(mt.ports == (8080, 8080) and mt.protocol == "TCP" for mt in ing)
    # egress: a set of (destination address, protocol, that pod's port named http)
    qsets = [s for s in model.sets if s.ports is not None]
    elems = {e for s in qsets for e in (s.ports or ())}
    assert (ipaddress.ip_address("10.244.2.3"), "TCP", 9090) in elems
    assert (ipaddress.ip_address("10.244.1.2"), "TCP", 8080) in elems


@pytest.mark.parametrize("layout", pc.LAYOUTS)
def test_script_structure(layout: str) -> None:
    world = _rich_world()
    model = pc.compile_node(world, "n1", _ifnames(world))
    script = pc.render_nft(model, layout=layout)
    table = "inet pycni"
    lines = script.splitlines()
    # nothing outside pycni's table, and only policy objects of it
    for ln in lines:
        words = ln.split()
        assert words[1] in ("table", "chain", "rule", "set", "map", "element", "counter"), ln
        assert " ".join(words[2:4]) == table, ln
        if words[1] != "table":
            assert words[4].startswith("np"), ln
    assert lines[0] == f"add table {table}"
    fwd = [
        ln.removeprefix(f"add rule {table} np_forward ")
        for ln in lines
        if ln.startswith(f"add rule {table} np_forward ")
    ]
    assert fwd[0] == "ct state established,related accept"
    assert fwd[1].startswith("icmpv6 type { nd-neighbor-solicit")
    assert fwd[2] == "fib saddr type local accept"
    chains = pc.chain_names("x/a")
    if layout == "ifname":
        assert fwd[3:] == ["iifname vmap @np_egress", "oifname vmap @np_ingress"]
        assert f'add element {table} np_ingress {{ "{_ifnames(world)["x/a"]}" : jump {chains["ingress"]} }}' in lines
    else:
        assert fwd[3:] == [
            "ip saddr vmap @np_egress4",
            "ip6 saddr vmap @np_egress6",
            "ip daddr vmap @np_ingress4",
            "ip6 daddr vmap @np_ingress6",
        ]
        assert f"add element {table} np_ingress4 {{ 10.244.1.2 : jump {chains['ingress']} }}" in lines
        assert f"add element {table} np_egress6 {{ fd00::2 : jump {chains['egress']} }}" in lines
    # every chain is flushed before it is refilled
    first_rule = min(i for i, ln in enumerate(lines) if ln.startswith("add rule"))
    for chain in pc.chain_bodies(model):
        assert lines.index(f"flush chain {table} {chain}") < first_rule
    # drop counters per policy; an ANP Pass jumps to the pod's NetworkPolicy tier
    assert re.search(r'counter name "np_c_\w+" drop comment "isolated by x/web"', script)
    assert f"goto {chains['ingress_tier']}" in script
    assert f"add rule {table} {chains['egress']} ip daddr @" in script


def test_stale_objects_are_deleted_after_the_maps_are_flushed() -> None:
    world = _rich_world()
    model = pc.compile_node(world, "n1", _ifnames(world))
    gone = ["np_i_000000000000", "np4_000000000000", "np_c_000000000000", "masq_0123"]
    lines = pc.render_nft(model, existing=[*pc.object_names(model), *gone]).splitlines()
    assert lines.index("flush chain inet pycni np_i_000000000000") < lines.index(
        "delete chain inet pycni np_i_000000000000"
    )
    assert lines.index("flush map inet pycni np_ingress4") < lines.index("delete chain inet pycni np_i_000000000000")
    assert "delete set inet pycni np4_000000000000" in lines
    assert "delete counter inet pycni np_c_000000000000" in lines
    assert not any("masq_0123" in ln for ln in lines)
    assert not any(ln.startswith("delete") for ln in pc.render_nft(model, pc.object_names(model)).splitlines())


def test_a_pod_joining_a_selector_changes_set_elements_only() -> None:
    file = "tcp-should-allow-ingress-access-from-updated-pod.yaml"
    before, after = _case_world(file, 0), _case_world(file, 1)
    mb, ma = pc.compile_node(before, "node-1"), pc.compile_node(after, "node-1")
    assert pc.chain_bodies(mb) == pc.chain_bodies(ma)
    assert [s.name for s in mb.sets] == [s.name for s in ma.sets]
    assert [s.networks for s in mb.sets] != [s.networks for s in ma.sets]
    xb = ipaddress.ip_network("10.244.2.12/32")
    assert not any(xb in s.networks for s in mb.sets) and any(xb in s.networks for s in ma.sets)


def test_simulation_agrees_with_verdict_on_a_rich_world() -> None:
    from cni_plugin.policy.evaluate import verdict

    world = _rich_world()
    models = [pc.compile_node(world, n) for n in ("n1", "n2")]
    ends = [p.ips[0] for p in world.pods] + [p.ips[1] for p in world.pods]
    ends += [ipaddress.ip_address(a) for a in ("192.0.2.7", "192.0.2.200", "169.254.169.254", "fd00::99")]
    checked = 0
    for s in ends:
        for d in ends:
            if s.version != d.version or s == d:
                continue
            for port, proto in ((8080, "TCP"), (9090, "TCP"), (53, "UDP"), (7005, "SCTP"), (80, "TCP"), (5000, "TCP")):
                want = verdict(world, s, d, port, proto).allowed
                got = pc.simulate(models, s, d, port, proto).allowed
                assert want == got, (s, d, port, proto)
                checked += 1
    assert checked > 100


def _nft_check(script: str) -> subprocess.CompletedProcess[str]:
    # `nft -c` only checks; in a fresh network namespace it cannot see or touch the machine's rules.
    return subprocess.run(
        ["unshare", "--net", "nft", "-c", "-f", "-"], input=script, text=True, capture_output=True, timeout=30
    )


needs_nft = pytest.mark.skipif(
    shutil.which("nft") is None or shutil.which("unshare") is None or os.geteuid() != 0,
    reason="nft -c in a private network namespace needs nft, unshare and root",
)


@needs_nft
@pytest.mark.parametrize("layout", pc.LAYOUTS)
def test_rendered_script_is_valid_nft(layout: str) -> None:
    world = _rich_world()
    for node in ("n1", "n2"):
        model = pc.compile_node(world, node, _ifnames(world))
        res = _nft_check(pc.render_nft(model, layout=layout))
        assert res.returncode == 0, res.stderr


@needs_nft
@pytest.mark.parametrize(
    "file",
    [
        "tcp-should-support-denying-of-egress-traffic-on-the-client-side-even-if-the-server-explicitly.yaml",
        "tcp-should-allow-egress-access-on-one-named-port.yaml",
        "tcp-should-enforce-except-clause-while-egress-access-to-server-in-cidr-block.yaml",
    ],
)
def test_conformance_worlds_render_valid_nft(file: str) -> None:
    world = _case_world(file)
    for layout in pc.LAYOUTS:
        res = _nft_check(pc.render_nft(pc.compile_node(world, "node-1", _ifnames(world)), layout=layout))
        assert res.returncode == 0, res.stderr


@needs_nft
def test_nft_check_can_fail() -> None:
    assert _nft_check("add rule inet pycni np_nowhere drop\n").returncode != 0


def test_replace_keeps_world_index() -> None:
    world = _rich_world()
    w2 = replace(world, namespaces=())
    assert w2.namespace_labels("x") == {m.NAMESPACE_NAME_LABEL: "x"}


@needs_nft
@pytest.mark.parametrize("layout", pc.LAYOUTS)
def test_resync_replaces_atomically_in_a_private_netns(tmp_path, layout: str) -> None:  # type: ignore[no-untyped-def]
    # Load a model, load it again (idempotent), then a model without x/a with the first model's
    # names as `existing`: x/a's chains and now-unused sets go, and the masquerade objects another
    # pycni part keeps in the same table stay.
    world = _rich_world()
    first = pc.compile_node(world, None, _ifnames(world))
    smaller = replace(world, pods=tuple(p for p in world.pods if p.key != "x/a"), policies=())
    second = pc.compile_node(smaller, None, _ifnames(smaller))
    t = "inet pycni"
    (tmp_path / "other.nft").write_text(f"add table {t}\nadd chain {t} masq_keep\n")
    (tmp_path / "a.nft").write_text(pc.render_nft(first, layout=layout))
    (tmp_path / "b.nft").write_text(pc.render_nft(second, pc.object_names(first, layout), layout))
    files = ("other", "a", "a", "b")
    script = " && ".join(f"nft -f {tmp_path}/{f}.nft" for f in files) + f" && nft list table {t}"
    res = subprocess.run(["unshare", "--net", "sh", "-c", script], text=True, capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    listing = res.stdout
    assert "chain masq_keep" in listing
    assert pc.chain_names("x/a")["ingress"] not in listing
    assert pc.chain_names("y/b")["ingress"] in listing
    assert not any(s.name in listing for s in first.sets if s.name not in {t.name for t in second.sets})


def test_delta_is_set_elements_only_and_none_when_rules_change() -> None:
    file = "tcp-should-allow-ingress-access-from-updated-pod.yaml"
    before, after = _case_world(file, 0), _case_world(file, 1)
    mb, ma = pc.compile_node(before, "node-1"), pc.compile_node(after, "node-1")
    delta = pc.render_nft_delta(mb, ma)
    assert delta is not None
    assert delta.splitlines() and all(ln.startswith("add element inet pycni np4_") for ln in delta.splitlines())
    assert "10.244.2.12" in delta
    assert pc.render_nft_delta(mb, mb) == ""
    other = pc.compile_node(_case_world("tcp-should-support-a-default-deny-all-policy.yaml"), "node-1")
    assert pc.render_nft_delta(mb, other) is None


@needs_nft
def test_listing_names_counters_and_delta_against_the_kernel(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    file = "tcp-should-allow-ingress-access-from-updated-pod.yaml"
    before, after = _case_world(file, 0), _case_world(file, 1)
    mb = pc.compile_node(before, "node-1", _ifnames(before))
    ma = pc.compile_node(after, "node-1", _ifnames(after))
    delta = pc.render_nft_delta(mb, ma)
    assert delta
    (tmp_path / "full.nft").write_text(pc.render_nft(mb))
    (tmp_path / "delta.nft").write_text(delta)
    script = f"nft -f {tmp_path}/full.nft && nft -f {tmp_path}/delta.nft && nft -j list table inet pycni"
    res = subprocess.run(["unshare", "--net", "sh", "-c", script], text=True, capture_output=True, timeout=30)
    assert res.returncode == 0, res.stderr
    listing = json.loads(res.stdout)
    assert pc.names_from_listing(listing) == pc.object_names(ma)
    assert set(pc.counters_from_listing(listing)) == {c for c, _ in ma.counters}
    sets = {}
    for item in listing["nftables"]:
        if "set" in item:
            elems = item["set"].get("elem", [])
            sets[item["set"]["name"]] = {
                e if isinstance(e, str) else f"{e['prefix']['addr']}/{e['prefix']['len']}" for e in elems
            }
    for s in ma.sets:
        assert sets[s.name] == set(pc._elements(s)), s.name


def _many_policies_world() -> m.World:
    pod = m.Pod("x", "a", (("app", "web"),), (ipaddress.ip_address("10.0.0.2"),), (), "n1")
    pols = tuple(
        m.parse_network_policy(
            {
                "metadata": {
                    "name": f"a-rather-long-policy-name-that-operators-like-to-write-{i:03d}",
                    "namespace": "x",
                },
                "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 1000 + i}]}]},
            }
        )
        for i in range(30)
    )
    return m.World(pods=(pod,), policies=pols)


def test_comments_fit_nft_limit() -> None:
    script = pc.render_nft(pc.compile_node(_many_policies_world(), "n1"))
    comments = re.findall(r'comment ("[^"]*")', script)
    assert comments and all(len(c.encode()) - 2 <= 128 for c in comments)
    assert any(c.endswith('..."') for c in comments)


@needs_nft
def test_many_isolating_policies_render_valid_nft() -> None:
    res = _nft_check(pc.render_nft(pc.compile_node(_many_policies_world(), "n1")))
    assert res.returncode == 0, res.stderr
