"""Allocation policy, through a Store (plugins/ipam/host-local/backend/allocator + main.go).

- One address per range set, in set order.
- A requested address (CNI_ARGS IP=, args.cni.ips, runtimeConfig.ips) goes to the first set that
  contains it; requesting a gateway or a taken address is AddressUnavailable (101); a requested
  address no set contains is AddressUnavailable too.
- Otherwise round-robin from the set's last reserved address, skipping gateways; a full loop with
  nothing free is AddressExhausted (100).
- An owner (containerID, ifname) already holding an address of a set is DuplicateAllocation (102).
- Any failure releases what this call reserved (and only that) before raising.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from cni_plugin.spec.errors import AddressExhausted, AddressUnavailable, DuplicateAllocation
from cni_plugin.spec.types import IPAddress

from .ranges import Range, RangeSet
from .store import Owner, Store


class Allocation(NamedTuple):
    set_index: int
    ip: IPAddress
    range: Range


def _allocate_one(store: Store, index: int, rset: RangeSet, owner: Owner, requested: IPAddress | None) -> Allocation:
    for held in store.owned_by(owner):
        if rset.contains(held):
            raise DuplicateAllocation(
                f"{held} has been allocated to {owner.container_id}, duplicate allocation is not allowed",
                f"range set {index} ({rset}), ifname {owner.ifname}",
            )
    if requested is not None:
        r = rset.range_for(requested)
        assert r is not None  # the caller matched the request to this set
        if requested == r.gateway:
            raise AddressUnavailable(f"requested IP {requested} is the subnet's gateway", f"range set {index} ({rset})")
        if not store.reserve(owner, requested, index):
            raise AddressUnavailable(
                f"requested IP address {requested} is not available in range set {rset}", f"range set {index}"
            )
        return Allocation(index, requested, r)
    for r, ip in rset.candidates(store.last_reserved(index)):
        if store.reserve(owner, ip, index):
            return Allocation(index, ip, r)
    raise AddressExhausted(f"no IP addresses available in range set: {rset}", f"range set {index}")


def allocate(
    store: Store, range_sets: Sequence[RangeSet], owner: Owner, requested: Sequence[IPAddress] = ()
) -> list[Allocation]:
    """Reserve one address per set for `owner`, all or nothing."""
    pending = list(dict.fromkeys(requested))  # dedupe, keep order
    done: list[Allocation] = []
    try:
        for index, rset in enumerate(range_sets):
            wanted = next((ip for ip in pending if rset.contains(ip)), None)
            if wanted is not None:
                pending.remove(wanted)
            done.append(_allocate_one(store, index, rset, owner, wanted))
        if pending:
            raise AddressUnavailable(
                "failed to allocate all requested IPs",
                ", ".join(f"{ip} is in no configured range set or its set already got an address" for ip in pending),
            )
    except BaseException:
        for allocation in reversed(done):
            store.release(allocation.ip)
        raise
    return done


def release(store: Store, owner: Owner) -> list[IPAddress]:
    """Release every address of `owner`; if it has none, those of legacy id-only files (DEL)."""
    ips = store.owned_by(owner)
    if not ips and owner.ifname:
        ips = store.owned_by(Owner(owner.container_id, ""))
    for ip in ips:
        store.release(ip)
    return ips
