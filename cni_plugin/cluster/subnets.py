"""Per-node subnets of a cluster CIDR, pure: which exist, which are free, which one a node gets.

A cluster CIDR split at a prefix length is a numbered sequence of equal subnets (10.244.0.0/16 at
/24: index 0 is 10.244.0.0/24, index 255 is 10.244.255.0/24). Everything here is arithmetic on
that numbering, never a list of it: an IPv6 /48 split into /64 has 65536 subnets, a /32 has 2**32.

Every subnet is usable, the first one included (10.244.0.0/24 holds the cluster CIDR's network
address, but per-node subnets are routed, not a broadcast domain: nothing in the data path treats
the cluster CIDR's network address specially; host-local IPAM already keeps each node subnet's own
network address and gateway out of pod use). flannel's current docs default SubnetMin to the
second subnet (older releases started at the first); nothing in pycni needs that gap, so a
/16 at /24 holds 256 nodes, not 255.

A node starts its search at a position derived from its name (a stable hash, not Python's
randomised hash()), so nodes spread over the CIDR, nodes joining at once rarely race for the same
subnet, and a node that lost its claim and asks again with the same taken set gets the same
subnet back.
"""

from __future__ import annotations

import bisect
import hashlib
import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..spec.types import IPNetwork
from .model import ClusterConfig, NodeRecord, Snapshot, SubnetExhausted


def subnet_count(cidr: IPNetwork, length: int) -> int:
    """How many /length subnets the CIDR holds."""
    if not cidr.prefixlen < length <= cidr.max_prefixlen:
        raise ValueError(f"/{length} is not a subnet length inside {cidr}")
    return 1 << (length - cidr.prefixlen)


def subnet_at(cidr: IPNetwork, length: int, index: int) -> IPNetwork:
    """The index-th /length subnet of the CIDR (0-based)."""
    count = subnet_count(cidr, length)
    if not 0 <= index < count:
        raise IndexError(f"subnet {index} of {cidr} at /{length} (there are {count})")
    size = 1 << (cidr.max_prefixlen - length)
    base = int(cidr.network_address) + index * size
    return ipaddress.ip_network((base, length))


def is_node_subnet(cidr: IPNetwork, length: int, subnet: IPNetwork) -> bool:
    """True when `subnet` is one of the CIDR's /length subnets (same family, inside, that length)."""
    return (subnet.version == cidr.version and subnet.prefixlen == length
            and subnet.subnet_of(cidr))  # type: ignore[arg-type]


def start_index(seed: str | None, count: int) -> int:
    """Where a node's search starts: a stable hash of its name modulo the count (0 without a seed)."""
    if seed is None:
        return 0
    digest = hashlib.sha256(seed.encode()).digest()
    return int.from_bytes(digest[:16], "big") % count


def _blocked_ranges(cidr: IPNetwork, taken: Iterable[IPNetwork]) -> list[tuple[int, int]]:
    """The taken address ranges inside the CIDR, clipped, sorted and merged ([first, last] ints).

    Taken networks of another length (a config changed under running nodes) block every subnet
    they overlap, so no two nodes ever hold overlapping pod subnets."""
    lo_cidr, hi_cidr = int(cidr.network_address), int(cidr.broadcast_address)
    spans = []
    for net in taken:
        if net.version != cidr.version:
            continue
        lo, hi = int(net.network_address), int(net.broadcast_address)
        if hi < lo_cidr or lo > hi_cidr:
            continue
        spans.append((max(lo, lo_cidr), min(hi, hi_cidr)))
    spans.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _blocker(blocked: list[tuple[int, int]], starts: list[int], lo: int, hi: int) -> tuple[int, int] | None:
    """A blocked range overlapping [lo, hi], the one reaching furthest of those starting before hi."""
    i = bisect.bisect_right(starts, hi) - 1
    if i >= 0 and blocked[i][1] >= lo:
        return blocked[i]
    return None


def pick_free(cidr: IPNetwork, length: int, taken: Iterable[IPNetwork],
              preferred: IPNetwork | None = None, seed: str | None = None) -> IPNetwork:
    """A /length subnet of `cidr` that overlaps nothing in `taken`.

    `preferred` when it is one of the CIDR's subnets and free; else the first free subnet at or
    after start_index(seed), wrapping around. SubnetExhausted when every subnet is taken. Cost is
    O(len(taken) log len(taken)) whatever the size of the CIDR: the scan jumps over each blocked
    range instead of stepping through it.
    """
    count = subnet_count(cidr, length)
    blocked = _blocked_ranges(cidr, taken)
    starts = [lo for lo, _ in blocked]
    size = 1 << (cidr.max_prefixlen - length)
    base = int(cidr.network_address)

    if preferred is not None and is_node_subnet(cidr, length, preferred):
        lo = int(preferred.network_address)
        if _blocker(blocked, starts, lo, lo + size - 1) is None:
            return preferred

    first = start_index(seed, count)
    for lo_index, hi_index in ((first, count), (0, first)):
        index = lo_index
        while index < hi_index:
            lo = base + index * size
            blocker = _blocker(blocked, starts, lo, lo + size - 1)
            if blocker is None:
                return subnet_at(cidr, length, index)
            index = (blocker[1] - base) // size + 1  # the first subnet after the blocked range
    raise SubnetExhausted(f"every /{length} of {cidr} is taken ({count} subnets)")


@dataclass(frozen=True)
class ClaimPlan:
    """What a node should hold: one subnet per cluster CIDR (config order), and its stale keys."""

    subnets: tuple[IPNetwork, ...]
    drop: tuple[IPNetwork, ...]  # subnets the node holds that are no longer its (a config change)


def plan_claim(name: str, config: ClusterConfig, holders: Mapping[IPNetwork, str],
               preferred: Sequence[IPNetwork] = ()) -> ClaimPlan:
    """Which subnets node `name` should hold, given who holds what now.

    holders: every held subnet -> the holder's node name ("" when the record is unreadable: the
    subnet is still taken). Per family: keep the node's own subnet when it still fits the config
    (the lowest, should it somehow hold two); else the first free one in `preferred` (what it held
    before: remembered in memory or on disk); else pick_free from its name's start position.
    Everything else the node holds goes to `drop`.
    """
    taken = [net for net, holder in holders.items() if holder != name]
    mine = sorted((net for net, holder in holders.items() if holder == name),
                  key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    chosen: list[IPNetwork] = []
    for cidr in config.cluster_cidrs:
        length = config.subnet_len_for(cidr.version)
        own = next((net for net in mine if is_node_subnet(cidr, length, net)), None)
        if own is not None:
            chosen.append(own)
            continue
        pick: IPNetwork | None = None
        for wish in preferred:
            if is_node_subnet(cidr, length, wish):
                candidate = pick_free(cidr, length, taken, preferred=wish, seed=name)
                if candidate == wish:
                    pick = wish
                    break
        chosen.append(pick if pick is not None else pick_free(cidr, length, taken, seed=name))
    drop = tuple(net for net in mine if net not in chosen)
    return ClaimPlan(subnets=tuple(chosen), drop=drop)


def holder_of(value: str | bytes) -> str:
    """The node name in a stored record; "" when it does not parse (the subnet stays taken)."""
    try:
        return NodeRecord.from_json(value).name
    except (ValueError, TypeError):
        return ""


def snapshot_from_entries(entries: Mapping[IPNetwork, str | bytes], revision: str) -> Snapshot:
    """Group subnet -> record text into one NodeRecord per node (a node is the union of its keys).

    The subnets come from the keys (what the node holds exclusively), never from the record's own
    list, so a record cannot claim a subnet it does not hold. The addresses and MAC come from the
    node's record under its lowest subnet (all of a node's keys carry the same record)."""
    by_name: dict[str, tuple[NodeRecord, list[IPNetwork]]] = {}
    skipped: list[str] = []
    order = sorted(entries, key=lambda n: (n.version, int(n.network_address), n.prefixlen))
    for subnet in order:
        try:
            record = NodeRecord.from_json(entries[subnet])
        except (ValueError, TypeError) as exc:  # also json.JSONDecodeError
            skipped.append(f"{subnet}: {exc}")
            continue
        if record.name in by_name:
            by_name[record.name][1].append(subnet)
        else:
            by_name[record.name] = (record, [subnet])
    nodes = tuple(
        NodeRecord(name=rec.name, subnets=tuple(subnets), addresses=rec.addresses,
                   vtep_mac=rec.vtep_mac, backend=rec.backend)
        for rec, subnets in sorted(by_name.values(), key=lambda item: item[0].name)
    )
    return Snapshot(nodes=nodes, revision=revision, skipped=tuple(skipped))
