"""explain.py: `pycni policy explain` text, stats text, and the `policy apply` check."""

from __future__ import annotations

import ipaddress

import pytest

from cni_plugin.policy import compile as pc
from cni_plugin.policy import evaluate as ev
from cni_plugin.policy import explain as ex
from cni_plugin.policy import model as m
from tests.unit.test_policy_evaluate import ANP, BANP, DENY_ALL_X, world


def test_explain_denied_names_policy_and_chain() -> None:
    w = world(DENY_ALL_X)
    text = ex.explain(w, "y/b", "x/a", "80/tcp")
    lines = text.splitlines()
    assert lines[0] == "y/b -> x/a 80/TCP: DENIED"
    assert lines[1].startswith("  egress at y/b (node n2): allowed (no policy selects the pod for egress)")
    assert lines[2] == "  ingress at x/a (node n1): DENIED by NetworkPolicy"
    assert "NetworkPolicy x/deny-all (selects the pod for ingress; no ingress rule of it matches)" in lines[3]
    assert lines[4] == f"    enforced in chain {pc.chain_names('x/a')['ingress']}"
    assert "WARNING" not in text


def test_explain_anp_pass_and_allow() -> None:
    w = world(ANP, DENY_ALL_X)
    text = ex.explain(w, "y/b", "x/a", "9000")
    assert "AdminNetworkPolicy first ingress[0] 'pass-9000' -> Pass (on to the lower tiers)" in text
    assert ": DENIED" in text.splitlines()[0]
    text = ex.explain(w, "y/b", "x/a", "80/TCP")
    assert "ALLOWED" in text and "by AdminNetworkPolicy" in text and "'allow-y' -> Allow" in text
    assert "egress at y/b" in text


def test_explain_node_and_address_endpoints() -> None:
    w = world(DENY_ALL_X)
    assert "ALLOWED" in ex.explain(w, "node/n1", "x/a", "8080").splitlines()[0]
    assert "from the pod's own node" in ex.explain(w, "192.0.2.1", "x/a", "8080")
    assert "DENIED" in ex.explain(w, "192.0.2.2", "x/a", "8080").splitlines()[0]
    text = ex.explain(w, "x/a", "198.51.100.1", "80")
    assert "DENIED" in text.splitlines()[0] and "not a pod" in text.splitlines()[-1]


@pytest.mark.parametrize(
    ("src", "dst", "port"),
    [("x/nope", "x/a", "80"), ("x/a", "banana", "80"), ("x/a", "y/b", "80/icmp"), ("x/a", "y/b", "0")],
)
def test_explain_bad_arguments(src: str, dst: str, port: str) -> None:
    with pytest.raises(m.PolicyError):
        ex.explain(world(), src, dst, port)


@pytest.mark.parametrize("docs", [(ANP, DENY_ALL_X), (BANP,), (ANP, BANP)])
def test_compiled_models_agree_with_verdict(docs: tuple[str, ...]) -> None:
    w = world(*docs)
    models = [pc.compile_node(w, n) for n in ("n1", "n2")]
    ends = [p.ips[0] for p in w.pods if not p.host_network] + [
        ipaddress.ip_address(a) for a in ("169.254.169.254", "198.51.100.1")
    ]
    for s in ends:
        for d in ends:
            for port in (22, 80, 9000):
                assert pc.simulate(models, s, d, port).allowed == ev.verdict(w, s, d, port).allowed, (s, d, port)


def test_stats_text() -> None:
    w = world(ANP, DENY_ALL_X)
    model = pc.compile_node(w, "n1")
    name = pc.counter_name("NetworkPolicy", "x/deny-all")
    text = ex.format_stats(model, {name: (12, 720)})
    assert text.splitlines()[0].split() == ["POLICY", "DROPPED", "PACKETS", "BYTES"]
    assert any(ln.split() == ["NetworkPolicy", "x/deny-all", "12", "720"] for ln in text.splitlines())
    assert any(ln.split() == ["AdminNetworkPolicy", "first", "0", "0"] for ln in text.splitlines())


def test_validate_apply() -> None:
    ok = ex.validate_apply(DENY_ALL_X)
    assert isinstance(ok[0], m.NetworkPolicy)
    with pytest.raises(m.PolicyError, match=r"^NetworkPolicy x/deny-all: appears twice"):
        ex.validate_apply(DENY_ALL_X + "\n---\n" + DENY_ALL_X)
    with pytest.raises(m.PolicyError) as err:
        ex.validate_apply(
            DENY_ALL_X
            + "\n---\n"
            + DENY_ALL_X.replace("deny-all", "bad").replace(
                "podSelector: {}",
                "podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.0.0.0/4]}}]}]",
            )
        )
    assert str(err.value).startswith("NetworkPolicy bad: spec.ingress[0].from[0].ipBlock.except[0]: ")
    with pytest.raises(m.PolicyError, match="no objects"):
        ex.validate_apply("")
