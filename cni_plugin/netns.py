"""Network namespaces by path: open, verify, enter (stdlib only).

A thread enters the target namespace with setns(2), which affects only the calling thread, and
always returns to its own namespace. A netlink socket stays bound to the namespace it was opened
in, so netlink.py opens its socket inside `entered()` and uses it after leaving. Unlike
pyroute2's own netns helpers, this never forks and never creates a namespace that is missing:
a vanished CNI_NETNS must be reported (or, on DEL, tolerated), not silently recreated.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from .spec.errors import InvalidNetns, NetnsNotFound

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703  # ioctl(2) on an nsfs fd, Linux >= 4.11: returns the CLONE_NEW* type


def setns_net(fd: int) -> None:
    """Move the calling thread into the network namespace of `fd` (setns(2), CLONE_NEWNET)."""
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, CLONE_NEWNET)
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def open_netns(path: str) -> int:
    """An O_RDONLY fd on the network namespace at `path`.

    Raises NetnsNotFound when nothing is there (DEL treats that as done), InvalidNetns (code 8)
    when the path exists but is not a network namespace.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as exc:
        raise NetnsNotFound(path) from exc
    except OSError as exc:
        raise InvalidNetns(f"cannot open network namespace {path}", exc.strerror or str(exc)) from exc
    try:
        kind = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise InvalidNetns(f"{path} is not a network namespace", "it is not an nsfs file") from exc
        raise InvalidNetns(f"cannot inspect network namespace {path}", exc.strerror or str(exc)) from exc
    if kind != CLONE_NEWNET:
        os.close(fd)
        raise InvalidNetns(f"{path} is not a network namespace", f"namespace type {kind:#x}")
    return fd


def require_netns(path: str) -> None:
    """Raise InvalidNetns (code 8) unless `path` is an existing network namespace."""
    try:
        os.close(open_netns(path))
    except NetnsNotFound as exc:
        raise InvalidNetns(f"network namespace {path} does not exist") from exc


@contextmanager
def entered(path: str) -> Iterator[None]:
    """Run the body with the calling thread inside the network namespace at `path`."""
    target = open_netns(path)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            setns_net(target)
        except OSError as exc:
            raise InvalidNetns(f"cannot enter network namespace {path}", exc.strerror or str(exc)) from exc
        try:
            yield
        finally:
            # Failing to return would leave this thread wiring the wrong namespace: let it raise.
            setns_net(own)
    finally:
        os.close(target)
        os.close(own)
