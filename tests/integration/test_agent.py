"""pycni-agent end to end: installed agent shims, a real agent process, shims in a fake node.

One agent per module, started from the session's installation (its virtualenv) with the shims
re-written by `install.py --shims-only --shim agent --agent-socket <tmp>`. The agent itself runs
in a namespace of its own, so a handler that ran in the agent's namespace instead of the caller's
would wire that namespace (and the tests would see it), never the machine's.

Two shim directories: `on` points at the live socket, `off` at a socket nobody listens on, which
is the daemonless path (the same shim, falling back in-process). Outputs of both are compared.
They hold compiled shims (cni_plugin/agent/shim.c, what `make install` writes when cc is there);
`py_on` and `py_off` hold the Python shims, for the tests that must keep the fallback path working.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

import pytest

from cni_plugin.agent import caller, protocol
from tests.conftest import REPO, Netns, free_subnet
from tests.integration.bridge_support import bridge_conf, ip_files, links, masq_elements, veths
from tests.multinode import prefix_of

pytestmark = pytest.mark.integration

BASE_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


# --- fixtures ------------------------------------------------------------------------------------


def _write_shims(prefix: Path, bin_dir: Path, sock: Path, compiled: str = "yes") -> None:
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "install.py"), "--shims-only", "--prefix", str(prefix),
         "--bin-dir", str(bin_dir), "--names", "both", "--shim", "agent", "--agent-socket", str(sock),
         "--compiled-shim", compiled],
        check=True, capture_output=True,
    )


class Agent:
    """One pycni-agent process, run as an operator would: <prefix>/venv/bin/python -m cni_plugin.agent."""

    def __init__(self, python: Path, sock: Path, netns: str, log: Path) -> None:
        self.python, self.sock, self.netns, self.log_path = python, sock, netns, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, fault: str = "") -> None:
        env = {"PATH": os.environ.get("PATH", BASE_PATH)}
        if fault:
            env["PYCNI_AGENT_FAULT"] = fault
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.netns, str(self.python), "-m", "cni_plugin.agent",
                 "--socket", str(self.sock), "--log-requests"],
                stdout=log, stderr=log, env=env,
            )
        deadline = time.monotonic() + 90  # readiness wait (imports on a busy machine), not a timing check
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited with {self.proc.returncode}:\n{self.log()}")
            probe = socket.socket(socket.AF_UNIX)
            try:
                probe.connect(str(self.sock))
                return
            except OSError:
                time.sleep(0.05)
            finally:
                probe.close()
        raise AssertionError(f"agent never became ready:\n{self.log()}")

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def wait_dead(self) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ensure_running(self) -> None:
        if not self.alive():
            self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass(frozen=True)
class Setup:
    agent: Agent
    on: Path  # compiled shims forwarding to the live agent
    off: Path  # the same shims, pointing at a socket nobody listens on (daemonless)
    py_on: Path  # the Python shims, forwarding to the live agent
    py_off: Path  # and pointing nowhere
    prefix: Path


@pytest.fixture(scope="module")
def setup(installed_bin: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    prefix = prefix_of(installed_bin)
    base = tmp_path_factory.mktemp("agent")
    # The socket directory sits directly in /tmp (not under pytest's 0700 tree) so that the
    # peer-credential test can open it to an unprivileged user for a moment.
    run_dir = Path(tempfile.mkdtemp(prefix="pycni-agent-"))
    sock = run_dir / "agent.sock"
    _write_shims(prefix, base / "on", sock)
    _write_shims(prefix, base / "off", base / "nobody-listens" / "agent.sock")
    _write_shims(prefix, base / "py-on", sock, compiled="no")
    _write_shims(prefix, base / "py-off", base / "nobody-listens" / "agent.sock", compiled="no")
    ns = f"pycni-agent-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    agent = Agent(prefix / "venv" / "bin" / "python", sock, ns, base / "agent.log")
    try:
        agent.start()
        yield Setup(agent, base / "on", base / "off", base / "py-on", base / "py-off", prefix)
    finally:
        if agent.alive():
            try:
                agent.stop()
            except subprocess.TimeoutExpired:
                agent.kill()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture
def agent(setup: Setup) -> Iterator[Agent]:
    """The module's agent, running; a test that stops or breaks it gets a fresh one afterwards."""
    setup.agent.ensure_running()
    yield setup.agent
    setup.agent.ensure_running()


def run_raw(exe: Path, env: dict[str, str], data: bytes, netns: Netns) -> tuple[int, bytes, bytes]:
    proc = subprocess.run(["ip", "netns", "exec", netns.name, str(exe)], input=data, env=env,
                          capture_output=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


def cni_env(verb: str, bin_dir: Path, cid: str = "", netns: str = "", ifname: str = "", **more: str) -> dict:
    env = {"PATH": BASE_PATH, "CNI_COMMAND": verb, "CNI_PATH": str(bin_dir)}
    for key, value in (("CNI_CONTAINERID", cid), ("CNI_NETNS", netns), ("CNI_IFNAME", ifname)):
        if value:
            env[key] = value
    env.update(more)
    return env


def both(setup: Setup, plugin: str, verb: str, conf: dict | bytes, host: Netns, **env: str) -> tuple:
    """Run one step through the agent and daemonless; returns (agent's, daemonless's) (rc, stdout)."""
    data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
    results = []
    for bin_dir in (setup.on, setup.off):
        rc, out, _ = run_raw(bin_dir / plugin, cni_env(verb, bin_dir, **env), data, host)
        results.append((rc, out))
    return results[0], results[1]


def error_code(out: bytes) -> int:
    return json.loads(out)["code"]


# --- the socket ------------------------------------------------------------------------------------


def test_socket_is_root_only(agent: Agent) -> None:
    assert oct(agent.sock.stat().st_mode & 0o777) == oct(0o600)
    assert oct(agent.sock.parent.stat().st_mode & 0o777) == oct(0o700)
    assert agent.sock.stat().st_uid == 0


def _client_as(uid: int, path: Path, frame: bytes) -> bytes:
    """Connect as `uid` (a forked child drops root first) and return everything the agent sends."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            sock = socket.socket(socket.AF_UNIX)
            sock.settimeout(30)
            sock.connect(str(path))
            sock.sendall(frame)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
            os.write(write_fd, data)
        except BaseException as exc:  # noqa: BLE001 - report to the parent, never return into pytest
            os.write(write_fd, f"CHILD-ERROR {exc!r}".encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    chunks = []
    while chunk := os.read(read_fd, 65536):
        chunks.append(chunk)
    os.close(read_fd)
    os.waitpid(pid, 0)
    return b"".join(chunks)


def test_non_root_peer_is_refused(agent: Agent, host_netns: Netns, pod_netns: Netns) -> None:
    conf = json.dumps({"cniVersion": "1.1.0", "name": "lo-net", "type": "loopback"}).encode()
    env = [b"CNI_COMMAND=DEL", b"CNI_CONTAINERID=peer", b"CNI_IFNAME=lo", b"CNI_PATH=/x",
           f"CNI_NETNS={pod_netns.path}".encode()]
    frame = protocol.encode_request(b"loopback", env, conf)
    # Open the file modes for a moment: what is tested is the agent's own SO_PEERCRED check.
    directory = agent.sock.parent
    os.chmod(directory, 0o711)
    os.chmod(agent.sock, 0o666)
    try:
        raw = _client_as(65534, agent.sock, frame)
    finally:
        os.chmod(agent.sock, 0o600)
        os.chmod(directory, 0o700)
    started, reply = protocol.decode_replies(raw)
    assert not started, raw
    assert reply is not None
    code, out, _ = reply
    assert code == 1
    assert error_code(out) == 4
    assert "root only" in json.loads(out)["msg"]
    assert pod_netns.ip_json("link", "show", "lo")[0]["operstate"] != "DOWN"  # the DEL did not run
    # The same request as root is served.
    assert protocol.decode_replies(_client_as(0, agent.sock, frame))[1][0] == 0
    assert pod_netns.ip_json("link", "show", "lo")[0]["operstate"] == "DOWN"


def test_oversize_request_gets_a_cni_error(setup: Setup, agent: Agent, host_netns: Netns, pod_netns: Netns) -> None:
    pod_netns.run("ip", "link", "set", "lo", "down")
    conf = {"cniVersion": "1.1.0", "name": "lo-net", "type": "loopback", "padding": "x" * (5 << 20)}
    rc, out, _ = run_raw(setup.on / "loopback", cni_env("ADD", setup.on, "big", pod_netns.path, "lo"),
                         json.dumps(conf).encode(), host_netns)
    assert rc == 1
    assert error_code(out) == 5
    assert "too large" in json.loads(out)["msg"]
    assert pod_netns.ip_json("link", "show", "lo")[0]["operstate"] == "DOWN"  # refused, not run in-process
    assert agent.alive()


# --- identical results with and without the agent ------------------------------------------------------


def _with_shims(setup: Setup, shims: str) -> Setup:
    return setup if shims == "compiled" else replace(setup, on=setup.py_on, off=setup.py_off)


@pytest.mark.parametrize("shims", ["compiled", "python"])
def test_loopback_identical(setup: Setup, agent: Agent, host_netns: Netns, pod_netns: Netns, shims: str) -> None:
    setup = _with_shims(setup, shims)
    for version in ("0.3.1", "1.0.0", "1.1.0"):
        cid = f"lo-{version}"
        conf = {"cniVersion": version, "name": "lo-net", "type": "loopback"}
        ids = {"cid": cid, "netns": pod_netns.path, "ifname": "lo"}
        on, off = both(setup, "loopback", "VERSION", conf, host_netns)
        assert on == off and on[0] == 0
        on, off = both(setup, "loopback", "ADD", conf, host_netns, **ids)
        assert on == off and on[0] == 0, (on, off)
        checked = dict(conf, prevResult=json.loads(on[1]))
        on, off = both(setup, "loopback", "CHECK", checked, host_netns, **ids)
        assert on == off
        assert on[0] == (0 if version != "0.3.1" else 1)  # CHECK below 0.4.0 is code 1
        if version == "1.1.0":
            for verb in ("STATUS", "GC"):
                on, off = both(setup, "loopback", verb, conf, host_netns)
                assert on == off == (0, b"")
        on, off = both(setup, "loopback", "DEL", conf, host_netns, **ids)
        assert on == off == (0, b"")
    # Error paths: missing variables (4), own namespace (8), unknown verb (4).
    conf = {"cniVersion": "1.1.0", "name": "lo-net", "type": "loopback"}
    on, off = both(setup, "loopback", "ADD", conf, host_netns, cid="x")
    assert on == off and error_code(on[1]) == 4
    on, off = both(setup, "loopback", "ADD", conf, host_netns, cid="x", netns=host_netns.path, ifname="lo")
    assert on == off and error_code(on[1]) == 8
    on, off = both(setup, "loopback", "FROB", conf, host_netns)
    assert on == off and error_code(on[1]) == 4
    assert "loopback ADD lo-1.1.0 lo -> exit 0" in agent.log()


def test_host_local_identical(setup: Setup, agent: Agent, host_netns: Netns, tmp_path: Path) -> None:
    subnet = free_subnet(4, 28)
    net = f"hl-{uuid.uuid4().hex[:6]}"

    def conf(world: str, **extra: object) -> bytes:
        ipam = {"type": "host-local", "dataDir": str(tmp_path / world), "ranges": [[{"subnet": str(subnet)}]]}
        return json.dumps({"cniVersion": "1.1.0", "name": net, "type": "bridge", "ipam": dict(ipam, **extra)}).encode()

    def step(verb: str, cid: str = "", extra: dict | None = None, **env: str) -> tuple[int, bytes]:
        results = []
        for world, bin_dir in (("on", setup.on), ("off", setup.off)):
            ids = {"CNI_CONTAINERID": cid, "CNI_IFNAME": "eth0", "CNI_NETNS": "/run/netns/none"} if cid else {}
            e = cni_env(verb, bin_dir, **env)
            e.update(ids)
            data = conf(world, **(extra or {}))
            if extra and "prevResult" in extra:
                data = json.dumps(dict(json.loads(conf(world)), prevResult=extra["prevResult"])).encode()
            results.append(run_raw(bin_dir / "host-local", e, data, host_netns)[:2])
        assert results[0] == results[1], (verb, cid, results)
        return results[0]

    assert step("VERSION")[0] == 0
    assert step("STATUS") == (0, b"")
    first = step("ADD", "c1")
    assert first[0] == 0
    assert step("ADD", "c2")[0] == 0
    assert step("CHECK", "c1", {"prevResult": json.loads(first[1])}) == (0, b"")
    assert error_code(step("CHECK", "c9")[1]) == 3
    gc = {"cni.dev/valid-attachments": [{"containerID": "c1", "ifname": "eth0"}]}
    on, off = both(setup, "host-local", "GC", b"", host_netns)  # no config at all: the same decode error
    assert on == off and error_code(on[1]) == 6
    for world, bin_dir in (("on", setup.on), ("off", setup.off)):
        data = json.dumps(dict(json.loads(conf(world)), **gc)).encode()
        assert run_raw(bin_dir / "host-local", cni_env("GC", bin_dir), data, host_netns)[:2] == (0, b"")
    assert ip_files(tmp_path / "on", net) == ip_files(tmp_path / "off", net) != []
    taken = str(next(iter(subnet.hosts())) + 1)
    assert error_code(step("ADD", "c3", CNI_ARGS=f"IP={taken}")[1]) == 101  # held by c1
    assert step("DEL", "c1") == (0, b"")
    assert step("DEL", "c1") == (0, b"")
    assert ip_files(tmp_path / "on", net) == ip_files(tmp_path / "off", net) == []
    assert "host-local ADD c1 eth0 -> exit 0" in agent.log()


def _installer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("pycni_install", REPO / "scripts" / "install.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("shims", ["compiled", "python"])
def test_plugin_unknown_to_the_agent_runs_in_process(setup: Setup, agent: Agent, host_netns: Netns,
                                                     tmp_path: Path, shims: str) -> None:
    """A shim newer than the running agent (a plugin added by an upgrade) still works."""
    results = []
    for bin_dir, sock in ((setup.on, agent.sock), (setup.off, Path("/nonexistent/agent.sock"))):
        exe = tmp_path / bin_dir.name / "pycni-nosuch"
        exe.parent.mkdir()
        if shims == "compiled":
            install = _installer()
            install.compile_shim(install.find_cc(), REPO / "cni_plugin" / "agent" / "shim.c", exe, "nosuch", "0",
                                 str(sock), setup.prefix / install.FALLBACK_SCRIPT)
        else:
            text = (_with_shims(setup, shims).on / "pycni-loopback").read_text()
            assert "run('loopback', " in text
            exe.write_text(text.replace("run('loopback', ", "run('nosuch', ").replace(str(agent.sock), str(sock)))
            exe.chmod(0o755)
        results.append(run_raw(exe, cni_env("VERSION", bin_dir), b"{}", host_netns))
    assert results[0] == results[1]
    assert results[0][0] == 2 and b"no plugin named 'nosuch'" in results[0][2]
    assert "no plugin 'nosuch' here" in agent.log()


def _host_mac_masked(out: bytes, host: Netns, veth: str) -> bytes:
    """The ADD output with the host veth's MAC (kernel-random for every new veth) masked, after
    checking that it is the MAC of the veth that exists."""
    mac = links(host)[veth]["address"]
    reported = json.loads(out)["interfaces"][1]
    assert (reported["name"], reported["mac"]) == (veth, mac)
    assert out.count(mac.encode()) == 1
    return out.replace(mac.encode(), b"<host-veth-mac>")


def test_bridge_identical(setup: Setup, agent: Agent, host_netns: Netns, pod_netns: Netns, tmp_path: Path) -> None:
    subnet = free_subnet(4, 28)
    net, br, cid = f"br-{uuid.uuid4().hex[:6]}", f"agbr{uuid.uuid4().hex[:4]}", "ctr-identical"
    mac = "0a:58:c6:12:00:99"
    data_dir = tmp_path / "data"

    def conf(**extra: object) -> dict:
        return bridge_conf("1.1.0", net, br, data_dir, [subnet], isGateway=True, ipMasq=True, **extra)

    ids = {"cid": cid, "netns": pod_netns.path, "ifname": "eth0", "CNI_ARGS": f"IgnoreUnknown=1;MAC={mac}"}

    def run(world: str, verb: str, data: dict, **env: str) -> tuple[int, bytes]:
        bin_dir = setup.on if world == "on" else setup.off
        return run_raw(bin_dir / "bridge", cni_env(verb, bin_dir, **env), json.dumps(data).encode(), host_netns)[:2]

    def same(verb: str, data: dict, **env: str) -> tuple[int, bytes]:
        on, off = run("on", verb, data, **env), run("off", verb, data, **env)
        assert on == off, (verb, on, off)
        return on

    assert same("STATUS", conf()) == (0, b"")
    added = run("on", "ADD", conf(), **ids)
    assert added[0] == 0, added
    veth = json.loads(added[1])["interfaces"][1]["name"]
    masked_on = _host_mac_masked(added[1], host_netns, veth)
    # The agent ran it in the caller's namespace: the bridge is in the fake node, not in the agent's.
    assert br in links(host_netns)
    agent_links = subprocess.run(["ip", "-n", agent.netns, "-j", "link", "show"], capture_output=True, text=True,
                                 check=True).stdout
    assert br not in {link["ifname"] for link in json.loads(agent_links)}
    prev = json.loads(added[1])
    assert same("CHECK", conf(prevResult=prev), **ids) == (0, b"")
    # A second ADD of the same ifname into the same pod fails the same way on both paths (104).
    assert error_code(same("ADD", conf(), **{**ids, "cid": "ctr-other"})[1]) == 104
    gc = {"cni.dev/valid-attachments": [{"containerID": cid, "ifname": "eth0"}]}
    assert same("GC", conf(**gc)) == (0, b"")
    assert masq_elements(host_netns) != [] and len(ip_files(data_dir, net)) == 1
    assert run("on", "DEL", conf(prevResult=prev), **ids) == (0, b"")
    assert veth not in links(host_netns) and masq_elements(host_netns) == []

    # The same ADD daemonless, from the same state (a fresh store: the round-robin cursor moved).
    shutil.rmtree(data_dir / net)
    added_off = run("off", "ADD", conf(), **ids)
    assert added_off[0] == 0, added_off
    assert _host_mac_masked(added_off[1], host_netns, veth) == masked_on
    assert run("off", "DEL", conf(prevResult=prev), **ids) == (0, b"")
    assert same("DEL", conf(), **ids) == (0, b"")  # idempotent, no prevResult
    assert error_code(same("ADD", conf(mtu="big"), **ids)[1]) == 7
    assert veths(host_netns) == [] and ip_files(data_dir, net) == [] and masq_elements(host_netns) == []
    assert f"bridge ADD {cid} eth0 -> exit 0" in agent.log()


# --- the "agent" key ------------------------------------------------------------------------------------


def test_agent_required(setup: Setup, agent: Agent, host_netns: Netns, pod_netns: Netns) -> None:
    conf = {"cniVersion": "1.1.0", "name": "lo-net", "type": "loopback", "agent": "required"}
    ids = {"cid": "req", "netns": pod_netns.path, "ifname": "lo"}
    data = json.dumps(conf).encode()
    assert run_raw(setup.on / "loopback", cni_env("STATUS", setup.on), data, host_netns)[:2] == (0, b"")
    rc, out, err = run_raw(setup.off / "loopback", cni_env("STATUS", setup.off), data, host_netns)
    assert rc == 1 and error_code(out) == 50 and b"required" in err
    pod_netns.run("ip", "link", "set", "lo", "down")
    rc, out, _ = run_raw(setup.off / "loopback", cni_env("ADD", setup.off, **ids), data, host_netns)
    assert rc == 1 and error_code(out) == 11
    assert pod_netns.ip_json("link", "show", "lo")[0]["operstate"] == "DOWN"  # not run in-process
    rc, out, _ = run_raw(setup.off / "loopback", cni_env("DEL", setup.off, **ids), data, host_netns)
    assert rc == 1 and error_code(out) == 11
    assert run_raw(setup.off / "loopback", cni_env("VERSION", setup.off), data, host_netns)[0] == 0
    rc, out, _ = run_raw(setup.on / "loopback", cni_env("ADD", setup.on, **ids), data, host_netns)
    assert rc == 0 and pod_netns.ip_json("link", "show", "lo")[0]["operstate"] != "DOWN"
    # Any other value is a config error, the same on both paths.
    on, off = both(setup, "loopback", "ADD", dict(conf, agent="yes"), host_netns, **ids)
    assert on == off and error_code(on[1]) == 7 and b"agent" in on[1]


# --- the agent dies -------------------------------------------------------------------------------------


def _bridge_world(tmp_path: Path, host: Netns) -> tuple[dict, str]:
    subnet = free_subnet(4, 28)
    net, br = f"kill-{uuid.uuid4().hex[:6]}", f"agbr{uuid.uuid4().hex[:4]}"
    return bridge_conf("1.1.0", net, br, tmp_path / "data", [subnet], isGateway=True, ipMasq=True), net


def _assert_clean(host: Netns, pod: Netns, tmp_path: Path, net: str) -> None:
    assert veths(host) == []
    assert "eth0" not in links(pod)
    assert ip_files(tmp_path / "data", net) == []
    assert masq_elements(host) == []


def test_killed_mid_add_then_del_and_restart_leave_nothing(
    setup: Setup, agent: Agent, host_netns: Netns, pod_netns: Netns, tmp_path: Path
) -> None:
    conf, net = _bridge_world(tmp_path, host_netns)
    data = json.dumps(conf).encode()
    ids = {"cid": "ctr-killed", "netns": pod_netns.path, "ifname": "eth0"}
    agent.stop()
    agent.start(fault="kill-after-ipam")
    rc, out, _ = run_raw(setup.on / "bridge", cni_env("ADD", setup.on, **ids), data, host_netns)
    assert agent.wait_dead() == -signal.SIGKILL
    assert rc == 1 and error_code(out) == 11, out
    # Half done, as the fault intends: the veth and the reservation exist.
    assert len(veths(host_netns)) == 1 and len(ip_files(tmp_path / "data", net)) == 1
    agent.start()  # restart; the stale socket of the killed agent is replaced
    rc, out, _ = run_raw(setup.on / "bridge", cni_env("DEL", setup.on, **ids), data, host_netns)
    assert (rc, out) == (0, b"")
    _assert_clean(host_netns, pod_netns, tmp_path, net)
    rc, out, _ = run_raw(setup.on / "bridge", cni_env("ADD", setup.on, **ids), data, host_netns)
    assert rc == 0, out
    assert run_raw(setup.on / "bridge", cni_env("DEL", setup.on, **ids), data, host_netns)[:2] == (0, b"")
    _assert_clean(host_netns, pod_netns, tmp_path, net)


def test_killed_before_start_add_runs_in_process(
    setup: Setup, agent: Agent, host_netns: Netns, pod_netns: Netns, tmp_path: Path
) -> None:
    conf, net = _bridge_world(tmp_path, host_netns)
    data = json.dumps(conf).encode()
    ids = {"cid": "ctr-early", "netns": pod_netns.path, "ifname": "eth0"}
    agent.stop()
    agent.start(fault="kill-before-start")
    rc, out, _ = run_raw(setup.on / "bridge", cni_env("ADD", setup.on, **ids), data, host_netns)
    assert agent.wait_dead() == -signal.SIGKILL
    assert rc == 0, out  # nothing had started: the shim ran the ADD itself
    assert json.loads(out)["interfaces"][2]["name"] == "eth0" and "eth0" in links(pod_netns)
    # DEL while the agent is still down: daemonless.
    assert run_raw(setup.on / "bridge", cni_env("DEL", setup.on, **ids), data, host_netns)[:2] == (0, b"")
    _assert_clean(host_netns, pod_netns, tmp_path, net)


def test_killed_during_del_falls_back(
    setup: Setup, agent: Agent, host_netns: Netns, pod_netns: Netns, tmp_path: Path
) -> None:
    conf, net = _bridge_world(tmp_path, host_netns)
    data = json.dumps(conf).encode()
    ids = {"cid": "ctr-del", "netns": pod_netns.path, "ifname": "eth0"}
    agent.stop()
    agent.start(fault="kill-after-start:DEL")
    rc, out, _ = run_raw(setup.on / "bridge", cni_env("ADD", setup.on, **ids), data, host_netns)
    assert rc == 0, out
    rc, out, _ = run_raw(setup.on / "bridge", cni_env("DEL", setup.on, **ids), data, host_netns)
    assert agent.wait_dead() == -signal.SIGKILL
    assert (rc, out) == (0, b"")
    _assert_clean(host_netns, pod_netns, tmp_path, net)


def test_kill_at_random_moments(setup: Setup, agent: Agent, host_netns: Netns, netns_factory, tmp_path: Path) -> None:
    conf, net = _bridge_world(tmp_path, host_netns)
    data = json.dumps(conf).encode()
    outcomes = []
    for i in range(4):
        pod = netns_factory("pycni-pod")
        ids = {"cid": f"ctr-rand-{i}", "netns": pod.path, "ifname": "eth0"}
        agent.ensure_running()
        shim = subprocess.Popen(["ip", "netns", "exec", host_netns.name, str(setup.on / "bridge")],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                env=cni_env("ADD", setup.on, **ids))
        shim.stdin.write(data)  # type: ignore[union-attr]
        shim.stdin.close()  # type: ignore[union-attr]
        time.sleep(random.uniform(0.0, 0.5))
        agent.kill()
        out = shim.stdout.read()  # type: ignore[union-attr]
        rc = shim.wait(timeout=120)
        assert rc == 0 or error_code(out) == 11, out  # done (by the agent or in-process), or "try again"
        outcomes.append(rc)
        agent.start()
        assert run_raw(setup.on / "bridge", cni_env("DEL", setup.on, **ids), data, host_netns)[:2] == (0, b"")
        assert veths(host_netns) == [] and "eth0" not in links(pod)
        assert ip_files(tmp_path / "data", net) == [] and masq_elements(host_netns) == []
    print("outcomes (exit codes):", outcomes)


def test_sigterm_finishes_requests_and_removes_the_socket(
    setup: Setup, agent: Agent, host_netns: Netns, pod_netns: Netns, tmp_path: Path
) -> None:
    conf, net = _bridge_world(tmp_path, host_netns)
    ids = {"cid": "ctr-term", "netns": pod_netns.path, "ifname": "eth0"}
    shim = subprocess.Popen(["ip", "netns", "exec", host_netns.name, str(setup.on / "bridge")],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=cni_env("ADD", setup.on, **ids))
    shim.stdin.write(json.dumps(conf).encode())  # type: ignore[union-attr]
    shim.stdin.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30  # SIGTERM while the ADD is in flight (or just after it)
    while not veths(host_netns) and shim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert agent.stop() == 0
    assert not agent.sock.exists()
    out = shim.stdout.read()  # type: ignore[union-attr]
    assert shim.wait(timeout=120) == 0, out  # served before the agent left, or in-process after
    assert run_raw(setup.on / "bridge", cni_env("DEL", setup.on, **ids), json.dumps(conf).encode(),
                   host_netns)[:2] == (0, b"")
    _assert_clean(host_netns, pod_netns, tmp_path, net)


# --- concurrency --------------------------------------------------------------------------------------


def test_many_shims_at_once(setup: Setup, agent: Agent, host_netns: Netns, netns_factory, tmp_path: Path) -> None:
    conf, net = _bridge_world(tmp_path, host_netns)
    data = json.dumps(conf).encode()
    pods = [netns_factory("pycni-pod") for _ in range(10)]

    def launch(verb: str) -> list[tuple[int, bytes]]:
        procs = [
            subprocess.Popen(["ip", "netns", "exec", host_netns.name, str(setup.on / "bridge")],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env=cni_env(verb, setup.on, f"ctr-many-{i}", pod.path, "eth0"))
            for i, pod in enumerate(pods)
        ]
        results = []
        for proc in procs:
            out, _ = proc.communicate(data, timeout=180)
            results.append((proc.returncode, out))
        return results

    added = launch("ADD")
    assert [rc for rc, _ in added] == [0] * len(pods), added
    addresses = {json.loads(out)["ips"][0]["address"] for _, out in added}
    assert len(addresses) == len(pods)
    assert len(veths(host_netns)) == len(pods) and len(ip_files(tmp_path / "data", net)) == len(pods)
    assert [rc for rc, _ in launch("DEL")] == [0] * len(pods)
    assert veths(host_netns) == [] and ip_files(tmp_path / "data", net) == [] and masq_elements(host_netns) == []
    assert agent.log().count("bridge ADD ctr-many-") >= len(pods)  # served by the agent


# --- finding the caller's namespace, on this kernel and as on older ones -------------------------------


@pytest.mark.parametrize("kernel", ["pidfd ioctls (Linux >= 6.11)", "pid + /proc (older kernels)"])
def test_caller_netns_names_the_peers_namespace(kernel: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 netns_factory) -> None:
    if kernel.startswith("pid +"):  # what an older kernel answers: ENOPROTOOPT, ENOTTY
        monkeypatch.setattr(caller, "SO_PEERPIDFD", 0x7FFF)
        monkeypatch.setattr(caller, "PIDFD_GET_NET_NAMESPACE", 0xFF7F)
    elsewhere = netns_factory("pycni-caller")
    path = str(tmp_path / "s")
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(path)
        server.listen(1)
        peer = subprocess.Popen(  # a client in another namespace that waits for an answer
            ["ip", "netns", "exec", elsewhere.name, sys.executable, "-c",
             "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.recv(1)", path])
        conn, _ = server.accept()
        with conn:
            pid, uid, _ = caller.peer_credentials(conn)
            assert (pid, uid) == (peer.pid, 0)
            fd = caller.caller_netns(conn, pid)
            target = os.open(elsewhere.path, os.O_RDONLY)
            try:
                assert caller.same_namespace(fd, target)
            finally:
                os.close(fd)
                os.close(target)
            conn.sendall(b"x")
            peer.wait(timeout=30)
            if kernel.startswith("pid +"):
                # The pid alone is no proof once the peer is gone (it could be reused): refused.
                with pytest.raises(caller.CallerUnknown):
                    caller.caller_netns(conn, pid)
