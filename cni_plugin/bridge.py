"""The bridge plugin: a veth pair from the pod to a Linux bridge, IPAM, gateway, masquerade.

Orchestration only: the kernel is reached through netlink.py, IPAM through invoke.py, nftables
through firewall/. Behaviour follows plugins/main/bridge (keys, ADD order, result shape) with the
differences documented in the README (section pycni-bridge):

* mtu unset = the MTU of the node's default-route interface (reference: kernel default 1500);
* the host veth is named `veth` + 8 hex of sha256("<containerID>:<ifname>") (reference: random),
  so DEL, CHECK and humans can find it without the pod namespace;
* masquerade is one `inet pycni` nftables table with the pod addresses of a network in a set,
  and DEL removes the attachment's entries even when CNI_NETNS is empty or gone
  (the reference leaks them: containernetworking/plugins#810);
* every ADD step pushes its inverse on an Undo stack (rollback.py); the bridge is never undone;
* GC removes masquerade entries of attachments not listed (the reference has no GC).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import sys
import time
from typing import Any, Literal, NamedTuple

from . import attachments, invoke, netlink, netns
from .config import PassThroughModel, field, parse_config
from .firewall import attachment_tag
from .firewall.backend import Masquerade, SpoofCheck
from .rollback import Sweep, Undo
from .spec.errors import (
    CheckFailed,
    CNIError,
    FirewallFailure,
    InterfaceExists,
    InvalidConfig,
    InvalidNetns,
    LinkNotFound,
    NetlinkFailure,
    NetnsNotFound,
    PluginNotAvailable,
    TryAgainLater,
    UnsupportedField,
)
from .spec.skel import CmdArgs, Handlers, ifname_problem, parse_cni_args
from .spec.types import DNS, Interface, IPConfig, Result, Route

DEFAULT_BRIDGE = "cni0"
FALLBACK_MTU = 1500
SETTLE_TIMEOUT = 5.0  # seconds, as ip.SettleAddresses in the reference
SETTLE_POLL = 0.05  # the longest pause between two looks; the first look is immediate
SETTLE_FIRST_POLL = 0.005  # then doubling: a DAD that ends soon is seen soon, a long one costs few looks
MAC_ARGS = frozenset({"MAC"})


# --- configuration ---------------------------------------------------------------------------------


class IPAMSection(PassThroughModel):
    type: str = ""


class DNSSection(PassThroughModel):
    nameservers: list[str] = field(default_factory=list)
    domain: str = ""
    search: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)


def _bridge_name(value: str) -> str:
    problem = ifname_problem(value)
    if problem:
        raise ValueError(f"bridge name {value!r} {problem}")
    return value


def _mtu(value: int) -> int | None:
    if value != 0 and value < 68:
        raise ValueError("mtu must be 0 (unset) or between 68 and 65535")
    return value or None


class BridgeConf(PassThroughModel):
    """The reference bridge's keys (plugins/main/bridge NetConf), same names and defaults."""

    name: str
    bridge: str = field(DEFAULT_BRIDGE, check=_bridge_name)
    is_gateway: bool = field(False, alias="isGateway")
    is_default_gateway: bool = field(False, alias="isDefaultGateway")
    force_address: bool = field(False, alias="forceAddress")
    ip_masq: bool = field(False, alias="ipMasq")
    ip_masq_backend: Literal["nftables", "iptables", ""] | None = field(None, alias="ipMasqBackend")
    mtu: int | None = field(None, ge=0, le=65535, check=_mtu)
    hairpin_mode: bool = field(False, alias="hairpinMode")
    promisc_mode: bool = field(False, alias="promiscMode")
    vlan: int = field(0, ge=0, le=4094)
    vlan_trunk: list[dict[str, Any]] | None = field(None, alias="vlanTrunk")
    preserve_default_vlan: bool = field(False, alias="preserveDefaultVlan")
    macspoofchk: bool = False
    enabledad: bool = False
    port_isolation: bool = field(False, alias="portIsolation")
    disable_container_interface: bool = field(False, alias="disableContainerInterface")
    # pycni: the cluster controller's status file (pycni-agent writes it into the conflist it
    # generates); STATUS answers 50 while that node has no cluster subnet.
    cluster_status_file: str = field("", alias="clusterStatusFile")
    # pycni: where the attachment records for network policy go (attachments.py); "" = the
    # default directory when pycni-agent enforces policy, else none.
    attachments_dir: str = field("", alias="attachmentsDir")
    ipam: IPAMSection = field(default_factory=IPAMSection)
    dns: DNSSection | None = None
    args: dict[str, Any] | None = None
    runtime_config: dict[str, Any] | None = field(None, alias="runtimeConfig")

    def _check(self) -> None:
        if self.hairpin_mode and self.promisc_mode:
            raise ValueError("hairpinMode and promiscMode cannot both be set")
        if self.is_default_gateway:
            self.is_gateway = True
        if self.disable_container_interface and self.ipam.type:
            raise ValueError("disableContainerInterface cannot be used with IPAM")

    @property
    def layer3(self) -> bool:
        return bool(self.ipam.type)


def load_conf(args: CmdArgs, *, strict: bool = True) -> BridgeConf:
    """The validated config. `strict` (ADD, CHECK) also refuses keys pycni does not implement;
    DEL/STATUS/GC are lenient there, so a runtime can always clean up after a refused ADD."""
    conf = parse_config(BridgeConf, args.config)
    if not strict:
        return conf
    # Accepted and validated, not implemented yet (README, pycni-bridge "Not implemented"): refuse
    # rather than silently give a pod different isolation than the operator asked for.
    if conf.vlan or conf.vlan_trunk:
        raise UnsupportedField("vlan/vlanTrunk are not supported by pycni-bridge yet", f"vlan={conf.vlan}")
    return conf


def container_mac(conf: BridgeConf, args: CmdArgs) -> str:
    """runtimeConfig.mac > args.cni.mac > CNI_ARGS MAC (CONVENTIONS.md precedence)."""
    runtime = (conf.runtime_config or {}).get("mac")
    if isinstance(runtime, str) and runtime:
        return _valid_mac(runtime, "runtimeConfig.mac")
    cni = ((conf.args or {}).get("cni") or {}).get("mac")
    if isinstance(cni, str) and cni:
        return _valid_mac(cni, "args.cni.mac")
    legacy = args.cni_args(MAC_ARGS | {"IgnoreUnknown"}).get("MAC", "") if args.args else ""
    return _valid_mac(legacy, "CNI_ARGS MAC") if legacy else ""


def _valid_mac(mac: str, where: str) -> str:
    parts = mac.split(":")
    if len(parts) != 6 or not all(len(p) == 2 and all(c in "0123456789abcdefABCDEF" for c in p) for p in parts):
        raise InvalidConfig(f"invalid MAC address in {where}", mac)
    if int(parts[0], 16) & 1:
        raise InvalidConfig(f"invalid MAC address in {where}", f"{mac} is a multicast address")
    return mac.lower()


def host_veth_name(container_id: str, ifname: str) -> str:
    """`veth` + 8 hex chars of sha256("<containerID>:<ifname>"): stable, so DEL/CHECK/GC and an
    operator can name it without entering the pod; `veth*` is ignored by NetworkManager."""
    return "veth" + hashlib.sha256(f"{container_id}:{ifname}".encode()).hexdigest()[:8]


# --- pure result shaping -------------------------------------------------------------------------------


class L3Plan(NamedTuple):
    ips: tuple[IPConfig, ...]
    routes: tuple[Route, ...]
    bridge_addresses: tuple[Any, ...]  # gateway ip_interface values for the bridge


def plan_l3(ipam: Result, *, is_gateway: bool, is_default_gateway: bool) -> L3Plan:
    """Gateways, default routes and bridge addresses from the IPAM result (calcGateways)."""
    ips: list[IPConfig] = []
    routes = list(ipam.routes)
    bridge_addrs: list[Any] = []
    defaults_done: set[int] = set()
    for ip in ipam.ips:
        gw = ip.gateway
        if gw is None and is_gateway:
            gw = ip.address.network.network_address + 1
        ips.append(IPConfig(address=ip.address, gateway=gw, interface=2))
        if not is_gateway or gw is None:
            continue
        gw_iface = ipaddress.ip_interface(f"{gw}/{ip.address.network.prefixlen}")
        if gw_iface not in bridge_addrs:
            bridge_addrs.append(gw_iface)
        if is_default_gateway and ip.family not in defaults_done:
            defaults_done.add(ip.family)
            default = ipaddress.ip_network("0.0.0.0/0" if ip.family == 4 else "::/0")
            if not any(r.dst == default and r.gw is not None for r in routes):
                routes = [r for r in routes if r.dst != default]
                routes.append(Route(dst=default, gw=gw))
    return L3Plan(ips=tuple(ips), routes=tuple(routes), bridge_addresses=tuple(bridge_addrs))


def merge_prev(prev: Result | None, ours: Result) -> Result:
    """SPEC §2 ADD: a chained interface plugin keeps prevResult's content and appends its own."""
    if prev is None:
        return ours
    offset = len(prev.interfaces)
    ips = tuple(
        IPConfig(
            address=ip.address, gateway=ip.gateway,
            interface=None if ip.interface is None else ip.interface + offset,
        )
        for ip in ours.ips
    )
    dns = ours.dns if not ours.dns.is_empty() else prev.dns
    return Result(
        interfaces=prev.interfaces + ours.interfaces, ips=prev.ips + ips, routes=prev.routes + ours.routes, dns=dns
    )


def _dns(conf: BridgeConf, ipam: Result | None) -> DNS:
    if conf.dns is not None:
        configured = DNS(
            nameservers=tuple(conf.dns.nameservers), domain=conf.dns.domain,
            search=tuple(conf.dns.search), options=tuple(conf.dns.options),
        )
        if not configured.is_empty():
            return configured
    return ipam.dns if ipam is not None else DNS()


# --- seams (patched by tests) -------------------------------------------------------------------


def masquerade() -> Masquerade:
    from .firewall.nftables import NftMasquerade

    return NftMasquerade()


def spoofcheck() -> SpoofCheck:
    from .firewall.nftables import NftSpoofCheck

    return NftSpoofCheck()


def _warn(message: str) -> None:
    sys.stderr.write(f"pycni-bridge: {message}\n")


# --- ADD ---------------------------------------------------------------------------------------------


def _host_sysctl_best_effort(host: netlink.Netlink, key: str, value: str) -> None:
    # accept_ra on the host side: harmless when IPv6 is disabled on the node, so never fatal.
    try:
        host.sysctl_set(key, value)
    except NetlinkFailure as exc:
        _warn(f"ignored: {exc}")


def _settle(pod: netlink.Netlink, ifname: str, index: int) -> None:
    """Wait until no IPv6 address of `ifname` is tentative; a DAD failure is an error."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    pause = SETTLE_FIRST_POLL
    while True:
        tentative, failed = pod.tentative_addresses(ifname, index=index)
        if failed:
            raise NetlinkFailure(f"duplicate address detection failed on {ifname}", ", ".join(map(str, failed)))
        if not tentative:
            return
        if time.monotonic() > deadline:
            raise NetlinkFailure(f"addresses on {ifname} still tentative", ", ".join(map(str, tentative)))
        time.sleep(pause)
        pause = min(pause * 2, SETTLE_POLL)


def _configure_pod(pod: netlink.Netlink, link: netlink.LinkInfo, plan: L3Plan, enabledad: bool) -> None:
    """ipam.ConfigureIface: sysctls, addresses, link up, settle, routes."""
    ifname = link.name
    families = {ip.family for ip in plan.ips}
    if 6 in families:
        for key in ("ipv6/conf/lo/disable_ipv6", f"ipv6/conf/{ifname}/disable_ipv6"):
            pod.sysctl_set(key, "0")
        pod.sysctl_set(f"ipv6/conf/{ifname}/keep_addr_on_down", "1")
        # DAD off by default (plugins#695/#680): a fresh veth on a bridge cannot have a duplicate
        # the IPAM did not already rule out, and DAD delays the address by ~1-2 s.
        pod.sysctl_set(f"ipv6/conf/{ifname}/accept_dad", "1" if enabledad else "0")
        if enabledad:
            pod.sysctl_set(f"ipv6/conf/{ifname}/enhanced_dad", "1")
    if 4 in families:
        pod.sysctl_set(f"ipv4/conf/{ifname}/arp_notify", "1")
    for ip in plan.ips:
        pod.add_address(ifname, ip.address, nodad=not enabledad, index=link.index)
    pod.set_up(ifname)
    if 6 in families:
        _settle(pod, ifname, link.index)
    gateways = {ip.family: ip.gateway for ip in reversed(plan.ips) if ip.gateway is not None}
    for route in plan.routes:
        gw = route.gw if route.gw is not None else gateways.get(route.dst.version)
        pod.add_route(
            route.dst, gw=gw, dev=ifname, dev_index=link.index,
            priority=route.priority, table=route.table, scope=route.scope,
        )


def _gateway_on_bridge(host: netlink.Netlink, link: netlink.LinkInfo, plan: L3Plan, force: bool) -> None:
    """isGateway: gateway addresses on the bridge (EEXIST is a racing ADD: fine), forwarding on."""
    bridge = link.name
    existing = host.addresses(bridge, index=link.index)
    for gw in plan.bridge_addresses:
        if gw in existing:
            continue
        clashes = [
            a for a in existing
            if a.version == gw.version and not a.ip.is_link_local
            and (gw.version == 4 or a.network.overlaps(gw.network))
        ]
        for clash in clashes:
            if not force:
                raise InvalidConfig(
                    f"bridge {bridge} already has an address different from {gw}", f"{clash} (set forceAddress)"
                )
            host.delete_address(bridge, clash)
        host.add_address(bridge, gw, nodad=True, index=link.index)
    for family in {gw.version for gw in plan.bridge_addresses}:
        key = "ipv4/ip_forward" if family == 4 else "ipv6/conf/all/forwarding"
        if host.sysctl_get(key) != "1":
            host.sysctl_set(key, "1")


def add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    mac = container_mac(conf, args)
    prev = args.prev_result()
    netns.require_netns(args.netns)  # code 8 before anything is created
    host_veth = host_veth_name(args.container_id, args.ifname)
    tag = attachment_tag(args.container_id, args.ifname)

    with contextlib.ExitStack() as stack, Undo() as undo:
        host = stack.enter_context(netlink.Netlink())
        try:
            pod = stack.enter_context(netlink.Netlink(args.netns))
        except NetnsNotFound as exc:  # vanished since require_netns
            raise InvalidNetns(f"network namespace {args.netns} does not exist") from exc
        mtu = conf.mtu or host.default_route_mtu() or FALLBACK_MTU

        bridge, created = host.ensure_bridge(conf.bridge, mtu=mtu, promisc=conf.promisc_mode)
        if created:
            _host_sysctl_best_effort(host, f"ipv6/conf/{conf.bridge}/accept_ra", "0")

        try:
            host.create_veth_pair(host_veth, args.ifname, args.netns, mtu=mtu, peer_mac=mac)
        except InterfaceExists as exc:
            # SPEC §2 ADD: an ifname already present in the pod is an error. Asked only now that
            # the kernel refused a name (the usual ADD saves the lookup): which of the two was it?
            if pod.link_exists(args.ifname):
                raise InterfaceExists(f"interface {args.ifname} already exists in {args.netns}") from exc
            raise
        undo.push(f"delete veth {host_veth}", host.delete_link, host_veth)
        _host_sysctl_best_effort(host, f"ipv6/conf/{host_veth}/accept_ra", "0")
        host.set_master(host_veth, conf.bridge, bridge.index)
        host.set_bridge_port(host_veth, hairpin=conf.hairpin_mode, isolated=conf.port_isolation)
        host.set_up(host_veth)
        # Read once: the index saves a lookup per address and route, the MAC and MTU go into the
        # result (neither changes once the pair exists).
        pod_link = pod.link(args.ifname)

        if conf.macspoofchk:
            spoof = spoofcheck()
            undo.push(f"macspoofchk removal ({tag})", spoof.remove, conf.name, tag)
            spoof.add(conf.name, tag, host_veth, pod_link.mac)

        ipam_result: Result | None = None
        plan = L3Plan(ips=(), routes=(), bridge_addresses=())
        if conf.layer3:
            ipam_result = invoke.delegate_add(conf.ipam.type, args)
            # SPEC §4: a delegate that succeeded is released (DEL) if we fail later.
            undo.push(f"IPAM DEL ({conf.ipam.type})", invoke.delegate_del, conf.ipam.type, args)
            if not ipam_result.ips:
                raise InvalidConfig(f"IPAM plugin {conf.ipam.type} returned no IP configuration")
            plan = plan_l3(ipam_result, is_gateway=conf.is_gateway, is_default_gateway=conf.is_default_gateway)
            _configure_pod(pod, pod_link, plan, conf.enabledad)
            if conf.is_gateway:
                _gateway_on_bridge(host, bridge, plan, conf.force_address)
            if conf.ip_masq:
                masq = masquerade()
                # Push first: a failed nft transaction changed nothing, and remove() is by tag.
                undo.push(f"masquerade removal ({tag})", masq.remove, conf.name, tag)
                masq.add(conf.name, tag, [ip.address for ip in plan.ips])
        elif not conf.disable_container_interface:
            pod.set_up(args.ifname)

        host_link = host.wait_operstate_up(host_veth)
        if host_link.operstate != "UP":
            raise NetlinkFailure(f"bridge port {host_veth} in error state", host_link.operstate)
        _record_attachment(conf, args, host_veth, plan, undo)

        # The bridge's MAC as ensure_bridge saw it, before this port joined (as the reference
        # reports it); pycni's bridges pin their MAC, so it does not move with the ports.
        ours = Result(
            interfaces=(
                Interface(name=bridge.name, mac=bridge.mac),
                Interface(name=host_link.name, mac=host_link.mac, mtu=host_link.mtu),
                Interface(name=args.ifname, mac=pod_link.mac, sandbox=args.netns, mtu=pod_link.mtu),
            ),
            ips=plan.ips,
            routes=plan.routes,
            dns=_dns(conf, ipam_result),
        )
        undo.disarm()
        return merge_prev(prev, ours)
    raise AssertionError("unreachable")  # pragma: no cover


def _record_attachment(conf: BridgeConf, args: CmdArgs, host_veth: str, plan: L3Plan, undo: Undo) -> None:
    """Record the pod for network policy and, when the agent enforces it, wait until the pod's
    rules are in the kernel (attachments.py: isolation before the pod's first packet)."""
    base = attachments.directory(conf.attachments_dir)
    if base is None:
        return
    namespace, name = attachments.pod_identity(parse_cni_args(args.args) if args.args else {})
    undo.push("remove the attachment record", attachments.remove, base, args.container_id, args.ifname)
    attachments.record(base, args.container_id, args.ifname, namespace, name,
                       [str(ip.address.ip) for ip in plan.ips], host_veth, conf.name)
    try:
        attachments.sync(base, f"ADD {args.container_id}/{args.ifname}")
    except attachments.SyncFailed as exc:
        raise TryAgainLater("network policy is not in place for the pod yet", str(exc)) from exc


# --- DEL: a sweep that always finishes ---------------------------------------------------------------


def _delete_pair(args: CmdArgs) -> None:
    """Delete CNI_IFNAME in the pod only if it is the peer of this attachment's host veth.

    DEL also follows a failed ADD (SPEC §3); when that ADD failed because the pod already had an
    interface of that name, the interface belongs to someone else and must survive (the reference
    deletes it). Deleting the pod end takes the host end with it.
    """
    host_veth = host_veth_name(args.container_id, args.ifname)
    with netlink.Netlink(args.netns) as pod, netlink.Netlink() as host:
        try:
            pod_link = pod.link(args.ifname)
        except LinkNotFound:
            return
        try:
            host_link = host.link(host_veth)
        except LinkNotFound:
            _warn(f"DEL: leaving {args.ifname} in {args.netns} alone: it is not paired with {host_veth}")
            return
        paired = pod_link.peer_index == host_link.index and host_link.peer_index == pod_link.index
        if pod_link.kind == "veth" and paired:
            pod.delete_link(args.ifname)
        else:
            _warn(f"DEL: leaving {args.ifname} in {args.netns} alone: it is not the peer of {host_veth}")


def delete(args: CmdArgs) -> None:
    conf = load_conf(args, strict=False)
    tag = attachment_tag(args.container_id, args.ifname)
    sweep = Sweep()

    if args.netns:
        try:
            _delete_pair(args)
        except (NetnsNotFound, LinkNotFound, InvalidNetns):
            pass  # already gone (reboot, runtime removed the netns): keep sweeping
        except CNIError as exc:
            sweep.errors.append(exc)
    # With CNI_NETNS empty or gone there is no pair left to delete: a veth pair dies with either
    # of its namespaces. The derived host-veth name is not proof of ownership on its own (a hash
    # collision with another pod is possible), so nothing is deleted by name alone.

    # Masquerade and spoofcheck entries go by tag: no netns or prevResult needed (plugins#810).
    if conf.ip_masq:
        sweep.run(masquerade().remove, conf.name, tag)
    if conf.macspoofchk:
        sweep.run(spoofcheck().remove, conf.name, tag)
    if conf.layer3:
        sweep.run(invoke.delegate_del, conf.ipam.type, args)
    base = attachments.directory(conf.attachments_dir)
    if base is not None:
        attachments.remove(base, args.container_id, args.ifname)
        # The pod is gone; its rules go on the agent's next pass (best effort, never fails DEL).
        attachments.sync(base, f"DEL {args.container_id}/{args.ifname}", required=False, timeout=1.0, wait=False)
    sweep.finish()


# --- CHECK --------------------------------------------------------------------------------------------


def _find_pod_interface(prev: Result, args: CmdArgs) -> int:
    for index, iface in enumerate(prev.interfaces):
        if iface.name == args.ifname and iface.sandbox:
            return index
    raise CheckFailed(f"prevResult has no interface {args.ifname} with a sandbox")


def check(args: CmdArgs) -> None:
    conf = load_conf(args)
    prev = args.prev_result()
    if prev is None:
        raise InvalidConfig("CHECK requires prevResult")
    if conf.layer3:
        invoke.delegate_check(conf.ipam.type, args)
    pod_index = _find_pod_interface(prev, args)
    expected_pod = prev.interfaces[pod_index]
    host_veth = host_veth_name(args.container_id, args.ifname)
    try:
        pod = netlink.Netlink(args.netns)
    except NetnsNotFound as exc:
        raise CheckFailed(f"network namespace {args.netns} does not exist") from exc

    with contextlib.ExitStack() as stack:
        stack.enter_context(pod)
        host = stack.enter_context(netlink.Netlink())
        try:
            br = host.link(conf.bridge)
        except LinkNotFound as exc:
            raise CheckFailed(f"bridge {conf.bridge} does not exist") from exc
        if br.kind != "bridge":
            raise CheckFailed(f"{conf.bridge} is not a bridge", f"kind {br.kind!r}")
        for iface in prev.interfaces:
            if iface.name == conf.bridge and not iface.sandbox and iface.mac and iface.mac != br.mac:
                raise CheckFailed(f"bridge {conf.bridge} MAC differs", f"{br.mac} != {iface.mac}")
        if conf.promisc_mode and not host.promisc(conf.bridge):
            raise CheckFailed(f"bridge {conf.bridge} is not in promiscuous mode")

        try:
            link = pod.link(args.ifname)
        except LinkNotFound as exc:
            raise CheckFailed(f"interface {args.ifname} does not exist in {args.netns}") from exc
        if link.kind != "veth":
            raise CheckFailed(f"{args.ifname} is not a veth", f"kind {link.kind!r}")
        if expected_pod.mac and link.mac != expected_pod.mac.lower():
            raise CheckFailed(f"{args.ifname} MAC differs", f"{link.mac} != {expected_pod.mac}")

        try:
            hlink = host.link(host_veth)
        except LinkNotFound as exc:
            raise CheckFailed(f"host veth {host_veth} does not exist") from exc
        if hlink.master != br.index:
            raise CheckFailed(f"host veth {host_veth} is not a port of {conf.bridge}")
        if hlink.peer_index != link.index or link.peer_index != hlink.index:
            raise CheckFailed(f"host veth {host_veth} is not the peer of {args.ifname}")

        have = set(pod.addresses(args.ifname))
        ours = [ip for ip in prev.ips if ip.interface == pod_index]
        for ip in ours:
            if ip.address not in have:
                raise CheckFailed(f"{args.ifname} lacks address {ip.address}")
        routes = pod.routes()
        for route in prev.routes:
            if not any(dst == route.dst and (route.gw is None or gw == route.gw) for dst, gw in routes):
                raise CheckFailed(f"route to {route.dst} via {route.gw or args.ifname} is missing in the pod")

    tag = attachment_tag(args.container_id, args.ifname)
    if conf.macspoofchk:
        pairs = {(e.host_if, e.mac) for e in spoofcheck().entries(conf.name) if e.comment.endswith(tag)}
        if (host_veth, link.mac) not in pairs or (host_veth, "") not in pairs:
            raise CheckFailed("macspoofchk entries missing", f"{host_veth} / {link.mac}")
    if conf.ip_masq and ours:
        members = {e.address for e in masquerade().entries(conf.name) if e.tag == tag}
        missing = [str(ip.address.ip) for ip in ours if ip.address.ip not in members]
        if missing:
            raise CheckFailed("masquerade entries missing", ", ".join(missing))


# --- STATUS / GC ----------------------------------------------------------------------------------------


def status(args: CmdArgs) -> None:
    conf = load_conf(args, strict=False)
    if conf.cluster_status_file:
        from .cluster.status import not_ready_reason

        reason = not_ready_reason(conf.cluster_status_file)
        if reason:
            raise PluginNotAvailable("the node is not ready for pods", reason)
    if conf.layer3:
        invoke.delegate_status(conf.ipam.type, args)
    if conf.ip_masq or conf.macspoofchk:
        try:
            masquerade().usable()
        except FirewallFailure as exc:
            raise PluginNotAvailable("ipMasq is set but nftables is not usable", str(exc)) from exc


def gc(args: CmdArgs) -> None:
    conf = load_conf(args, strict=False)
    valid = args.valid_attachments()
    sweep = Sweep()
    if conf.layer3:
        sweep.run(invoke.delegate_gc, conf.ipam.type, args)
    if valid is not None:
        keep = {attachment_tag(cid, ifname) for cid, ifname in valid}
        if conf.ip_masq:
            sweep.run(masquerade().gc, conf.name, keep)
        if conf.macspoofchk:
            sweep.run(spoofcheck().gc, conf.name, keep)
        base = attachments.directory(conf.attachments_dir)
        if base is not None:
            sweep.run(attachments.gc, base, conf.name, set(valid))
    sweep.finish()


HANDLERS = Handlers(add=add, delete=delete, check=check, status=status, gc=gc)
