"""A blocking rtnetlink socket that speaks pyroute2's message classes.

pyroute2 0.9's IPRoute runs every request through an asyncio event loop: 0.5-1 ms a request, and
a bridge ADD makes about twenty. The messages themselves are pyroute2's (ifinfmsg, ifaddrmsg,
rtmsg encode and decode every attribute); only the exchange is done here, with one send and a
blocking recv on an AF_NETLINK socket: about 0.1 ms a request. What the exchange needs is what
netlink(7) specifies: a sequence number per request, NLM_F_ACK so that every change is answered
(an NLMSG_ERROR carrying 0 or -errno), and a dump read until NLMSG_DONE.

Errors are pyroute2's NetlinkError with the positive errno in `.code`, so callers handle this
socket and IPRoute alike.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

# isort: off
from . import light_pyroute2  # noqa: F401  (first: it keeps pyroute2's package root from loading)
from pyroute2.netlink import (
    NLM_F_ACK,
    NLM_F_CREATE,
    NLM_F_DUMP,
    NLM_F_EXCL,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
)
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELADDR,
    RTM_DELLINK,
    RTM_GETADDR,
    RTM_GETLINK,
    RTM_GETROUTE,
    RTM_NEWADDR,
    RTM_NEWLINK,
    RTM_NEWROUTE,
)
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

# isort: on

__all__ = [
    "NLM_F_CREATE", "NLM_F_DUMP", "NLM_F_EXCL", "RTM_DELADDR", "RTM_DELLINK", "RTM_GETADDR", "RTM_GETLINK",
    "RTM_GETROUTE", "RTM_NEWADDR", "RTM_NEWLINK", "RTM_NEWROUTE", "NetlinkError", "RtnlSocket",
    "ifaddrmsg", "ifinfmsg", "rtmsg",
]

# Answer types -> the class that decodes them.
ANSWER_CLASSES: dict[int, type[Any]] = {
    RTM_NEWLINK: ifinfmsg, RTM_DELLINK: ifinfmsg, RTM_NEWADDR: ifaddrmsg, RTM_DELADDR: ifaddrmsg,
    RTM_NEWROUTE: rtmsg, RTM_NEWROUTE + 1: rtmsg,
}
NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
NLMSGERR_CODE = struct.Struct("=i")
NLM_F_DUMP_INTR = 0x10
SOL_NETLINK = 270  # not in the socket module
NETLINK_GET_STRICT_CHK = 12
RECV_SIZE = 1 << 16  # the kernel sizes dump chunks to the reader's buffer, up to 32 KiB
DUMP_ATTEMPTS = 5  # a dump the kernel marks interrupted (the table changed meanwhile) is read again


class RtnlSocket:
    """One NETLINK_ROUTE socket, bound in the namespace of the thread that creates it."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            self._sock.bind((0, 0))
            # Strict checking makes the kernel honour the filters of a dump request (an interface
            # index, a table) instead of answering with the whole table.
            self._sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        except BaseException:
            self._sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self._sock.close()

    def request(self, msg: Any, msg_type: int, flags: int = 0) -> list[Any]:
        """Send `msg` as `msg_type` with `flags` (plus NLM_F_REQUEST, and NLM_F_ACK unless it is a
        dump) and return the decoded answers. Raises NetlinkError(errno) on an error answer."""
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        flags |= NLM_F_REQUEST if dump else NLM_F_REQUEST | NLM_F_ACK
        for _ in range(DUMP_ATTEMPTS):
            self._seq += 1
            seq = self._seq
            msg["header"]["type"] = msg_type
            msg["header"]["flags"] = flags
            msg["header"]["sequence_number"] = seq
            msg["header"]["pid"] = 0
            msg.encode()
            self._sock.send(msg.data)
            answers, interrupted = self._collect(seq)
            if not interrupted:
                return answers
        raise NetlinkError(errno.EAGAIN, "netlink dump interrupted again and again")

    def _collect(self, seq: int) -> tuple[list[Any], bool]:
        answers: list[Any] = []
        interrupted = False
        while True:
            data = self._sock.recv(RECV_SIZE)
            offset = 0
            while offset + NLMSGHDR.size <= len(data):
                length, kind, flags, msg_seq, _ = NLMSGHDR.unpack_from(data, offset)
                if length < NLMSGHDR.size:
                    raise NetlinkError(errno.EBADMSG, "truncated netlink message")
                if msg_seq == seq:  # anything else is the late answer to an abandoned request
                    interrupted |= bool(flags & NLM_F_DUMP_INTR)
                    if kind == NLMSG_ERROR or kind == NLMSG_DONE:
                        code = 0
                        if length >= NLMSGHDR.size + NLMSGERR_CODE.size:
                            (code,) = NLMSGERR_CODE.unpack_from(data, offset + NLMSGHDR.size)
                        if code < 0:
                            raise NetlinkError(-code)
                        return answers, interrupted
                    cls = ANSWER_CLASSES.get(kind)
                    if cls is not None:
                        answer = cls(data[offset : offset + length])
                        answer.decode()
                        answers.append(answer)
                offset += (length + 3) & ~3
