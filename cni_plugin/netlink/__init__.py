"""The only module that talks to the kernel through pyroute2 (rtnetlink).

Each `Netlink` is one rtnetlink socket bound to one network namespace. Every pyroute2 error is
translated here: ENODEV/ENOENT on a lookup -> LinkNotFound ('already gone', caught by DEL and undo
code), anything else -> NetlinkFailure (code 103) naming the operation and the errno.
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
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import netns
from ..spec.errors import InterfaceExists, LinkConflict, LinkNotFound, NetlinkFailure
from ..spec.types import IPAddress, IPInterface, IPNetwork

T = TypeVar("T")

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


@dataclass(frozen=True)
class LinkInfo:
    index: int
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


class Netlink:
    """An rtnetlink session in one network namespace (the caller's own when netns_path is None)."""

    def __init__(self, netns_path: str | None = None) -> None:
        self.netns_path = netns_path
        if netns_path:
            with netns.entered(netns_path):
                self._ipr = IPRoute()
        else:
            self._ipr = IPRoute()

    def close(self) -> None:
        self._ipr.close()

    def __enter__(self) -> Netlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except NetlinkError as exc:
            if exc.code in GONE_ERRNOS:
                raise LinkNotFound(what) from exc
            raise NetlinkFailure(f"netlink: {what} failed", _errno_name(exc.code)) from exc

    # --- links -----------------------------------------------------------------------------------

    def link_index(self, name: str) -> int:
        found = self._call(f"lookup of link {name}", self._ipr.link_lookup, ifname=name)
        if not found:
            raise LinkNotFound(name)
        return int(found[0])

    def link(self, name: str) -> LinkInfo:
        # One RTM_GETLINK by name (IFLA_IFNAME), not a lookup then a get by index: the same
        # answer in half the requests (each ~1 ms through pyroute2 0.9's loop). Every netlink
        # error reads as "not found", exactly as link_index's lookup (pyroute2's link_lookup).
        try:
            msgs = self._ipr.link("get", ifname=name)
        except NetlinkError as exc:
            raise LinkNotFound(name) from exc
        if not msgs:
            raise LinkNotFound(name)
        return _link_info(msgs[0])

    def link_by_index(self, index: int) -> LinkInfo:
        msgs = self._call(f"get link {index}", self._ipr.link, "get", index=index)
        return _link_info(msgs[0])

    def set_up(self, name: str) -> None:
        index = self.link_index(name)
        self._call(f"set link {name} up", self._ipr.link, "set", index=index, state="up")

    def set_down(self, name: str) -> None:
        index = self.link_index(name)
        self._call(f"set link {name} down", self._ipr.link, "set", index=index, state="down")

    # --- addresses -------------------------------------------------------------------------------

    def addresses(self, name: str, family: int | None = None) -> list[IPInterface]:
        """The link's addresses as ip_interface values (IPv4 and IPv6 unless `family` is 4 or 6)."""
        index = self.link_index(name)
        msgs = self._call(f"list addresses of {name}", self._ipr.get_addr, index=index)
        found: list[IPInterface] = []
        for msg in msgs:
            address = msg.get_attr("IFA_ADDRESS")
            if address is None:
                continue
            iface = ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")
            if family is None or iface.version == family:
                found.append(iface)
        return found


    def link_exists(self, name: str) -> bool:
        try:
            self.link_index(name)
        except LinkNotFound:
            return False
        return True

    def link_names(self) -> list[str]:
        msgs = self._call("list links", self._ipr.get_links)
        return [m.get_attr("IFLA_IFNAME") for m in msgs]

    def set_master(self, name: str, master: str, master_index: int | None = None) -> None:
        """Enslave `name` to `master`; a caller that knows the master's index passes it (a lookup fewer)."""
        index = self.link_index(name)
        if master_index is None:
            master_index = self.link_index(master)
        self._call(f"enslave {name} to {master}", self._ipr.link, "set", index=index, master=master_index)

    def set_mac(self, name: str, mac: str) -> None:
        index = self.link_index(name)
        self._call(f"set MAC of {name} to {mac}", self._ipr.link, "set", index=index, address=mac)

    def set_mtu(self, name: str, mtu: int) -> None:
        index = self.link_index(name)
        self._call(f"set MTU of {name} to {mtu}", self._ipr.link, "set", index=index, mtu=mtu)

    def set_promisc(self, name: str, on: bool) -> None:
        index = self.link_index(name)
        link = self._call(f"get link {name}", self._ipr.link, "get", index=index)[0]
        flags = link["flags"] | IFF_PROMISC if on else link["flags"] & ~IFF_PROMISC
        self._call(f"set promisc on {name}", self._ipr.link, "set", index=index, flags=flags, change=IFF_PROMISC)

    def promisc(self, name: str) -> bool:
        index = self.link_index(name)
        link = self._call(f"get link {name}", self._ipr.link, "get", index=index)[0]
        return bool(link["flags"] & IFF_PROMISC)

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
        kwargs: dict[str, Any] = {"ifname": name, "kind": "bridge", "address": random_mac()}
        if mtu:
            kwargs["mtu"] = mtu
        try:
            self._ipr.link("add", **kwargs)
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
            return link, created  # the usual ADD: the bridge is there and up; nothing to set or re-read
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
            peer: dict[str, Any] = {"ifname": peer_name, "net_ns_fd": fd}
            if mtu:
                peer["mtu"] = mtu
            if peer_mac:
                peer["address"] = peer_mac
            kwargs: dict[str, Any] = {"ifname": host_name, "kind": "veth", "peer": peer}
            if mtu:
                kwargs["mtu"] = mtu
            try:
                self._ipr.link("add", **kwargs)
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
        """Create link `name` of `kind` with `attrs`, tag it with IFLA_IFALIAS `alias` (how pycni
        recognises its own links later) and bring it up. EEXIST is InterfaceExists: the caller
        did not create it and must not delete it. A link created here and not completed is
        deleted again, never left half configured."""
        try:
            self._ipr.link("add", ifname=name, kind=kind, **attrs)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                raise InterfaceExists(f"cannot create {kind} {name}", "a link of that name exists") from exc
            raise NetlinkFailure(f"netlink: create {kind} {name} failed", _errno_name(exc.code)) from exc
        try:
            index = self.link_index(name)
            # The kernel ignores IFLA_IFALIAS on RTM_NEWLINK: it is set in a second request.
            self._call(f"set alias of {name}", self._ipr.link, "set", index=index, ifalias=alias)
            self._call(f"set link {name} up", self._ipr.link, "set", index=index, state="up")
        except BaseException:
            self.delete_link(name)
            raise

    def delete_link(self, name: str) -> bool:
        """Delete `name`; False when it was already gone (idempotent)."""
        try:
            index = self.link_index(name)
            self._call(f"delete link {name}", self._ipr.link, "del", index=index)
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

    def wait_operstate_up(self, name: str, delays: tuple[float, ...] = OPERSTATE_DELAYS) -> bool:
        """Poll until `name` is operationally UP (the reference's retry schedule); True if it is."""
        for delay in delays:
            time.sleep(delay)
            if self.link(name).operstate == "UP":
                return True
        return False

    # --- addresses and routes --------------------------------------------------------------------

    def add_address(self, name: str, address: IPInterface, *, nodad: bool = False) -> bool:
        """Add `address`; False when it was already there (EEXIST: a racing ADD put it first)."""
        index = self.link_index(name)
        kwargs: dict[str, Any] = {"index": index, "address": str(address.ip), "prefixlen": address.network.prefixlen}
        if address.version == 4:
            kwargs["broadcast"] = str(address.network.broadcast_address)
        if nodad and address.version == 6:
            kwargs["flags"] = IFA_F_NODAD
        try:
            self._ipr.addr("add", **kwargs)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            raise NetlinkFailure(f"netlink: add address {address} to {name} failed", _errno_name(exc.code)) from exc
        return True

    def delete_address(self, name: str, address: IPInterface) -> bool:
        try:
            index = self.link_index(name)
            self._ipr.addr("del", index=index, address=str(address.ip), prefixlen=address.network.prefixlen)
        except LinkNotFound:
            return False
        except NetlinkError as exc:
            if exc.code in (*GONE_ERRNOS, errno.EADDRNOTAVAIL):
                return False
            raise NetlinkFailure(
                f"netlink: delete address {address} from {name} failed", _errno_name(exc.code)
            ) from exc
        return True

    def tentative_addresses(self, name: str) -> tuple[list[IPInterface], list[IPInterface]]:
        """(tentative, dad-failed) IPv6 addresses of `name`."""
        index = self.link_index(name)
        msgs = self._call(f"list addresses of {name}", self._ipr.get_addr, index=index, family=socket.AF_INET6)
        tentative, failed = [], []
        for msg in msgs:
            flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
            iface = ipaddress.ip_interface(f"{msg.get_attr('IFA_ADDRESS')}/{msg['prefixlen']}")
            if flags & IFA_F_DADFAILED:
                failed.append(iface)
            elif flags & IFA_F_TENTATIVE:
                tentative.append(iface)
        return tentative, failed

    def add_route(
        self, dst: IPNetwork, *, gw: IPAddress | None = None, dev: str | None = None, **extra: Any
    ) -> bool:
        """Add a route; False when it already existed."""
        kwargs: dict[str, Any] = {"dst": str(dst)}
        if gw is not None:
            kwargs["gateway"] = str(gw)
        if dev is not None:
            kwargs["oif"] = self.link_index(dev)
        kwargs.update({k: v for k, v in extra.items() if v is not None})
        try:
            self._ipr.route("add", **kwargs)
        except NetlinkError as exc:
            if exc.code == errno.EEXIST:
                return False
            via = f" via {gw}" if gw else ""
            raise NetlinkFailure(f"netlink: add route {dst}{via} failed", _errno_name(exc.code)) from exc
        return True

    def routes(self, dev: str | None = None, family: int | None = None) -> list[tuple[IPNetwork, IPAddress | None]]:
        """Main-table routes as (dst, gw), optionally only those through `dev`."""
        kwargs: dict[str, Any] = {"table": 254}
        if dev is not None:
            kwargs["oif"] = self.link_index(dev)
        out = []
        for fam in (socket.AF_INET, socket.AF_INET6):
            if family is not None and fam != {4: socket.AF_INET, 6: socket.AF_INET6}[family]:
                continue
            msgs = self._call("list routes", self._ipr.get_routes, family=fam, **kwargs)
            for msg in msgs:
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
                msgs = self._ipr.get_default_routes(family=fam)
            except NetlinkError:
                continue
            for msg in msgs:
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
        index = self.link_index(name)
        return int(self._call(f"get link {name}", self._ipr.link, "get", index=index)[0]["flags"])

    def allmulti(self, name: str) -> bool:
        return bool(self.link_flags(name) & IFF_ALLMULTI)

    def set_allmulti(self, name: str, on: bool) -> None:
        index = self.link_index(name)
        flags = IFF_ALLMULTI if on else 0
        self._call(
            f"set allmulticast on {name}", self._ipr.link, "set", index=index, flags=flags, change=IFF_ALLMULTI
        )

    def txqlen(self, name: str) -> int:
        index = self.link_index(name)
        msg = self._call(f"get link {name}", self._ipr.link, "get", index=index)[0]
        return int(msg.get_attr("IFLA_TXQLEN") or 0)

    def set_txqlen(self, name: str, qlen: int) -> None:
        index = self.link_index(name)
        self._call(f"set txqueuelen of {name} to {qlen}", self._ipr.link, "set", index=index, txqlen=qlen)


@contextmanager
def session(netns_path: str | None = None) -> Iterator[Netlink]:
    nl = Netlink(netns_path)
    try:
        yield nl
    finally:
        nl.close()
