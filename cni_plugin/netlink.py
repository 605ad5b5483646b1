"""The only module that talks to the kernel through pyroute2 (rtnetlink).

Each `Netlink` is one rtnetlink socket bound to one network namespace. Every pyroute2 error is
translated here: ENODEV/ENOENT on a lookup -> LinkNotFound ('already gone', caught by DEL and undo
code), anything else -> NetlinkFailure (code 103) naming the operation and the errno.
"""

from __future__ import annotations

import errno
import ipaddress
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from . import netns
from .spec.errors import LinkNotFound, NetlinkFailure
from .spec.types import IPInterface

T = TypeVar("T")

IFF_UP = 0x1
GONE_ERRNOS = (errno.ENODEV, errno.ENOENT)


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
        return self.link_by_index(self.link_index(name))

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


@contextmanager
def session(netns_path: str | None = None) -> Iterator[Netlink]:
    nl = Netlink(netns_path)
    try:
        yield nl
    finally:
        nl.close()
