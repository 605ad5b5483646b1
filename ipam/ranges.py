"""Pure range math on `ipaddress` values: Range, RangeSet, canonicalisation and iteration order.

Rules follow plugins/pkg/ip + plugins/ipam/host-local/backend/allocator/range.go:
- the subnet must be a network address (no host bits) and larger than /31 (v4) or /127 (v6);
- gateway defaults to network+1, rangeStart to network+1 (the gateway is skipped while iterating),
  rangeEnd to broadcast-1 for IPv4 but to the *last* address of the subnet for IPv6;
- rangeStart/rangeEnd must lie in the subnet (pycni also requires rangeStart <= rangeEnd);
- the ranges of one set share a family and do not overlap; range sets do not overlap each other.
Errors are InvalidConfig (code 7) naming the offending key path.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from cni_plugin.spec.errors import InvalidConfig
from cni_plugin.spec.types import IPAddress, IPNetwork


def parse_ip(value: object, where: str) -> IPAddress:
    """An address given as 'a.b.c.d' or 'a.b.c.d/nn' (the reference accepts both for IP args)."""
    if not isinstance(value, str) or not value:
        raise InvalidConfig("invalid network configuration", f"{where}: expected an IP address, got {value!r}")
    try:
        if "/" in value:
            return ipaddress.ip_interface(value).ip
        return ipaddress.ip_address(value)
    except ValueError as exc:
        raise InvalidConfig("invalid network configuration", f"{where}: {exc}") from exc


class Range(NamedTuple):
    subnet: IPNetwork
    start: IPAddress
    end: IPAddress
    gateway: IPAddress

    @property
    def version(self) -> int:
        return self.subnet.version

    def contains(self, ip: IPAddress) -> bool:
        return ip.version == self.version and self.start <= ip <= self.end  # type: ignore[operator]

    def overlaps(self, other: Range) -> bool:
        if self.version != other.version:
            return False
        return self.start <= other.end and other.start <= self.end  # type: ignore[operator]

    def size(self) -> int:
        """Allocatable addresses: the range minus the gateway when it lies inside."""
        total = int(self.end) - int(self.start) + 1
        return total - 1 if self.contains(self.gateway) else total

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"


def make_range(
    subnet: object,
    range_start: object = None,
    range_end: object = None,
    gateway: object = None,
    *,
    where: str,
) -> Range:
    """Canonicalise one range as the reference does; `where` is the key path for errors."""

    def bad(key: str, why: str) -> InvalidConfig:
        return InvalidConfig("invalid network configuration", f"{where}.{key}: {why}")

    if not isinstance(subnet, str) or not subnet:
        raise bad("subnet", f"expected a CIDR string, got {subnet!r}")
    try:
        net = ipaddress.ip_network(subnet, strict=False)
    except ValueError as exc:
        raise bad("subnet", str(exc)) from exc
    given = ipaddress.ip_interface(subnet).ip
    if given != net.network_address:
        raise bad("subnet", f"{subnet} has host bits set; the network address is {net.network_address}/{net.prefixlen}")
    if net.prefixlen > net.max_prefixlen - 2:
        raise bad("subnet", f"network {net} is too small to allocate from (/31 and /32, /127 and /128 are not allowed)")

    def address(key: str, value: object) -> IPAddress:
        ip = parse_ip(value, f"{where}.{key}")
        if ip.version != net.version:
            raise bad(key, f"{ip} is not of the same address family as subnet {net}")
        return ip

    gw = address("gateway", gateway) if gateway not in (None, "") else net.network_address + 1
    if range_start not in (None, ""):
        start = address("rangeStart", range_start)
        if start not in net:
            raise bad("rangeStart", f"{start} is not in network {net}")
    else:
        start = net.network_address + 1
    if range_end not in (None, ""):
        end = address("rangeEnd", range_end)
        if end not in net:
            raise bad("rangeEnd", f"{end} is not in network {net}")
    else:
        end = net.broadcast_address - 1 if net.version == 4 else net.broadcast_address
    if start > end:  # type: ignore[operator]
        raise bad("rangeStart", f"{start} is after rangeEnd {end}")
    return Range(subnet=net, start=start, end=end, gateway=gw)


class RangeSet(NamedTuple):
    """One or more ranges of one family; one address is allocated per set."""

    ranges: tuple[Range, ...]

    @property
    def version(self) -> int:
        return self.ranges[0].version

    def contains(self, ip: IPAddress) -> bool:
        return any(r.contains(ip) for r in self.ranges)

    def range_for(self, ip: IPAddress) -> Range | None:
        return next((r for r in self.ranges if r.contains(ip)), None)

    def overlaps(self, other: RangeSet) -> bool:
        return any(a.overlaps(b) for a in self.ranges for b in other.ranges)

    def size(self) -> int:
        return sum(r.size() for r in self.ranges)

    def __str__(self) -> str:
        return ",".join(str(r) for r in self.ranges)

    def candidates(self, last_reserved: IPAddress | None) -> Iterator[tuple[Range, IPAddress]]:
        """Every allocatable address once, in the reference's round-robin order.

        Start right after `last_reserved` when the set contains it (moving to the next range at a
        range's end), else at the first range's start; walk the ranges cyclically and stop after one
        full loop; skip each range's gateway (allocator.go RangeIter.Next).
        """
        ranges = self.ranges
        count = len(ranges)
        idx, first = 0, int(ranges[0].start)
        if last_reserved is not None:
            for i, r in enumerate(ranges):
                if r.contains(last_reserved):
                    if int(last_reserved) == int(r.end):
                        idx = (i + 1) % count
                        first = int(ranges[idx].start)
                    else:
                        idx, first = i, int(last_reserved) + 1
                    break
        for k in range(count + 1):
            r = ranges[(idx + k) % count]
            lo = first if k == 0 else int(r.start)
            hi = int(r.end) if k < count else first - 1
            gw = int(r.gateway)
            make = type(r.start)
            for value in range(lo, hi + 1):
                if value != gw:
                    yield r, make(value)


def make_range_set(raw_ranges: Sequence[Range], where: str) -> RangeSet:
    if not raw_ranges:
        raise InvalidConfig("invalid network configuration", f"{where}: empty range set")
    families = {r.version for r in raw_ranges}
    if len(families) > 1:
        raise InvalidConfig("invalid network configuration", f"{where}: mixed address families in one range set")
    for i, a in enumerate(raw_ranges):
        for j in range(i + 1, len(raw_ranges)):
            if a.overlaps(raw_ranges[j]):
                raise InvalidConfig(
                    "invalid network configuration",
                    f"{where}.{j}: range {raw_ranges[j]} overlaps range {a} ({where}.{i})",
                )
    return RangeSet(tuple(raw_ranges))


def check_disjoint(sets: Sequence[RangeSet], names: Sequence[str]) -> None:
    """Range sets may not overlap each other (host-local config.go)."""
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if a.overlaps(sets[j]):
                raise InvalidConfig(
                    "invalid network configuration",
                    f"{names[j]}: range set {j} ({sets[j]}) overlaps range set {i} ({a}, {names[i]})",
                )
