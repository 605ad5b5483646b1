"""bandwidth: config parsing and the pure tbf arithmetic, names and GC selection (no root)."""

from __future__ import annotations

import pytest

from cni_plugin import bandwidth
from cni_plugin.bandwidth import (
    TbfPlan,
    ifb_alias,
    ifb_name,
    parse_ifb_alias,
    plan_shaping,
    plan_tbf,
    require_frame_fits,
    stale_ifbs,
    tbf_mismatch,
)
from cni_plugin.firewall import attachment_tag
from cni_plugin.netlink.tc import Qdisc, Tbf
from cni_plugin.spec.errors import InvalidConfig, UnsupportedField
from cni_plugin.spec.types import Interface, Result

BASE = {"cniVersion": "1.1.0", "name": "net", "type": "pycni-bandwidth"}


def conf(**keys):
    return {**BASE, **keys}


# --- where the entry comes from ---------------------------------------------------------------------


def test_top_level_keys():
    shaping = plan_shaping(conf(ingressRate=1_000_000, ingressBurst=80_000))
    assert shaping.ingress == TbfPlan(rate=125_000, burst=10_000, limit=125_000 * 25 // 1000 + 10_000)
    assert shaping.egress is None


def test_runtime_config_bandwidth():
    shaping = plan_shaping(conf(runtimeConfig={"bandwidth": {"egressRate": 8_000_000, "egressBurst": 800_000}}))
    assert shaping.egress is not None and shaping.egress.rate == 1_000_000
    assert shaping.ingress is None


def test_runtime_config_keys_as_containerd_sends_them():
    # go-cni's BandWidth struct has no JSON tags: containerd writes IngressRate, EgressBurst, ...
    shaping = plan_shaping(conf(runtimeConfig={"bandwidth": {
        "IngressRate": 1_000_000, "IngressBurst": 80_000, "EgressRate": 8_000_000, "EgressBurst": 800_000,
    }}))
    assert shaping.ingress is not None and shaping.ingress.rate == 125_000
    assert shaping.egress is not None and shaping.egress.rate == 1_000_000


def test_top_level_wins_over_runtime_config_as_a_whole_entry():
    shaping = plan_shaping(conf(
        ingressRate=1_000_000, ingressBurst=80_000,
        runtimeConfig={"bandwidth": {"egressRate": 8_000_000, "egressBurst": 800_000}},
    ))
    assert shaping.ingress is not None and shaping.egress is None


def test_nothing_configured_or_all_zero_is_pass_through():
    assert not plan_shaping(conf()).any
    assert not plan_shaping(conf(ingressRate=0, ingressBurst=0, egressRate=0, egressBurst=0)).any
    assert not plan_shaping(conf(runtimeConfig={"portMappings": []})).any


# --- refusals name the key ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"ingressRate": 1_000_000}, "ingressBurst"),
        ({"egressBurst": 80_000}, "egressRate"),
        ({"ingressRate": 1_000_000, "ingressBurst": 0}, "ingressBurst"),
        ({"egressRate": -1, "egressBurst": 80_000}, "egressRate"),
        ({"ingressRate": 1_000_000, "ingressBurst": -5}, "ingressBurst"),
        ({"ingressRate": 7, "ingressBurst": 80_000}, "ingressRate"),  # < 1 byte/s
        ({"ingressRate": 1_000_000, "ingressBurst": 7}, "ingressBurst"),  # < 1 byte
        ({"egressRate": 8 * 2**32, "egressBurst": 80_000}, "egressRate"),  # tc_ratespec.rate is 32 bits
        ({"egressRate": 1_000_000, "egressBurst": 8 * (2**32 - 1)}, "egressBurst"),  # >= 4 GiB
        ({"ingressRate": "1000000", "ingressBurst": 80_000}, "ingressRate"),
        ({"ingressRate": True, "ingressBurst": 80_000}, "ingressRate"),
        ({"ingressRate": 1.5, "ingressBurst": 80_000}, "ingressRate"),
    ],
)
def test_bad_values_are_code_7_naming_the_key(keys, named):
    with pytest.raises(InvalidConfig) as exc:
        plan_shaping(conf(**keys))
    assert exc.value.code == 7
    assert named in str(exc.value)


def test_runtime_config_errors_name_the_full_path():
    with pytest.raises(InvalidConfig) as exc:
        plan_shaping(conf(runtimeConfig={"bandwidth": {"ingressRate": 1_000_000}}))
    assert "runtimeConfig.bandwidth.ingressBurst" in str(exc.value)
    with pytest.raises(InvalidConfig) as exc:
        plan_shaping(conf(runtimeConfig={"bandwidth": {"egressRate": -3, "egressBurst": 8}}))
    assert "runtimeConfig.bandwidth.egressRate" in str(exc.value)
    with pytest.raises(InvalidConfig):
        plan_shaping(conf(runtimeConfig={"bandwidth": [1, 2]}))


def test_integral_float_is_a_number():
    assert plan_shaping(conf(ingressRate=1e6, ingressBurst=8e4)).ingress.rate == 125_000


@pytest.mark.parametrize("key", ["shapedSubnets", "unshapedSubnets"])
def test_subnet_lists_are_code_2_naming_the_key(key):
    with pytest.raises(UnsupportedField) as exc:
        plan_shaping(conf(ingressRate=1_000_000, ingressBurst=80_000, **{key: ["10.0.0.0/8"]}))
    assert exc.value.code == 2 and key in str(exc.value)
    # empty lists ask for nothing
    assert plan_shaping(conf(ingressRate=1_000_000, ingressBurst=80_000, **{key: []})).any


# --- tbf arithmetic ----------------------------------------------------------------------------------


def test_plan_matches_the_reference_formula():
    plan = plan_tbf(1_000_000, 80_000, rate_key="r", burst_key="b")
    assert plan is not None
    assert (plan.rate, plan.burst) == (125_000, 10_000)
    assert plan.limit == 3_125 + 10_000  # rate * 25 ms + burst
    # 10000 B at 125000 B/s = 80 ms = 80000 us = 1.25e6 ticks of 64 ns
    assert plan.buffer_ticks(15.625) == 1_250_000


def test_containerd_max_burst_is_clamped_to_what_the_kernel_can_hold():
    # containerd passes 2^32-1 bits of burst with every kubernetes.io/*-bandwidth annotation.
    plan = plan_tbf(1_000_000, 2**32 - 1, rate_key="r", burst_key="b")
    assert plan is not None
    assert plan.buffer_ticks(15.625) <= 2**32 - 1
    assert plan.burst < (2**32 - 1) // 8
    assert plan.burst > 125_000 * 270  # still ~274 s worth of the rate
    assert plan.limit == 3_125 + plan.burst


def test_largest_rate_accepted():
    plan = plan_tbf(8 * (2**32 - 1), 8 * 10**6, rate_key="r", burst_key="b")
    assert plan is not None and plan.rate == 2**32 - 1
    assert plan.limit <= 2**32 - 1


def test_burst_below_one_frame_is_refused_at_add():
    plan = plan_tbf(1_000_000, 8 * 1513, rate_key="r", burst_key="ingressBurst")
    assert plan is not None
    with pytest.raises(InvalidConfig) as exc:
        require_frame_fits(plan, 1500, "ingressBurst", "veth1")
    assert "ingressBurst" in str(exc.value)
    ok = plan_tbf(1_000_000, 8 * 1514, rate_key="r", burst_key="b")
    assert ok is not None
    require_frame_fits(ok, 1500, "ingressBurst", "veth1")


def test_tbf_mismatch_reports_what_differs():
    plan = TbfPlan(rate=125_000, burst=10_000, limit=13_125)
    good = Qdisc("tbf", 0x10000, 0xFFFFFFFF, Tbf(rate=125_000, buffer=1_250_000, limit=13_125))
    assert tbf_mismatch(plan, good, 15.625) == ""
    assert "rate" in tbf_mismatch(plan, Qdisc("tbf", 0x10000, 0xFFFFFFFF, Tbf(250_000, 1_250_000, 13_125)), 15.625)
    assert "burst" in tbf_mismatch(plan, Qdisc("tbf", 0x10000, 0xFFFFFFFF, Tbf(125_000, 2_500_000, 13_125)), 15.625)
    assert "limit" in tbf_mismatch(plan, Qdisc("tbf", 0x10000, 0xFFFFFFFF, Tbf(125_000, 1_250_000, 99)), 15.625)
    assert "noqueue" in tbf_mismatch(plan, Qdisc("noqueue", 0, 0xFFFFFFFF), 15.625)
    assert "none" in tbf_mismatch(plan, None, 15.625)


# --- names, ownership, GC selection -------------------------------------------------------------------


def test_ifb_name_is_short_stable_and_per_attachment():
    name = ifb_name("abc", "eth0")
    assert name.startswith("bwp") and len(name) == 15
    assert name == ifb_name("abc", "eth0")
    assert name != ifb_name("abc", "net1") != ifb_name("abd", "eth0")
    assert name[3:] == attachment_tag("abc", "eth0")[:12]


def test_alias_round_trip_and_foreign_aliases():
    tag = attachment_tag("abc", "eth0")
    assert parse_ifb_alias(ifb_alias("mynet", tag)) == ("mynet", tag)
    for foreign in ("", "pycni-bandwidth", "something else entirely", "pycni-bandwidth a b c"):
        assert parse_ifb_alias(foreign) is None


def test_gc_removes_only_unlisted_ifbs_of_this_network():
    keep_tag, gone_tag = attachment_tag("keep", "eth0"), attachment_tag("gone", "eth0")
    ifbs = [
        ("bwpkeep", ifb_alias("net", keep_tag)),
        ("bwpgone", ifb_alias("net", gone_tag)),
        ("bwpother", ifb_alias("othernet", gone_tag)),  # another network's
        ("bwpgo", ""),  # not ours (e.g. the Go reference's)
    ]
    assert stale_ifbs(ifbs, "net", {keep_tag}) == ["bwpgone"]
    assert stale_ifbs(ifbs, "net", set()) == ["bwpgone", "bwpkeep"]


def test_host_candidates_are_the_interfaces_without_sandbox():
    prev = Result(interfaces=(
        Interface(name="cni0", mac=""), Interface(name="veth1", mac=""),
        Interface(name="eth0", mac="", sandbox="/run/netns/x"),
    ))
    assert bandwidth.host_candidates(prev) == ["cni0", "veth1"]


def test_the_reference_ifbs_gc_may_remove():
    from cni_plugin.bandwidth import go_ifb_name, looks_like_go_ifb, stale_go_ifbs

    live, gone, other = go_ifb_name("net", "live"), go_ifb_name("net", "gone"), go_ifb_name("other", "x")
    assert len(live) == 15 and live.startswith("bwp") and live != gone
    assert looks_like_go_ifb(live, "") and not looks_like_go_ifb(live, "pycni-bandwidth net t")
    assert not looks_like_go_ifb("bwpzzzzzzzzzzzz", "") and not looks_like_go_ifb("ifb0", "")
    ifbs = [(live, 1, ""), (gone, 2, ""), (other, 3, ""), ("bwp0123456789ab", 4, "pycni-bandwidth net t")]
    # gone: nothing redirects to it; other: redirected (a live pod of another network); live: listed.
    assert stale_go_ifbs(ifbs, redirected={3}, network="net", valid_ids=["live"]) == [gone]
    assert stale_go_ifbs(ifbs, redirected=set(), network="net", valid_ids=["live"]) == sorted([gone, other])
