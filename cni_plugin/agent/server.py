"""pycni-agent: the plugins kept warm, served over a unix socket in each caller's namespace.

A plugin process pays for starting Python and importing pyroute2 and the plugin modules on every
exec (~80 ms for a bridge ADD); the agent imports them once. The installed shim (shim.c compiled,
else shim.py) forwards each invocation here; the agent runs the same
dispatcher (spec.skel.dispatch) with the caller's environment and stdin, in a worker thread that
sits in the caller's network namespace (caller.py), and sends back exit code, stdout and stderr.

Guarantees:
- Root only: the socket is 0600 in a 0700 root-owned directory, and every peer's SO_PEERCRED
  uid must be 0 (a refused peer gets InvalidEnvironment, code 4).
- Bounded: a request larger than --max-request-bytes gets IOFailure (5); at most --workers
  requests run at once (a thread pool), more wait in the queue; one request per container at a
  time (CNI_CONTAINERID lock for ADD/DEL/CHECK; different containers run concurrently).
- Nothing lives only in the agent: each request's state is in the kernel and on disk exactly as
  with a plugin process, so kill -9 at any moment loses nothing the runtime's DEL cannot clean up
  (the shim answers an interrupted ADD with TryAgainLater, 11). A restart needs no replay: it
  replaces a stale socket, and host-local's index verifies itself (stamp) on its next request.
- SIGTERM/SIGINT: stop accepting, finish the requests in flight (--drain-timeout), remove the
  socket, exit 0. A second signal during the drain kills it at once.

PYCNI_AGENT_FAULT (tests only, read from the agent's own environment) kills the agent with
SIGKILL at a chosen point: `kill-before-start`, `kill-after-start` or `kill-after-ipam`,
optionally `:<VERB>`.
"""

from __future__ import annotations

import functools
import io
import os
import signal
import socket
import stat
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ..entry import PLUGINS
from ..spec import skel
from ..spec.errors import CNIError, InternalError, InvalidEnvironment, IOFailure, TryAgainLater
from ..spec.plugin import Plugin
from ..spec.version import LATEST
from . import caller, mode, protocol
from .locks import KeyedLocks
from .streams import StderrRouter

DEFAULT_SOCKET = "/run/pycni/agent.sock"
DEFAULT_WORKERS = 8
DEFAULT_MAX_REQUEST = 4 << 20  # a GC with thousands of valid attachments stays well below
DEFAULT_DRAIN_TIMEOUT = 30.0
IO_TIMEOUT = 30.0  # reading one request, writing one reply
LOCK_TIMEOUT = 120.0  # a runtime never overlaps requests for one container; this is a safety net
DISCARD_LIMIT = 64 << 20  # read and drop at most this much of a refused request, then hang up
LOCKED_VERBS = ("ADD", "DEL", "CHECK")
FAULT_ENV = "PYCNI_AGENT_FAULT"
FAULT_POINTS = ("kill-before-start", "kill-after-start", "kill-after-ipam")
CHUNK = 1 << 16


class AgentError(Exception):
    """The agent cannot start (bad socket directory, another agent running, not root)."""


@dataclass(frozen=True)
class Settings:
    socket_path: str = DEFAULT_SOCKET
    workers: int = DEFAULT_WORKERS
    max_request: int = DEFAULT_MAX_REQUEST
    drain_timeout: float = DEFAULT_DRAIN_TIMEOUT
    lock_timeout: float = LOCK_TIMEOUT
    log_requests: bool = False


class _Stop(BaseException):
    """Raised by the signal handler to leave a blocking accept()."""


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = conn.recv(min(left, CHUNK))
        if not chunk:
            raise EOFError(f"connection closed {size - left} bytes into a {size}-byte read")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def parse_fault(spec: str) -> tuple[str, str]:
    point, _, verb = spec.partition(":")
    if point and point not in FAULT_POINTS:
        raise AgentError(f"{FAULT_ENV}={spec!r}: the point must be one of {', '.join(FAULT_POINTS)}")
    return point, verb


WARM_MODULES = ("cni_plugin.firewall.nftables", "cni_plugin.invoke", "cni_plugin.log", "ipam.config")


def preload() -> list[str]:
    """Import everything a request can need, once, before the socket exists; returns the failures.

    A module that fails to import is not fatal: its requests load it again and report the error
    exactly as a plugin process would (InternalError), and the other plugins keep working.
    """
    import importlib

    failures = []
    loaders: list[tuple[str, Any]] = [(f"plugin {n}", p.load_handlers) for n, p in sorted(PLUGINS.items())]
    loaders += [(name, functools.partial(importlib.import_module, name)) for name in WARM_MODULES]
    for what, load in loaders:
        try:
            load()
        except Exception as exc:  # noqa: BLE001 - reported, and reported again per request
            failures.append(f"{what}: {type(exc).__name__}: {exc}")
    try:
        from .. import netlink

        netlink.Netlink().close()  # pyroute2's lazy set-up (message classes, event loop) paid now
    except Exception as exc:  # noqa: BLE001
        failures.append(f"netlink warm-up: {exc}")
    return failures


def notify_ready() -> None:
    """sd_notify(READY=1) for a Type=notify unit (no-op elsewhere)."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"READY=1", address)
    except OSError:
        pass


class Agent:
    def __init__(self, settings: Settings, fault: str = "", controller: Any = None) -> None:
        if os.geteuid() != 0:
            raise AgentError("pycni-agent must run as root (it configures network namespaces)")
        if settings.workers < 1:
            raise AgentError("--workers must be at least 1")
        self.settings = settings
        self._fault = parse_fault(fault)
        self._locks = KeyedLocks()
        self._slots = threading.BoundedSemaphore(settings.workers * 4)  # running + queued
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="pycni-agent")
        self._cond = threading.Condition()
        self._inflight = 0
        self._stopping = False
        self._in_accept = False
        self._identity: tuple[int, int] | None = None
        self._home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        self._stderr = StderrRouter(sys.stderr)
        # The cluster controller (cluster/controller.py), when the agent runs with --datastore:
        # its own threads, in the agent's own namespace (request workers enter callers' ones).
        self._controller = controller

    # --- life cycle ----------------------------------------------------------------------------

    def run(self) -> int:
        for failure in preload():
            self._log(f"preload failed (requests will report it): {failure}")
        self._install_fault()
        sys.stderr = self._stderr  # type: ignore[assignment]  # duck-typed: write/flush/redirect
        listener = self._listen()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        notify_ready()
        self._log(
            f"serving {', '.join(sorted(PLUGINS))} on {self.settings.socket_path} "
            f"(workers {self.settings.workers}, max request {self.settings.max_request} bytes)"
        )
        if self._controller is not None:
            self._controller.start()
        try:
            self._accept_loop(listener)
        finally:
            for sig in previous:
                signal.signal(sig, signal.SIG_DFL)  # a second signal during the drain kills at once
            self._unlisten(listener)
            if self._controller is not None:
                self._controller.stop()
        return self._drain()

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stopping = True
        if self._in_accept:
            raise _Stop

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping:
            if not self._slots.acquire(timeout=0.5):
                continue
            try:
                self._in_accept = True
                try:
                    if self._stopping:
                        raise _Stop
                    conn, _ = listener.accept()
                finally:
                    self._in_accept = False
            except _Stop:
                # A connection accepted just before the signal is dropped unanswered: its shim
                # saw no "started" and runs the request itself. Nothing is lost.
                self._slots.release()
                return
            except OSError as exc:
                self._slots.release()
                self._log(f"accept failed: {exc}")
                time.sleep(0.05)
                continue
            with self._cond:
                self._inflight += 1
            self._pool.submit(self._serve_connection, conn)

    def _drain(self) -> int:
        deadline = time.monotonic() + self.settings.drain_timeout
        with self._cond:
            while self._inflight and time.monotonic() < deadline:
                self._cond.wait(max(0.0, deadline - time.monotonic()))
            left = self._inflight
        if left:
            self._log(f"stopping with {left} request(s) unfinished after {self.settings.drain_timeout:g}s")
            os._exit(1)
        self._pool.shutdown(wait=True)
        self._log("stopped")
        return 0

    # --- the socket ----------------------------------------------------------------------------

    def _listen(self) -> socket.socket:
        path = self.settings.socket_path
        if not os.path.isabs(path):
            raise AgentError(f"--socket must be an absolute path, got {path!r}")
        _prepare_directory(os.path.dirname(path))
        _refuse_live_agent(path)
        tmp = f"{path}.{os.getpid()}.tmp"
        _unlink_quietly(tmp)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        previous = os.umask(0o177)  # the socket file is 0600 from its first instant
        try:
            sock.bind(tmp)
        except OSError as exc:
            sock.close()
            raise AgentError(f"cannot bind {tmp}: {exc.strerror or exc}") from exc
        finally:
            os.umask(previous)
        os.chmod(tmp, 0o600)
        sock.listen(128)
        # Ready exactly when the name appears: connect() on `path` either fails (shims fall back)
        # or reaches a listening socket; a stale socket of a killed agent is replaced atomically.
        os.rename(tmp, path)
        st = os.stat(path)
        self._identity = (st.st_dev, st.st_ino)
        return sock

    def _unlisten(self, listener: socket.socket) -> None:
        listener.close()
        path = self.settings.socket_path
        try:
            st = os.stat(path)
        except OSError:
            return
        if (st.st_dev, st.st_ino) == self._identity:  # never remove a successor's socket
            _unlink_quietly(path)

    # --- one connection ------------------------------------------------------------------------

    def _serve_connection(self, conn: socket.socket) -> None:
        try:
            with conn:
                conn.settimeout(IO_TIMEOUT)
                self._serve(conn)
        except Exception:  # noqa: BLE001 - one bad connection must never stop the agent
            self._log("a request failed:\n" + traceback.format_exc())
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()
            self._slots.release()

    def _serve(self, conn: socket.socket) -> None:
        started = time.monotonic()
        pid, uid, _ = caller.peer_credentials(conn)
        outcome = self._serve_peer(conn, pid, uid)
        if self.settings.log_requests and outcome:
            self._log(f"pid {pid}: {outcome} ({(time.monotonic() - started) * 1000:.1f} ms)")

    def _serve_peer(self, conn: socket.socket, pid: int, uid: int) -> str:
        """Serve one request; returns a one-line summary for --log-requests ('' when dropped)."""
        try:
            header_len, stdin_len = protocol.decode_prefix(_recv_exactly(conn, protocol.PREFIX_LEN))
        except (protocol.ProtocolError, EOFError, OSError) as exc:
            self._log(f"dropped a connection from pid {pid}: {exc}")
            return ""
        size = header_len + stdin_len
        if uid != 0:
            self._log(f"refused pid {pid}: uid {uid} is not root")
            self._refuse(conn, size, InvalidEnvironment(
                "pycni-agent serves root only", f"the caller (pid {pid}) runs as uid {uid}"))
            return f"refused uid {uid}"
        if size > self.settings.max_request:
            self._refuse(conn, size, IOFailure(
                "request too large for pycni-agent",
                f"{size} bytes; the limit is {self.settings.max_request} (pycni-agent --max-request-bytes)"))
            return f"refused a {size}-byte request"
        name, environ = protocol.decode_header(_recv_exactly(conn, header_len))
        stdin = _recv_exactly(conn, stdin_len)
        plugin = PLUGINS.get(name)
        if plugin is None:
            # Hang up before "started": the shim runs it in-process, which serves a plugin installed
            # after this agent started (restart the agent after an upgrade to serve it warm) and
            # reports a name that does not exist exactly as a plugin process does.
            return f"no plugin {name!r} here: left to the shim"
        verb = environ.get("CNI_COMMAND", "")
        summary = f"{name} {verb or '(about)'} {environ.get('CNI_CONTAINERID', '')} {environ.get('CNI_IFNAME', '')}"
        if verb in mode.AGENTLESS_VERBS:  # VERSION and the about line: no namespace, no lock
            conn.sendall(protocol.STARTED)
            reply = self._run(plugin, environ, stdin, None)
            conn.sendall(protocol.encode_reply(*reply))
            return f"{summary} -> exit {reply[0]}"
        config = mode.parse_config(stdin)
        try:
            mode.mode_of(config)
        except CNIError as exc:
            conn.sendall(protocol.encode_reply(1, mode.error_bytes(exc, mode.reply_version(config)), b""))
            return f"{summary} -> code {exc.code}"
        try:
            netns_fd = caller.caller_netns(conn, pid)
        except caller.CallerUnknown as exc:
            self._reply_error(conn, InvalidEnvironment("pycni-agent cannot find the caller's network namespace",
                                                       str(exc)), mode.reply_version(config))
            return f"{summary} -> caller unknown: {exc}"
        try:
            container = environ.get("CNI_CONTAINERID", "") if verb in LOCKED_VERBS else ""
            with self._locks.hold(container or None, self.settings.lock_timeout) as held:
                if not held:
                    self._reply_error(conn, TryAgainLater(
                        f"another request for container {container} is still running",
                        f"waited {self.settings.lock_timeout:g}s"), mode.reply_version(config))
                    return f"{summary} -> container lock timeout"
                self._fault_point("kill-before-start", verb)
                try:
                    conn.sendall(protocol.STARTED)
                except OSError:
                    return f"{summary} -> caller gone before start"  # nothing started
                self._fault_point("kill-after-start", verb)
                reply = self._run(plugin, environ, stdin, netns_fd)
        finally:
            os.close(netns_fd)
        conn.sendall(protocol.encode_reply(*reply))
        return f"{summary} -> exit {reply[0]}"

    def _run(
        self, plugin: Plugin, environ: dict[str, str], stdin: bytes, netns_fd: int | None
    ) -> tuple[int, bytes, bytes]:
        out, err = io.StringIO(), io.StringIO()
        try:
            with self._stderr.redirect(err):
                if netns_fd is None:
                    code = skel.dispatch(plugin, environ, io.BytesIO(stdin), out, err)
                else:
                    with caller.entered(netns_fd, self._home):
                        code = skel.dispatch(plugin, environ, io.BytesIO(stdin), out, err)
        except Exception as exc:  # noqa: BLE001 - entering the namespace failed, or a dispatcher bug
            err.write(traceback.format_exc())
            out = io.StringIO()
            out.write(mode.error_bytes(InternalError(f"pycni-agent: {type(exc).__name__}", str(exc)),
                                       LATEST).decode())
            code = 1
        stdout = out.getvalue().encode("utf-8", "surrogateescape")
        return code, stdout, err.getvalue().encode("utf-8", "backslashreplace")

    def _refuse(self, conn: socket.socket, size: int, exc: CNIError) -> None:
        """Answer a request the agent will not run: drain it first, so the shim reads the answer."""
        if size > DISCARD_LIMIT:
            return  # hang up: the shim saw no "started" and runs the request itself
        left = size
        try:
            while left:
                chunk = conn.recv(min(left, CHUNK))
                if not chunk:
                    return
                left -= len(chunk)
        except OSError:
            return
        self._reply_error(conn, exc, LATEST)

    @staticmethod
    def _reply_error(conn: socket.socket, exc: CNIError, version: str) -> None:
        try:
            conn.sendall(protocol.encode_reply(1, mode.error_bytes(exc, version), b""))
        except OSError:
            pass

    # --- tests only ----------------------------------------------------------------------------

    def _fault_point(self, point: str, verb: str) -> None:
        wanted, only = self._fault
        if wanted == point and (not only or only == verb):
            os.kill(os.getpid(), signal.SIGKILL)

    def _install_fault(self) -> None:
        if self._fault[0] != "kill-after-ipam":
            return
        from .. import invoke

        real = invoke.delegate_add

        def add_then_die(*args: Any, **kwargs: Any) -> Any:
            result = real(*args, **kwargs)
            os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(invoke, "delegate_add", add_then_die)  # noqa: B010 - a test-only fault hook
        self._log(f"{FAULT_ENV}=kill-after-ipam: the agent dies after every IPAM ADD (tests only)")

    def _log(self, message: str) -> None:
        stream = sys.__stderr__
        if stream is not None:
            stream.write(f"pycni-agent: {message}\n")
            stream.flush()


def _prepare_directory(directory: str) -> None:
    """The socket's directory: created 0700, or an existing one that is root-owned and 0700."""
    try:
        st = os.stat(directory)
    except FileNotFoundError:
        os.makedirs(directory, mode=0o700)
        os.chmod(directory, 0o700)
        return
    if not stat.S_ISDIR(st.st_mode):
        raise AgentError(f"{directory} is not a directory")
    if st.st_uid != 0 or st.st_mode & 0o077:
        raise AgentError(
            f"{directory} must be owned by root with mode 0700 (it is uid {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}): the agent's socket lets its users configure the node's network"
        )


def _refuse_live_agent(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise AgentError(f"{path} exists and is not a socket")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2)
        probe.connect(path)
    except OSError:
        return  # a stale socket of an agent that died: replaced by the rename in _listen
    finally:
        probe.close()
    raise AgentError(f"another pycni-agent is serving {path}")


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
