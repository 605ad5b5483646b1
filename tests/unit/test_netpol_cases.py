"""Every upstream Kubernetes netpol case (tests/netpol_cases) through the policy engine.

For each case and each of its steps, all 81 (from, to) pairs of the 9 pods are decided by
evaluate.verdict and compared with the upstream matrix (the diagonal is not checked, as upstream
ignores loopback). The data is checked too: each step's matrix must be what its upstream
expectation list gives.
"""

from __future__ import annotations

import pytest

from cni_plugin.policy.evaluate import verdict
from tests import netpol_support as ns

CASES = ns.cases()


def test_every_upstream_case_is_ported() -> None:
    # 42 TCP cases ("NetworkPolicy between server and client"), 3 UDP and 3 SCTP.
    by_context: dict[str, int] = {}
    for c in CASES:
        by_context[c.context] = by_context.get(c.context, 0) + 1
    assert by_context == {
        "NetworkPolicy between server and client": 42,
        "NetworkPolicy between server and client using UDP": 3,
        "NetworkPolicy between server and client using SCTP": 3,
    }
    assert len({(c.context, c.title) for c in CASES}) == 48


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_matrix_matches_upstream_expectations(case: ns.Case) -> None:
    for step in ns.steps(case):
        assert step.matrix == ns.expected_from_ops(step.expect), f"step {step.index}"


def _observed(step: ns.Step) -> dict[tuple[str, str], bool]:
    pods = {p.key: p for p in step.world.pods}
    return {
        (f, t): verdict(step.world, pods[f], pods[t], step.port, step.protocol).allowed
        for f in ns.PODS
        for t in ns.PODS
    }


def _diff(expected: dict[tuple[str, str], bool], observed: dict[tuple[str, str], bool]) -> list[str]:
    return [
        f"{f} -> {t}: expected {'allowed' if expected[(f, t)] else 'denied'}"
        for (f, t) in expected
        if f != t and expected[(f, t)] != observed[(f, t)]
    ]


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_through_verdict(case: ns.Case, family: int) -> None:
    for step in ns.steps(case, family):
        wrong = _diff(step.matrix, _observed(step))
        assert not wrong, f"step {step.index} ({step.port}/{step.protocol}): " + "; ".join(wrong)


def test_harness_can_fail() -> None:
    # The comparison is not vacuous: a deny-all case's matrix differs from "everything allowed".
    case = next(c for c in CASES if c.file == "tcp-should-support-a-default-deny-all-policy.yaml")
    step = next(ns.steps(case))
    assert _diff(step.matrix, {k: True for k in step.matrix})


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_through_compiled_node_models(case: ns.Case, family: int) -> None:
    # What the nodes would enforce: each node's compiled model (its own pods only), the
    # connection walked through the source node's egress chain and the destination node's
    # ingress chain.
    from cni_plugin.policy.compile import compile_node, simulate

    for step in ns.steps(case, family):
        models = [compile_node(step.world, node) for node in ("node-1", "node-2")]
        assert sum(len(m.pods) for m in models) == 9
        pods = {p.key: p for p in step.world.pods}
        observed = {
            (f, t): simulate(models, pods[f].ips[0], pods[t].ips[0], step.port, step.protocol).allowed
            for f in ns.PODS
            for t in ns.PODS
        }
        wrong = _diff(step.matrix, observed)
        assert not wrong, f"step {step.index} ({step.port}/{step.protocol}): " + "; ".join(wrong)
