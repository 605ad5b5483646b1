"""Who is calling, and entering the caller's network namespace (the agent's only kernel tricks).

The shim may run in any network namespace (a runtime's, or a test's fake node entered with
`ip netns exec`), and a plugin's "host" is whatever namespace it was executed in. So the agent
runs each request's handler in a worker thread that setns(2)es into the *caller's* namespace and
returns to the agent's own afterwards (setns affects only the calling thread; sockets and
/proc/sys/net files opened inside stay bound to that namespace, and children forked by the
thread, such as `nft`, start in it).

Finding the caller's namespace without a pid-reuse race:
1. a pidfd for the peer: SO_PEERPIDFD (Linux >= 6.5) names the process that connected, not a
   number; older kernels: pidfd_open(2) of SO_PEERCRED's pid;
2. its namespace: ioctl(pidfd, PIDFD_GET_NET_NAMESPACE) (Linux >= 6.11); older kernels open
   /proc/<pid>/ns/net;
3. then, unless step 1 and 2 were both exact, prove the pid still is the peer: the peer keeps
   the connection open while it waits for the reply, so a connection that has not hung up means
   the process is alive, and a live process's pid cannot have been reused.
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import socket
import struct
from collections.abc import Iterator
from contextlib import contextmanager

from ..netns import setns_net

SO_PEERCRED = getattr(socket, "SO_PEERCRED", 17)
SO_PEERPIDFD = getattr(socket, "SO_PEERPIDFD", 77)
PIDFD_GET_NET_NAMESPACE = 0xFF04  # _IO(PIDFS_IOCTL_MAGIC=0xFF, 4), linux/pidfd.h
POLLRDHUP = getattr(select, "POLLRDHUP", 0x2000)
HIDDEN_PID = "the caller's pid is not visible (run the agent in the host pid namespace)"
NOT_SUPPORTED = (errno.ENOPROTOOPT, errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP)


class CallerUnknown(Exception):
    """The caller's process or namespace cannot be determined (it exited, or is not visible)."""


def peer_credentials(conn: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process that connected (SO_PEERCRED; pid 0 when not visible)."""
    raw = conn.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


def _peer_pidfd(conn: socket.socket, pid: int) -> tuple[int, bool]:
    """(pidfd, exact): exact when the kernel named the peer itself (SO_PEERPIDFD)."""
    try:
        return conn.getsockopt(socket.SOL_SOCKET, SO_PEERPIDFD), True
    except OSError as exc:
        if exc.errno not in NOT_SUPPORTED:
            raise CallerUnknown(f"SO_PEERPIDFD: {exc.strerror}") from exc
    if pid <= 0:
        raise CallerUnknown(HIDDEN_PID)
    try:
        return os.pidfd_open(pid), False
    except OSError as exc:
        raise CallerUnknown(f"pidfd_open({pid}): {exc.strerror}") from exc


def _still_connected(conn: socket.socket) -> bool:
    poller = select.poll()
    poller.register(conn, select.POLLIN | POLLRDHUP)
    for _, events in poller.poll(0):
        if events & (select.POLLHUP | POLLRDHUP | select.POLLERR):
            return False
    return True


def caller_netns(conn: socket.socket, pid: int) -> int:
    """An fd on the network namespace of the process at the other end of `conn` (caller closes it)."""
    pidfd, exact = _peer_pidfd(conn, pid)
    try:
        try:
            fd = int(fcntl.ioctl(pidfd, PIDFD_GET_NET_NAMESPACE))
        except OSError as exc:
            if exc.errno == errno.ESRCH:
                raise CallerUnknown("the caller exited") from exc
            if exc.errno not in NOT_SUPPORTED:
                raise CallerUnknown(f"PIDFD_GET_NET_NAMESPACE: {exc.strerror}") from exc
            exact = False  # a pid, not the process itself, chose the namespace
            if pid <= 0:
                raise CallerUnknown(HIDDEN_PID) from exc
            try:
                fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            except OSError as exc2:
                raise CallerUnknown(f"/proc/{pid}/ns/net: {exc2.strerror}") from exc2
        if not exact and not _still_connected(conn):
            os.close(fd)
            raise CallerUnknown("the caller hung up")
        return fd
    finally:
        os.close(pidfd)


def same_namespace(fd_a: int, fd_b: int) -> bool:
    a, b = os.fstat(fd_a), os.fstat(fd_b)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@contextmanager
def entered(target: int, home: int) -> Iterator[None]:
    """Run the body with the calling thread in namespace `target`, then back in `home`.

    A thread that cannot return home would serve the next request in a stranger's namespace:
    that is fatal for the whole agent (the service manager restarts it; shims fall back meanwhile).
    """
    if same_namespace(target, home):
        yield
        return
    setns_net(target)
    try:
        yield
    finally:
        try:
            setns_net(home)
        except OSError as exc:  # pragma: no cover - the kernel does not refuse a return to a held fd
            os.write(2, f"pycni-agent: FATAL: cannot return a worker to its namespace: {exc}\n".encode())
            os._exit(70)
