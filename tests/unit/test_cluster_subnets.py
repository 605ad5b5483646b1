"""Per-node subnet arithmetic and the claim plan (pure, no I/O)."""

from __future__ import annotations

import ipaddress
import time

import pytest

from cni_plugin.cluster.model import SubnetExhausted, parse_cluster_config
from cni_plugin.cluster.subnets import (
    is_node_subnet,
    pick_free,
    plan_claim,
    start_index,
    subnet_at,
    subnet_count,
)

N = ipaddress.ip_network
V4 = N("10.244.0.0/16")
V6 = N("fd00:10:244::/56")


def test_count_and_index_arithmetic():
    assert subnet_count(V4, 24) == 256
    assert subnet_count(V6, 64) == 256
    assert subnet_at(V4, 24, 0) == N("10.244.0.0/24")
    assert subnet_at(V4, 24, 255) == N("10.244.255.0/24")
    assert subnet_at(V6, 64, 3) == N("fd00:10:244:3::/64")
    with pytest.raises(IndexError):
        subnet_at(V4, 24, 256)
    with pytest.raises(ValueError):
        subnet_count(V4, 16)


def test_is_node_subnet_checks_family_containment_and_length():
    assert is_node_subnet(V4, 24, N("10.244.7.0/24"))
    assert not is_node_subnet(V4, 24, N("10.245.7.0/24"))  # outside
    assert not is_node_subnet(V4, 24, N("10.244.7.0/25"))  # wrong length
    assert not is_node_subnet(V4, 24, N("fd00:10:244::/64"))  # other family


def test_first_subnet_is_usable():
    # Documented choice: no subnet is skipped, the one holding the CIDR's network address included.
    assert pick_free(V4, 24, []) == N("10.244.0.0/24")


def test_preferred_when_inside_and_free_else_another():
    want = N("10.244.9.0/24")
    assert pick_free(V4, 24, [], preferred=want, seed="a") == want
    got = pick_free(V4, 24, [want], preferred=want, seed="a")
    assert got != want and is_node_subnet(V4, 24, got)
    outside = pick_free(V4, 24, [], preferred=N("10.9.9.0/24"), seed="a")
    assert is_node_subnet(V4, 24, outside)
    # A preferred subnet of the wrong length is not honoured either.
    assert pick_free(V4, 24, [], preferred=N("10.244.9.0/25"), seed="a") != N("10.244.9.0/25")


def test_seed_is_deterministic_and_spreads():
    assert pick_free(V4, 24, [], seed="node-a") == pick_free(V4, 24, [], seed="node-a")
    picks = {pick_free(V4, 24, [], seed=f"node-{i}") for i in range(50)}
    assert len(picks) > 40  # 50 names over 256 slots: few start at the same place
    assert start_index("node-a", 256) == start_index("node-a", 256)


def test_scan_skips_taken_and_wraps_around():
    count = subnet_count(V4, 24)
    first = start_index("n", count)
    taken = [subnet_at(V4, 24, (first + k) % count) for k in range(count - 1)]
    last_free = subnet_at(V4, 24, (first + count - 1) % count)
    assert pick_free(V4, 24, taken, seed="n") == last_free


def test_exhaustion_raises():
    taken = [subnet_at(V4, 24, i) for i in range(256)]
    with pytest.raises(SubnetExhausted, match="10.244.0.0/16"):
        pick_free(V4, 24, taken, seed="x")
    # One taken supernet covering the whole CIDR exhausts it too.
    with pytest.raises(SubnetExhausted):
        pick_free(V4, 24, [N("10.0.0.0/8")])


def test_taken_of_another_length_blocks_what_it_overlaps():
    # A /20 held under an older config blocks the sixteen /24s inside it, and a /26 blocks its /24.
    taken = [N("10.244.0.0/20"), N("10.244.16.0/26")]
    assert pick_free(V4, 24, taken) == N("10.244.17.0/24")


def test_other_family_and_outside_taken_are_ignored():
    assert pick_free(V4, 24, [N("fd00::/8"), N("10.245.0.0/24")]) == N("10.244.0.0/24")


def test_huge_ipv6_space_is_arithmetic_not_enumeration():
    huge = N("fd00::/8")  # 2**56 subnets of /64
    taken = [N("fd00::/9")]  # half of it
    start = time.monotonic()
    got = pick_free(huge, 64, taken, seed="node-a")
    assert time.monotonic() - start < 0.1
    assert is_node_subnet(huge, 64, got) and not got.subnet_of(N("fd00::/9"))  # type: ignore[arg-type]
    with pytest.raises(SubnetExhausted):
        pick_free(huge, 64, [N("fd00::/9"), N("fd80::/9")], seed="node-a")


def test_ipv6_56_into_64_exhausts_at_256():
    taken = [subnet_at(V6, 64, i) for i in range(255)]
    assert pick_free(V6, 64, taken, seed="z") == N("fd00:10:244:ff::/64")


CONFIG = parse_cluster_config({"clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"]})


def test_plan_keeps_the_nodes_own_subnets():
    holders = {N("10.244.5.0/24"): "a", N("fd00:10:244:5::/64"): "a", N("10.244.6.0/24"): "b"}
    plan = plan_claim("a", CONFIG, holders)
    assert plan.subnets == (N("10.244.5.0/24"), N("fd00:10:244:5::/64"))
    assert plan.drop == ()


def test_plan_prefers_previous_when_free_and_never_takes_a_peers():
    holders = {N("10.244.6.0/24"): "b", N("10.244.8.0/24"): ""}  # "" = unreadable record, still taken
    plan = plan_claim("a", CONFIG, holders, preferred=(N("10.244.7.0/24"), N("fd00:10:244:9::/64")))
    assert plan.subnets == (N("10.244.7.0/24"), N("fd00:10:244:9::/64"))
    plan = plan_claim("a", CONFIG, holders, preferred=(N("10.244.6.0/24"), N("10.244.8.0/24")))
    assert plan.subnets[0] not in holders


def test_plan_drops_what_no_longer_fits_the_config():
    holders = {N("10.244.5.0/25"): "a", N("10.99.0.0/24"): "a", N("10.244.9.0/24"): "a"}
    plan = plan_claim("a", CONFIG, holders)
    assert plan.subnets[0] == N("10.244.9.0/24")
    assert set(plan.drop) == {N("10.244.5.0/25"), N("10.99.0.0/24")}
    assert plan.subnets[1].version == 6


def test_plan_two_of_one_family_keeps_the_lowest():
    holders = {N("10.244.9.0/24"): "a", N("10.244.3.0/24"): "a"}
    plan = plan_claim("a", parse_cluster_config({"clusterCIDRs": ["10.244.0.0/16"]}), holders)
    assert plan.subnets == (N("10.244.3.0/24"),)
    assert plan.drop == (N("10.244.9.0/24"),)
