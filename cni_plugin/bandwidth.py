"""The bandwidth plugin: token-bucket shaping of a pod's traffic, chained after an interface plugin.

Behaviour follows plugins/meta/bandwidth (keys, units, tc layout), with the differences documented
in the README (section pycni-bandwidth):

* traffic INTO the pod (`ingressRate`/`ingressBurst`): a tbf root qdisc on the host veth;
* traffic OUT of the pod (`egressRate`/`egressBurst`): an ingress qdisc on the host veth with a
  match-all u32 filter whose mirred action redirects every packet to an IFB, shaped by a tbf;
* the IFB is `bwp` + 12 hex of sha256("<containerID>:<ifname>") (reference: hash of network name
  and container ID) and carries `pycni-bandwidth <network> <tag>` in its alias (IFLA_IFALIAS), so
  DEL deletes only an IFB it made and GC finds the IFBs of its network without any state file;
* like the reference, an egress IFB is appended to prevResult's interfaces (name and MAC, no
  sandbox); prevResult's own entries and every IP's interface index stay as they were;
* a burst smaller than one full-size frame is refused (the kernel would drop every such frame);
* CHECK also verifies the IFB, its alias and the redirect; GC and STATUS exist (reference: none);
* DEL also deletes the IFB the reference made for the same network and container ID (unless
  another link still redirects to it), and GC the
  reference's IFBs no link redirects to any more (a network switched from Go bandwidth to pycni).

Units: rates in bits per second, bursts in bits (CONVENTIONS.md `bandwidth` capability); the
kernel takes bytes/s, bytes and psched ticks. The arithmetic is the pure `plan_tbf` below.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import netlink
from .config import GoCaseModel, PassThroughModel, field, parse_config
from .firewall import attachment_tag
from .netlink import tc
from .rollback import Sweep, Undo
from .spec.errors import (
    CheckFailed,
    CNIError,
    InvalidConfig,
    InvalidNetns,
    LinkNotFound,
    NetlinkFailure,
    NetnsNotFound,
    PluginNotAvailable,
    UnsupportedField,
)
from .spec.skel import CmdArgs, Handlers
from .spec.types import Interface, Result

IFB_PREFIX = "bwp"
ALIAS_PREFIX = "pycni-bandwidth"
LATENCY_USEC = 25_000  # tbf latency, as the reference (latencyInMillis = 25)
U32_MAX = 2**32 - 1
ETH_HLEN = 14
# psched ticks per microsecond: 64 ns ticks since Linux 2.6.31 (tc.TICKS_PER_USEC reads the kernel's).
DEFAULT_TICKS_PER_USEC = 15.625
USEC_PER_SEC = 1_000_000
ENTRY_KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst", "shapedSubnets", "unshapedSubnets")


# --- configuration ---------------------------------------------------------------------------------


class BandwidthEntry(GoCaseModel):
    """One `bandwidth` entry: top-level keys or `runtimeConfig.bandwidth` (CONVENTIONS.md).

    Keys match case-insensitively (GoCaseModel): containerd sends IngressRate/IngressBurst/...
    A rate or burst is a JSON number without a fraction (1e6 is fine; "1000" and true are not).
    """

    ingress_rate: int = field(0, alias="ingressRate", ge=0)
    ingress_burst: int = field(0, alias="ingressBurst", ge=0)
    egress_rate: int = field(0, alias="egressRate", ge=0)
    egress_burst: int = field(0, alias="egressBurst", ge=0)
    shaped_subnets: list[str] | None = field(None, alias="shapedSubnets")
    unshaped_subnets: list[str] | None = field(None, alias="unshapedSubnets")


class BandwidthConf(PassThroughModel):
    name: str
    runtime_config: dict[str, Any] | None = field(None, alias="runtimeConfig")


@dataclass(frozen=True)
class TbfPlan:
    """One tbf qdisc in the kernel's units."""

    rate: int  # bytes per second (tc_ratespec.rate, 32 bits)
    burst: int  # bytes the bucket holds; may be below the configured burst, see plan_tbf
    limit: int  # bytes that may wait in the queue

    def buffer_ticks(self, ticks_per_usec: float = DEFAULT_TICKS_PER_USEC) -> int:
        """The tbf `buffer` field: psched ticks to send `burst` at `rate` (tc's calc_xmittime)."""
        return int(int(USEC_PER_SEC * (float(self.burst) / self.rate)) * ticks_per_usec)


@dataclass(frozen=True)
class Shaping:
    ingress: TbfPlan | None  # traffic into the pod: tbf on the host veth
    egress: TbfPlan | None  # traffic out of the pod: tbf on the IFB
    where: str = ""  # key prefix for messages ("" or "runtimeConfig.bandwidth.")

    @property
    def any(self) -> bool:
        return self.ingress is not None or self.egress is not None


def plan_tbf(
    rate_bits: int, burst_bits: int, *, rate_key: str, burst_key: str,
    ticks_per_usec: float = DEFAULT_TICKS_PER_USEC,
) -> TbfPlan | None:
    """tbf parameters for a rate in bits/s and a burst in bits; None when both are 0 (no shaping).

    Refused (code 7, naming the key): one of the pair without the other, a rate below 8 bit/s or a
    burst below 8 bits (0 bytes), a rate whose bytes/s overflow the kernel's 32-bit field
    (~34.36 Gbit/s; pyroute2 has no TCA_TBF_RATE64), a burst of 4 GiB or more (the reference's limit).

    The kernel stores the burst as the time to send it (`buffer`, 32-bit psched ticks: at most
    ~274.9 s at the configured rate). A longer burst is clamped to that, not refused: containerd
    asks for a burst of 2^32-1 bits with every kubernetes.io bandwidth annotation.
    """
    if rate_bits == 0 and burst_bits == 0:
        return None
    if burst_bits == 0:
        raise InvalidConfig(f"{rate_key} is set but {burst_key} is not", f"{rate_key}={rate_bits}: set both")
    if rate_bits == 0:
        raise InvalidConfig(f"{burst_key} is set but {rate_key} is not", f"{burst_key}={burst_bits}: set both")
    rate, burst = rate_bits // 8, burst_bits // 8
    if rate == 0:
        raise InvalidConfig(f"{rate_key} is too small", f"{rate_bits} bit/s is less than one byte per second")
    if rate > U32_MAX:
        raise InvalidConfig(
            f"{rate_key} is too large", f"{rate_bits} bit/s exceeds the 32-bit tbf rate field ({U32_MAX * 8} bit/s)"
        )
    if burst == 0:
        raise InvalidConfig(f"{burst_key} is too small", f"{burst_bits} bits is less than one byte")
    if burst >= U32_MAX:
        raise InvalidConfig(f"{burst_key} is too large", f"{burst_bits} bits is 4 GiB or more")
    # Largest burst whose buffer fits 32 bits of ticks (one tick of margin against float rounding).
    max_burst = int((U32_MAX - 2 * ticks_per_usec) / ticks_per_usec / USEC_PER_SEC * rate)
    burst = min(burst, max_burst)
    limit = min(U32_MAX, rate * LATENCY_USEC // USEC_PER_SEC + burst)
    return TbfPlan(rate=rate, burst=burst, limit=limit)


def _entry(config: dict[str, Any]) -> tuple[BandwidthEntry | None, str]:
    """The bandwidth entry and its key prefix: any top-level key wins over runtimeConfig.bandwidth."""
    if any(key in config for key in ENTRY_KEYS):
        return parse_config(BandwidthEntry, {k: config[k] for k in ENTRY_KEYS if k in config}), ""
    runtime = config.get("runtimeConfig")
    raw = runtime.get("bandwidth") if isinstance(runtime, dict) else None
    if raw is None:
        return None, ""
    where = "runtimeConfig.bandwidth"
    if not isinstance(raw, dict):
        raise InvalidConfig("invalid network configuration", f"{where}: expected an object")
    return parse_config(BandwidthEntry, raw, where=where), f"{where}."


def plan_shaping(config: dict[str, Any], ticks_per_usec: float = DEFAULT_TICKS_PER_USEC) -> Shaping:
    """The validated shaping a config asks for (pure: the whole config dict in, plans out)."""
    entry, where = _entry(config)
    if entry is None:
        return Shaping(ingress=None, egress=None, where=where)
    for key, subnets in (("shapedSubnets", entry.shaped_subnets), ("unshapedSubnets", entry.unshaped_subnets)):
        if subnets:
            raise UnsupportedField(
                f"{where}{key} is not supported by pycni-bandwidth", "shaping applies to all of the pod's traffic"
            )
    ingress = plan_tbf(
        entry.ingress_rate, entry.ingress_burst, rate_key=f"{where}ingressRate", burst_key=f"{where}ingressBurst",
        ticks_per_usec=ticks_per_usec,
    )
    egress = plan_tbf(
        entry.egress_rate, entry.egress_burst, rate_key=f"{where}egressRate", burst_key=f"{where}egressBurst",
        ticks_per_usec=ticks_per_usec,
    )
    return Shaping(ingress=ingress, egress=egress, where=where)


def require_frame_fits(plan: TbfPlan, mtu: int, burst_key: str, dev: str) -> None:
    """A tbf drops every packet longer than its burst: refuse a burst below one full-size frame."""
    frame = mtu + ETH_HLEN
    if plan.burst < frame:
        raise InvalidConfig(
            f"{burst_key} is smaller than one full-size frame on {dev}",
            f"{plan.burst * 8} bits < {frame * 8} bits (MTU {mtu} + {ETH_HLEN}-byte header): "
            "every such packet would be dropped",
        )


def tbf_mismatch(plan: TbfPlan, qdisc: tc.Qdisc | None, ticks_per_usec: float = DEFAULT_TICKS_PER_USEC) -> str:
    """What differs between the planned tbf and the qdisc found ('' when they agree)."""
    if qdisc is None or qdisc.kind != "tbf" or qdisc.tbf is None:
        return f"no tbf root qdisc (found {qdisc.kind if qdisc else 'none'})"
    have = qdisc.tbf
    if have.rate != plan.rate:
        return f"rate {have.rate * 8} bit/s, expected {plan.rate * 8} bit/s"
    if abs(have.buffer - plan.buffer_ticks(ticks_per_usec)) > 1:
        burst = int(have.buffer / ticks_per_usec * have.rate / USEC_PER_SEC)
        return f"burst {burst * 8} bits, expected {plan.burst * 8} bits"
    if have.limit != plan.limit:
        return f"limit {have.limit} bytes, expected {plan.limit} bytes"
    return ""


# --- names and ownership (pure) --------------------------------------------------------------------


def ifb_name(container_id: str, ifname: str) -> str:
    """`bwp` + 12 hex of sha256("<containerID>:<ifname>"): 15 characters, one per attachment."""
    return IFB_PREFIX + attachment_tag(container_id, ifname)[:12]


def ifb_alias(network: str, tag: str) -> str:
    return f"{ALIAS_PREFIX} {network} {tag}"


def parse_ifb_alias(alias: str) -> tuple[str, str] | None:
    """(network, tag) from an alias pycni-bandwidth wrote, else None."""
    parts = alias.split(" ")
    if len(parts) != 3 or parts[0] != ALIAS_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def stale_ifbs(ifbs: Iterable[tuple[str, str]], network: str, keep: set[str]) -> list[str]:
    """Names of the (name, alias) IFBs of `network` whose attachment is not in `keep`."""
    stale = []
    for name, alias in ifbs:
        owner = parse_ifb_alias(alias)
        if owner is not None and owner[0] == network and owner[1] not in keep:
            stale.append(name)
    return sorted(stale)


def with_ifb(prev: Result, ifb: Interface) -> Result:
    """prevResult with the IFB appended last: earlier entries and the IPs' indexes into them are
    untouched (the reference appends it too; runtimes read the host-side devices from the list)."""
    if any(i.name == ifb.name and not i.sandbox for i in prev.interfaces):
        return prev  # already listed (a prevResult that went through this ADD): never twice
    return prev.with_changes(interfaces=(*prev.interfaces, ifb))


# The reference names its IFB "bwp" + hex of sha512(<network name><container ID>), cut to 15
# characters, and gives it no alias (plugins/meta/bandwidth). pycni's own IFBs share the prefix
# and length but always carry a pycni alias, so an alias tells the two apart.
GO_IFB_PREFIX = "bwp"
GO_IFB_LENGTH = 15


def go_ifb_name(network: str, container_id: str) -> str:
    """The name the Go reference bandwidth plugin gives the IFB of (network, container ID)."""
    return (GO_IFB_PREFIX + hashlib.sha512(f"{network}{container_id}".encode()).hexdigest())[:GO_IFB_LENGTH]


def looks_like_go_ifb(name: str, alias: str) -> bool:
    tail = name[len(GO_IFB_PREFIX):]
    return (
        name.startswith(GO_IFB_PREFIX) and len(name) == GO_IFB_LENGTH and not alias
        and all(c in "0123456789abcdef" for c in tail)
    )


def stale_go_ifbs(
    ifbs: Iterable[tuple[str, int, str]], redirected: set[int], network: str, valid_ids: Iterable[str]
) -> list[str]:
    """Names of the reference's IFBs (name, ifindex, alias) that no attachment uses any more: no
    link redirects to them (a pod's host veth, and its ingress redirect, die with the pod) and
    none is the reference's name for a live attachment of `network` (an ADD still in progress)."""
    live = {go_ifb_name(network, cid) for cid in valid_ids}
    return sorted(
        name for name, index, alias in ifbs
        if looks_like_go_ifb(name, alias) and index not in redirected and name not in live
    )


def host_candidates(prev: Result) -> list[str]:
    """prevResult's host-side interfaces (no sandbox), where the pod's veth peer must be."""
    return [iface.name for iface in prev.interfaces if not iface.sandbox]


# --- kernel steps --------------------------------------------------------------------------------


def _warn(message: str) -> None:
    sys.stderr.write(f"pycni-bandwidth: {message}\n")


def _network(args: CmdArgs) -> str:
    return parse_config(BandwidthConf, args.config).name


def find_host_veth(host: netlink.Netlink, prev: Result, netns_path: str, ifname: str) -> str:
    """The host interface of prevResult that is the veth peer of `ifname` in the pod (InvalidConfig
    if there is none). May raise NetnsNotFound."""
    candidates = host_candidates(prev)
    if not candidates:
        raise InvalidConfig("prevResult lists no host-side interface (one without sandbox)")
    with netlink.Netlink(netns_path) as pod:
        try:
            pod_link = pod.link(ifname)
        except LinkNotFound as exc:
            raise InvalidConfig(f"interface {ifname} does not exist in {netns_path}") from exc
    if pod_link.kind != "veth" or not pod_link.peer_index:
        raise InvalidConfig(f"{ifname} in {netns_path} is not a veth", f"kind {pod_link.kind or 'unknown'!r}")
    for name in candidates:
        try:
            link = host.link(name)
        except LinkNotFound:
            continue
        if link.kind == "veth" and link.index == pod_link.peer_index and link.peer_index == pod_link.index:
            return name
    raise InvalidConfig(
        f"no host interface in prevResult is the veth peer of {ifname}", f"host interfaces: {', '.join(candidates)}"
    )


# --- ADD -------------------------------------------------------------------------------------------


def add(args: CmdArgs) -> Result:
    network = _network(args)
    shaping = plan_shaping(args.config, tc.TICKS_PER_USEC)
    prev = args.prev_result()
    if prev is None:
        raise InvalidConfig("pycni-bandwidth must be called as a chained plugin", "prevResult is missing")
    if not shaping.any:
        return prev
    w = shaping.where

    with tc.TrafficControl() as host, Undo() as undo:
        try:
            host_veth = find_host_veth(host, prev, args.netns, args.ifname)
        except NetnsNotFound as exc:
            raise InvalidNetns(f"network namespace {args.netns} does not exist") from exc
        mtu = host.link(host_veth).mtu
        if shaping.ingress is not None:
            require_frame_fits(shaping.ingress, mtu, f"{w}ingressBurst", host_veth)
        if shaping.egress is not None:
            require_frame_fits(shaping.egress, mtu, f"{w}egressBurst", host_veth)

        if shaping.ingress is not None:
            plan = shaping.ingress
            host.add_root_tbf(host_veth, rate=plan.rate, burst=plan.burst, limit=plan.limit)
            undo.push(f"delete tbf on {host_veth}", host.delete_root_qdisc, host_veth)

        if shaping.egress is not None:
            plan = shaping.egress
            ifb = ifb_name(args.container_id, args.ifname)
            host.create_ifb(ifb, alias=ifb_alias(network, attachment_tag(args.container_id, args.ifname)), mtu=mtu)
            undo.push(f"delete ifb {ifb}", host.delete_link, ifb)
            # Shape the IFB before anything reaches it: no unshaped window.
            host.add_root_tbf(ifb, rate=plan.rate, burst=plan.burst, limit=plan.limit)
            host.add_ingress_qdisc(host_veth)
            undo.push(f"delete ingress qdisc on {host_veth}", host.delete_ingress_qdisc, host_veth)
            host.add_redirect(host_veth, ifb)
            prev = with_ifb(prev, Interface(name=ifb, mac=host.link(ifb).mac))

        undo.disarm()
    return prev


# --- DEL: a sweep that always finishes -------------------------------------------------------------


def _owned_ifb(host: tc.TrafficControl, name: str, alias: str) -> tc.Ifb | None:
    found = host.ifb(name)
    if found is not None and found.alias != alias:
        _warn(f"leaving ifb {name} alone: its alias {found.alias!r} is not {alias!r}")
        return None
    return found


def _remove_veth_qdiscs(host: tc.TrafficControl, args: CmdArgs, prev: Result, ifb: tc.Ifb | None) -> None:
    """Undo ADD's qdiscs on the host veth (DEL runs before the interface plugin deletes the veth;
    without a netns the pair is already gone with it)."""
    try:
        host_veth = find_host_veth(host, prev, args.netns, args.ifname)
    except (NetnsNotFound, InvalidNetns):
        return
    except InvalidConfig as exc:
        _warn(f"DEL: no qdiscs removed: {exc}")
        return
    root = host.root_qdisc(host_veth)
    if root is not None and root.kind == "tbf" and root.handle == tc.TBF_HANDLE:
        host.delete_root_qdisc(host_veth)
    targets = host.redirect_targets(host_veth)
    live = {i.index for i in host.ifbs()}
    ours = {ifb.index} if ifb is not None else set()
    # The ingress qdisc goes when all it does is redirect to our IFB (or to an IFB already gone).
    if targets and all(t in ours or t not in live for t in targets):
        host.delete_ingress_qdisc(host_veth)


def _host_veth_or_none(host: tc.TrafficControl, args: CmdArgs, prev: Result | None) -> str | None:
    if prev is None or not args.netns:
        return None
    try:
        return find_host_veth(host, prev, args.netns, args.ifname)
    except (NetnsNotFound, InvalidNetns, InvalidConfig):
        return None


def delete(args: CmdArgs) -> None:
    network = _network(args)
    tag = attachment_tag(args.container_id, args.ifname)
    name = ifb_name(args.container_id, args.ifname)
    try:
        prev = args.prev_result()
    except CNIError as exc:  # DEL must finish: a bad cached result only costs the qdisc cleanup
        _warn(f"DEL: ignoring undecodable prevResult: {exc}")
        prev = None
    sweep = Sweep()
    with tc.TrafficControl() as host:
        ifb = _owned_ifb(host, name, ifb_alias(network, tag))
        if prev is not None and args.netns:
            sweep.run(_remove_veth_qdiscs, host, args, prev, ifb)
        if ifb is not None:
            sweep.run(host.delete_link, name)
        # Set up by the Go reference before the network switched to pycni: its name is bound to
        # this network and container ID, and it carries no alias (a pycni IFB always does). It
        # stays while a link other than this attachment's host veth still redirects to it.
        go = host.ifb(go_ifb_name(network, args.container_id))
        if go is not None and looks_like_go_ifb(go.name, go.alias):
            ours = _host_veth_or_none(host, args, prev)
            users = {name for name, targets in host.redirects().items() if go.index in targets} - {ours}
            if not users:
                sweep.run(host.delete_link, go.name)
    sweep.finish()


# --- CHECK -----------------------------------------------------------------------------------------


def check(args: CmdArgs) -> None:
    network = _network(args)
    shaping = plan_shaping(args.config, tc.TICKS_PER_USEC)
    prev = args.prev_result()
    if prev is None:
        raise InvalidConfig("CHECK requires prevResult")
    if not shaping.any:
        return
    ticks = tc.TICKS_PER_USEC
    with tc.TrafficControl() as host:
        try:
            host_veth = find_host_veth(host, prev, args.netns, args.ifname)
        except NetnsNotFound as exc:
            raise CheckFailed(f"network namespace {args.netns} does not exist") from exc
        except InvalidConfig as exc:
            raise CheckFailed(exc.msg, exc.details) from exc
        if shaping.ingress is not None:
            problem = tbf_mismatch(shaping.ingress, host.root_qdisc(host_veth), ticks)
            if problem:
                raise CheckFailed(f"ingress shaping on {host_veth} differs", problem)
        if shaping.egress is not None:
            name = ifb_name(args.container_id, args.ifname)
            ifb = host.ifb(name)
            if ifb is None:
                raise CheckFailed(f"ifb {name} does not exist")
            alias = ifb_alias(network, attachment_tag(args.container_id, args.ifname))
            if ifb.alias != alias:
                raise CheckFailed(f"ifb {name} is not this attachment's", f"alias {ifb.alias!r} != {alias!r}")
            if not ifb.up:
                raise CheckFailed(f"ifb {name} is down")
            problem = tbf_mismatch(shaping.egress, host.root_qdisc(name), ticks)
            if problem:
                raise CheckFailed(f"egress shaping on {name} differs", problem)
            if ifb.index not in host.redirect_targets(host_veth):
                raise CheckFailed(f"no redirect from {host_veth} to {name}", "ingress qdisc or mirred filter missing")


# --- STATUS / GC -----------------------------------------------------------------------------------


def status(args: CmdArgs) -> None:
    _network(args)
    try:
        with tc.TrafficControl() as host:
            host.usable()
    except NetlinkFailure as exc:
        raise PluginNotAvailable("traffic control (tc) is not usable through netlink", str(exc)) from exc


def gc(args: CmdArgs) -> None:
    network = _network(args)
    valid = args.valid_attachments()
    if valid is None:
        return
    keep = {attachment_tag(cid, ifname) for cid, ifname in valid}
    sweep = Sweep()
    with tc.TrafficControl() as host:
        ifbs = host.ifbs()
        for name in stale_ifbs(((i.name, i.alias) for i in ifbs), network, keep):
            sweep.run(host.delete_link, name)
        # IFBs the Go reference left behind (a network switched from it to pycni): gone pods only.
        go = [(i.name, i.index, i.alias) for i in ifbs if looks_like_go_ifb(i.name, i.alias)]
        if go:
            redirected = {t for targets in host.redirects().values() for t in targets}
            for name in stale_go_ifbs(go, redirected, network, (cid for cid, _ in valid)):
                sweep.run(host.delete_link, name)
    sweep.finish()


HANDLERS = Handlers(add=add, delete=delete, check=check, status=status, gc=gc)

__all__ = ["HANDLERS", "Shaping", "TbfPlan", "ifb_name", "plan_shaping", "plan_tbf"]
