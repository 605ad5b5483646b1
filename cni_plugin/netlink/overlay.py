"""The cluster data path through pyroute2: a VXLAN device, its FDB and neighbour entries, and
routes tagged with pycni's route protocol.

`Overlay` is a `Netlink` session (same namespace handling and error translation) with the requests
cluster/dataplane.py needs. Everything goes through rtnetlink; nothing shells out to `ip` or
`bridge`. What pycni made is recognisable without any state on disk:

    routes      rtm_protocol RTPROT_PYCNI (`ip route show proto 112`), main table
    VXLAN link  IFLA_IFALIAS starting with VXLAN_ALIAS (`ip -d link show` prints "alias ...")
    FDB, neigh  permanent entries on that VXLAN link (nothing else writes there)
"""

from __future__ import annotations

import errno
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import ndmsg

from ..spec.errors import LinkNotFound, NetlinkFailure
from ..spec.types import IPAddress, IPInterface, IPNetwork
from . import GONE_ERRNOS, IFF_UP, Netlink, _errno_name

# The route protocol pycni tags its routes with. 112 is ASCII "p"; it is in neither iproute2's
# /etc/iproute2/rt_protos (kernel 0-4, gated 8 ... dhcp 16, keepalived 18, babel 42, openr 99,
# FRR's 186-198) nor used by BIRD (12), Calico (80) or the kernel itself, so
# `ip route show proto 112` lists exactly pycni's routes and a routing daemon leaves them alone.
RTPROT_PYCNI = 112
MAIN_TABLE = 254
RTNH_F_ONLINK = 0x4
NUD_PERMANENT = ndmsg.states["permanent"]
NUD_NOARP = ndmsg.states["noarp"]
NTF_SELF = ndmsg.flags["self"]
VXLAN_ALIAS = "pycni-cluster"
FAMILIES = {4: socket.AF_INET, 6: socket.AF_INET6}


@dataclass(frozen=True)
class VxlanInfo:
    name: str
    index: int
    vni: int
    port: int
    local: IPAddress | None
    link: int | None  # ifindex of the underlay device
    learning: bool
    mtu: int
    mac: str
    up: bool
    alias: str


@dataclass(frozen=True)
class TaggedRoute:
    dst: IPNetwork
    gateway: IPAddress | None
    oif: int | None
    onlink: bool


def _vxlan_info(msg: Any) -> VxlanInfo | None:
    linkinfo = msg.get_attr("IFLA_LINKINFO")
    if linkinfo is None or linkinfo.get_attr("IFLA_INFO_KIND") != "vxlan":
        return None
    data = linkinfo.get_attr("IFLA_INFO_DATA")
    get = data.get_attr if data is not None else (lambda _name: None)
    local = get("IFLA_VXLAN_LOCAL") or get("IFLA_VXLAN_LOCAL6")
    return VxlanInfo(
        name=msg.get_attr("IFLA_IFNAME"),
        index=int(msg["index"]),
        vni=int(get("IFLA_VXLAN_ID") or 0),
        port=int(get("IFLA_VXLAN_PORT") or 0),
        local=ipaddress.ip_address(local) if local else None,
        link=get("IFLA_VXLAN_LINK"),
        learning=bool(get("IFLA_VXLAN_LEARNING")),
        mtu=int(msg.get_attr("IFLA_MTU") or 0),
        mac=(msg.get_attr("IFLA_ADDRESS") or "").lower(),
        up=bool(msg["flags"] & IFF_UP),
        alias=msg.get_attr("IFLA_IFALIAS") or "",
    )


class Overlay(Netlink):
    """An rtnetlink session in one namespace, with the requests of the cluster data path."""

    def __enter__(self) -> Overlay:
        return self

    # --- addresses of every link (the uplink lookup) ---------------------------------------------

    def all_addresses(self) -> list[tuple[int, IPInterface]]:
        """(ifindex, address) for every address in the namespace."""
        msgs = self._call("list addresses", self._ipr.get_addr)
        out = []
        for msg in msgs:
            address = msg.get_attr("IFA_ADDRESS")
            if address is not None:
                out.append((int(msg["index"]), ipaddress.ip_interface(f"{address}/{msg['prefixlen']}")))
        return out

    # --- the VXLAN device ------------------------------------------------------------------------

    def vxlan_links(self) -> list[VxlanInfo]:
        msgs = self._call("list links", self._ipr.get_links)
        return [info for info in map(_vxlan_info, msgs) if info is not None]

    def vxlan(self, name: str) -> VxlanInfo | None:
        """The VXLAN link `name`; None when there is no VXLAN link of that name (a link of
        another kind may still hold the name: the caller checks with `link_exists`)."""
        return next((v for v in self.vxlan_links() if v.name == name), None)

    def create_vxlan(
        self, name: str, *, vni: int, port: int, local: IPAddress, uplink: str, mtu: int, mac: str,
        alias: str = VXLAN_ALIAS,
    ) -> None:
        """A VXLAN link with learning off (the FDB is written, never learnt: a learnt entry could
        point a MAC at any sender), tagged with `alias`, up. EEXIST is InterfaceExists."""
        local_key = "vxlan_local" if local.version == 4 else "vxlan_local6"
        self.create_tagged_link(
            "vxlan", name, alias, vxlan_id=vni, vxlan_port=port, vxlan_link=self.link_index(uplink),
            vxlan_learning=0, mtu=mtu, address=mac, **{local_key: str(local)},
        )

    # --- FDB entries (`bridge fdb ... dev <vxlan> self permanent`) --------------------------------

    def fdb_entries(self, dev: str) -> list[tuple[str, IPAddress]]:
        """(MAC, remote underlay address) of the permanent unicast FDB entries of VXLAN `dev`."""
        index = self.link_index(dev)
        msgs = self._call(f"list fdb of {dev}", self._ipr.fdb, "dump", ifindex=index)
        out = []
        for msg in msgs:
            mac, dst = msg.get_attr("NDA_LLADDR"), msg.get_attr("NDA_DST")
            if msg["ifindex"] != index or not mac or not dst or not msg["state"] & NUD_PERMANENT:
                continue
            out.append((mac.lower(), ipaddress.ip_address(dst)))
        return out

    def fdb_replace(self, dev: str, mac: str, dst: IPAddress) -> None:
        """Point `mac` at `dst` (NLM_F_REPLACE: a MAC moving to a new address is one request)."""
        index = self.link_index(dev)
        self._call(
            f"set fdb {mac} dst {dst} on {dev}", self._ipr.fdb, "replace",
            ifindex=index, lladdr=mac, dst=str(dst), state=NUD_PERMANENT | NUD_NOARP, flags=NTF_SELF,
        )

    def fdb_delete(self, dev: str, mac: str, dst: IPAddress) -> bool:
        """Delete one FDB entry; False when it was already gone."""
        try:
            index = self.link_index(dev)
            self._ipr.fdb("del", ifindex=index, lladdr=mac, dst=str(dst))
        except LinkNotFound:
            return False
        except NetlinkError as exc:
            if exc.code in GONE_ERRNOS:
                return False
            raise NetlinkFailure(f"netlink: delete fdb {mac} dst {dst} on {dev} failed", _errno_name(exc.code)) from exc
        return True

    # --- neighbour entries (`ip neigh ... dev <vxlan> permanent`) ---------------------------------

    def neighbours(self, dev: str) -> list[tuple[IPAddress, str]]:
        """(address, MAC) of the permanent IPv4 and IPv6 neighbour entries of `dev`."""
        index = self.link_index(dev)
        out = []
        for family in FAMILIES.values():
            msgs = self._call(f"list neighbours of {dev}", self._ipr.neigh, "dump", ifindex=index, family=family)
            for msg in msgs:
                dst, mac = msg.get_attr("NDA_DST"), msg.get_attr("NDA_LLADDR")
                if msg["ifindex"] != index or not dst or not mac or not msg["state"] & NUD_PERMANENT:
                    continue
                out.append((ipaddress.ip_address(dst), mac.lower()))
        return out

    def neighbour_replace(self, dev: str, address: IPAddress, mac: str) -> None:
        index = self.link_index(dev)
        self._call(
            f"set neighbour {address} lladdr {mac} on {dev}", self._ipr.neigh, "replace",
            ifindex=index, dst=str(address), lladdr=mac, state=NUD_PERMANENT,
            family=FAMILIES[address.version],
        )

    def neighbour_delete(self, dev: str, address: IPAddress) -> bool:
        try:
            index = self.link_index(dev)
            self._ipr.neigh("del", ifindex=index, dst=str(address), family=FAMILIES[address.version])
        except LinkNotFound:
            return False
        except NetlinkError as exc:
            if exc.code in GONE_ERRNOS:
                return False
            raise NetlinkFailure(f"netlink: delete neighbour {address} on {dev} failed", _errno_name(exc.code)) from exc
        return True

    # --- routes tagged RTPROT_PYCNI ----------------------------------------------------------------

    def tagged_routes(self, proto: int = RTPROT_PYCNI) -> list[TaggedRoute]:
        """Main-table IPv4 and IPv6 routes of protocol `proto`; never anyone else's."""
        out = []
        for family in FAMILIES.values():
            msgs = self._call("list routes", self._ipr.get_routes, family=family, table=MAIN_TABLE, proto=proto)
            for msg in msgs:
                # Filter again here: the dump filter is pyroute2's, and a route of another protocol
                # must never reach the caller's diff (it would delete it as stale).
                table = msg.get_attr("RTA_TABLE") or msg["table"]
                if msg["proto"] != proto or table != MAIN_TABLE:
                    continue
                dst = msg.get_attr("RTA_DST")
                base = dst or ("0.0.0.0" if family == socket.AF_INET else "::")
                gateway = msg.get_attr("RTA_GATEWAY")
                out.append(TaggedRoute(
                    dst=ipaddress.ip_network(f"{base}/{msg['dst_len'] if dst else 0}", strict=False),
                    gateway=ipaddress.ip_address(gateway) if gateway else None,
                    oif=msg.get_attr("RTA_OIF"),
                    onlink=bool(msg["flags"] & RTNH_F_ONLINK),
                ))
        return out

    def route_set(
        self, dst: IPNetwork, gateway: IPAddress, dev: str, *, onlink: bool, replace: bool,
        proto: int = RTPROT_PYCNI,
    ) -> None:
        """Add (replace=False: EEXIST when any route to `dst` exists, so a route pycni did not
        make is never overwritten) or replace (a route known to be pycni's) a tagged route."""
        kwargs: dict[str, Any] = {
            "dst": str(dst), "gateway": str(gateway), "oif": self.link_index(dev),
            "proto": proto, "table": MAIN_TABLE, "family": FAMILIES[dst.version],
        }
        if onlink:
            kwargs["flags"] = RTNH_F_ONLINK
        command = "replace" if replace else "add"
        try:
            self._ipr.route(command, **kwargs)
        except NetlinkError as exc:
            detail = _errno_name(exc.code)
            if exc.code == errno.EEXIST:
                detail += "; a route to it that pycni did not make is in the way"
            raise NetlinkFailure(f"netlink: {command} route {dst} via {gateway} dev {dev} failed", detail) from exc

    def route_delete(self, route: TaggedRoute, proto: int = RTPROT_PYCNI) -> bool:
        """Delete one tagged route (matched by dst, protocol and table); False if already gone."""
        kwargs: dict[str, Any] = {
            "dst": str(route.dst), "proto": proto, "table": MAIN_TABLE, "family": FAMILIES[route.dst.version],
        }
        if route.oif is not None:
            kwargs["oif"] = route.oif
        try:
            self._ipr.route("del", **kwargs)
        except NetlinkError as exc:
            if exc.code in (*GONE_ERRNOS, errno.ESRCH):
                return False
            raise NetlinkFailure(f"netlink: delete route {route.dst} failed", _errno_name(exc.code)) from exc
        return True
