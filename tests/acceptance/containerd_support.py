"""A private containerd for the CRI acceptance test: images, daemon lifecycle, CRI client (no tests here).

The daemon is the machine's containerd (Debian 1.6) with runc, started with its own root, state,
sockets, CNI dirs and cgroup parent, all under one temp dir, so it never meets another containerd
and everything it leaves is found and removed by id:

- It runs inside a fake host network namespace, so the bridge, veths and firewall rules its CNI
  plugins create (libcni execs them as children: they inherit the netns) stay in that namespace.
  It enters the namespace with `nsenter --net`, not `ip netns exec`: the latter remounts /sys,
  which leaves the cgroup v1 hierarchies under /sys/fs/cgroup empty, and runc then cannot place
  any container.
- It runs in a mount namespace of its own (`unshare --mount --propagation slave`): the overlay
  rootfs, /dev/shm and pod-netns bind mounts it makes are invisible to the machine and disappear
  with the last process of that namespace (containerd and its shims). The empty files it creates
  under /run/netns are removed by RemovePodSandbox, or by `PrivateContainerd.close()`.
- No registry is reachable: one docker-archive image built here (static busybox plus applet
  symlinks) serves as both the sandbox ("pause") image and the workload image; `ctr images import`
  loads it. Its default command is `sleep`, killed by SIGKILL when the sandbox stops.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import platform
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as cri
from cri_api.v1 import api_pb2_grpc as cri_grpc

from tests.conftest import Netns

BUSYBOX = Path("/bin/busybox")  # Debian busybox-static
RUNC = shutil.which("runc", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/runc"
IMAGE = "localhost/pycni-busybox:test"
PAUSE_IMAGE = "localhost/pycni-pause:test"
APPLETS = ("sh", "sleep", "httpd", "wget", "timeout", "mkdir", "echo", "cat", "ip", "hostname")
SANDBOX_CMD = ["/bin/busybox", "sleep", "2147483647"]
DAEMON_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = Path("/sys/fs/cgroup")
RESULTS_CACHE = Path("/var/lib/cni/results")  # libcni's default cache dir; CRI 1.6 cannot move it


# --- image -----------------------------------------------------------------------------------


def _oci_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}.get(
        machine, machine
    )


def _layer_tar(busybox: Path) -> bytes:
    """A rootfs layer: /bin/busybox, applet symlinks, /tmp, minimal /etc. Deterministic bytes."""
    buf = io.BytesIO()

    def info(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
        entry = tarfile.TarInfo(name)
        entry.type, entry.mode, entry.size, entry.linkname = kind, mode, size, link
        entry.mtime, entry.uid, entry.gid = 0, 0, 0
        return entry

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for directory, mode in (("bin", 0o755), ("dev", 0o755), ("etc", 0o755), ("proc", 0o555),
                                ("root", 0o700), ("sys", 0o555), ("tmp", 0o1777)):
            tar.addfile(info(directory, tarfile.DIRTYPE, mode))
        data = busybox.read_bytes()
        tar.addfile(info("bin/busybox", tarfile.REGTYPE, 0o755, len(data)), io.BytesIO(data))
        for applet in APPLETS:
            tar.addfile(info(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"))
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"), ("etc/group", "root:x:0:\n")):
            raw = text.encode()
            tar.addfile(info(name, tarfile.REGTYPE, 0o644, len(raw)), io.BytesIO(raw))
    return buf.getvalue()


def build_image_archive(dest: Path, refs: Sequence[str], busybox: Path = BUSYBOX) -> Path:
    """Write a docker-archive tarball (`docker save` layout) of a one-layer busybox image tagged `refs`."""
    layer = _layer_tar(busybox)
    diff_id = hashlib.sha256(layer).hexdigest()
    config = {
        "architecture": _oci_arch(),
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": SANDBOX_CMD, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
        "history": [{"created_by": "pycni tests: static busybox"}],
    }
    config_raw = json.dumps(config, sort_keys=True).encode()
    config_name = hashlib.sha256(config_raw).hexdigest() + ".json"
    manifest = [{"Config": config_name, "RepoTags": list(refs), "Layers": [f"{diff_id}/layer.tar"]}]
    with tarfile.open(dest, "w") as tar:
        for name, raw in ((f"{diff_id}/layer.tar", layer), (config_name, config_raw),
                          ("manifest.json", json.dumps(manifest).encode())):
            entry = tarfile.TarInfo(name)
            entry.size, entry.mode = len(raw), 0o644
            tar.addfile(entry, io.BytesIO(raw))
    return dest


# --- plugin directory ----------------------------------------------------------------------------


def merged_plugin_dir(dest: Path, plugin_dirs: Sequence[Path]) -> Path:
    """One directory of symlinks: each name from the first of `plugin_dirs` that has it.

    containerd 1.x takes exactly one CNI `bin_dir` (a list, `bin_dirs`, came with 2.1); this is the
    lookup libcni would do over a search path, done once, so the plugin_origins record holds.
    """
    dest.mkdir(parents=True)
    for directory in plugin_dirs:
        for entry in sorted(Path(directory).iterdir()):
            target = dest / entry.name
            if entry.is_file() and os.access(entry, os.X_OK) and not target.exists():
                target.symlink_to(entry.resolve())
    return dest


# --- containerd config ---------------------------------------------------------------------------


def _q(value: str | Path) -> str:
    return json.dumps(str(value))  # a TOML basic string (paths need no escapes beyond JSON's)


def render_config(base: Path, sock: Path, bin_dir: Path, conf_dir: Path, sandbox_image: str) -> str:
    """containerd 1.6 config (version 2): private paths, CRI with runc on cgroupfs and the given CNI dirs."""
    cri_key = '[plugins."io.containerd.grpc.v1.cri"'
    return "\n".join([
        "version = 2",
        f"root = {_q(base / 'root')}",
        f"state = {_q(base / 'state')}",
        'disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",'
        ' "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",'
        ' "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]',
        "[grpc]",
        f"  address = {_q(sock)}",
        "[ttrpc]",
        f"  address = {_q(str(sock) + '.ttrpc')}",
        "[debug]",
        '  level = "info"',
        '[plugins."io.containerd.internal.v1.opt"]',
        f"  path = {_q(base / 'opt')}",
        f"{cri_key}]",
        f"  sandbox_image = {_q(sandbox_image)}",
        # Without it runc fails with "can't get final child's PID" on these machines.
        "  restrict_oom_score_adj = true",
        "  disable_apparmor = true",
        '  stream_server_address = "127.0.0.1"',
        '  stream_server_port = "0"',
        f"{cri_key}.containerd]",
        '    snapshotter = "overlayfs"',
        '    default_runtime_name = "runc"',
        f"{cri_key}.containerd.runtimes.runc]",
        '      runtime_type = "io.containerd.runc.v2"',
        f"{cri_key}.containerd.runtimes.runc.options]",
        "        SystemdCgroup = false",
        f"        BinaryName = {_q(RUNC)}",
        f"        Root = {_q(base / 'state' / 'runc')}",
        f"{cri_key}.cni]",
        f"    bin_dir = {_q(bin_dir)}",
        f"    conf_dir = {_q(conf_dir)}",
        "    max_conf_num = 1",
        "",
    ])


# --- the daemon ----------------------------------------------------------------------------------


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path` in this (the test's) mount namespace, deepest first."""
    found = []
    prefix = str(path).rstrip("/")
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            point = line.split()[4].replace("\\040", " ")
            if point == prefix or point.startswith(prefix + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)


def _mount_points(pid: int | str) -> set[str]:
    try:
        with open(f"/proc/{pid}/mountinfo") as fh:
            return {line.split()[4] for line in fh}
    except OSError:
        return set()


def _pod_netns_mounts(pid: int) -> set[str]:
    """Pod netns bind mounts that containerd (process `pid`) made in its own mount namespace.

    Its namespace is a slave of the machine's, so it also sees every netns the machine (other
    tests) mounts; only `cni-<uuid>` mounts (containerd's naming) that the machine does not
    see are its own.
    """
    ours = _mount_points(pid) - _mount_points("self")
    return {p for p in ours if p.startswith(("/run/netns/cni-", "/var/run/netns/cni-"))}


def _pids_with_arg(needle: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if needle.encode() in argv:
            pids.append(int(proc.name))
    return pids


class CRIError(AssertionError):
    pass


class PrivateContainerd:
    """containerd + CRI on a temp dir, inside `host` (a fake node namespace). Use as a context manager."""

    def __init__(
        self, host: Netns, plugin_dirs: Sequence[Path], conflist: dict, env: dict[str, str] | None = None
    ) -> None:
        # A short base: gRPC unix socket paths must stay under 108 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="pycni-ctrd-"))
        self.host = host
        self.sock = self.base / "containerd.sock"
        self.conf_dir = self.base / "net.d"
        self.bin_dir = merged_plugin_dir(self.base / "bin", plugin_dirs)
        self.log_path = self.base / "containerd.log"
        self.plugin_log = self.base / "pycni-plugins.log"
        self.cgroup_parent = f"/pycni-ctrd-{uuid.uuid4().hex[:10]}"
        self.env = {"PATH": DAEMON_PATH, "PYCNI_LOG_FILE": str(self.plugin_log), **(env or {})}
        self.conflist = conflist
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None
        self.runtime: Any = None
        self.images: Any = None
        self.netns_paths: set[str] = set()
        self.sandbox_ids: set[str] = set()

    # lifecycle

    def __enter__(self) -> PrivateContainerd:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:  # the log goes with the temp dir: show it with the failure
            print(f"--- containerd log (tail) ---\n{self.log_tail()}")
            entries = list(plugin_log(self.plugin_log))[-20:]
            print("--- pycni plugin log (tail) ---", *map(json.dumps, entries), sep="\n")
        self.close()

    def start(self, timeout: float = 60) -> None:
        self.conf_dir.mkdir()
        name = self.conflist.get("name", "pycni")
        (self.conf_dir / f"10-{name}.conflist").write_text(json.dumps(self.conflist, indent=2))
        config = self.base / "config.toml"
        config.write_text(render_config(self.base, self.sock, self.bin_dir, self.conf_dir, PAUSE_IMAGE))
        argv = ["unshare", "--mount", "--propagation", "slave",
                "nsenter", f"--net={self.host.path}", "containerd", "--config", str(config)]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, start_new_session=True)
        self.channel = grpc.insecure_channel(f"unix://{self.sock}")
        self.runtime = cri_grpc.RuntimeServiceStub(self.channel)
        self.images = cri_grpc.ImageServiceStub(self.channel)
        self._wait_ready(timeout)
        archive = build_image_archive(self.base / "image.tar", [IMAGE, PAUSE_IMAGE])
        self.ctr("images", "import", "--snapshotter", "overlayfs", str(archive))
        for ref in (IMAGE, PAUSE_IMAGE):
            self._wait_image(ref, timeout)

    def _alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if not self._alive():
                raise CRIError(f"containerd exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}")
            try:
                status = self.runtime.Status(cri.StatusRequest(), timeout=2)
                conditions = {c.type: (c.status, c.reason, c.message) for c in status.status.conditions}
                if all(c[0] for c in conditions.values()) and len(conditions) >= 2:
                    return
                last = repr(conditions)
            except grpc.RpcError as exc:
                last = f"{exc.code()}: {exc.details()}"
            time.sleep(0.2)
        raise CRIError(f"containerd CRI not ready after {timeout}s ({last}):\n{self.log_tail()}")

    def _wait_image(self, ref: str, timeout: float) -> None:
        # CRI learns about images imported by ctr from the ImageCreate event, asynchronously.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.images.ImageStatus(cri.ImageStatusRequest(image=cri.ImageSpec(image=ref)), timeout=5)
            if status.image.id:
                return
            time.sleep(0.1)
        raise CRIError(f"image {ref} imported but CRI does not list it:\n{self.log_tail()}")

    def ctr(self, *argv: str) -> str:
        proc = subprocess.run(["ctr", "--address", str(self.sock), "-n", "k8s.io", *argv],
                              capture_output=True, text=True, timeout=60)
        if proc.returncode != 0:
            raise CRIError(f"ctr {' '.join(argv)} failed: {proc.stderr}{proc.stdout}")
        return proc.stdout

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no containerd log)"
        return "\n".join(text[-lines:])

    def call(self, method: str, request: Any, timeout: float = 60) -> Any:
        """A RuntimeService RPC; a gRPC error fails the test with containerd's log tail."""
        try:
            return getattr(self.runtime, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            raise CRIError(f"CRI {method} failed: {exc.code()}: {exc.details()}\n"
                           f"--- containerd log ---\n{self.log_tail()}") from None

    # pods and containers

    def run_pod(self, name: str, port_mappings: Iterable[tuple[int, int]] = ()) -> tuple[str, Any]:
        """RunPodSandbox; returns (sandbox id, PodSandboxConfig). port_mappings: (container, host) TCP."""
        config = cri.PodSandboxConfig(
            metadata=cri.PodSandboxMetadata(name=name, uid=uuid.uuid4().hex, namespace="pycni-test", attempt=0),
            hostname=name,
            log_directory=str(self.base / "logs" / name),
            port_mappings=[cri.PortMapping(protocol=cri.TCP, container_port=c, host_port=h)
                           for c, h in port_mappings],
            linux=cri.LinuxPodSandboxConfig(cgroup_parent=self.cgroup_parent),
        )
        sandbox_id = self.call("RunPodSandbox", cri.RunPodSandboxRequest(config=config), timeout=120).pod_sandbox_id
        self.sandbox_ids.add(sandbox_id)
        self.netns_paths.add(self.pod_info(sandbox_id)["netns"])
        return sandbox_id, config

    def pod_status(self, sandbox_id: str) -> Any:
        return self.call("PodSandboxStatus", cri.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=True))

    def pod_info(self, sandbox_id: str) -> dict[str, Any]:
        """From the verbose status: the sandbox's pid and its network namespace path."""
        info = json.loads(self.pod_status(sandbox_id).info["info"])
        namespaces = info["runtimeSpec"]["linux"]["namespaces"]
        netns = next(ns.get("path", "") for ns in namespaces if ns["type"] == "network")
        return {"pid": int(info["pid"]), "netns": netns}

    def start_container(self, sandbox_id: str, sandbox_config: Any, name: str, command: Sequence[str]) -> str:
        config = cri.ContainerConfig(
            metadata=cri.ContainerMetadata(name=name, attempt=0),
            image=cri.ImageSpec(image=IMAGE),
            command=list(command),
            log_path=f"{name}.log",
            linux=cri.LinuxContainerConfig(),
        )
        request = cri.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config)
        container_id = self.call("CreateContainer", request).container_id
        self.call("StartContainer", cri.StartContainerRequest(container_id=container_id))
        return container_id

    def exec_sync(self, container_id: str, cmd: Sequence[str], timeout: int = 15) -> Any:
        request = cri.ExecSyncRequest(container_id=container_id, cmd=list(cmd), timeout=timeout)
        return self.call("ExecSync", request, timeout=timeout + 15)

    def stop_pod(self, sandbox_id: str) -> None:
        self.call("StopPodSandbox", cri.StopPodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=120)

    def remove_pod(self, sandbox_id: str) -> None:
        self.call("RemovePodSandbox", cri.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id), timeout=120)

    def list_pods(self) -> list[Any]:
        return list(self.call("ListPodSandbox", cri.ListPodSandboxRequest(), timeout=10).items)

    # teardown

    def close(self) -> None:
        """Remove every pod, stop the daemon, then kill/unmount/delete whatever is left, by id."""
        problems: list[str] = []
        self._collect_netns()
        if self._alive() and self.runtime is not None:
            with contextlib.suppress(Exception):
                for pod in self.list_pods():
                    self.sandbox_ids.add(pod.id)
                    for step in (self.stop_pod, self.remove_pod):
                        try:
                            step(pod.id)
                        except Exception as exc:  # noqa: BLE001 - teardown goes on regardless
                            problems.append(str(exc).splitlines()[0])
        self._collect_netns()  # a failed teardown leaves pod netns that no status reported
        if self.channel is not None:
            self.channel.close()
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=15)
        # Shims outlive containerd by design; they carry our socket address in argv.
        for pid in self._container_pids() + _pids_with_arg(str(self.sock)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self._wait_gone(timeout=10)
        self._remove_cgroups()
        for point in _mounts_under(self.base):  # normally none: containerd mounts in its own namespace
            subprocess.run(["umount", "-l", point], check=False, capture_output=True)
        for path in self.netns_paths:
            if path and Path(path).exists() and not _mounts_under(Path(path)):
                with contextlib.suppress(OSError):
                    os.unlink(path)
        for sandbox_id in self.sandbox_ids:
            for cached in RESULTS_CACHE.glob(f"*-{sandbox_id}-*"):
                cached.unlink(missing_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)
        if problems:
            print("containerd teardown:", *problems, sep="\n  ")

    def _collect_netns(self) -> None:
        """Remember the pod netns files containerd (or a shim: same mount namespace) has mounted."""
        pids = _pids_with_arg(str(self.sock))
        if self._alive() and self.proc is not None:
            pids.append(self.proc.pid)
        for pid in pids:
            self.netns_paths.update(_pod_netns_mounts(pid))

    def _cgroup_dirs(self) -> list[Path]:
        rel = self.cgroup_parent.lstrip("/")
        return [d / rel for d in CGROUP_ROOT.iterdir() if (d / rel).is_dir()] if CGROUP_ROOT.is_dir() else []

    def _container_pids(self) -> list[int]:
        pids: set[int] = set()
        for top in self._cgroup_dirs():
            for procs in top.rglob("cgroup.procs"):
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(p) for p in procs.read_text().split())
        return sorted(pids)

    def _wait_gone(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and (self._container_pids() or _pids_with_arg(str(self.sock))):
            time.sleep(0.1)

    def _remove_cgroups(self) -> None:
        for top in self._cgroup_dirs():
            for directory in sorted((p for p in [top, *top.rglob("*")] if p.is_dir()),
                                    key=lambda p: len(p.parts), reverse=True):
                with contextlib.suppress(OSError):
                    directory.rmdir()

    def leftovers(self) -> dict[str, list[str]]:
        """What this daemon left on the machine after close() (for the test's final assertion)."""
        return {
            "processes": [str(p) for p in self._container_pids() + _pids_with_arg(str(self.sock))],
            "cgroups": [str(d) for d in self._cgroup_dirs()],
            "mounts": _mounts_under(self.base),
            "netns files": [p for p in self.netns_paths if p and Path(p).exists()],
            "base dir": [str(self.base)] if self.base.exists() else [],
        }


def nsenter_net(pid: int, *argv: str) -> subprocess.CompletedProcess[str]:
    """Run a host tool in the network namespace of process `pid` (a pod sandbox)."""
    return subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], capture_output=True, text=True, timeout=30)


def wait_for(probe, tries: int = 40, pause: float = 0.25) -> Any:
    """Call `probe()` until it returns a truthy value (a readiness wait, not a timed assertion)."""
    result = None
    for _ in range(tries):
        result = probe()
        if result:
            return result
        time.sleep(pause)
    return result


def plugin_log(path: Path) -> Iterator[dict[str, Any]]:
    if path.exists():
        for line in path.read_text().splitlines():
            with contextlib.suppress(ValueError):
                yield json.loads(line)
