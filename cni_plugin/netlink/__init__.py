"""The only module that talks to the kernel through pyroute2 (rtnetlink).

Each `Netlink` is one rtnetlink session bound to one network namespace. The requests a plugin
makes on every pod (links, addresses, routes) go over a blocking socket with pyroute2's message
classes (rtnl.py: ~0.1 ms a request instead of ~0.5-1 ms through IPRoute's asyncio loop); the
rest (bridge port flags, and the overlay and tc mixins) through an IPRoute opened in the same
namespace on first use. Every pyroute2 error is translated here: ENODEV/ENOENT on a lookup ->
LinkNotFound ('already gone', caught by DEL and undo code), anything else -> NetlinkFailure (code
103) naming the operation and the errno.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple, TypeVar

from .. import netns
from ..spec.errors import InterfaceExists, LinkConflict, LinkNotFound, NetlinkFailure
from ..spec.types import IPAddress, IPInterface, IPNetwork
from . import rtnl
from .rtnl import NetlinkError, RtnlSocket, ifaddrmsg, ifinfmsg, rtmsg

T = TypeVar("T")

CREATE_NEW = rtnl.NLM_F_CREATE | rtnl.NLM_F_EXCL  # create; EEXIST when it is already there
# A link lookup asks the kernel to leave out the statistics (RTEXT_FILTER_SKIP_STATS): a quarter
# of the answer's bytes, and decoding them is most of what a lookup costs.
SKIP_STATS = (("IFLA_EXT_MASK", 1 << 3),)

IFF_UP = 0x1
IFF_PROMISC = 0x100
IFF_ALLMULTI = 0x200
IFA_F_NODAD = 0x02
IFA_F_DADFAILED = 0x08
IFA_F_TENTATIVE = 0x40
GONE_ERRNOS = (errno.ENODEV, errno.ENOENT)
# wait_operstate_up: the kernel sets a fresh veth UP well under 1 ms after asked, so look again
# after 1 ms and back off to the reference's budget (0, 50 ms, 0.5 s, 1 s, 1 s; ~2.5 s in all).
OPERSTATE_DELAYS = (0.0, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.3, 0.5, 1.0, 0.5)


class LinkInfo(NamedTuple):
    index: int  # type: ignore[assignment]  # shadows tuple.index(), which nothing calls on a LinkInfo
    name: str
    kind: str
    mac: str
    mtu: int
    up: bool
    operstate: str
    master: int | None
    peer_index: int | None


def random_mac() -> str:
    """A random locally administered unicast MAC (02-bit set, multicast bit clear)."""
    octets = bytearray(os.urandom(6))
    octets[0] = (octets[0] | 0x02) & 0xFE
    return ":".join(f"{b:02x}" for b in octets)


def _errno_name(code: int) -> str:
    return f"{errno.errorcode.get(code, str(code))}: {os.strerror(code)}"


def _link_info(msg: Any) -> LinkInfo:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    kind = linkinfo.get_attr("IFLA_INFO_KIND") if linkinfo is not None else None
    return LinkInfo(
        index=msg["index"],
        name=msg.get_attr("IFLA_IFNAME"),
        kind=kind or "",
        mac=msg.get_attr("IFLA_ADDRESS") or "",
        mtu=msg.get_attr("IFLA_MTU") or 0,
        up=bool(msg["flags"] & IFF_UP),
        operstate=msg.get_attr("IFLA_OPERSTATE") or "",
        master=msg.get_attr("IFLA_MASTER"),
        peer_index=msg.get_attr("IFLA_LINK"),
    )


RT_TABLE_MAIN = 254
RT_TABLE_COMPAT = 252  # rtm_table of a route whose table id (in RTA_TABLE) does not fit a byte
RTPROT_STATIC = 4  # what IPRoute (and `ip route add` with `proto static`) gives a route
RTN_UNICAST = 1
FAMILY_OF = {4: socket.AF_INET, 6: socket.AF_INET6}


def _ifinfmsg(*, index: int = 0, name: str | None = None, attrs: tuple[tuple[str, Any], ...] = (),
              flags: int = 0, change: int = 0) -> Any:
    """An ifinfomsg naming the link by index or, with index 0, by IFLA_IFNAME: the kernel finds
    the link by name for RTM_GETLINK, RTM_NEWLINK without NLM_F_CREATE (a change) and
    RTM_DELLINK alike, so a change needs no lookup request first."""
    msg = ifinfmsg()
    msg["index"] = index
    msg["flags"] = flags
    msg["change"] = change
    msg["attrs"] = [("IFLA_IFNAME", name), *attrs] if name is not None else list(attrs)
    return msg


def _ifaddrmsg(index: int, address: IPInterface, *, flags: int = 0) -> Any:
    msg = ifaddrmsg()
    msg["family"] = FAMILY_OF[address.version]
    msg["prefixlen"] = address.network.prefixlen
    msg["index"] = index
    msg["flags"] = flags
    ip = str(address.ip)
    if address.version == 4:
        # IFA_LOCAL is the address itself, IFA_ADDRESS the peer (the same on a broadcast link).
        msg["attrs"] = [("IFA_LOCAL", ip), ("IFA_ADDRESS", ip)]
    else:
        msg["attrs"] = [("IFA_ADDRESS", ip)]
    return msg


def _default_route_query(family: int) -> Any:
    query = rtmsg()
    query["family"] = family
    query["table"] = RT_TABLE_MAIN
    return query


class Netlink:
    """An rtnetlink session in one network namespace (the caller's own when netns_path is None)."""

    def __init__(self, netns_path: str | None = None) -> None:
        self.netns_path = netns_path
        self._iproute: Any = None
        with self._in_netns():
            self._rtnl = RtnlSocket()

    @property
    def _ipr(self) -> Any:
        """pyroute2's IPRoute in this session's namespace, for the requests rtnl.py does not make."""
        if self._iproute is None:
            from pyroute2.iproute.linux import IPRoute

            with self._in_netns():
                self._iproute = IPRoute()
        return self._iproute

    def close(self) -> None:
        self._rtnl.close()
        if self._iproute is not None:
            self._iproute.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _failure(what: str, exc: NetlinkError) -> LinkNotFound | NetlinkFailure:
        if exc.code in GONE_ERRNOS:
            return LinkNotFound(what)
        return NetlinkFailure(f"netlink: {what} failed", _errno_name(exc.code))

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            raise self._failure(what, exc) from exc

    def _request(self, what: str, msg: Any, msg_type: int, flags: int = 0) -> list[Any]:
        try:
            return self._rtnl.request(msg, msg_type, flags)
        except NetlinkError as exc:
            raise self._failure(what, exc) from exc

    # --- links -----------------------------------------------------------------------------------

    def _link_msg(self, name: str) -> Any:
        # Every netlink error reads as "not found" (a name the kernel refuses, such as one longer
        # than IFNAMSIZ, names no link either), as pyroute2's link_lookup always answered.
        try:
            msgs = self._rtnl.request(_ifinfmsg(name=name, attrs=SKIP_STATS), rtnl.RTM_GETLINK)
        except NetlinkError as exc:
            raise LinkNotFound(name) from exc
        if not msgs:
            raise LinkNotFound(name)
        return msgs[0]

    def _change_link(self, what: str, name: str, *, attrs: tuple[tuple[str, Any], ...] = (),
                     flags: int = 0, change: int = 0) -> None:
        self._request(what, _ifinfmsg(name=name, attrs=attrs, flags=flags, change=change), rtnl.RTM_NEWLINK)

    def link_index(self, name: str) -> int:
        return int(self._link_msg(name)["index"])

    def link(self, name: str) -> LinkInfo:
        return _link_info(self._link_msg(name))

    def link_by_index(self, index: int) -> LinkInfo:
        msgs = self._request(f"get link {index}", _ifinfmsg(index=index, attrs=SKIP_STATS), rtnl.RTM_GETLINK)
        return _link_info(msgs[0])

    def set_up(self, name: str) -> None:
        self._change_link(f"set link {name} up", name, flags=IFF_UP, change=IFF_UP)

    def set_down(self, name: str) -> None:
        self._change_link(f"set link {name} down", name, flags=0, change=IFF_UP)

    def link_exists(self, name: str) -> bool:
        try:
            self._link_msg(name)
        except LinkNotFound:
            return False
        return True

    def link_names(self) -> list[str]:
        msgs = self._request("list links", ifinfmsg(), rtnl.RTM_GETLINK, rtnl.NLM_F_DUMP)
        return [m.get_attr("IFLA_IFNAME") for m in msgs]

    def set_master(self, name: str, master: str, master_index: int | None = None) -> None:
        """Enslave `name` to `master`; a caller that knows the master's index passes it (a lookup fewer)."""
        if master_index is None:
            master_index = self.link_index(master)
        self._change_link(f"enslave {name} to {master}", name, attrs=(("IFLA_MASTER", master_index),))

    def set_mac(self, name: str, mac: str) -> None:
        self._change_link(f"set MAC of {name} to {mac}", name, attrs=(("IFLA_ADDRESS", mac),))

    def set_mtu(self, name: str, mtu: int) -> None:
        self._change_link(f"set MTU of {name} to {mtu}", name, attrs=(("IFLA_MTU", mtu),))

    def set_promisc(self, name: str, on: bool) -> None:
        self._change_link(f"set promisc on {name}", name, flags=IFF_PROMISC if on else 0, change=IFF_PROMISC)

    def promisc(self, name: str) -> bool:
        return bool(self.link_flags(name) & IFF_PROMISC)

    def ensure_bridge(
        self, name: str, *, mtu: int | None = None, promisc: bool = False
    ) -> tuple[LinkInfo, bool]:
        """The bridge `name`, created and up; returns (link, created_by_this_call).

        Concurrent ADDs on a fresh node race here: creation treats EEXIST as "someone else won"
        (then checks the kind), so every racer ends up with the same single bridge. A link of that
        name that is not a bridge is a LinkConflict (105). The creator pins the bridge MAC to its
        own random address (addr_assign_type=SET): otherwise the kernel gives the bridge the lowest
        MAC among its ports, and the node's gateway MAC changes as pods come and go.

        The address goes in the create request itself, not in a later "set MAC to the one it has":
        only a new address makes the kernel compute the STP bridge id, and that step also drops
        the empty bridge's carrier. The first forwarding port then raises it again, the carrier
        change runs the kernel's operstate logic, and the bridge reports UP (issue 16). Pinned to
        its own address after creation, a bridge kept bridge id 0 and its creation-time carrier,
        never saw a carrier change and reported operstate UNKNOWN for as long as it had a port.
        """
        created = False
        try:
            link = self.link(name)  # the usual ADD: the bridge is there; one request
        except LinkNotFound:
            attrs: list[tuple[str, Any]] = [("IFLA_ADDRESS", random_mac())]
            if mtu:
                attrs.append(("IFLA_MTU", mtu))
            attrs.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "bridge")]}))
            try:
                self._rtnl.request(_ifinfmsg(name=name, attrs=tuple(attrs)), rtnl.RTM_NEWLINK, CREATE_NEW)
                created = True
            except NetlinkError as exc:
                if exc.code != errno.EEXIST:
                    raise NetlinkFailure(f"netlink: create bridge {name} failed", _errno_name(exc.code)) from exc
            link = self.link(name)
        if link.kind != "bridge":
            raise LinkConflict(
                f"link {name} exists and is not a bridge", f"it is of kind {link.kind or 'unknown'!r}"
            )
        if promisc:
            self.set_promisc(name, True)
        elif link.up:
            return link, created  # nothing to set or re-read
        self.set_up(name)
        return self.link(name), created

    def create_veth_pair(
        self, host_name: str, peer_name: str, peer_netns: str, *, mtu: int | None = None, peer_mac: str = ""
    ) -> None:
        """A veth pair: `host_name` in this session's namespace, `peer_name` created directly in
        the namespace at `peer_netns` (no rename or move step that could leave a half pair).

        EEXIST means one of the names is taken (the caller checks the pod side first to say which).
        """
        fd = netns.open_netns(peer_netns)
        try:
            peer: list[tuple[str, Any]] = [("IFLA_IFNAME", peer_name), ("IFLA_NET_NS_FD", fd)]
            host: list[tuple[str, Any]] = []
            if mtu:
                peer.append(("IFLA_MTU", mtu))
                host.append(("IFLA_MTU", mtu))
            if peer_mac:
                peer.append(("IFLA_ADDRESS", peer_mac))
            info = {"attrs": [("VETH_INFO_PEER", {"attrs": peer})]}
            host.append(("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_KIND", "veth"), ("IFLA_INFO_DATA", info)]}))
            try:
                self._rtnl.request(_ifinfmsg(name=host_name, attrs=tuple(host)), rtnl.RTM_NEWLINK, CREATE_NEW)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    raise InterfaceExists(
                        f"cannot create veth pair {host_name}/{peer_name}", "a link of that name exists"
                    ) from exc
                raise NetlinkFailure(
                    f"netlink: create veth {host_name} (peer {peer_name}) failed", _errno_name(exc.code)
                ) from exc
        finally:
            os.close(fd)

    def create_tagged_link(self, kind: str, name: str, alias: str, **attrs: Any) -> None:
        """Create link `name` of `kind` with `attrs` (IPRoute's keywords: its request filters
        know every kind's attributes), tag it with IFLA_IFALIAS `alias` (how pycni recognises its
        own links later) and bring it up. EEXIST is InterfaceExists: the caller did not create it
        and must not delete it. A link created here and not completed is deleted again, never
        left half configured."""
        try:
            self._ipr.link("add", ifname=name, kind=kind, **attrs)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise InterfaceExists(f"cannot create {kind} {name}", "a link of that name exists") from exc
            raise NetlinkFailure(f"netlink: create {kind} {name} failed", _errno_name(exc.code)) from exc
        try:
            # The kernel ignores IFLA_IFALIAS on rtnl.RTM_NEWLINK: it is set in a second request.
            self._change_link(f"set alias of {name}", name, attrs=(("IFLA_IFALIAS", alias),))
            self.set_up(name)
        except BaseException:
            self.delete_link(name)
            raise

    def delete_link(self, name: str) -> bool:
        """Delete `name`; False when it was already gone (idempotent)."""
        try:
            self._request(f"delete link {name}", _ifinfmsg(name=name), rtnl.RTM_DELLINK)
        except LinkNotFound:
            return False
        return True

    def set_bridge_port(self, name: str, *, hairpin: bool = False, isolated: bool = False) -> None:
        opts: dict[str, Any] = {}
        if hairpin:
            opts["mode"] = 1  # IFLA_BRPORT_MODE: BRIDGE_MODE_HAIRPIN
        if isolated:
            opts["isolated"] = 1
        if opts:  # the default port needs no request, not even the lookup
            index = self.link_index(name)
            self._call(f"set bridge port flags on {name}", self._ipr.brport, "set", index=index, **opts)

    def bridge_port(self, name: str) -> dict[str, int]:
        index = self.link_index(name)
        msgs = self._call(f"show bridge port {name}", self._ipr.brport, "show", index=index)
        out: dict[str, int] = {}
        for msg in msgs:
            info = msg.get_attr("IFLA_PROTINFO")
            if info is None:
                continue
            for nla_name, value in info["attrs"]:
                out[nla_name] = value
        return out

    def wait_operstate_up(self, name: str, delays: tuple[float, ...] = OPERSTATE_DELAYS) -> LinkInfo:
        """Poll until `name` is operationally UP (the reference's retry schedule); the link as last
        seen, whose operstate says whether it came up."""
        for delay in delays:
            time.sleep(delay)
            link = self.link(name)
            if link.operstate == "UP":
                break
        return link

    # --- addresses and routes --------------------------------------------------------------------

    def _address_msgs(self, name: str, family: int = 0, index: int | None = None) -> list[Any]:
        index = index or self.link_index(name)
        query = ifaddrmsg()
        query["family"] = family
        query["index"] = index  # a filter the kernel applies (strict checking, rtnl.py)
        msgs = self._request(f"list addresses of {name}", query, rtnl.RTM_GETADDR, rtnl.NLM_F_DUMP)
        return [m for m in msgs if m["index"] == index]

    def addresses(self, name: str, family: int | None = None, *, index: int | None = None) -> list[IPInterface]:
        """The link's addresses as ip_interface values (IPv4 and IPv6 unless `family` is 4 or 6).

        Here and below, `index` is the link's index when the caller already knows it: one lookup
        request fewer (the name then only labels errors)."""
        found: list[IPInterface] = []
        for msg in self._address_msgs(name, FAMILY_OF[family] if family else 0, index):
            address = msg.get_attr("IFA_ADDRESS")
            if address is not None:
                found.append(ipaddress.ip_interface(f"{address}/{msg['prefixlen']}"))
        return found

    def add_address(self, name: str, address: IPInterface, *, nodad: bool = False, index: int | None = None) -> bool:
        """Add `address`; False when it was already there (EEXIST: a racing ADD put it first)."""
        index = index or self.link_index(name)
        msg = _ifaddrmsg(index, address, flags=IFA_F_NODAD if nodad and address.version == 6 else 0)
        if address.version == 4:
            msg["attrs"].append(("IFA_BROADCAST", str(address.network.broadcast_address)))
        try:
            self._rtnl.request(msg, rtnl.RTM_NEWADDR, CREATE_NEW)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise NetlinkFailure(f"netlink: add address {address} to {name} failed", _errno_name(exc.code)) from exc
        return True

    def delete_address(self, name: str, address: IPInterface) -> bool:
        try:
            index = self.link_index(name)
            self._rtnl.request(_ifaddrmsg(index, address), rtnl.RTM_DELADDR)
        except LinkNotFound:
            return False
        except NetlinkError as exc:
            if exc.code in (*GONE_ERRNOS, errno.EADDRNOTAVAIL):
                return False
            raise NetlinkFailure(
                f"netlink: delete address {address} from {name} failed", _errno_name(exc.code)
            ) from exc
        return True

    def tentative_addresses(
        self, name: str, *, index: int | None = None
    ) -> tuple[list[IPInterface], list[IPInterface]]:
        """(tentative, dad-failed) IPv6 addresses of `name`."""
        tentative, failed = [], []
        for msg in self._address_msgs(name, socket.AF_INET6, index):
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            iface = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            if flags & IFA_F_DADFAILED:
                failed.append(iface)
            elif flags & IFA_F_TENTATIVE:
                tentative.append(iface)
        return tentative, failed

    def add_route(
        self, dst: IPNetwork, *, gw: IPAddress | None = None, dev: str | None = None,
        priority: int | None = None, table: int | None = None, scope: int | None = None,
        dev_index: int | None = None,
    ) -> bool:
        """Add a unicast route (protocol static, as IPRoute made them); False when it already existed.
        `dev_index`: the index of `dev`, when the caller knows it."""
        table = table or RT_TABLE_MAIN
        msg = rtmsg()
        msg["family"] = FAMILY_OF[dst.version]
        msg["dst_len"] = dst.prefixlen
        msg["table"] = table if table < 256 else RT_TABLE_COMPAT
        msg["proto"] = RTPROT_STATIC
        msg["type"] = RTN_UNICAST
        msg["scope"] = scope or 0
        attrs: list[tuple[str, Any]] = [("RTA_TABLE", table), ("RTA_DST", str(dst.network_address))]
        if priority is not None:
            attrs.append(("RTA_PRIORITY", priority))
        if gw is not None:
            attrs.append(("RTA_GATEWAY", str(gw)))
        if dev is not None:
            attrs.append(("RTA_OIF", dev_index or self.link_index(dev)))
        msg["attrs"] = attrs
        try:
            self._rtnl.request(msg, rtnl.RTM_NEWROUTE, CREATE_NEW)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            via = f" via {gw}" if gw else ""
            raise NetlinkFailure(f"netlink: add route {dst}{via} failed", _errno_name(exc.code)) from exc
        return True

    def _main_routes(self, family: int) -> list[Any]:
        query = rtmsg()
        query["family"] = family
        query["table"] = RT_TABLE_MAIN  # a filter the kernel applies (strict checking, rtnl.py)
        msgs = self._request("list routes", query, rtnl.RTM_GETROUTE, rtnl.NLM_F_DUMP)
        return [m for m in msgs if (m.get_attr("RTA_TABLE") or m["table"]) == RT_TABLE_MAIN]

    def routes(self, dev: str | None = None, family: int | None = None) -> list[tuple[IPNetwork, IPAddress | None]]:
        """Main-table routes as (dst, gw), optionally only those through `dev`."""
        oif = self.link_index(dev) if dev is not None else None
        out = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            if family is not None and fam != FAMILY_OF[family]:
                continue
            for msg in self._main_routes(fam):
                if oif is not None and msg.get_attr("RTA_OIF") != oif:
                    continue
                dst = msg.get_attr("RTA_DST")
                base = dst or ("0.0.0.0" if fam == socket.AF_INET else "::")
                net = ipaddress.ip_network(f"{base}/{msg['dst_len'] if dst else 0}", strict=False)
                gw = msg.get_attr("RTA_GATEWAY")
                out.append((net, ipaddress.ip_address(gw) if gw else None))
        return out

    def default_route_mtu(self) -> int | None:
        """MTU of the interface carrying this namespace's default route (IPv4 first), if any."""
        for fam in (socket.AF_INET, socket.AF_INET6):
            try:
                msgs = self._rtnl.request(_default_route_query(fam), rtnl.RTM_GETROUTE, rtnl.NLM_F_DUMP)
            except NetlinkError:
                continue
            for msg in msgs:
                if msg["dst_len"] != 0 or (msg.get_attr("RTA_TABLE") or msg["table"]) != RT_TABLE_MAIN:
                    continue
                oif = msg.get_attr("RTA_OIF")
                if oif is None:
                    mp = msg.get_attr("RTA_MULTIPATH")
                    oif = mp[0]["oif"] if mp else None
                if oif:
                    try:
                        return self.link_by_index(oif).mtu
                    except (LinkNotFound, NetlinkFailure):
                        continue
        return None

    # --- sysctls (/proc/sys/net is per network namespace of the opening thread) -------------------

    def _in_netns(self) -> Any:
        return netns.entered(self.netns_path) if self.netns_path else contextlib.nullcontext()

    def sysctl_set(self, key: str, value: str) -> None:
        """Write net sysctl `key` (e.g. 'ipv6/conf/eth0/accept_dad') in this session's namespace."""
        path = f"/proc/sys/net/{key}"
        with self._in_netns():
            try:
                with open(path, "w") as fh:
                    fh.write(value)
            except OSError as exc:
                raise NetlinkFailure(f"cannot set sysctl net/{key}={value}", exc.strerror or str(exc)) from exc

    def sysctl_get(self, key: str) -> str | None:
        with self._in_netns():
            try:
                with open(f"/proc/sys/net/{key}") as fh:
                    return fh.read().strip()
            except OSError:
                return None

    # --- link flags and queue length (tuning) ------------------------------------------------------

    def link_flags(self, name: str) -> int:
        """The link's IFF_* flags word."""
        return int(self._link_msg(name)["flags"])

    def allmulti(self, name: str) -> bool:
        return bool(self.link_flags(name) & IFF_ALLMULTI)

    def set_allmulti(self, name: str, on: bool) -> None:
        self._change_link(f"set allmulticast on {name}", name, flags=IFF_ALLMULTI if on else 0, change=IFF_ALLMULTI)

    def txqlen(self, name: str) -> int:
        return int(self._link_msg(name).get_attr("IFLA_TXQLEN") or 0)

    def set_txqlen(self, name: str, qlen: int) -> None:
        self._change_link(f"set txqueuelen of {name} to {qlen}", name, attrs=(("IFLA_TXQLEN", qlen),))


@contextmanager
def session(netns_path: str | None = None) -> Iterator[Netlink]:
    nl = Netlink(netns_path)
    try:
        yield nl
    finally:
        nl.close()
