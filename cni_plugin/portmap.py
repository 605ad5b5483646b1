"""The portmap plugin: forwards host ports to the pod (chained after an interface plugin).

Behaviour follows plugins/meta/portmap (keys, prevResult handling, which pod address is used,
stale UDP conntrack flush, route_localnet for 127.0.0.1) with the differences documented in the
README (section pycni-portmap):

* nftables only (`inet pycni` table, maps keyed by [hostIP .] protocol . port, see
  firewall/portmap_render.py); `backend: iptables` is refused with code 2;
* a host port another attachment already holds on the same hostIP (or on any address) is refused
  with code 110 (HostPortTaken) instead of being silently taken over (the reference is last-writer-wins);
* hairpin masquerade covers the pod's whole subnet (a neighbour pod on the same bridge reaching
  this pod through a host port gets the reply), not only the pod itself;
* DEL and GC find elements by attachment comment, with no prevResult or netns needed; GC removes
  elements of attachments not listed (the reference has no GC); STATUS probes nftables.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .config import GoCaseModel, PassThroughModel, field, parse_config
from .firewall import attachment_tag
from .firewall import portmap_render as pr
from .rollback import Undo
from .spec.errors import (
    CheckFailed,
    CNIError,
    FirewallFailure,
    HostPortTaken,
    InvalidConfig,
    NetlinkFailure,
    NotFound,
    PluginNotAvailable,
    UnsupportedField,
)
from .spec.skel import CmdArgs, Handlers
from .spec.types import IPAddress, IPInterface, IPNetwork, Result

# --- configuration ---------------------------------------------------------------------------------


def _protocol(value: Any) -> str:
    text = "tcp" if value in (None, "") else str(value).lower()
    if text not in pr.PROTOCOLS:
        raise ValueError(f"protocol {value!r} is not one of {', '.join(pr.PROTOCOLS)}")
    return text


def _host_ip(value: Any) -> str:
    if value in (None, ""):
        return ""
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError as exc:
        raise ValueError(f"hostIP {value!r} is not an IP address") from exc


class PortMapping(GoCaseModel):
    """One runtimeConfig.portMappings entry (CONVENTIONS.md).

    Keys match case-insensitively (GoCaseModel): containerd sends HostPort/ContainerPort/...
    """

    host_port: int = field(alias="hostPort", ge=1, le=65535)
    container_port: int = field(alias="containerPort", ge=1, le=65535)
    protocol: str = field("tcp", before=_protocol)
    host_ip: str = field("", alias="hostIP", before=_host_ip)

    @property
    def host_address(self) -> IPAddress | None:
        return ipaddress.ip_address(self.host_ip) if self.host_ip else None


def _null_is_empty_list(value: Any) -> Any:
    return [] if value is None else value


def _null_is_empty_object(value: Any) -> Any:
    return {} if value is None else value


class RuntimeConfig(PassThroughModel):
    port_mappings: list[PortMapping] = field(default_factory=list, alias="portMappings", before=_null_is_empty_list)


class PortMapConf(PassThroughModel):
    """The reference portmap's keys (plugins/meta/portmap PortMapConf), same names and defaults."""

    name: str
    snat: bool | None = None  # unset = true
    masq_all: bool = field(False, alias="masqAll")
    mark_masq_bit: int | None = field(None, alias="markMasqBit", ge=0, le=31)
    external_set_mark_chain: str | None = field(None, alias="externalSetMarkChain")
    conditions_v4: list[str] | None = field(None, alias="conditionsV4")
    conditions_v6: list[str] | None = field(None, alias="conditionsV6")
    backend: Literal["nftables", "iptables", ""] | None = None
    runtime_config: RuntimeConfig = field(default_factory=RuntimeConfig, alias="runtimeConfig",
                                        before=_null_is_empty_object)

    def _check(self) -> None:
        if self.mark_masq_bit is not None and self.external_set_mark_chain is not None:
            raise ValueError("markMasqBit and externalSetMarkChain cannot both be set")

    @property
    def snat_on(self) -> bool:
        return self.snat is not False

    @property
    def mappings(self) -> list[PortMapping]:
        return self.runtime_config.port_mappings


def load_conf(args: CmdArgs) -> PortMapConf:
    """The validated config for ADD and CHECK, refusing what pycni does not implement (code 2).

    DEL, GC and STATUS parse nothing but the network name (skel validated it): they find elements
    by attachment comment, so a config that ADD refused can never block a cleanup."""
    conf = parse_config(PortMapConf, args.config)
    if conf.backend == "iptables":
        raise UnsupportedField(
            "backend: pycni-portmap programs nftables only", "backend=iptables (use nftables or leave it unset)"
        )
    for key, conditions in (("conditionsV4", conf.conditions_v4), ("conditionsV6", conf.conditions_v6)):
        if conditions:
            raise UnsupportedField(f"{key} is not supported by pycni-portmap", " ".join(conditions))
    return conf


# --- pure planning ------------------------------------------------------------------------------------


def pod_addresses(prev: Result, ifname: str) -> dict[int, IPInterface]:
    """The first address per family on the sandbox interface `ifname` (parseConfig in the
    reference): an IP pointing at another or a host-side interface is skipped; an IP with no
    (or an out-of-range) interface index counts."""
    found: dict[int, IPInterface] = {}
    for ip in prev.ips:
        if ip.family in found:
            continue
        if ip.interface is not None and 0 <= ip.interface < len(prev.interfaces):
            iface = prev.interfaces[ip.interface]
            if iface.name != ifname or not iface.sandbox:
                continue
        found[ip.family] = ip.address
    return found


def plan_entries(conf: PortMapConf, pods: dict[int, IPInterface], comment: str) -> pr.Entries:
    """The map and masquerade elements for this attachment.

    A mapping applies to every pod address of its hostIP's family (both families when hostIP is
    empty; "0.0.0.0" / "::" mean any address of that family only), as in the reference. A mapping
    that applies to no pod address at all, and two mappings of this pod that claim the same
    packets with different targets, are InvalidConfig (7).
    """
    by_key: dict[tuple[object, ...], pr.PortEntry] = {}
    for m in conf.mappings:
        host = m.host_address
        applied = False
        for family in sorted(pods):
            if host is not None and host.version != family:
                continue
            entry = pr.PortEntry(
                family=family, protocol=m.protocol, host_port=m.host_port,
                host_ip=None if host is None or host.is_unspecified else host,
                pod_ip=pods[family].ip, container_port=m.container_port, comment=comment,
            )
            applied = True
            held = by_key.setdefault(entry.key, entry)
            if not held.same_value(entry):  # an exact duplicate is fine; another target is not
                raise _self_conflict(held, entry)
        if not applied:
            families = ", ".join(f"IPv{f}" for f in sorted(pods)) or "none"
            raise InvalidConfig(
                "a port mapping matches no address of the container",
                f"hostIP {m.host_ip or '(any)'} {m.protocol}/{m.host_port}; container addresses: {families}",
            )
    ports = sorted(by_key.values(), key=pr.PortEntry.sort_key)
    for i, a in enumerate(ports):
        for b in ports[i + 1:]:
            if pr.collides(a, b):  # a hostIP and the any-address mapping of one port
                raise _self_conflict(a, b)
    masq: list[pr.HairpinEntry] = []
    if conf.snat_on:
        for family in sorted({p.family for p in ports}):
            pod = pods[family]
            if conf.masq_all:
                sources = [ipaddress.ip_network("0.0.0.0/0" if family == 4 else "::/0")]
            else:
                sources = [pod.network]
                if family == 4:  # ::1 cannot be DNATed off the loopback device: IPv4 only
                    sources.append(ipaddress.ip_network("127.0.0.1/32"))
            masq += [pr.HairpinEntry(family=family, source=s, pod_ip=pod.ip, comment=comment) for s in sources]
    return pr.Entries(ports=tuple(ports), masq=tuple(masq))


def _self_conflict(a: pr.PortEntry, b: pr.PortEntry) -> InvalidConfig:
    return InvalidConfig(
        "two port mappings of this container claim the same host port",
        f"{a.describe()} -> {a.container_port} and {b.describe()} -> {b.container_port}",
    )


def _comment(args: CmdArgs, conf: PortMapConf) -> str:
    return pr.portmap_comment(conf.name, attachment_tag(args.container_id, args.ifname))


# --- seams (patched by tests) -------------------------------------------------------------------


def backend() -> Any:
    from .firewall.portmap_nft import NftPortmap

    return NftPortmap()


def flush_conntrack(family: int, protocol: str, port: int, daddr: str | None) -> int:
    from .netlink import conntrack

    return conntrack.delete_by_destination(family, protocol, port, daddr)


def _warn(message: str) -> None:
    sys.stderr.write(f"pycni-portmap: {message}\n")


# --- ADD ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LocalnetChange:
    """route_localnet this ADD switched on: the sysctl key, its value before, and the routes of
    that interface (a pod reached through one of them needs the sysctl too)."""

    key: str
    before: str
    routes: tuple[IPNetwork, ...]


LOOPBACK4 = ipaddress.ip_network("127.0.0.1/32")


def localnet_needed_by_others(change: LocalnetChange, existing: pr.Entries, comment: str) -> bool:
    """Whether another attachment's 127.0.0.1 hairpin entry leads to a pod behind that interface."""
    return any(
        m.family == 4 and m.source == LOOPBACK4 and m.comment != comment
        and any(m.pod_ip in dst for dst in change.routes)
        for m in existing.masq
    )


def _route_localnet(prev: Result, pod: IPInterface) -> LocalnetChange | None:
    """route_localnet=1 on the host interface that routes to the pod, so 127.0.0.1 may cross it
    (after DNAT the node's own 127.0.0.1 connection leaves through it; masquerade then rewrites the
    source). Like the reference, the interface is found by route; it is left set on DEL. Returns
    what was changed (None when it was already on or no interface was found)."""
    from . import netlink  # pyroute2 costs ~0.3 s to import: only ADD pays for it

    best: tuple[int, str, tuple[IPNetwork, ...]] | None = None
    with netlink.Netlink() as host:
        for iface in prev.interfaces:
            if iface.sandbox or not iface.name:
                continue
            try:
                routes = host.routes(dev=iface.name, family=4)
            except (CNIError, NotFound):  # gone or unreadable: not the interface we look for
                continue
            for dst, _gw in routes:
                if dst.prefixlen and pod.ip in dst and (best is None or dst.prefixlen > best[0]):
                    best = (dst.prefixlen, iface.name, tuple(d for d, _ in routes if d.prefixlen))
        if best is None:
            _warn(f"no host interface of prevResult routes to {pod.ip}: 127.0.0.1 will not reach its host ports")
            return None
        key = f"ipv4/conf/{best[1]}/route_localnet"
        before = host.sysctl_get(key)
        if before == "1":
            return None
        host.sysctl_set(key, "1")  # unreadable (None): the write says why, as NetlinkFailure
        return LocalnetChange(key=key, before=before or "0", routes=best[2])


def _restore_localnet(nft: Any, change: LocalnetChange, comment: str) -> None:
    """Undo of a failed ADD (under the portmap lock): back to the value before, unless another
    attachment's hairpin entries show it needs the sysctl (it is never switched off under them)."""
    from . import netlink

    if localnet_needed_by_others(change, nft.entries(), comment):
        return
    with netlink.Netlink() as host:
        host.sysctl_set(change.key, change.before)


def _refuse(clashes: Sequence[tuple[pr.PortEntry, pr.PortEntry]]) -> HostPortTaken:
    parts = [
        f"{want.describe()} is held by {held.describe()} -> {held.pod_ip} port {held.container_port}"
        f" (attachment {held.comment})"
        for want, held in clashes
    ]
    first = clashes[0][0]
    return HostPortTaken(f"host port {first.describe()} is already mapped to another container", "; ".join(parts))


def add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    prev = args.prev_result()
    if prev is None:
        raise InvalidConfig("pycni-portmap must be called as a chained plugin", "prevResult is missing")
    if not conf.mappings:
        return prev  # nothing to do: no nft, no lock (plugins#510)
    pods = pod_addresses(prev, args.ifname)
    comment = _comment(args, conf)
    wanted = plan_entries(conf, pods, comment)

    nft = backend()
    # The lock spans the sysctl, the transaction and, on failure, the sysctl's rollback: a racing
    # ADD behind the same interface sees either the final state or the one before, never ours.
    with nft.locked(), Undo() as undo:
        if conf.snat_on and 4 in pods and any(p.family == 4 for p in wanted.ports):
            change = _route_localnet(prev, pods[4])
            if change is not None:
                undo.push(f"route_localnet rollback ({change.key})", _restore_localnet, nft, change, comment)
        clashes = nft.add(wanted, held=True)  # one transaction: on failure or conflict nothing was changed
        if clashes:
            raise _refuse(clashes)
        undo.push(f"host port removal ({comment})", nft.remove, comment, held=True)

        # Stale UDP conntrack entries would keep steering these ports past the new DNAT (the
        # reference flushes them too, after the rules are in place). Failures are only logged.
        for entry in wanted.ports:
            if entry.protocol != "udp":
                continue
            daddr = str(entry.host_ip) if entry.host_ip is not None else None
            try:
                flush_conntrack(entry.family, "udp", entry.host_port, daddr)
            except (NetlinkFailure, OSError) as exc:
                _warn(f"stale UDP conntrack entries for port {entry.host_port} not deleted: {exc}")
        undo.disarm()
    return prev


# --- DEL / CHECK / STATUS / GC ---------------------------------------------------------------------------


def _asked_for_ports(config: dict[str, Any]) -> bool:
    runtime = config.get("runtimeConfig")
    return isinstance(runtime, dict) and bool(runtime.get("portMappings"))


def delete(args: CmdArgs) -> None:
    comment = pr.portmap_comment(args.network_name, attachment_tag(args.container_id, args.ifname))
    try:
        backend().remove(comment)
    except FirewallFailure as exc:
        if _asked_for_ports(args.config):
            raise
        # No mappings in this DEL's config: nothing of ours is expected, and a node without nft
        # (or a broken one) must not block the teardown of pods that never had host ports.
        _warn(f"ignored: {exc}")


def check(args: CmdArgs) -> None:
    conf = load_conf(args)
    prev = args.prev_result()
    if prev is None:
        raise InvalidConfig("CHECK requires prevResult")
    if not conf.mappings:
        return
    comment = _comment(args, conf)
    wanted = plan_entries(conf, pod_addresses(prev, args.ifname), comment)
    nft = backend()
    missing_chains = set(pr.CHAINS) - nft.chains()
    if missing_chains:
        raise CheckFailed("host port chains are missing", ", ".join(sorted(missing_chains)))
    have = nft.entries().with_comment(comment)
    for want in wanted.ports:
        found = [e for e in have.ports if e.key == want.key]
        if not found:
            raise CheckFailed(f"host port mapping {want.describe()} is missing", f"attachment {comment}")
        if not found[0].same_value(want):
            raise CheckFailed(
                f"host port mapping {want.describe()} differs",
                f"{found[0].pod_ip} port {found[0].container_port} != {want.pod_ip} port {want.container_port}",
            )
    masq_keys = {m.key for m in have.masq}
    for m in wanted.masq:
        if m.key not in masq_keys:
            raise CheckFailed("host port masquerade entry is missing", m.key_text())


def status(args: CmdArgs) -> None:
    try:
        backend().usable()
    except FirewallFailure as exc:
        raise PluginNotAvailable("nftables is not usable for host ports", str(exc)) from exc


def gc(args: CmdArgs) -> None:
    name = args.network_name
    valid = args.valid_attachments()
    if valid is None:
        return
    keep = {pr.portmap_comment(name, attachment_tag(cid, ifname)) for cid, ifname in valid}
    backend().gc(name, keep)


HANDLERS = Handlers(add=add, delete=delete, check=check, status=status, gc=gc)
