"""The BIRD 2 process: start it (in the node's network namespace), supervise it, reload it atomically.

BIRD is its own daemon; the only way to drive it is its control socket, the one birdc talks to.
This module speaks that socket's line protocol directly (what `birdc -s SOCK <command>` sends
and prints, without a subprocess and with the numeric reply codes kept): `configure check`,
`configure`, `show protocols`.

Why BIRD runs in the foreground (-f) as the agent's child, not daemonized: the supervisor thread
learns of its death from wait() at once (no pid-file polling race), and its stderr goes to a log
file the agent picks. It runs in its own session, so a signal to the agent's process group
(Ctrl-C, a service stop) does not reach it, and it outlives an agent that is killed: routes and
BGP sessions survive an agent restart. A new agent finds the running BIRD through its control
socket and pid file and adopts it (supervising by polling the pid) instead of starting a second.

BIRD is always started with -R (graceful restart recovery): after a crash its kernel protocol
keeps the routes the previous BIRD installed until BGP has relearnt them, and its peers, told
that this speaker restarted with forwarding state preserved, keep the routes they had from it.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from ...netns import entered

log = logging.getLogger(__name__)

BIRD_BIN = "/usr/sbin/bird"
REPLY_TIMEOUT = 10.0
# Reply codes of BIRD's control protocol (BIRD's doc/reply_codes): 0xxx done, 8xxx/9xxx errors.
CODE_READY = 1
CODE_RECONFIGURED = 3
CODE_RECONFIG_IN_PROGRESS = 4
CODE_RECONFIG_QUEUED = 5
CODE_NOTHING_TO_DO = 19
CODE_CONFIG_OK = 20
CODE_PROTOCOL_LIST = 1002
CODE_PROTOCOL_HEADER = 2002
SUN_PATH_MAX = 107  # sockaddr_un.sun_path holds 108 bytes with the terminating NUL
_SINCE = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(?:\.\d+)?|\S+"
_PROTOCOL_LINE = re.compile(rf"^(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+({_SINCE})\s*(.*?)\s*$")


class BirdError(Exception):
    """Base of the BIRD errors."""


class BirdUnavailable(BirdError):
    """BIRD's control socket does not answer (not started, dead, or still starting)."""


class BirdConfigError(BirdError):
    """BIRD refused a configuration (the message is BIRD's: file, line, reason); the old one keeps running."""


class BirdControl:
    """One command per connection over BIRD's control socket (birdc's protocol)."""

    def __init__(self, path: str | os.PathLike[str], timeout: float = REPLY_TIMEOUT) -> None:
        self.path = str(path)
        self.timeout = timeout

    def command(self, text: str) -> list[tuple[int, str]]:
        """Send one command; return the reply as (code, text) lines. BirdUnavailable when no BIRD answers."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(self.timeout)
                sock.connect(self.path)
                reader = sock.makefile("r", encoding="utf-8", errors="replace")
                hello = self._reply(reader)
                if not hello or hello[-1][0] != CODE_READY:
                    raise BirdUnavailable(f"unexpected greeting on {self.path}: {hello!r}")
                sock.sendall(text.encode() + b"\n")
                return self._reply(reader)
        except OSError as exc:
            raise BirdUnavailable(f"BIRD control socket {self.path}: {exc.strerror or exc}") from exc

    @staticmethod
    def _reply(reader: Any) -> list[tuple[int, str]]:
        # "NNNN-text" continues, "NNNN text" ends the reply, " text" continues the last code.
        lines: list[tuple[int, str]] = []
        code = 0
        for raw in reader:
            line = raw.rstrip("\n")
            if line[:1] == " ":
                lines.append((code, line[1:]))
                continue
            if len(line) < 5 or not line[:4].isdigit():
                raise OSError(f"malformed reply line {line!r}")
            code = int(line[:4])
            lines.append((code, line[5:]))
            if line[4] == " ":
                return lines
        raise OSError("BIRD closed the connection mid-reply")

    def alive(self) -> bool:
        try:
            self.command("show status")
        except BirdUnavailable:
            return False
        return True


def parse_protocols(reply: list[tuple[int, str]]) -> list[dict[str, str]]:
    """`show protocols` rows as dicts: name, proto, table, state, since, info (e.g. "Established")."""
    rows = []
    for code, text in reply:
        if code != CODE_PROTOCOL_LIST:
            continue
        match = _PROTOCOL_LINE.match(text)
        if match:
            keys = ("name", "proto", "table", "state", "since", "info")
            rows.append(dict(zip(keys, match.groups(), strict=True)))
    return rows


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not: it died and waits for a parent to reap it)."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False  # it was our own child and has just been reaped
    except ChildProcessError:
        pass  # not our child (the usual case for an adopted BIRD)
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _check_errors(reply: list[tuple[int, str]]) -> None:
    errors = [text for code, text in reply if code >= 8000]
    if errors:
        raise BirdConfigError("; ".join(errors))


class Bird:
    """One BIRD daemon for one node: start, supervise (restart with backoff), reload, inspect, stop."""

    def __init__(
        self,
        netns_path: str | None,
        config_path: str | os.PathLike[str],
        control_socket: str | os.PathLike[str],
        pid_file: str | os.PathLike[str],
        *,
        log_path: str | os.PathLike[str] | None = None,
        bird_bin: str = BIRD_BIN,
        backoff: tuple[float, float] = (1.0, 30.0),
        on_restart: Callable[[int], None] | None = None,
    ) -> None:
        self.netns_path = netns_path
        self.config_path = Path(config_path)
        if len(os.fsencode(control_socket)) > SUN_PATH_MAX:
            raise BirdError(f"control socket path longer than {SUN_PATH_MAX} bytes: {control_socket}")
        self.control = BirdControl(control_socket)
        self.pid_file = Path(pid_file)
        self.log_path = Path(log_path) if log_path else self.config_path.with_suffix(".log")
        self.bird_bin = bird_bin
        self.backoff = backoff
        self.on_restart = on_restart
        self.restarts = 0  # how often the supervisor had to start BIRD again
        self.last_error = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._adopted_pid: int | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- configuration -------------------------------------------------------------------

    def _write_temp(self, text: str) -> Path:
        # Same directory as the live file: the rename into place is atomic (one file system).
        self.config_path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{self.config_path.name}.", suffix=".tmp", dir=self.config_path.parent)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        return Path(name)

    def check_config(self, text: str) -> None:
        """Validate `text` without applying it: `configure check` on the running BIRD, or `bird -p`."""
        tmp = self._write_temp(text)
        try:
            self._check_file(tmp)
        finally:
            tmp.unlink(missing_ok=True)

    def _check_file(self, path: Path) -> None:
        if self.control.alive():
            reply = self.control.command(f'configure check "{path}"')
            _check_errors(reply)
            if not any(code == CODE_CONFIG_OK for code, _ in reply):
                raise BirdConfigError(f"configure check: unexpected reply {reply!r}")
            return
        proc = subprocess.run([self.bird_bin, "-p", "-c", str(path)], capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise BirdConfigError((proc.stderr or proc.stdout).strip() or f"bird -p exited {proc.returncode}")

    def current_config(self) -> str | None:
        try:
            return self.config_path.read_text()
        except FileNotFoundError:
            return None

    def reload(self, text: str) -> bool:
        """Apply config `text` atomically; False when it is what BIRD already runs.

        Write a temp file beside the live one, `configure check` it, rename it into place, then
        `configure`. A config BIRD refuses raises BirdConfigError and changes nothing: the live
        file and the running config stay as they were. BirdUnavailable when BIRD is not running
        (the new file is then in place and the next start uses it).
        """
        with self._lock:
            if self.current_config() == text and self.control.alive():
                return False
            self._install_checked(text)
            reply = self.control.command("configure")
            _check_errors(reply)
            codes = {code for code, _ in reply}
            if not codes & {CODE_RECONFIGURED, CODE_RECONFIG_IN_PROGRESS, CODE_RECONFIG_QUEUED, CODE_NOTHING_TO_DO}:
                raise BirdError(f"configure: unexpected reply {reply!r}")
            return True

    def _install_checked(self, text: str) -> None:
        """Put `text` at config_path only once BIRD's own parser accepts it (`configure check`
        of a temporary beside it, then one rename): the file BIRD reads is never invalid."""
        tmp = self._write_temp(text)
        try:
            self._check_file(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, self.config_path)

    # --- the process -------------------------------------------------------------------

    def start(self, text: str) -> None:
        """Write (after validating) config `text`, then start BIRD and its supervisor.

        A BIRD already answering on the control socket (left running by a previous agent) is
        adopted and reloaded with `text` instead: its routes and sessions are never interrupted.
        """
        if self._thread is not None:
            raise BirdError("BIRD is already started")
        self._stopping.clear()
        pid = self._running_pid()
        if pid is not None and self.control.alive():
            log.info("adopting the running BIRD (pid %d)", pid)
            self._adopted_pid = pid
            self.reload(text)
        else:
            self._install_checked(text)
            self._spawn()
        self._thread = threading.Thread(target=self._supervise, name="bird-supervisor", daemon=True)
        self._thread.start()

    def _running_pid(self) -> int | None:
        """The pid in the pid file, if that process is alive and is a BIRD (pids get reused)."""
        try:
            pid = int(self.pid_file.read_text().strip())
            comm = Path(f"/proc/{pid}/comm").read_text().strip()
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return None
        if comm != Path(self.bird_bin).name[:15] or not _alive(pid):
            return None
        return pid

    def _spawn(self) -> None:
        argv = [self.bird_bin, "-f", "-R", "-c", str(self.config_path), "-s", self.control.path,
                "-P", str(self.pid_file)]
        # The spawning thread enters the node's namespace; the child inherits it (setns is per thread).
        where: AbstractContextManager[None] = entered(self.netns_path) if self.netns_path else nullcontext()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as logfile, where:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=logfile, stderr=logfile, start_new_session=True
            )
        log.info("started BIRD (pid %d): %s", self._proc.pid, " ".join(argv))

    @property
    def pid(self) -> int | None:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc.pid
        return self._adopted_pid

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the control socket answers; BirdUnavailable after `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.control.alive():
                return
            time.sleep(0.05)
        raise BirdUnavailable(f"BIRD did not answer on {self.control.path} within {timeout:g} s")

    def _wait_exit(self) -> int | None:
        """Block until the BIRD we supervise exits (or stop() is called); its exit status."""
        if self._proc is not None:
            while not self._stopping.is_set():
                try:
                    return self._proc.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
            return None
        pid = self._adopted_pid
        while pid is not None and not self._stopping.wait(0.5):
            if not _alive(pid):
                self._adopted_pid = None
                return -1
        return None

    def _supervise(self) -> None:
        delay = self.backoff[0]
        while not self._stopping.is_set():
            began = time.monotonic()
            status = self._wait_exit()
            if self._stopping.is_set():
                return
            self.last_error = f"BIRD exited with status {status}"
            log.warning("%s; restarting in %.1f s", self.last_error, delay)
            if time.monotonic() - began > 60:
                delay = self.backoff[0]  # it ran for a while: a fresh failure, not a crash loop
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, self.backoff[1])
            try:
                self._spawn()
            except OSError as exc:
                self.last_error = f"cannot start BIRD: {exc}"
                log.error("%s", self.last_error)
                continue
            self.restarts += 1
            if self.on_restart is not None:
                self.on_restart(self.restarts)

    def detach(self, timeout: float = 10.0) -> None:
        """Stop supervising but leave BIRD running (an agent exiting to be replaced: the next one adopts it)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._proc = None
        self._adopted_pid = None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop supervising and end BIRD (SIGTERM, then SIGKILL). Kernel routes stay (`persist`)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        pid = self.pid
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            if self._proc is None:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
            if self._proc is not None:
                self._proc.wait(5)
        self._proc = None
        self._adopted_pid = None

    # --- state -------------------------------------------------------------------------

    def protocols(self) -> list[dict[str, str]]:
        """`show protocols`: [{name, proto, table, state, since, info}]; BirdUnavailable when BIRD is down."""
        return parse_protocols(self.control.command("show protocols"))

    def sessions(self) -> list[dict[str, str]]:
        """Only the BGP rows of protocols() (what `pycni cluster status` shows)."""
        return [row for row in self.protocols() if row["proto"] == "BGP"]
