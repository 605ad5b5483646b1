"""Shared by the podman and buildah acceptance tests: a private podman/buildah world (no tests here).

`podman_world()` builds everything a test needs and removes it again, also when a test fails:

- a fake host network namespace. Every podman/buildah command runs as
  `nsenter --net=/run/netns/<host> podman ...`, so the bridges, host veths, sysctls and the
  nftables/iptables rules of the whole chain land there, never on the machine's own interfaces.
  `ip netns exec` cannot be used: it remounts /sys for the namespace, which hides the cgroup
  mounts from runc ("no cgroup mount found in mountinfo"), and it runs each command in a private
  mount namespace, so the container netns podman bind-mounts under /run/netns would vanish for the
  next podman command. `nsenter --net` switches only the network namespace; podman's own netns
  handling (bind mounts /run/netns/netns-<uuid>) is unchanged and removes them on teardown.
- configuration private to the test, passed through the environment: CONTAINERS_CONF
  (containers.conf: runc, cgroupfs, file events and file locks under a private tmp dir, ulimits
  inside the sandbox's hard limits, `[network]` CNI backend with pycni's directory first in
  `cni_plugin_dirs` and the Go reference second, a private `network_config_dir`, a
  `default_subnet` picked at run time), CONTAINERS_STORAGE_CONF (vfs graphroot/runroot in tmp),
  CONTAINERS_REGISTRIES_CONF (empty: no registry), TMPDIR/HOME in tmp. Nothing under
  /etc/containers or /var/lib/containers is read for configuration or written.
- an image from busybox-static (/bin/busybox + applet links, /www/index.html), `podman import`ed.
- a cgroup parent of its own (`--cgroup-parent`), removed at the end: podman's default
  `libpod_parent` would stay behind on the machine.

What podman itself puts outside the private dirs, and how it is cleaned: host-local's reservations
in /var/lib/cni/networks/<network> and libcni's result cache /var/lib/cni/results/<network>-*
(podman has no option to move either; network names are unique per test, and both are removed at
teardown; the tests assert that no reservation is left).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cni_plugin.firewall.render import attachment_tag
from tests.conftest import GO_PLUGINS, Netns, free_subnet

CNI_STATE = Path("/var/lib/cni")
CGROUP_ROOT = Path("/sys/fs/cgroup")
IMAGE = "localhost/pycni-busybox:test"
BUSYBOX = Path("/bin/busybox")  # busybox-static: runs in an image with no libc
COMMAND_TIMEOUT = 90
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INDEX_HTML = "pycni says hello\n"
# Machine paths a private podman/buildah must leave alone, compared before/after: (path, walk it).
# Not walked: the system's own storage and libpod tmp dir (a busy system podman changes those).
MACHINE_PATHS = (
    (Path("/etc/containers"), True), (Path("/etc/cni/net.d"), True),
    (Path("/var/lib/containers"), False), (Path("/var/lib/containers/cache"), True),
    (Path("/run/containers"), True), (Path("/run/libpod"), False), (Path("/dev/shm/libpod_lock"), False),
)


def unique(prefix: str) -> str:
    return f"{prefix}-{os.getpid() % 100000}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Network:
    """A podman network as created by `podman network create` (one IPv4 subnet, maybe an IPv6 one)."""

    name: str
    subnet: ipaddress.IPv4Network
    conflist: dict
    subnet6: ipaddress.IPv6Network | None = None

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        return self.subnet.network_address + 1

    @property
    def bridge(self) -> str:
        return self.conflist["plugins"][0]["bridge"]

    @property
    def ipam_dir(self) -> Path:
        """host-local's dataDir: podman's conflist sets none, so the default applies."""
        return CNI_STATE / "networks" / self.name

    def reservations(self) -> dict[str, str]:
        """{ip: owner record} of host-local's reservation files (lock/last_reserved skipped)."""
        found: dict[str, str] = {}
        if not self.ipam_dir.is_dir():
            return found
        for entry in self.ipam_dir.iterdir():
            with contextlib.suppress(ValueError):
                ipaddress.ip_address(entry.name)
                found[entry.name] = entry.read_text()
        return found

    def result_cache(self) -> list[Path]:
        """libcni's cached ADD results for this network (podman's libcni uses the default dir)."""
        return sorted((CNI_STATE / "results").glob(f"{self.name}-*"))


@dataclass
class PodmanWorld:
    base: Path
    host: Netns
    plugin_dirs: list[Path]
    env: dict[str, str]
    cgroup_parent: str
    networks: list[Network] = field(default_factory=list)
    machine_before: dict[str, tuple] = field(default_factory=dict)

    @property
    def net_dir(self) -> Path:
        return self.base / "networks"

    # --- commands --------------------------------------------------------------------------
    def on_host(self, *argv: str, check: bool = True, timeout: float = COMMAND_TIMEOUT,
                **kwargs) -> subprocess.CompletedProcess[str]:
        """Run a command in the fake host's network namespace (mounts stay the machine's)."""
        proc = subprocess.run(
            ["nsenter", f"--net={self.host.path}", *argv], env=self.env, capture_output=True, text=True,
            timeout=timeout, **kwargs,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"`{' '.join(argv)}` exited {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
            )
        return proc

    def podman(self, *args: str, check: bool = True,
               timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        if args and args[0] in ("run", "create"):
            # Our own cgroup parent, removed at teardown (podman's libpod_parent would stay).
            args = (args[0], f"--cgroup-parent={self.cgroup_parent}", *args[1:])
        return self.on_host("podman", *args, check=check, timeout=timeout)

    def buildah(self, *args: str, check: bool = True,
                timeout: float = COMMAND_TIMEOUT) -> subprocess.CompletedProcess[str]:
        return self.on_host("buildah", *args, check=check, timeout=timeout)

    def exec(self, container: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.podman("exec", container, *argv, check=check)

    def ping(self, container: str, address: object, check: bool = True) -> subprocess.CompletedProcess[str]:
        """One ping from inside a container (busybox ping: the image has no ping binary of its own)."""
        family = ["-6"] if ipaddress.ip_address(str(address)).version == 6 else []
        return self.exec(container, "busybox", "ping", *family, "-c1", "-W5", str(address), check=check)

    def run_detached(self, name: str, *args: str, command: Sequence[str] = ("sleep", "600")) -> str:
        """`podman run -d` of the busybox image; returns the container ID."""
        out = self.podman("run", "-d", "--name", name, *args, IMAGE, *command).stdout
        return out.strip().splitlines()[-1]

    def inspect(self, container: str) -> dict:
        return json.loads(self.podman("inspect", container).stdout)[0]

    def sandbox(self, container: str) -> str:
        """The netns path podman made for the container ('' when it has none, e.g. stopped)."""
        return self.inspect(container)["NetworkSettings"].get("SandboxKey") or ""

    def addresses(self, container: str, ifname: str, family: int = 4) -> list[ipaddress.IPv4Interface]:
        """Global addresses on `ifname` inside the container, as `ip addr` there shows them."""
        proc = self.exec(container, "ip", "-o", f"-{family}", "addr", "show", "dev", ifname, check=False)
        if proc.returncode != 0:
            return []
        word = "inet6" if family == 6 else "inet"
        found = []
        for line in proc.stdout.splitlines():
            match = re.search(rf"\b{word} (\S+)", line)
            if match and "scope link" not in line:
                found.append(ipaddress.ip_interface(match.group(1)))
        return found

    def only_address(self, container: str, ifname: str = "eth0", family: int = 4):
        found = self.addresses(container, ifname, family)
        assert len(found) == 1, f"{container} {ifname}: expected one IPv{family} address, `ip addr` shows {found}"
        return found[0]

    def traces(self, container_id: str, addresses: Iterable[object], ifnames: Sequence[str] = ("eth0",)) -> list[str]:
        """Firewall lines of the fake host that still name a container: its ID (Go portmap and
        firewall comments), its pycni attachment tag or one of its addresses."""
        patterns = [re.escape(w) for w in (container_id, *(attachment_tag(container_id, i) for i in ifnames))]
        for address in map(ipaddress.ip_address, map(str, addresses)):
            text = re.escape(str(address))
            # Whole addresses only: 198.18.0.3 must not match 198.18.0.31 (but does match 198.18.0.3:80).
            patterns.append(rf"(?<![\d.]){text}(?!\d|\.\d)" if address.version == 4 else rf"(?<![\w:]){text}(?![\w:])")
        found = re.compile("|".join(patterns))
        return [line for line in self.ruleset().splitlines() if found.search(line)]

    def links(self) -> dict[str, dict]:
        return {link["ifname"]: link for link in self.host.ip_json("-d", "link", "show")}

    def veths(self) -> list[str]:
        return sorted(name for name, link in self.links().items()
                      if (link.get("linkinfo") or {}).get("info_kind") == "veth")

    def ruleset(self) -> str:
        """Everything the fake host's firewall holds: nftables (pycni) and iptables-nft (Go chain)."""
        nft = self.on_host("nft", "list", "ruleset").stdout
        ipt = "".join(self.on_host(tool, check=False).stdout for tool in ("iptables-save", "ip6tables-save"))
        return nft + ipt

    # --- networks --------------------------------------------------------------------------
    def network_create(self, *extra: str, name: str | None = None, ipv6: bool = False) -> Network:
        """`podman network create --subnet <free /24>` (and a free /64 with ipv6): a network of a
        unique name, so its host-local directory under /var/lib/cni is this test's alone."""
        name = name or unique("pycni-pm")
        taken = {n.subnet for n in self.networks}
        while (subnet := free_subnet(4, 24)) in taken:
            pass
        args = ["network", "create", "--subnet", str(subnet)]
        subnet6 = None
        if ipv6:
            subnet6 = free_subnet(6, 64)
            args += ["--ipv6", "--subnet", str(subnet6)]
        # Tracked before it exists: teardown removes it even if `create` fails halfway.
        placeholder = Network(name, subnet, {}, subnet6)
        self.networks.append(placeholder)
        self.podman(*args, *extra, name)
        conflist = json.loads((self.net_dir / f"{name}.conflist").read_text())
        network = Network(name, subnet, conflist, subnet6)
        self.networks[self.networks.index(placeholder)] = network
        return network

    def forget_network(self, network: Network) -> None:
        """After a test removed the network itself: drop its host-local/libcni leftovers."""
        _remove_cni_state(network.name)

    def cleanup_test(self) -> None:
        """End of one test: no container, builder or network of it survives."""
        self.podman("rm", "-af", "-t", "0", check=False)
        self.buildah("rm", "-a", check=False)
        for network in self.networks:
            self.podman("network", "rm", "-f", network.name, check=False)
            _remove_cni_state(network.name)
        self.networks.clear()

    # --- the machine -----------------------------------------------------------------------
    def machine_state(self) -> dict[str, tuple]:
        state: dict[str, tuple] = {}
        for path, walk in MACHINE_PATHS:
            names = [str(path)]
            if walk and path.is_dir():
                names += [os.path.join(d, n) for d, dirs, files in os.walk(path) for n in (*dirs, *files)]
            entries = []
            for name in names:
                with contextlib.suppress(OSError):
                    st = os.lstat(name)
                    entries.append((name, st.st_mtime_ns, st.st_size))
            state[str(path)] = tuple(sorted(entries))
        return state

    def machine_changes(self) -> list[str]:
        """Machine-wide container configuration/state paths that changed since the world started."""
        now = self.machine_state()
        return [path for path, entries in now.items() if entries != self.machine_before.get(path)]


def _remove_cni_state(name: str) -> None:
    shutil.rmtree(CNI_STATE / "networks" / name, ignore_errors=True)
    for cached in (CNI_STATE / "results").glob(f"{name}-*"):
        with contextlib.suppress(OSError):
            cached.unlink()


def _containers_conf(base: Path, plugin_dirs: Sequence[Path]) -> str:
    dirs = ", ".join(json.dumps(str(d)) for d in plugin_dirs)
    return f"""\
# Written by tests/acceptance/podman_support.py; private to one test run.
[containers]
# podman's defaults (nofile 1048576, nproc 4194304) exceed the sandbox's hard limits.
default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]

[engine]
# No systemd here: cgroupfs and a file event log. Debian's crun refuses this cgroup layout: runc.
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "{base}/events.log"
runtime = "runc"
# File locks in our tmp_dir: the default SHM lock segment /dev/shm/libpod_lock is machine-wide.
lock_type = "file"
tmp_dir = "{base}/libpod-tmp"
image_copy_tmp_dir = "{base}/tmp"

[network]
network_backend = "cni"
cni_plugin_dirs = [{dirs}]
network_config_dir = "{base}/networks"
default_subnet = "{free_subnet(4, 24)}"
"""


def _storage_conf(base: Path) -> str:
    return f"""\
[storage]
driver = "vfs"
graphroot = "{base}/storage"
runroot = "{base}/run"
"""


def _build_rootfs_tar(base: Path) -> Path:
    rootfs = base / "rootfs"
    (rootfs / "bin").mkdir(parents=True)
    (rootfs / "www").mkdir()
    (rootfs / "tmp").mkdir()
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (rootfs / "bin" / applet).symlink_to("busybox")
    (rootfs / "www" / "index.html").write_text(INDEX_HTML)
    tar = base / "rootfs.tar"
    subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
    shutil.rmtree(rootfs)
    return tar


def _import_image(world: PodmanWorld, tar: Path) -> None:
    # podman import writes a blob-info cache to /var/lib/containers/cache whatever the storage
    # config says (containers/image's default for root; podman 4.3 has no option for it). So the
    # import runs in a private mount namespace with a tmpfs over /var/lib: the cache goes to the
    # tmpfs and disappears with the namespace; the image lands in our graphroot as usual.
    script = 'mount -t tmpfs -o size=16m pycni-import /var/lib && exec "$@"'
    proc = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         "podman", "import", "--change", 'CMD ["sh"]', str(tar), IMAGE],
        env=world.env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT,
    )
    if proc.returncode != 0:
        raise AssertionError(f"podman import failed: {proc.stderr}")


def _add_host_netns() -> Netns:
    host = Netns(unique("pycni-pmhost"))
    subprocess.run(["ip", "netns", "add", host.name], check=True)
    subprocess.run(["ip", "-n", host.name, "link", "set", "lo", "up"], check=True)
    return host


def _our_processes(base: Path) -> list[int]:
    """PIDs whose command line names our private dirs (conmon, a hung podman): ours alone."""
    marker = str(base).encode()
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    return pids


def _kill_ours(base: Path) -> None:
    """Normally there is none left after `podman rm -af`; a hung podman or conmon is killed."""
    for _ in range(50):
        pids = _our_processes(base)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def _unmount_under(base: Path) -> None:
    prefix = str(base) + "/"
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    for point in sorted((p for p in points if p.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def _remove_cgroup(parent: str) -> None:
    for hierarchy in CGROUP_ROOT.iterdir():
        top = hierarchy / parent.lstrip("/")
        if not top.is_dir():
            continue
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda item: len(item[0]), reverse=True):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


@contextlib.contextmanager
def podman_world(base: Path, pycni_bin: Path) -> Iterator[PodmanWorld]:
    """Everything private, torn down in `finally` (containers, builders, networks, image, storage,
    CNI state of our networks, cgroups, the fake host)."""
    base.mkdir(parents=True, exist_ok=True)
    for sub in ("networks", "tmp", "home", "libpod-tmp"):
        (base / sub).mkdir(exist_ok=True)
    plugin_dirs = [pycni_bin, GO_PLUGINS]
    (base / "containers.conf").write_text(_containers_conf(base, plugin_dirs))
    (base / "storage.conf").write_text(_storage_conf(base))
    (base / "registries.conf").write_text("")
    env = {
        "PATH": PATH,
        "HOME": str(base / "home"),
        "TMPDIR": str(base / "tmp"),
        "CONTAINERS_CONF": str(base / "containers.conf"),
        "CONTAINERS_STORAGE_CONF": str(base / "storage.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(base / "registries.conf"),
    }
    world = PodmanWorld(base, _add_host_netns(), plugin_dirs, env, cgroup_parent="/" + unique("pycni-podman"))
    world.machine_before = world.machine_state()
    try:
        _import_image(world, _build_rootfs_tar(base))
        yield world
    finally:
        world.cleanup_test()
        world.podman("rmi", "-a", "-f", check=False)
        _kill_ours(base)
        _unmount_under(base)
        _remove_cgroup(world.cgroup_parent)
        subprocess.run(["ip", "netns", "del", world.host.name], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def world_fixtures(tag: str):
    """The fixtures of a podman/buildah test module, as `world, pm = world_fixtures("podman")`:
    `world`, one private world per module (its tmp dir named after `tag`), and the per-test one
    (named by the assignment) that removes every container, builder and network the test made,
    also when it fails."""

    @pytest.fixture(scope="module")
    def world(tmp_path_factory, installed_bin) -> Iterator[PodmanWorld]:
        """The module's private podman/buildah world (see podman_world)."""
        with podman_world(tmp_path_factory.mktemp(tag), installed_bin) as made:
            yield made

    @pytest.fixture
    def per_test(world: PodmanWorld) -> Iterator[PodmanWorld]:
        """The module's world; every container, builder and network of the test is removed after it."""
        try:
            yield world
        finally:
            world.cleanup_test()

    return world, per_test
