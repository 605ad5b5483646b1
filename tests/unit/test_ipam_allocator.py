"""Allocator policy and config rules on the in-memory store (pure, no I/O)."""

from __future__ import annotations

import ipaddress

import pytest

from cni_plugin.spec.errors import (
    AddressExhausted,
    AddressUnavailable,
    DuplicateAllocation,
    InvalidConfig,
    InvalidEnvironment,
)
from ipam import allocator, config
from ipam.memory import MemoryStore
from ipam.store import Owner

ip = ipaddress.ip_address
A = Owner("ctr-a", "eth0")
B = Owner("ctr-b", "eth0")


def net(ipam: dict, **top: object) -> dict:
    return {"cniVersion": "1.1.0", "name": "n1", "ipam": {"type": "host-local", **ipam}, **top}


def sets(ipam: dict, **kw: object):
    return config.load(net(ipam), **kw).range_sets  # type: ignore[arg-type]


def alloc(store, ipam, owner, requested=()):
    return [str(a.ip) for a in allocator.allocate(store, sets(ipam), owner, requested)]


# --- range defaults and validation -----------------------------------------------------------


def test_defaults_follow_the_reference():
    (v4,), (v6,) = (s.ranges for s in sets({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "fd00::/64"}]]}))
    assert (str(v4.start), str(v4.end), str(v4.gateway)) == ("10.1.2.1", "10.1.2.254", "10.1.2.1")
    # v6: rangeEnd is the last address of the subnet, not broadcast-1
    assert (str(v6.start), str(v6.end), str(v6.gateway)) == ("fd00::1", "fd00::ffff:ffff:ffff:ffff", "fd00::1")


@pytest.mark.parametrize(
    ("ipam", "key"),
    [
        ({"ranges": [[{"subnet": "10.1.2.5/24"}]]}, "ipam.ranges.0.0.subnet"),  # host bits
        ({"ranges": [[{"subnet": "10.1.2.0/31"}]]}, "ipam.ranges.0.0.subnet"),
        ({"ranges": [[{"subnet": "10.1.2.0/32"}]]}, "ipam.ranges.0.0.subnet"),
        ({"ranges": [[{"subnet": "not-a-net"}]]}, "ipam.ranges.0.0.subnet"),
        ({"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}]]}, "ipam.ranges.0.0.rangeStart"),
        ({"ranges": [[{"subnet": "10.1.2.0/24", "rangeEnd": "10.1.9.1"}]]}, "ipam.ranges.0.0.rangeEnd"),
        (
            {"ranges": [[{"subnet": "10.1.2.0/24", "rangeStart": "10.1.2.9", "rangeEnd": "10.1.2.3"}]]},
            "ipam.ranges.0.0.rangeStart",
        ),
        ({"ranges": [[{"subnet": "10.1.2.0/24"}], [{"subnet": "10.1.2.0/25"}]]}, "ipam.ranges.1"),  # sets overlap
        ({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "10.1.2.128/25"}]]}, "ipam.ranges.0.1"),
        ({"ranges": [[{"subnet": "10.1.2.0/24"}, {"subnet": "fd00::/64"}]]}, "ipam.ranges.0"),  # mixed family
        ({"ranges": [[]]}, "ipam.ranges.0"),
        ({"ranges": [[{"rangeStart": "10.1.2.1"}]]}, "ipam.ranges.0.0.subnet"),  # pydantic: missing key
        ({}, "ipam.ranges"),
        ({"subnet": "10.1.2.0/24", "gateway": "fd00::1"}, "ipam.gateway"),
        ({"subnet": "10.1.2.0/24", "dataDir": "relative/dir"}, "ipam.dataDir"),
        ({"subnet": "10.1.2.0/24", "routes": [{"dst": "nope"}]}, "ipam.routes.0.dst"),
    ],
)
def test_invalid_ranges_are_code_7_naming_the_key(ipam, key):
    with pytest.raises(InvalidConfig) as exc:
        config.load(net(ipam))
    assert exc.value.code == 7
    assert key in exc.value.details


def test_legacy_flat_keys_and_runtime_ranges_are_prepended():
    cfg = config.load(
        net(
            {"subnet": "10.2.0.0/24", "rangeStart": "10.2.0.10", "ranges": [[{"subnet": "10.3.0.0/24"}]]},
            runtimeConfig={"ipRanges": [[{"subnet": "10.4.0.0/24"}]]},
        )
    )
    assert [str(s.ranges[0].subnet) for s in cfg.range_sets] == ["10.4.0.0/24", "10.2.0.0/24", "10.3.0.0/24"]
    assert str(cfg.range_sets[1].ranges[0].start) == "10.2.0.10"


def test_two_addresses_per_family_need_0_3_0():
    ipam = {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.2.0.0/24"}]]}
    assert len(config.load({**net(ipam), "cniVersion": "0.3.1"}).range_sets) == 2
    with pytest.raises(InvalidConfig) as exc:
        config.load({**net(ipam), "cniVersion": "0.2.0"})
    assert "ipam.ranges" in exc.value.details


def test_resolv_conf_parsing():
    dns = config.parse_resolv_conf(
        "# c\n; c\nnameserver 10.0.0.53\nnameserver fd00::53\ndomain example.org\n"
        "search a.example b.example\noptions ndots:5 edns0\nbogus\n"
    )
    assert dns.nameservers == ("10.0.0.53", "fd00::53")
    assert dns.domain == "example.org"
    assert dns.search == ("a.example", "b.example")
    assert dns.options == ("ndots:5", "edns0")


# --- allocation policy -------------------------------------------------------------------------

SMALL = {"ranges": [[{"subnet": "10.5.0.0/29"}]]}  # .1 gateway, .2-.6 allocatable


def test_round_robin_from_last_reserved_and_gateway_skip():
    store = MemoryStore()
    got = [alloc(store, SMALL, Owner(f"c{i}", "eth0"))[0] for i in range(3)]
    assert got == ["10.5.0.2", "10.5.0.3", "10.5.0.4"]  # .1 is the gateway: skipped
    allocator.release(store, Owner("c0", "eth0"))
    # round-robin continues after the last reserved (.4), not at the freed .2
    assert alloc(store, SMALL, Owner("c3", "eth0")) == ["10.5.0.5"]
    assert alloc(store, SMALL, Owner("c4", "eth0")) == ["10.5.0.6"]
    # wraps around to the start, skips the gateway again
    assert alloc(store, SMALL, Owner("c5", "eth0")) == ["10.5.0.2"]


def test_round_robin_moves_across_ranges_of_a_set():
    ipam = {"ranges": [[{"subnet": "10.6.0.0/29", "rangeStart": "10.6.0.5"}, {"subnet": "10.7.0.0/30"}]]}
    store = MemoryStore()
    got = [alloc(store, ipam, Owner(f"c{i}", "eth0"))[0] for i in range(3)]
    # 10.7.0.0/30: .1 gateway skipped, .2 only (v4 rangeEnd = broadcast-1)
    assert got == ["10.6.0.5", "10.6.0.6", "10.7.0.2"]
    with pytest.raises(AddressExhausted):
        alloc(store, ipam, Owner("c9", "eth0"))


def test_last_reserved_outside_the_set_starts_at_range_start():
    store = MemoryStore()
    store.last[0] = ip("192.0.2.77")  # e.g. the ranges changed since
    assert alloc(store, SMALL, A) == ["10.5.0.2"]


def test_exhaustion_is_code_100_and_changes_nothing():
    store = MemoryStore()
    for i in range(5):
        alloc(store, SMALL, Owner(f"c{i}", "eth0"))
    before = dict(store.by_ip)
    with pytest.raises(AddressExhausted) as exc:
        alloc(store, SMALL, A)
    assert exc.value.code == 100 and "10.5.0.1-10.5.0.6" in exc.value.msg
    assert store.by_ip == before


def test_duplicate_owner_is_code_102_but_other_ifname_is_fine():
    store = MemoryStore()
    alloc(store, SMALL, A)
    with pytest.raises(DuplicateAllocation) as exc:
        alloc(store, SMALL, A)
    assert exc.value.code == 102
    assert alloc(store, SMALL, Owner("ctr-a", "eth1")) == ["10.5.0.3"]


def test_dual_stack_gets_one_address_per_set():
    store = MemoryStore()
    ipam = {"ranges": [[{"subnet": "10.8.0.0/24"}], [{"subnet": "fd00:8::/64"}]]}
    assert alloc(store, ipam, A) == ["10.8.0.2", "fd00:8::2"]
    assert sorted(map(str, store.owned_by(A))) == ["10.8.0.2", "fd00:8::2"]


def test_later_set_failure_releases_earlier_sets():
    store = MemoryStore()
    ipam = {"ranges": [[{"subnet": "10.8.0.0/24"}], [{"subnet": "fd00:8::/126"}]]}  # v6: ::2, ::3
    alloc(store, ipam, B)
    alloc(store, ipam, Owner("c", "eth0"))
    with pytest.raises(AddressExhausted):
        alloc(store, ipam, A)
    assert store.owned_by(A) == []
    assert ip("10.8.0.4") not in store.by_ip


# --- requested addresses: each source --------------------------------------------------------


def test_requested_ip_from_cni_args():
    cfg = config.load(net(SMALL), cni_args_ip="10.5.0.5")
    store = MemoryStore()
    assert [str(a.ip) for a in allocator.allocate(store, cfg.range_sets, A, cfg.requested)] == ["10.5.0.5"]


def test_requested_ip_from_args_cni_ips_and_runtime_config():
    ipam = {"ranges": [[{"subnet": "10.8.0.0/24"}], [{"subnet": "fd00:8::/64"}]]}
    cfg = config.load(net(ipam, args={"cni": {"ips": ["10.8.0.77"]}}, runtimeConfig={"ips": ["fd00:8::77/64"]}))
    store = MemoryStore()
    got = [str(a.ip) for a in allocator.allocate(store, cfg.range_sets, A, cfg.requested)]
    assert got == ["10.8.0.77", "fd00:8::77"]


def test_all_three_sources_merge_in_reference_order():
    cfg = config.load(
        net(SMALL, args={"cni": {"ips": ["10.5.0.3"]}}, runtimeConfig={"ips": ["10.5.0.4"]}), cni_args_ip="10.5.0.2"
    )
    assert [str(i) for i in cfg.requested] == ["10.5.0.2", "10.5.0.3", "10.5.0.4"]


def test_cni_args_ip_through_the_environment_rule():
    from cni_plugin.spec.skel import CmdArgs
    from ipam import main

    args = CmdArgs("ADD", "c", "/n", "eth0", "IP=10.5.0.4;FOO=1", (), b"", net(SMALL), "1.1.0")
    with pytest.raises(InvalidEnvironment):
        main._load(args)
    args = CmdArgs("ADD", "c", "/n", "eth0", "IgnoreUnknown=1;IP=10.5.0.4;FOO=1", (), b"", net(SMALL), "1.1.0")
    assert [str(i) for i in main._load(args).requested] == ["10.5.0.4"]


def test_requested_gateway_is_an_error():
    with pytest.raises(AddressUnavailable, match="gateway") as exc:
        alloc(MemoryStore(), SMALL, A, [ip("10.5.0.1")])
    assert exc.value.code == 101


def test_requested_taken_address_is_an_error():
    store = MemoryStore()
    alloc(store, SMALL, B, [ip("10.5.0.4")])
    with pytest.raises(AddressUnavailable, match="not available"):
        alloc(store, SMALL, A, [ip("10.5.0.4")])
    assert store.owned_by(A) == []


def test_requested_address_in_no_set_rolls_everything_back():
    store = MemoryStore()
    with pytest.raises(AddressUnavailable, match="requested"):
        alloc(store, SMALL, A, [ip("10.99.0.9")])
    assert store.by_ip == {}


def test_release_falls_back_to_legacy_id_only_files():
    store = MemoryStore()
    store.reserve(Owner("old", ""), ip("10.5.0.3"), 0)
    assert allocator.release(store, Owner("old", "eth0")) == [ip("10.5.0.3")]
    assert store.by_ip == {}
