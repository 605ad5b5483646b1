"""Shared fixtures: real network namespaces with unique names, subnets free on this machine.

Integration tests never touch the machine's own interfaces: a plugin under test runs inside a
fake host namespace (`host_netns`), and pods are further namespaces (`netns_factory`).
Every namespace created here is deleted at teardown, also when the test fails.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
GO_PLUGINS = Path("/usr/lib/cni")
# RFC 2544 benchmarking space: never routed on a real network, so test addresses stay local.
TEST_V4_POOL = ipaddress.ip_network("198.18.0.0/15")
TEST_V6_POOL = ipaddress.ip_network("fd5c:11a0::/32")


@dataclass(frozen=True)
class Netns:
    name: str

    @property
    def path(self) -> str:
        return f"/run/netns/{self.name}"

    def run(self, *argv: str, check: bool = True, **kwargs: object) -> subprocess.CompletedProcess[str]:
        """Run a command inside this namespace (test tooling only; the product never shells out)."""
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], check=check, capture_output=True, text=True, **kwargs
        )  # type: ignore[call-overload]

    def ip_json(self, *argv: str) -> list[dict]:
        out = subprocess.run(["ip", "-n", self.name, "-j", *argv], check=True, capture_output=True, text=True)
        return json.loads(out.stdout or "[]")


def _add_netns(prefix: str) -> Netns:
    ns = Netns(f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "up"], check=True)
    return ns


def _del_netns(ns: Netns) -> None:
    subprocess.run(["ip", "netns", "del", ns.name], check=False, capture_output=True)


@pytest.fixture
def netns_factory() -> Iterator:
    """Call it to get a fresh namespace; all of them are removed after the test."""
    created: list[Netns] = []

    def make(prefix: str = "pycni-t") -> Netns:
        ns = _add_netns(prefix)
        created.append(ns)
        return ns

    yield make
    for ns in reversed(created):
        _del_netns(ns)


@pytest.fixture
def host_netns(netns_factory) -> Netns:
    """A fake node: the namespace a plugin under test runs in, instead of the machine's own."""
    return netns_factory("pycni-host")


@pytest.fixture
def pod_netns(netns_factory) -> Netns:
    return netns_factory("pycni-pod")


def _machine_routes() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    routes = []
    for family in ("-4", "-6"):
        out = subprocess.run(["ip", family, "-j", "route", "show", "table", "all"], capture_output=True, text=True)
        for entry in json.loads(out.stdout or "[]"):
            dst = entry.get("dst", "")
            if dst and dst != "default":
                try:
                    routes.append(ipaddress.ip_network(dst, strict=False))
                except ValueError:
                    pass
    return routes


# Subnets handed out and not yet released: one test's subnets never overlap each other. Two
# random picks of the same /24 (1 in 512) once put a test's client link and its bridge on one
# subnet; the node then routed the DNATed SYN back out the client link, to the client's own
# address, and the first dial to a host port was refused (issue 15).
_HANDED_OUT: list = []


@pytest.fixture(autouse=True)
def _release_subnets() -> Iterator[None]:
    """Subnets a test takes are free again after it (higher-scoped fixtures' stay taken)."""
    mark = len(_HANDED_OUT)
    yield
    del _HANDED_OUT[mark:]


@pytest.fixture(autouse=True, scope="module")
def _release_module_subnets() -> Iterator[None]:
    """Subnets a module-scoped fixture takes are free again after its module: without this a
    whole run's topologies pile up until a /16 can no longer be found in the /15 pool."""
    mark = len(_HANDED_OUT)
    yield
    del _HANDED_OUT[mark:]


def free_subnet(version: int = 4, prefix: int | None = None):
    """A random subnet that overlaps no route this machine has (picked at run time) and no
    subnet handed out earlier in the same test."""
    pool = TEST_V4_POOL if version == 4 else TEST_V6_POOL
    prefix = prefix or (24 if version == 4 else 64)
    taken = [r for r in (*_machine_routes(), *_HANDED_OUT) if r.version == version]
    span = 2 ** (prefix - pool.prefixlen)
    for _ in range(200):
        offset = random.randrange(span) << (pool.max_prefixlen - prefix)
        subnet = ipaddress.ip_network((int(pool.network_address) + offset, prefix))
        if not any(subnet.overlaps(r) for r in taken):
            _HANDED_OUT.append(subnet)
            return subnet
    raise RuntimeError(f"no free IPv{version} /{prefix} in {pool}")


@pytest.fixture(scope="session", autouse=True)
def _require_root(request) -> None:
    # Integration tests need root and are never skipped silently.
    wants_root = any(
        part in str(item.fspath) for item in request.session.items for part in ("integration", "acceptance")
    )
    if wants_root and os.geteuid() != 0:
        pytest.exit("integration tests need root (network namespaces); run as root", returncode=2)


@pytest.fixture(scope="session")
def installed_bin(tmp_path_factory) -> Path:
    """A CNI_BIN_DIR holding installed pycni executables, made by the real installer.

    PYCNI_TEST_BIN_DIR reuses an existing installation (CI installs once for all tests).
    """
    existing = os.environ.get("PYCNI_TEST_BIN_DIR")
    if existing:
        return Path(existing)
    base = tmp_path_factory.mktemp("install")
    bin_dir = base / "bin"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "install.py"), "--prefix", str(base / "prefix"),
         "--bin-dir", str(bin_dir), "--names", "both", "--python", sys.executable,
         # A socket of the test's own: an agent the machine may run never serves these executables.
         "--agent-socket", str(base / "agent.sock")],
        check=True,
    )
    return bin_dir


def bare_env(**cni: str) -> dict[str, str]:
    """The environment a runtime gives a plugin: only CNI_* variables and a minimal PATH."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    env.update({k: v for k, v in cni.items() if v is not None})
    return env


def run_plugin(
    exe: Path | str,
    env: Mapping[str, str],
    config: dict | bytes | None,
    netns: Netns | None = None,
) -> tuple[int, dict | None, str]:
    """Run a plugin executable as a runtime would (optionally inside a fake host namespace).

    Returns (exit code, parsed stdout or None when empty, stderr). Fails the test if stdout holds
    anything but one JSON document.
    """
    data = config if isinstance(config, bytes) else json.dumps(config or {}).encode()
    argv = [str(exe)]
    if netns is not None:
        argv = ["ip", "netns", "exec", netns.name, *argv]
    proc = subprocess.run(argv, input=data, env=dict(env), capture_output=True, timeout=120)
    out = proc.stdout.decode()
    parsed = json.loads(out) if out.strip() else None
    return proc.returncode, parsed, proc.stderr.decode()


def ipam_reservations(network_dir: Path) -> dict[str, str]:
    """The host-local reservation files in `network_dir`: {ip: contents} (lock/metadata skipped)."""
    found = {}
    for entry in network_dir.iterdir():
        try:
            ipaddress.ip_address(entry.name)
        except ValueError:
            continue
        found[entry.name] = entry.read_bytes().decode()
    return found
