"""Pure: what this node's data path must hold, from the cluster config, the node records and a few
facts read from the kernel. No I/O; dataplane.py writes the result by diff.

    desired = plan(config, me, snapshot.nodes, facts)

Backends (config.backend):

    host-gw  a route per peer pod subnet via the peer's underlay address on the uplink:
                 10.244.2.0/24 via 192.0.2.12 dev eth0 proto pycni
             Works only when the peer is on one of the uplink's directly connected prefixes
             (the next hop must be reachable without a router); any other peer is reported
             unreachable, never routed through the default gateway (which would drop or NAT it).
    vxlan    one VXLAN device (learning off), flannel's layout per peer subnet:
                 route  10.244.2.0/24 via 10.244.2.0 dev pycni.1 onlink proto pycni
                 neigh  10.244.2.0 lladdr <peer VTEP MAC> dev pycni.1 PERMANENT
                 fdb    <peer VTEP MAC> dst 192.0.2.12 dev pycni.1 self permanent
             The onlink next hop is the peer subnet's network address, which the peer holds on
             its own VXLAN device; the neighbour entry gives its MAC without ARP and the FDB entry
             says which underlay address carries that MAC. Inner IPv4 and IPv6 share the device.
    auto     host-gw for every peer host-gw can route completely (on-link), vxlan for the rest.
             The VXLAN device exists whenever the backend is auto, so the pod MTU does not change
             when a peer moves behind a router.
    bgp      no route from pycni: BIRD (cluster/bgp/) learns the peers' subnets over BGP and
             installs them with its own protocol number; the plan only reports the peers (and
             removes any pycni route left from an earlier backend).

A peer that cannot be reached is a PeerPlan with via="unreachable" and the reason; a pod subnet
that overlaps this node's or another peer's is never routed (two routes for one subnet would send
half the traffic to the wrong node), for every node involved, since the plan cannot tell which
record is the stale one.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

from ..spec.types import IPAddress, IPInterface, IPNetwork
from .model import VXLAN_OVERHEAD, ClusterConfig, NodeRecord

Via = Literal["host-gw", "vxlan", "bgp", "unreachable"]
MULTICAST = {4: ipaddress.ip_network("224.0.0.0/4"), 6: ipaddress.ip_network("ff00::/8")}


def vtep_mac(node_name: str) -> str:
    """The node's VXLAN device MAC: 6 bytes of sha256(name) with the locally-administered bit set
    and the multicast bit clear, so it is stable across restarts and reinstalls (peers keep a
    valid FDB entry while the node reboots) and never collides with a vendor-assigned MAC."""
    raw = bytearray(hashlib.sha256(node_name.encode()).digest()[:6])
    raw[0] = (raw[0] & 0xFC) | 0x02
    return ":".join(f"{b:02x}" for b in raw)


@dataclass(frozen=True)
class LocalFacts:
    """What plan() needs from the kernel (dataplane.local_facts reads it)."""

    uplink: str  # the link holding node_address
    uplink_mtu: int
    onlink: tuple[IPNetwork, ...]  # networks of the uplink's addresses: directly connected prefixes
    node_address: IPAddress  # the underlay address this node publishes and tunnels from


@dataclass(frozen=True)
class Route:
    dst: IPNetwork
    gateway: IPAddress
    device: str
    onlink: bool = False


@dataclass(frozen=True)
class Fdb:
    mac: str
    dst: IPAddress
    device: str


@dataclass(frozen=True)
class Neighbour:
    address: IPAddress
    mac: str
    device: str


@dataclass(frozen=True)
class VxlanDevice:
    name: str
    vni: int
    port: int
    local: IPAddress
    uplink: str
    mtu: int
    mac: str
    addresses: tuple[IPInterface, ...]  # each of this node's subnets' network address, /32 or /128


@dataclass(frozen=True)
class PeerPlan:
    name: str
    subnets: tuple[IPNetwork, ...]  # the peer's subnets that are routed (empty when unreachable)
    address: IPAddress | None  # the underlay address traffic to the peer goes to
    via: Via
    reason: str = ""  # why unreachable, or which of its subnets were left out and why


@dataclass(frozen=True)
class MasqRule:
    """Masquerade traffic from `source` (this node's pod subnet) to anything outside `keep`."""

    source: IPNetwork
    keep: tuple[IPNetwork, ...]  # destinations never NATed: the cluster CIDR and every pod subnet


@dataclass(frozen=True)
class Desired:
    vxlan: VxlanDevice | None
    routes: tuple[Route, ...]
    fdb: tuple[Fdb, ...]
    neighbours: tuple[Neighbour, ...]
    peers: tuple[PeerPlan, ...]
    pod_mtu: int
    forwarding: tuple[int, ...] = ()  # address families that need net.*.forwarding on
    masquerade: tuple[MasqRule, ...] = field(default=())


def _host_interface(address: IPAddress) -> IPInterface:
    return ipaddress.ip_interface(f"{address}/{address.max_prefixlen}")


def _onlink(address: IPAddress | None, facts: LocalFacts) -> bool:
    return address is not None and any(
        net.version == address.version and address in net for net in facts.onlink
    )


def _overlaps(me: NodeRecord, peers: list[NodeRecord]) -> dict[str, list[tuple[IPNetwork, str]]]:
    """For each peer: its subnets that overlap this node's or another peer's, with the reason."""
    found: dict[str, list[tuple[IPNetwork, str]]] = {p.name: [] for p in peers}
    for peer in peers:
        others = [(s, "this node's") for s in me.subnets]
        others += [(s, f"node {o.name}'s") for o in peers if o is not peer for s in o.subnets]
        for subnet in peer.subnets:
            for theirs, whose in others:
                if subnet.version == theirs.version and subnet.overlaps(theirs):
                    found[peer.name].append((subnet, f"{subnet} overlaps {whose} {theirs}, not routed"))
    return found


@dataclass
class _Acc:
    routes: list[Route] = field(default_factory=list)
    fdb: list[Fdb] = field(default_factory=list)
    neighbours: list[Neighbour] = field(default_factory=list)
    peers: list[PeerPlan] = field(default_factory=list)


def _host_gw_routes(
    peer: NodeRecord, subnets: list[IPNetwork], facts: LocalFacts
) -> tuple[list[Route], list[str]]:
    """host-gw routes for `subnets`; each needs an on-link peer address of its own family (a
    route's gateway must be of the destination's family, so an IPv6 pod subnet over an IPv4
    underlay needs the peer's IPv6 address)."""
    routes, notes = [], []
    for subnet in subnets:
        gateway = peer.address(subnet.version)
        if gateway is None:
            notes.append(f"{subnet}: host-gw needs the peer's IPv{subnet.version} address, it publishes none")
        elif not _onlink(gateway, facts):
            notes.append(f"{subnet}: not on-link: {gateway} is on none of {facts.uplink}'s prefixes")
        else:
            routes.append(Route(dst=subnet, gateway=gateway, device=facts.uplink, onlink=False))
    return routes, notes


def _plan_peer(
    config: ClusterConfig, peer: NodeRecord, overlapping: list[tuple[IPNetwork, str]],
    facts: LocalFacts, vxlan: VxlanDevice | None, acc: _Acc,
) -> None:
    family = facts.node_address.version
    address = peer.address(family)
    notes = [reason for _subnet, reason in overlapping]
    skipped = {subnet for subnet, _reason in overlapping}
    usable = [s for s in peer.subnets if s not in skipped]

    def unreachable(*reasons: str) -> None:
        acc.peers.append(PeerPlan(peer.name, (), address, "unreachable", "; ".join([*reasons, *notes])))

    def host_gw(routes: list[Route], extra: list[str]) -> None:
        acc.routes.extend(routes)
        routed = tuple(r.dst for r in routes)
        acc.peers.append(PeerPlan(peer.name, routed, address, "host-gw", "; ".join([*notes, *extra])))

    if not peer.subnets:
        return unreachable("no pod subnet")
    if address is None:
        return unreachable(f"no IPv{family} underlay address (this node's underlay is IPv{family})")
    if address == facts.node_address:
        return unreachable(f"publishes this node's own underlay address {address}")
    if not usable:
        return unreachable("no pod subnet left to route")

    if config.backend == "bgp":
        acc.peers.append(PeerPlan(peer.name, tuple(usable), address, "bgp", "; ".join(notes)))
        return None
    gw_routes: list[Route] = []
    gw_notes: list[str] = []
    if config.backend in ("host-gw", "auto"):
        gw_routes, gw_notes = _host_gw_routes(peer, usable, facts)
        if config.backend == "host-gw" or not gw_notes:
            return host_gw(gw_routes, gw_notes) if gw_routes else unreachable(*gw_notes)
    # vxlan, or auto with a peer host-gw cannot route completely (off-link, or an IPv6 pod subnet
    # without an on-link IPv6 peer address).
    if vxlan is None or not peer.vtep_mac:
        why = "no VTEP MAC published (the peer runs no VXLAN device)"
        if gw_routes:  # auto: what host-gw can route is still better than nothing
            return host_gw(gw_routes, [*gw_notes, why])
        return unreachable(why, *gw_notes)
    acc.routes.extend(Route(dst=s, gateway=s.network_address, device=vxlan.name, onlink=True) for s in usable)
    acc.neighbours.extend(Neighbour(address=s.network_address, mac=peer.vtep_mac, device=vxlan.name) for s in usable)
    acc.fdb.append(Fdb(mac=peer.vtep_mac, dst=address, device=vxlan.name))
    acc.peers.append(PeerPlan(peer.name, tuple(usable), address, "vxlan", "; ".join(notes)))
    return None


def _masquerade(config: ClusterConfig, me: NodeRecord, peers: list[NodeRecord]) -> tuple[MasqRule, ...]:
    rules = []
    for mine in me.subnets:
        keep: list[IPNetwork] = []
        cidr = config.cidr(mine.version)
        if cidr is not None:
            keep.append(cidr)
        # Pod subnets outside the cluster CIDR (a Kubernetes podCIDR set by hand) are pods too.
        for subnet in [mine, *(s for p in peers for s in p.subnets if s.version == mine.version)]:
            if not any(subnet.subnet_of(k) for k in keep):  # type: ignore[arg-type]
                keep.append(subnet)
        keep.append(MULTICAST[mine.version])
        rules.append(MasqRule(source=mine, keep=tuple(keep)))
    return tuple(rules)


def plan(config: ClusterConfig, me: NodeRecord, nodes: Iterable[NodeRecord], facts: LocalFacts) -> Desired:
    """This node's desired data path. Pure; every peer appears in `peers`, routed or with a reason."""
    family = facts.node_address.version
    peers = sorted((n for n in nodes if n.name != me.name), key=lambda n: n.name)
    vxlan = None
    if config.backend in ("vxlan", "auto"):
        vxlan = VxlanDevice(
            name=config.vxlan_device,
            vni=config.vni,
            port=config.vxlan_port,
            local=facts.node_address,
            uplink=facts.uplink,
            mtu=facts.uplink_mtu - VXLAN_OVERHEAD[family],
            mac=vtep_mac(me.name),
            addresses=tuple(_host_interface(s.network_address) for s in me.subnets),
        )
    overlapping = _overlaps(me, peers)
    acc = _Acc()
    for peer in peers:
        _plan_peer(config, peer, overlapping[peer.name], facts, vxlan, acc)
    return Desired(
        vxlan=vxlan,
        routes=tuple(acc.routes),
        fdb=tuple(acc.fdb),
        neighbours=tuple(acc.neighbours),
        peers=tuple(acc.peers),
        pod_mtu=vxlan.mtu if vxlan is not None else facts.uplink_mtu,
        forwarding=tuple(sorted({s.version for s in me.subnets})),
        masquerade=_masquerade(config, me, peers),
    )
