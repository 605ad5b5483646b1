"""The loopback plugin: `lo` up inside the container namespace.

containerd runs it for every pod (network "cni-loopback", cniVersion 0.3.1, ifname lo).
Behaviour follows plugins/main/loopback: ADD works on `lo` whatever CNI_IFNAME says, refuses a
`lo` that carries a non-loopback address, and returns prevResult unchanged when chained, else
`lo` with the first IPv4 and IPv6 loopback addresses. DEL sets it down and succeeds when the
namespace is empty or gone. CHECK verifies it is up.
"""

from __future__ import annotations

from . import netlink
from .spec.errors import CheckFailed, InvalidConfig, InvalidNetns, LinkNotFound, NetnsNotFound
from .spec.skel import CmdArgs, Handlers
from .spec.types import Interface, IPConfig, Result

LOOPBACK = "lo"
LOOPBACK_MAC = "00:00:00:00:00:00"
LOOPBACK_INDEX = 1  # every namespace's lo has index 1 (the kernel's LOOPBACK_IFINDEX): no lookup


def _session(args: CmdArgs) -> netlink.Netlink:
    try:
        return netlink.Netlink(args.netns)
    except NetnsNotFound as exc:
        raise InvalidNetns(f"network namespace {args.netns} does not exist") from exc


def add(args: CmdArgs) -> Result:
    prev = args.prev_result()
    with _session(args) as nl:
        nl.set_up(LOOPBACK)
        addresses = nl.addresses(LOOPBACK, index=LOOPBACK_INDEX)
    strangers = [str(a) for a in addresses if not a.ip.is_loopback]
    if strangers:
        raise InvalidConfig("lo carries non-loopback addresses", ", ".join(strangers))
    if prev is not None:
        return prev
    ips = []
    for family in (4, 6):
        first = next((a for a in addresses if a.version == family), None)
        if first is not None:
            ips.append(IPConfig(address=first, interface=0))
    return Result(
        interfaces=(Interface(name=args.ifname, mac=LOOPBACK_MAC, sandbox=args.netns),),
        ips=tuple(ips),
    )


def delete(args: CmdArgs) -> None:
    if not args.netns:
        return
    try:
        with netlink.session(args.netns) as nl:
            nl.set_down(LOOPBACK)
    except (NetnsNotFound, LinkNotFound):
        return  # already gone: DEL succeeds (SPEC §2 DEL)


def check(args: CmdArgs) -> None:
    with _session(args) as nl:
        try:
            link = nl.link(LOOPBACK)
        except LinkNotFound as exc:
            raise CheckFailed("lo does not exist in the container namespace") from exc
    if not link.up:
        raise CheckFailed("lo is down in the container namespace")


def status(args: CmdArgs) -> None:
    """Always ready: loopback needs nothing but the kernel."""


def gc(args: CmdArgs) -> None:
    """Nothing to collect: loopback keeps no state outside the container namespace."""


HANDLERS = Handlers(add=add, delete=delete, check=check, status=status, gc=gc)
