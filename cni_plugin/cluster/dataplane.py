"""Write plan.py's Desired into the kernel by diff; read the few local facts plan() needs.

    dp = Dataplane()                       # or Dataplane("/run/netns/node1") in tests
    facts = dp.local_facts(node_address)
    report = dp.apply(plan.plan(config, me, snapshot.nodes, facts))

apply() reads only what pycni made (overlay.py says how it is recognised: route protocol
RTPROT_PYCNI in the main table, the VXLAN link's alias, the permanent entries on that link, the
`cluster_masq` nft chain), removes what is stale, fixes what differs and adds what is missing.
A route, neighbour or link pycni did not make is never changed or deleted: adding a route whose
destination someone else already routes fails for that entry alone (reported), and the rest of the
apply goes on. Running it twice with the same Desired changes nothing the second time.
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from .. import netns
from ..firewall.cluster_nft import NftClusterMasquerade
from ..netlink.overlay import RTPROT_PYCNI, VXLAN_ALIAS, Overlay, TaggedRoute, VxlanInfo
from ..spec.errors import CNIError, LinkNotFound
from ..spec.types import IPAddress, IPInterface, IPNetwork
from .plan import Desired, LocalFacts, VxlanDevice

FORWARDING_SYSCTL = {4: "ipv4/ip_forward", 6: "ipv6/conf/all/forwarding"}
LINK_LOCAL6 = ipaddress.ip_network("fe80::/10")

__all__ = ["RTPROT_PYCNI", "ApplyReport", "Dataplane", "DataplaneError"]


class DataplaneError(Exception):
    """The local facts cannot be read (no link holds the node address)."""


@dataclass(frozen=True)
class ApplyReport:
    """What one apply() did, counted per kernel object (link, address, route, FDB, neighbour,
    sysctl, nft chain). `errors` names each entry that failed; the others were still applied."""

    added: int = 0
    removed: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.updated)


@dataclass
class _Tally:
    added: int = 0
    removed: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[str] = field(default_factory=list)

    def attempt(self, what: str, fn: Callable[[], object], counter: str) -> bool:
        """Run one change; count it under `counter`, or record the failure and go on."""
        try:
            fn()
        except (CNIError, LinkNotFound) as exc:
            detail = getattr(exc, "details", "")
            message = getattr(exc, "msg", "") or str(exc)
            self.errors.append(f"{what}: {message}" + (f" ({detail})" if detail else ""))
            return False
        setattr(self, counter, getattr(self, counter) + 1)
        return True

    def report(self) -> ApplyReport:
        return ApplyReport(self.added, self.removed, self.updated, self.unchanged, tuple(self.errors))


class Dataplane:
    """The node's cluster data path in one network namespace (the caller's own when None)."""

    def __init__(self, netns_path: str | None = None, masquerade: NftClusterMasquerade | None = None) -> None:
        self.netns_path = netns_path
        self._masq = masquerade or NftClusterMasquerade()

    @contextlib.contextmanager
    def _session(self) -> Iterator[Overlay]:
        nl = Overlay(self.netns_path)
        try:
            yield nl
        finally:
            nl.close()

    def _in_netns(self) -> contextlib.AbstractContextManager[None]:
        # nft runs as a child process; it inherits the namespace of the thread that forks it.
        return netns.entered(self.netns_path) if self.netns_path else contextlib.nullcontext()

    # --- facts -------------------------------------------------------------------------------------

    def local_facts(self, node_address: IPAddress) -> LocalFacts:
        """The uplink (the link holding `node_address`), its MTU and its directly connected
        prefixes (IPv6 link-local left out: no peer is published by a link-local address)."""
        with self._session() as nl:
            addresses = nl.all_addresses()
            index = next((i for i, a in addresses if a.ip == node_address), None)
            if index is None:
                raise DataplaneError(f"no link in this namespace holds the node address {node_address}")
            link = nl.link_by_index(index)
        onlink = []
        for i, address in addresses:
            if i == index and address.network not in onlink and not (
                address.version == 6 and address.ip in LINK_LOCAL6
            ):
                onlink.append(address.network)
        return LocalFacts(uplink=link.name, uplink_mtu=link.mtu, onlink=tuple(onlink), node_address=node_address)

    # --- apply -------------------------------------------------------------------------------------

    def apply(self, desired: Desired) -> ApplyReport:
        """Make the kernel hold `desired` (see the module docstring); idempotent."""
        tally = _Tally()
        with self._session() as nl:
            self._forwarding(nl, desired, tally)
            device = self._ensure_vxlan(nl, desired.vxlan, tally)
            if device is not None and desired.vxlan is not None:
                self._vxlan_addresses(nl, desired.vxlan, tally)
                self._fdb(nl, desired, tally)
                self._neighbours(nl, desired, tally)
            self._routes(nl, desired, device is not None, tally)
        rules = [(m.source, m.keep) for m in desired.masquerade]
        self._nft_step(tally, "cluster masquerade", lambda: self._masq.apply(rules), "updated", "unchanged")
        return tally.report()

    def _nft_step(self, tally: _Tally, what: str, fn: Callable[[], bool], changed: str, same: str) -> None:
        """Run an nft step inside the namespace; count it under `changed` when it changed something."""
        result: list[bool] = []
        with self._in_netns():
            tally.attempt(what, lambda: result.append(fn()), changed)
        if result and not result[0]:
            setattr(tally, changed, getattr(tally, changed) - 1)
            if same:
                setattr(tally, same, getattr(tally, same) + 1)

    def _forwarding(self, nl: Overlay, desired: Desired, tally: _Tally) -> None:
        # A node forwards its pods' traffic to the other nodes and back; nothing here turns it off.
        for family in desired.forwarding:
            key = FORWARDING_SYSCTL[family]
            if nl.sysctl_get(key) == "1":
                tally.unchanged += 1
            else:
                tally.attempt(f"sysctl net/{key}", partial(nl.sysctl_set, key, "1"), "updated")

    def _ensure_vxlan(self, nl: Overlay, want: VxlanDevice | None, tally: _Tally) -> VxlanInfo | None:
        """The VXLAN link as `want` says; pycni's other VXLAN links (old name, or none wanted) go.
        Returns the link when it is in place."""
        ours = [v for v in nl.vxlan_links() if v.alias.startswith(VXLAN_ALIAS)]
        for stale in ours:
            if want is None or stale.name != want.name:
                tally.attempt(f"delete vxlan {stale.name}", partial(nl.delete_link, stale.name), "removed")
        if want is None:
            return None
        if nl.link_exists(want.name) and not any(v.name == want.name for v in ours):
            kind = nl.link(want.name).kind or "unknown"
            tally.errors.append(f"vxlan {want.name}: a link of that name ({kind}) exists that pycni did not make")
            return None
        current = next((v for v in ours if v.name == want.name), None)
        try:
            uplink = nl.link_index(want.uplink)
        except LinkNotFound:
            tally.errors.append(f"vxlan {want.name}: uplink {want.uplink} not found")
            return None
        if current is not None and (
            current.vni != want.vni or current.port != want.port or current.local != want.local
            or current.link != uplink or current.learning
        ):
            # The kernel cannot change these on a live VXLAN link: recreate it (its FDB, neighbour
            # entries and routes go with it and are re-added below).
            if not tally.attempt(f"delete vxlan {want.name}", lambda: nl.delete_link(want.name), "removed"):
                return None
            current = None
        if current is None:
            create = lambda: nl.create_vxlan(  # noqa: E731
                want.name, vni=want.vni, port=want.port, local=want.local, uplink=want.uplink,
                mtu=want.mtu, mac=want.mac,
            )
            if not tally.attempt(f"create vxlan {want.name}", create, "added"):
                return None
            return nl.vxlan(want.name)
        fixed = False
        if current.mtu != want.mtu:
            fixed |= tally.attempt(f"set MTU of {want.name}", lambda: nl.set_mtu(want.name, want.mtu), "updated")
        if current.mac != want.mac.lower():
            fixed |= tally.attempt(f"set MAC of {want.name}", lambda: nl.set_mac(want.name, want.mac), "updated")
        if not current.up:
            fixed |= tally.attempt(f"set {want.name} up", lambda: nl.set_up(want.name), "updated")
        if not fixed:
            tally.unchanged += 1
        return nl.vxlan(want.name)

    def _vxlan_addresses(self, nl: Overlay, want: VxlanDevice, tally: _Tally) -> None:
        have: list[IPInterface] = [
            a for a in nl.addresses(want.name) if not (a.version == 6 and a.ip in LINK_LOCAL6)
        ]
        for address in have:
            if address not in want.addresses:
                tally.attempt(
                    f"delete address {address} from {want.name}",
                    partial(nl.delete_address, want.name, address), "removed",
                )
        for address in want.addresses:
            if address in have:
                tally.unchanged += 1
            else:
                # nodad: the /128 is this node's alone (its subnet), and a tentative address
                # could not be the source of the first packets.
                tally.attempt(
                    f"add address {address} to {want.name}",
                    partial(nl.add_address, want.name, address, nodad=True), "added",
                )

    def _fdb(self, nl: Overlay, desired: Desired, tally: _Tally) -> None:
        assert desired.vxlan is not None
        dev = desired.vxlan.name
        have = set(nl.fdb_entries(dev))
        want = {(f.mac.lower(), f.dst) for f in desired.fdb}
        wanted_macs = {mac for mac, _dst in want}
        for mac, dst in sorted(have - want, key=str):
            if mac in wanted_macs:
                continue  # replaced below, in one request
            tally.attempt(f"delete fdb {mac} dst {dst}", partial(nl.fdb_delete, dev, mac, dst), "removed")
        have_macs = {mac for mac, _dst in have}
        for mac, dst in sorted(want, key=str):
            if (mac, dst) in have:
                tally.unchanged += 1
                continue
            counter = "updated" if mac in have_macs else "added"
            tally.attempt(f"set fdb {mac} dst {dst}", partial(nl.fdb_replace, dev, mac, dst), counter)
            # A MAC that pointed at several addresses (appended by someone else's tool): keep one.
            for stale_mac, stale_dst in have:
                if stale_mac == mac and stale_dst != dst:
                    tally.attempt(
                        f"delete fdb {mac} dst {stale_dst}",
                        partial(nl.fdb_delete, dev, mac, stale_dst), "removed",
                    )

    def _neighbours(self, nl: Overlay, desired: Desired, tally: _Tally) -> None:
        assert desired.vxlan is not None
        dev = desired.vxlan.name
        have = dict(nl.neighbours(dev))
        want = {n.address: n.mac.lower() for n in desired.neighbours}
        for address in sorted(set(have) - set(want), key=str):
            tally.attempt(f"delete neighbour {address}", partial(nl.neighbour_delete, dev, address), "removed")
        for address, mac in sorted(want.items(), key=str):
            if have.get(address) == mac:
                tally.unchanged += 1
                continue
            counter = "updated" if address in have else "added"
            tally.attempt(
                f"set neighbour {address} lladdr {mac}",
                partial(nl.neighbour_replace, dev, address, mac), counter,
            )

    def _routes(self, nl: Overlay, desired: Desired, vxlan_ready: bool, tally: _Tally) -> None:
        have: dict[IPNetwork, TaggedRoute] = {}
        doomed: list[TaggedRoute] = []
        want = {r.dst: r for r in desired.routes}
        for route in nl.tagged_routes():
            # Stale, or a second tagged route to a destination (only one is diffed and kept).
            if route.dst not in want or route.dst in have:
                doomed.append(route)
            else:
                have[route.dst] = route
        for route in doomed:
            tally.attempt(f"delete route {route.dst}", partial(nl.route_delete, route), "removed")
        vxlan_name = desired.vxlan.name if desired.vxlan is not None else None
        indexes: dict[str, int | None] = {}
        for dst, want_route in want.items():
            if want_route.device == vxlan_name and not vxlan_ready:
                tally.errors.append(f"route {dst} via {want_route.gateway}: vxlan {want_route.device} is not in place")
                continue
            if want_route.device not in indexes:
                try:
                    indexes[want_route.device] = nl.link_index(want_route.device)
                except LinkNotFound:
                    indexes[want_route.device] = None
            oif = indexes[want_route.device]
            if oif is None:
                tally.errors.append(f"route {dst} via {want_route.gateway}: device {want_route.device} not found")
                continue
            current = have.get(dst)
            if current is not None and (current.gateway, current.oif, current.onlink) == (
                want_route.gateway, oif, want_route.onlink
            ):
                tally.unchanged += 1
                continue
            tally.attempt(
                f"route {dst} via {want_route.gateway} dev {want_route.device}",
                partial(nl.route_set, want_route.dst, want_route.gateway, want_route.device,
                        onlink=want_route.onlink, replace=current is not None),
                "updated" if current is not None else "added",
            )

    # --- teardown ----------------------------------------------------------------------------------

    def teardown(self) -> ApplyReport:
        """Remove every route pycni tagged, pycni's VXLAN link(s) and the masquerade chain.
        Forwarding stays on: something else on the node may rely on it."""
        tally = _Tally()
        with self._session() as nl:
            for route in nl.tagged_routes():
                tally.attempt(f"delete route {route.dst}", partial(nl.route_delete, route), "removed")
            for link in nl.vxlan_links():
                if link.alias.startswith(VXLAN_ALIAS):
                    tally.attempt(f"delete vxlan {link.name}", partial(nl.delete_link, link.name), "removed")
        self._nft_step(tally, "cluster masquerade removal", self._masq.remove, "removed", "")
        return tally.report()

