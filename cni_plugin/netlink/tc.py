"""Traffic control through pyroute2: tbf and ingress qdiscs, u32 + mirred redirects, IFB links.

`TrafficControl` is a `Netlink` session (same namespace handling and error translation) with the
tc requests the bandwidth plugin needs. Everything goes through rtnetlink (`IPRoute.tc`); nothing
shells out to `tc`. Values are the kernel's own units: tbf rate in bytes/s, buffer in psched ticks,
limit in bytes; the bits-per-second arithmetic lives in bandwidth.py as pure functions.

Layout made here, as `tc` shows it (the reference bandwidth plugin's layout):

    qdisc tbf 1: dev <host veth> root rate ... burst ... lat ...        traffic into the pod
    qdisc ingress ffff: dev <host veth> parent ffff:fff1
    filter parent ffff: protocol all pref 1 u32 ... match 00000000/00000000 at 0
            action order 1: mirred (Egress Redirect to device <ifb>) stolen
    qdisc tbf 1: dev <ifb> root rate ... burst ... lat ...              traffic out of the pod
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.tcmsg import common as _tc_common

from ..spec.errors import LinkNotFound, NetlinkFailure
from . import GONE_ERRNOS, IFF_UP, Netlink, _errno_name

TC_H_ROOT = 0xFFFFFFFF
TC_H_INGRESS = 0xFFFFFFF1
INGRESS_HANDLE = 0xFFFF0000  # "ffff:"
TBF_HANDLE = 0x10000  # "1:"
REDIRECT_PRIO = 1
REDIRECT_CLASSID = 0x10001  # "1:1", as the reference's u32 filter
ETH_P_ALL = 0x0003
MIRRED_EGRESS_REDIRECT = 1  # TCA_EGRESS_REDIR
# psched ticks per microsecond, from /proc/net/psched (64 ns ticks, 15.625/us, since Linux 2.6.31).
TICKS_PER_USEC: float = float(_tc_common.tick_in_usec)


@dataclass(frozen=True)
class Tbf:
    """A tbf qdisc's parameters as the kernel reports them."""

    rate: int  # bytes per second
    buffer: int  # psched ticks the bucket takes to fill: burst = buffer / TICKS_PER_USEC * rate / 1e6
    limit: int  # bytes that may queue


@dataclass(frozen=True)
class Qdisc:
    kind: str
    handle: int
    parent: int
    tbf: Tbf | None = None


@dataclass(frozen=True)
class Ifb:
    name: str
    index: int
    alias: str
    up: bool
    mtu: int


def _qdisc(msg: Any) -> Qdisc:
    kind = msg.get_attr("TCA_KIND") or ""
    tbf = None
    if kind == "tbf":
        options = msg.get_attr("TCA_OPTIONS")
        parms = options.get_attr("TCA_TBF_PARMS") if options is not None else None
        if parms is not None:
            tbf = Tbf(rate=int(parms["rate"]), buffer=int(parms["buffer"]), limit=int(parms["limit"]))
    return Qdisc(kind=kind, handle=int(msg["handle"]), parent=int(msg["parent"]), tbf=tbf)


def _mirred_targets(msg: Any) -> list[int]:
    """Interfaces the mirred egress-redirect actions of one u32 filter message send packets to."""
    options = msg.get_attr("TCA_OPTIONS")
    acts = options.get_attr("TCA_U32_ACT") if options is not None else None
    if acts is None:
        return []
    found = []
    for _name, act in acts.get("attrs", []):
        if not hasattr(act, "get_attr") or act.get_attr("TCA_ACT_KIND") != "mirred":
            continue
        act_options = act.get_attr("TCA_ACT_OPTIONS")
        parms = act_options.get_attr("TCA_MIRRED_PARMS") if act_options is not None else None
        if parms is not None and parms["eaction"] == MIRRED_EGRESS_REDIRECT:
            found.append(int(parms["ifindex"]))
    return found


class TrafficControl(Netlink):
    """An rtnetlink session in one namespace, with the tc and IFB requests of bandwidth shaping."""

    def __enter__(self) -> TrafficControl:
        return self

    # --- qdiscs ------------------------------------------------------------------------------------

    def qdiscs(self, dev: str) -> list[Qdisc]:
        index = self.link_index(dev)
        msgs = self._call(f"list qdiscs of {dev}", self._ipr.get_qdiscs, index=index)
        return [_qdisc(m) for m in msgs if m["index"] == index]

    def root_qdisc(self, dev: str) -> Qdisc | None:
        return next((q for q in self.qdiscs(dev) if q.parent == TC_H_ROOT), None)

    def has_ingress_qdisc(self, dev: str) -> bool:
        return any(q.kind == "ingress" for q in self.qdiscs(dev))

    def add_root_tbf(self, dev: str, *, rate: int, burst: int, limit: int) -> None:
        """`tc qdisc add dev <dev> root handle 1: tbf rate <rate*8>bit burst <burst>b limit <limit>b`.

        rate in bytes/s, burst and limit in bytes (pyroute2 turns burst into the buffer in ticks).
        Replaces only the device's built-in default root qdisc: one somebody configured is EEXIST.
        """
        index = self.link_index(dev)
        try:
            self._ipr.tc("add", "tbf", index, handle=TBF_HANDLE, rate=rate, burst=burst, limit=limit)
        except NetlinkError as exc:
            if exc.code in GONE_ERRNOS:
                raise LinkNotFound(dev) from exc
            detail = _errno_name(exc.code)
            if exc.code == errno.EEXIST:
                current = self.root_qdisc(dev)
                detail = f"{detail}; it already has root qdisc {current.kind if current else '?'}"
            raise NetlinkFailure(f"netlink: add tbf qdisc on {dev} failed", detail) from exc

    def delete_root_qdisc(self, dev: str) -> bool:
        """Delete a non-default root qdisc (the kernel puts the default back); False if none."""
        root = self.root_qdisc(dev)
        if root is None or root.handle == 0:
            return False
        index = self.link_index(dev)
        try:
            self._ipr.tc("del", index=index, handle=root.handle, parent=TC_H_ROOT)
        except NetlinkError as exc:
            if exc.code in (*GONE_ERRNOS, errno.EINVAL):
                return False
            raise NetlinkFailure(f"netlink: delete root qdisc of {dev} failed", _errno_name(exc.code)) from exc
        return True

    def add_ingress_qdisc(self, dev: str) -> None:
        index = self.link_index(dev)
        try:
            self._ipr.tc("add", "ingress", index)
        except NetlinkError as exc:
            if exc.code in GONE_ERRNOS:
                raise LinkNotFound(dev) from exc
            detail = _errno_name(exc.code)
            if exc.code == errno.EEXIST:
                detail += "; another ingress qdisc is already on it"
            raise NetlinkFailure(f"netlink: add ingress qdisc on {dev} failed", detail) from exc

    def delete_ingress_qdisc(self, dev: str) -> bool:
        """Delete the ingress qdisc (and with it every filter on it); False if there was none."""
        if not self.has_ingress_qdisc(dev):
            return False
        index = self.link_index(dev)
        try:
            self._ipr.tc("del", "ingress", index)
        except NetlinkError as exc:
            if exc.code in (*GONE_ERRNOS, errno.EINVAL):
                return False
            raise NetlinkFailure(f"netlink: delete ingress qdisc of {dev} failed", _errno_name(exc.code)) from exc
        return True

    # --- the redirect filter ---------------------------------------------------------------------

    def add_redirect(self, dev: str, target: str) -> None:
        """A match-all u32 filter on `dev`'s ingress qdisc redirecting every packet to `target`'s
        egress (mirred), so that a qdisc on `target` shapes what `dev` receives."""
        index, target_index = self.link_index(dev), self.link_index(target)
        try:
            self._ipr.tc(
                "add-filter", "u32", index,
                parent=INGRESS_HANDLE, prio=REDIRECT_PRIO, protocol=ETH_P_ALL, target=REDIRECT_CLASSID,
                keys=["0x0/0x0+0"],
                action={"kind": "mirred", "direction": "egress", "action": "redirect", "ifindex": target_index},
            )
        except NetlinkError as exc:
            # Both links were just resolved: ENOENT here means the kernel lacks cls_u32/act_mirred.
            raise NetlinkFailure(
                f"netlink: add redirect filter {dev} -> {target} failed", _errno_name(exc.code)
            ) from exc

    def redirect_targets(self, dev: str) -> list[int]:
        """ifindexes the filters on `dev`'s ingress qdisc redirect packets to (empty without one)."""
        if not self.has_ingress_qdisc(dev):
            return []
        index = self.link_index(dev)
        msgs = self._call(f"list filters of {dev}", self._ipr.get_filters, index=index, parent=INGRESS_HANDLE)
        return [target for m in msgs for target in _mirred_targets(m)]

    def redirects(self) -> dict[str, list[int]]:
        """Link name -> the ifindexes its ingress filters redirect to, for every link of this
        namespace that redirects anywhere (GC, and DEL of a reference IFB)."""
        found: dict[str, list[int]] = {}
        for name in self.link_names():
            try:
                targets = self.redirect_targets(name)
            except (LinkNotFound, NetlinkFailure):  # gone meanwhile, or no tc on it
                continue
            if targets:
                found[name] = targets
        return found

    # --- IFB links -------------------------------------------------------------------------------

    def create_ifb(self, name: str, *, alias: str, mtu: int | None = None) -> None:
        """Create IFB `name`, set its alias (IFLA_IFALIAS, the owner record GC reads) and bring it
        up. EEXIST is InterfaceExists: the caller did not create it and must not delete it."""
        self.create_tagged_link("ifb", name, alias, **({"mtu": mtu} if mtu else {}))

    def ifbs(self) -> list[Ifb]:
        msgs = self._call("list links", self._ipr.get_links)
        found = []
        for msg in msgs:
            linkinfo = msg.get_attr("IFLA_LINKINFO")
            kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
            if kind != "ifb":
                continue
            found.append(
                Ifb(
                    name=msg.get_attr("IFLA_IFNAME"),
                    index=int(msg["index"]),
                    alias=msg.get_attr("IFLA_IFALIAS") or "",
                    up=bool(msg["flags"] & IFF_UP),
                    mtu=msg.get_attr("IFLA_MTU") or 0,
                )
            )
        return found

    def ifb(self, name: str) -> Ifb | None:
        return next((i for i in self.ifbs() if i.name == name), None)

    def usable(self) -> None:
        """Raise NetlinkFailure unless the kernel answers a qdisc dump (STATUS)."""
        self._call("list qdiscs", self._ipr.get_qdiscs)
