"""Conntrack entries through pyroute2's ctnetlink support (NETLINK_NETFILTER), no `conntrack` tool.

The socket is opened in the calling thread's network namespace, like every other netlink session
here. Errors become NetlinkFailure (code 103) naming the errno; an entry that expires between the
dump and its deletion (ENOENT) counts as deleted.
"""

from __future__ import annotations

import errno
import socket

from pyroute2.conntrack import Conntrack
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

from ..spec.errors import NetlinkFailure
from . import _errno_name

IPPROTO = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": socket.IPPROTO_SCTP}
_AF = {4: socket.AF_INET, 6: socket.AF_INET6}


def delete_by_destination(family: int, protocol: str, dport: int, daddr: str | None = None) -> int:
    """Delete every entry whose original direction goes to port `dport` (and address `daddr`, if
    given) over `protocol`, for IP `family` (4 or 6). Returns how many were deleted."""
    af = _AF[family]
    wanted = NFCTAttrTuple(family=af, proto=IPPROTO[protocol], dport=dport, daddr=daddr)
    what = f"conntrack flush of {protocol} port {dport} (IPv{family})"
    deleted = 0
    try:
        ct = Conntrack(nfgen_family=af)
    except (OSError, NetlinkError) as exc:
        code = getattr(exc, "code", None) or getattr(exc, "errno", None) or 0
        raise NetlinkFailure(f"netlink: {what} failed", _errno_name(code)) from exc
    try:
        # The kernel filters by the tuple (CTA_FILTER, Linux >= 5.8); pyroute2 re-checks each entry.
        entries = list(ct.dump_entries(tuple_orig=wanted))
        for entry in entries:
            try:
                ct.delete(entry)
                deleted += 1
            except NetlinkError as exc:
                if exc.code != errno.ENOENT:
                    raise
    except NetlinkError as exc:
        raise NetlinkFailure(f"netlink: {what} failed", _errno_name(exc.code)) from exc
    finally:
        ct.close()
    return deleted
