"""The body of every installed executable: forward the invocation to pycni-agent, else run it here.

Runs on every plugin exec, so it imports only builtins that a `python3 -IS` interpreter has
already loaded (`posix`, `sys`), the `_socket` extension and the framing module: no `os` (2-3 ms),
no `json` (~7 ms). Everything heavier is imported on the fallback path only (fallback.py).

What is forwarded: the plugin name, the CNI_* and PYCNI_* variables and PATH (a runtime gives a
plugin nothing else that matters), and stdin. The agent runs the handler in this process's
network namespace and answers exit code + stdout + stderr, which are written back verbatim.

When the agent cannot be used (see fallback.py for the "agent" config key):
- no socket, or nothing listening (ENOENT, ECONNREFUSED, any connect error): run in-process;
- the connection drops before the agent said "started": the agent did nothing; run in-process;
- the connection drops after "started": an ADD may be half done, so ADD answers TryAgainLater
  (11) and the runtime's DEL cleans up; DEL, CHECK, STATUS, GC and VERSION run in-process.

The compiled shim (shim.c, what scripts/install.py installs when a C compiler is there) does the
fast path itself and, when the agent cannot serve, execs the script that calls `main` here with
`PLUGIN SOCKET --fallback started|not-started stdin|no-stdin REASON`: this process then goes
straight to the fallback, without connecting again. With `stdin`, fd 0 holds exactly the bytes
the compiled shim had read (it gives them back); with `no-stdin`, fd 0 is the runtime's, unread.
"""

import _socket
import posix
import sys

from . import protocol

FORWARD_PREFIXES = (b"CNI_", b"PYCNI_")
FORWARD_NAMES = (b"PATH",)
CHUNK = 1 << 16


def env_entries(environ: dict[bytes, bytes]) -> list[bytes]:
    return [k + b"=" + v for k, v in environ.items() if k.startswith(FORWARD_PREFIXES) or k in FORWARD_NAMES]


def _stdin_is_open() -> bool:
    # Checked before the socket exists: with fd 0 closed, the socket would become fd 0 and the
    # shim would read its own connection as stdin (and wait for itself).
    try:
        posix.fstat(0)
    except OSError:
        return False
    return True


def _read_stdin(verb: bytes, is_open: bool = True) -> bytes:
    if verb == b"VERSION":
        # As spec.plugin.read_version_input: VERSION never blocks on a terminal or fails on stdin.
        try:
            if not is_open or posix.isatty(0):
                return b""
            return _read_all(0)
        except OSError:
            return b""
    if not is_open:
        raise OSError(9, "Bad file descriptor")  # EBADF, as reading the closed fd 0 would
    return _read_all(0)


def _read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = posix.read(fd, CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def _write_all(fd: int, data: bytes) -> None:
    try:
        while data:
            data = data[posix.write(fd, data) :]
    except OSError:
        pass  # a closed stdout/stderr: nothing else can be done with the bytes


def _fallback(plugin: str, socket_path: str, data: "bytes | None", started: bool, reason: str) -> int:
    from .fallback import run_here

    return run_here(plugin, socket_path, data, started, reason)


def run(plugin: str, socket_path: str, exit_now: bool = True) -> int:
    """Serve one plugin exec through the agent (in-process when it cannot). With `exit_now`
    (the installed executables), an answer from the agent ends the process at once."""
    verb = posix.environ.get(b"CNI_COMMAND", b"")
    stdin_open = _stdin_is_open()
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        try:
            sock.connect(socket_path)
        except OSError as exc:
            return _fallback(plugin, socket_path, None, False, f"cannot connect: {exc.strerror or exc}")
        try:
            data = _read_stdin(verb, stdin_open)
        except OSError:
            # In-process dispatch reads stdin itself and reports its own IOFailure (code 5).
            return _fallback(plugin, socket_path, None, False, "stdin unreadable")
        frame = protocol.encode_request(plugin.encode(), env_entries(posix.environ), data)
        try:
            sock.sendall(frame)
        except OSError:
            pass  # the agent may have answered before closing: whatever it sent is read below
        received = b""
        while True:
            try:
                chunk = sock.recv(CHUNK)
            except OSError:
                chunk = b""
            if not chunk:
                break
            received += chunk
            try:
                started, reply = protocol.decode_replies(received)
            except protocol.ProtocolError:
                break
            if reply is not None:
                code, out, err = reply
                _write_all(1, out)
                _write_all(2, err)
                if exit_now:
                    # The answer is out (written unbuffered above) and nothing else is pending:
                    # skip interpreter finalization (module teardown, GC), ~2 ms of every call.
                    sock.close()
                    posix._exit(code)
                return code
        started = received[:1] == protocol.STARTED
        return _fallback(plugin, socket_path, data, started, "the agent closed the connection")
    finally:
        sock.close()


FALLBACK_FLAG = "--fallback"
FALLBACK_STATES = {"started": True, "not-started": False}
FALLBACK_STDIN = ("stdin", "no-stdin")
USAGE = "usage: PLUGIN SOCKET [--fallback started|not-started stdin|no-stdin REASON]\n"


def main(argv: list[str]) -> int:
    """The script form (`argv` without the program name): `PLUGIN SOCKET` serves one exec as the
    installed Python shims do; `... --fallback STATE STDIN REASON` is the compiled shim handing over."""
    if len(argv) == 2:
        return run(argv[0], argv[1])
    if len(argv) == 6 and argv[2] == FALLBACK_FLAG and argv[3] in FALLBACK_STATES and argv[4] in FALLBACK_STDIN:
        data: bytes | None = None
        if argv[4] == "stdin":
            try:
                data = _read_all(0)
            except OSError:
                data = None  # cannot happen with the compiled shim's memfd; the dispatcher reports it
        return _fallback(argv[0], argv[1], data, FALLBACK_STATES[argv[3]], argv[5])
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":  # pragma: no cover - manual use: python -m cni_plugin.agent.shim NAME SOCKET
    sys.exit(main(sys.argv[1:]))
