"""The compiled agent shim (cni_plugin/agent/shim.c) against a fake agent, beside the Python shim.

Real processes, no root: the shim is compiled with the installer's own `compile_shim` into a tmp
dir; the "agent" is a unix-socket server in this process that records each request and answers as
the test says (a reply, "S" then a hang-up, garbage, nothing). Every behaviour test runs both the
compiled shim and the Python shim script the installer writes, and they must agree byte for byte:
the Python shim is the reference and stays the fallback.

The in-process fallback runs the checkout's code (the fallback script puts REPO first on sys.path),
with verbs and configs that need no network namespace: VERSION, and `"agent": "required"` or an
ADD the agent had started (both answered without running a handler).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import site
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import pytest

from cni_plugin import invoke
from cni_plugin.agent import protocol
from tests.multinode import prefix_of

REPO = Path(__file__).resolve().parents[2]
PLUGIN = "loopback"
VERSION = "0.1.0"


def _load(name: str, path: Path) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    loader.exec_module(module)
    return module


install = _load("pycni_install", REPO / "scripts" / "install.py")
CC = install.find_cc()
needs_cc = pytest.mark.skipif(CC is None, reason="no C compiler (cc or $CC): compiled shims are not built here")


# --- the fake agent ------------------------------------------------------------------------------


@dataclass
class Request:
    plugin: str
    env: dict[str, str]
    stdin: bytes


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(min(n - len(data), 1 << 20))
        if not chunk:
            raise EOFError(f"short request: {len(data)} of {n} bytes")
        data += chunk
    return data


Behaviour = Callable[[socket.socket, Request], None]


@dataclass
class FakeAgent:
    """Serves one connection at a time on `path` with `behaviour`; `requests` records them all."""

    path: Path
    behaviour: Behaviour
    requests: list[Request] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(self.path))
        self.server.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                header_len, stdin_len = protocol.decode_prefix(_recv_exactly(conn, protocol.PREFIX_LEN))
                plugin, env = protocol.decode_header(_recv_exactly(conn, header_len))
                request = Request(plugin, env, _recv_exactly(conn, stdin_len))
                self.requests.append(request)
                self.behaviour(conn, request)

    def close(self) -> None:
        self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()
        self.thread.join(timeout=10)
        self.path.unlink(missing_ok=True)


def reply(code: int, out: bytes, err: bytes = b"", started: bool = True) -> Behaviour:
    def behave(conn: socket.socket, _: Request) -> None:
        conn.sendall((protocol.STARTED if started else b"") + protocol.encode_reply(code, out, err))

    return behave


def send_then_close(data: bytes) -> Behaviour:
    def behave(conn: socket.socket, _: Request) -> None:
        if data:
            conn.sendall(data)

    return behave


# --- the shims under test -------------------------------------------------------------------------


@dataclass(frozen=True)
class Shims:
    sock: Path  # where the fake agent listens (one at a time)
    compiled: Path
    python: Path
    compiled_nowhere: Path  # the same, for a socket nobody ever listens on
    python_nowhere: Path


@pytest.fixture(scope="module")
def shims(tmp_path_factory: pytest.TempPathFactory) -> Shims:
    if CC is None:
        pytest.skip("no C compiler (cc or $CC): compiled shims are not built here")
    base = tmp_path_factory.mktemp("cshim")
    sock, nowhere = base / "agent.sock", base / "nobody" / "agent.sock"
    site_dirs = [str(REPO), *site.getsitepackages()]  # the checkout first: its cni_plugin is tested
    interpreter = Path(sys.executable)
    fallback = base / "libexec" / "pycni-shim"
    fallback.parent.mkdir()
    install.write_executable(fallback, install.fallback_text(interpreter, site_dirs))
    made = {}
    for name, path in (("", sock), ("_nowhere", nowhere)):
        compiled = base / f"compiled{name}"
        install.compile_shim(CC, REPO / "cni_plugin" / "agent" / "shim.c", compiled, PLUGIN, VERSION, str(path),
                             fallback)
        python = base / f"python{name}"
        install.write_executable(python, install.shim_text(interpreter, site_dirs, PLUGIN, VERSION, "agent", str(path)))
        made[f"compiled{name}"], made[f"python{name}"] = compiled, python
    return Shims(sock=sock, **made)


@pytest.fixture
def agent(shims: Shims) -> Iterator[Callable[[Behaviour], FakeAgent]]:
    started: list[FakeAgent] = []

    def start(behaviour: Behaviour) -> FakeAgent:
        fake = FakeAgent(shims.sock, behaviour)
        started.append(fake)
        return fake

    yield start
    for fake in started:
        fake.close()


BASE_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}


def run(exe: Path, verb: str, stdin: bytes | None = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    """Run a shim as a runtime would: bare environment, config on stdin (None: fd 0 closed)."""
    full = dict(BASE_ENV, CNI_COMMAND=verb, **env)
    if stdin is None:
        return subprocess.run([str(exe)], env=full, capture_output=True, timeout=60,
                              preexec_fn=lambda: os.close(0))
    return subprocess.run([str(exe)], input=stdin, env=full, capture_output=True, timeout=60)


def both(shims: Shims, verb: str, stdin: bytes | None = b"", nowhere: bool = False,
         **env: str) -> subprocess.CompletedProcess[bytes]:
    """The compiled and the Python shim on the same request; they must answer the same."""
    compiled = run(shims.compiled_nowhere if nowhere else shims.compiled, verb, stdin, **env)
    python = run(shims.python_nowhere if nowhere else shims.python, verb, stdin, **env)
    assert (compiled.returncode, compiled.stdout, compiled.stderr) == (python.returncode, python.stdout, python.stderr)
    return compiled


ADD_ENV = {"CNI_CONTAINERID": "ctr", "CNI_NETNS": "/run/netns/none", "CNI_IFNAME": "eth0", "CNI_PATH": "/x"}


def conf(version: str = "0.4.0", **extra: object) -> bytes:
    return json.dumps({"cniVersion": version, "name": "n", "type": PLUGIN, **extra}).encode()


# --- served by the agent ------------------------------------------------------------------------------


def test_reply_is_written_verbatim_with_the_agents_code(shims: Shims, agent) -> None:
    fake = agent(reply(7, b"out \0\xff bytes\n", b"err bytes\n"))
    done = both(shims, "ADD", conf(), **ADD_ENV)
    assert (done.returncode, done.stdout, done.stderr) == (7, b"out \0\xff bytes\n", b"err bytes\n")
    assert [r.plugin for r in fake.requests] == [PLUGIN, PLUGIN]
    assert fake.requests[0].stdin == conf()
    # An answer the agent gives before starting (an "R" without "S") is written just the same.
    fake.behaviour = reply(1, b'{"code": 5}\n', started=False)
    assert both(shims, "ADD", conf(), **ADD_ENV).stdout == b'{"code": 5}\n'


def test_large_stdin_stdout_and_stderr(shims: Shims, agent) -> None:
    big_in = conf(padding="i" * (3 << 19))  # 1.5 MiB
    out, err = bytes(range(256)) * (5 << 12), b"e" * (2 << 20)  # 5 MiB, 2 MiB

    def echo(conn: socket.socket, request: Request) -> None:
        conn.sendall(protocol.STARTED + protocol.encode_reply(0, request.stdin + out, err))

    fake = agent(echo)
    done = both(shims, "ADD", big_in, **ADD_ENV)
    assert done.returncode == 0
    assert done.stdout == big_in + out and done.stderr == err
    assert fake.requests[0].stdin == big_in


def test_only_cni_pycni_and_path_are_forwarded(shims: Shims, agent) -> None:
    fake = agent(reply(0, b""))
    env = {"CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a=b", "PYCNI_LOG": "x", "CNI_EMPTY": "",
           "CNIX": "no", "PATHS": "no", "PYTHONPATH": "/evil", "HOME": "/root", "cni_lower": "no"}
    both(shims, "DEL", conf(), **ADD_ENV, **env)
    expected = dict(BASE_ENV, CNI_COMMAND="DEL", **ADD_ENV, CNI_ARGS=env["CNI_ARGS"], PYCNI_LOG="x", CNI_EMPTY="")
    assert fake.requests[0].env == fake.requests[1].env == expected


def test_version_with_stdin_closed_or_a_terminal(shims: Shims, agent) -> None:
    fake = agent(reply(0, b"v\n"))
    assert both(shims, "VERSION", None).stdout == b"v\n"
    primary, secondary = os.openpty()  # a terminal on stdin: VERSION must not wait for it
    try:
        for exe in (shims.compiled, shims.python):
            done = subprocess.run([str(exe)], stdin=secondary, env=dict(BASE_ENV, CNI_COMMAND="VERSION"),
                                  capture_output=True, timeout=60)
            assert (done.returncode, done.stdout) == (0, b"v\n")
    finally:
        os.close(primary)
        os.close(secondary)
    assert [r.stdin for r in fake.requests] == [b""] * 4


# --- falling back -----------------------------------------------------------------------------------


def version_answer(version: str) -> dict:
    return {"cniVersion": version, "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}


def test_closed_before_started_runs_in_process_with_the_original_stdin(shims: Shims, agent) -> None:
    fake = agent(send_then_close(b""))
    done = both(shims, "VERSION", conf("0.3.1"))
    assert done.returncode == 0 and json.loads(done.stdout) == version_answer("0.3.1")
    # A 1 MiB config reaches the fallback whole: it reads the "agent" key and the cniVersion.
    big = conf("1.0.0", agent="required", padding="p" * (1 << 20))
    done = both(shims, "ADD", big, **ADD_ENV)
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert (error["cniVersion"], error["code"]) == ("1.0.0", 11)
    assert error["details"] == "the agent closed the connection"
    assert b"required by the configuration" in done.stderr
    assert fake.requests[-1].stdin == big


def test_closed_after_started_add_is_try_again_later(shims: Shims, agent) -> None:
    agent(send_then_close(protocol.STARTED))
    done = both(shims, "ADD", conf("1.1.0"), **ADD_ENV)
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert (error["cniVersion"], error["code"]) == ("1.1.0", 11)
    assert "stopped while serving ADD" in error["msg"]
    # VERSION (like DEL, CHECK, STATUS, GC) is safe to repeat: answered in-process.
    assert json.loads(both(shims, "VERSION", conf("0.4.0")).stdout) == version_answer("0.4.0")


def test_no_socket_runs_in_process(shims: Shims) -> None:
    done = both(shims, "VERSION", conf("0.2.0"), nowhere=True)
    assert json.loads(done.stdout) == version_answer("0.2.0")
    done = both(shims, "STATUS", conf("1.1.0", agent="required"), nowhere=True)
    assert done.returncode == 1 and json.loads(done.stdout)["code"] == 50
    assert json.loads(done.stdout)["details"] == "cannot connect: No such file or directory"
    # fd 0 closed and no agent: VERSION reads it as empty.
    assert json.loads(both(shims, "VERSION", None, nowhere=True).stdout) == version_answer("1.1.0")


@pytest.mark.parametrize(
    "garbage",
    [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"SS", protocol.encode_reply(0, b"x", b"") + b"trailing",
     protocol.REPLY + b"\0\0"],
    ids=["not-a-reply", "two-started", "trailing-bytes", "truncated-reply"],
)
def test_garbage_reply_runs_in_process(shims: Shims, agent, garbage: bytes) -> None:
    agent(send_then_close(garbage))
    done = both(shims, "VERSION", conf("0.3.0"))
    assert done.returncode == 0 and json.loads(done.stdout) == version_answer("0.3.0")
    # An ADD: in-process when nothing had started (here: the pod namespace does not exist, 8);
    # after an "S", TryAgainLater (11).
    error = json.loads(both(shims, "ADD", conf("1.1.0"), **ADD_ENV).stdout)
    if garbage.startswith(protocol.STARTED):
        assert error["code"] == 11 and "stopped while serving ADD" in error["msg"]
    else:
        assert error["code"] == 8, error


def test_a_missing_fallback_is_a_cni_error(shims: Shims, tmp_path: Path) -> None:
    exe = tmp_path / "shim"
    install.compile_shim(CC, REPO / "cni_plugin" / "agent" / "shim.c", exe, PLUGIN, VERSION,
                         str(tmp_path / "none.sock"), tmp_path / "gone" / "pycni-shim")
    done = run(exe, "VERSION", conf())
    assert done.returncode == 1
    assert json.loads(done.stdout)["code"] == 999
    assert b"cannot exec" in done.stderr and b"gone/pycni-shim" in done.stderr


def test_the_source_compiles_without_warnings(tmp_path: Path) -> None:
    if CC is None:
        pytest.skip("no C compiler")
    defines = [f"-D{k}={install.c_string(v)}" for k, v in
               {"PYCNI_PLUGIN": "p", "PYCNI_SOCKET": "/s", "PYCNI_FALLBACK": "/f", "PYCNI_MARKER": "# m"}.items()]
    done = subprocess.run([CC, *install.CFLAGS, "-Werror", "-Wpedantic", "-o", str(tmp_path / "s"),
                           str(REPO / "cni_plugin" / "agent" / "shim.c"), *defines], capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (0, "")


def test_c_string_escapes_what_c_would_misread() -> None:
    assert install.c_string('/a "b"\\c\n\u00e9') == '"/a \\042b\\042\\134c\\012\\303\\251"'


# --- the installer ----------------------------------------------------------------------------------

bench = _load("pycni_bench", REPO / "scripts" / "bench")
SOCKET = "/run/pycni-test/agent.sock"


@pytest.fixture
def prefix(tmp_path: Path) -> Path:
    """A PREFIX whose "virtualenv" interpreter is this one (--shims-only needs nothing else; run
    from the checkout, its queries import the checkout's cni_plugin)."""
    python = tmp_path / "prefix" / "venv" / "bin" / "python3"
    python.parent.mkdir(parents=True)
    python.symlink_to(sys.executable)
    return tmp_path / "prefix"


def installer(prefix: Path, bin_dir: Path, *args: str, cc: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if cc is not None:
        env["CC"] = cc
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "install.py"), "--shims-only", "--prefix", str(prefix),
         "--bin-dir", str(bin_dir), "--names", "both", "--agent-socket", SOCKET, *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )


def heads(bin_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes()[: install.HEAD_BYTES] for p in sorted(bin_dir.iterdir())}


@needs_cc
def test_install_compiled_recognised_and_uninstalled(prefix: Path, tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    done = installer(prefix, bin_dir, "--compiled-shim", "yes")
    assert done.returncode == 0, done.stderr
    assert "compiled agent shims" in done.stdout
    found = heads(bin_dir)
    assert len(found) == 14 and "pycni-host-local" in found and "bridge" in found
    for name, head in found.items():
        assert head.startswith(b"\x7fELF"), name
        assert install.is_ours(bin_dir / name)
        plugin = name.removeprefix("pycni-")
        assert f"# pycni-shim: {plugin} ".encode() in head  # one read of HEAD_BYTES finds it
    # Where the linker put the marker: right after the ELF and program headers, in the first KiB
    # or so; HEAD_BYTES (one page) leaves room for other toolchains.
    assert found["bridge"].index(b"# pycni-shim:") < 2048
    fallback = prefix / "libexec" / "pycni-shim"
    assert fallback.read_text().startswith(f"#!{prefix / 'venv' / 'bin' / 'python3'} -IS\n")
    assert os.access(fallback, os.X_OK)
    assert invoke.is_in_process("host-local", (str(bin_dir),))  # a reference-name install serves it in-process
    assert not invoke._is_pycni_host_local("bridge", (str(bin_dir),))
    assert bench.shim_kind(bin_dir) == f"agent {SOCKET}"
    assert prefix_of(bin_dir) == prefix  # how the integration tests find the session's install
    # Reinstalling replaces them (they are ours); uninstall removes them and only them.
    (bin_dir / "foreign").write_bytes(b"\x7fELF someone else's plugin")
    assert installer(prefix, bin_dir, "--compiled-shim", "yes").returncode == 0
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "install.py"), "--bin-dir", str(bin_dir),
                           "--uninstall"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "removed 14 pycni executables" in done.stdout
    assert [p.name for p in bin_dir.iterdir()] == ["foreign"]


@needs_cc
def test_install_auto_compiles_when_a_compiler_is_there(prefix: Path, tmp_path: Path) -> None:
    done = installer(prefix, tmp_path / "bin")
    assert done.returncode == 0, done.stderr
    assert all(head.startswith(b"\x7fELF") for head in heads(tmp_path / "bin").values())


def test_install_python_shims(prefix: Path, tmp_path: Path) -> None:
    for args, cc in ((("--compiled-shim", "no"), None), ((), "/nonexistent/cc")):
        bin_dir = tmp_path / f"bin-{len(args)}"
        done = installer(prefix, bin_dir, *args, cc=cc)
        assert done.returncode == 0, done.stderr
        found = heads(bin_dir)
        assert len(found) == 14
        for name, head in found.items():
            assert head.startswith(b"#!") and b"from cni_plugin.agent.shim import run" in head, name
            assert install.is_ours(bin_dir / name)
        assert bench.shim_kind(bin_dir) == f"agent {SOCKET}"
        assert prefix_of(bin_dir) == prefix
        if cc is not None:  # auto without a compiler says so, and carries on
            assert "no C compiler (/nonexistent/cc)" in done.stderr
    assert not (prefix / "libexec").exists()
    # Direct shims are never compiled.
    done = installer(prefix, tmp_path / "direct", "--shim", "direct")
    assert done.returncode == 0 and bench.shim_kind(tmp_path / "direct") == "direct"
    assert all(head.startswith(b"#!") for head in heads(tmp_path / "direct").values())


def test_install_compiled_yes_fails_clearly(prefix: Path, tmp_path: Path) -> None:
    done = installer(prefix, tmp_path / "bin", "--compiled-shim", "yes", cc="/nonexistent/cc")
    assert done.returncode != 0
    assert "--compiled-shim yes: no C compiler (/nonexistent/cc)" in done.stderr
    assert not (tmp_path / "bin").exists() or not list((tmp_path / "bin").iterdir())
    done = installer(prefix, tmp_path / "bin", "--compiled-shim", "yes", "--shim", "direct")
    assert done.returncode == 2 and "only agent shims" in done.stderr
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 4\n")
    broken.chmod(0o755)
    done = installer(prefix, tmp_path / "bin", "--compiled-shim", "yes", cc=str(broken))
    assert done.returncode == 1 and "cc: internal error" in done.stderr
    done = installer(prefix, tmp_path / "bin", cc=str(broken))  # auto: Python shims instead
    assert done.returncode == 0 and "writing Python agent shims" in done.stderr
    assert all(head.startswith(b"#!") for head in heads(tmp_path / "bin").values())
