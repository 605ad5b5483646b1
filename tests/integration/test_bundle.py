"""The self-contained bundle on a node without python3, and its installer (make bundle, pycni-install).

Node roots: a debootstrap minbase Debian and a root holding only libc and ld.so (bundle_support).
The bundle is installed into the root by its own pycni-install, run inside the chroot; plugins run
exactly as a runtime runs them there: chroot'ed, in a fake node namespace, bare environment.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bundle_support import copy_as_build, in_root, overlay_root, session_bundle, session_roots, tree_state
from tests.conftest import bare_env, free_subnet, run_plugin

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    return session_bundle(tmp_path_factory)


@pytest.fixture(params=["debian", "libc"])
def node_root(request, bundle, tmp_path_factory, tmp_path) -> Iterator[Path]:
    """A python-less node root: debootstrap minbase, or only libc and ld.so (writable overlay)."""
    with overlay_root(session_roots(bundle, tmp_path_factory)[request.param], tmp_path) as root:
        yield root

PLUGINS = ("bandwidth", "bridge", "firewall", "host-local", "loopback", "portmap", "tuning")


def _glibc_key(version: str) -> tuple[int, ...]:
    return tuple(int(x) for x in version.split("."))


def test_bundle_needs_glibc_at_most_2_35_and_answers_every_name(bundle):
    """minikube's Ubuntu 22.04 has glibc 2.35: no ELF in the bundle may need a newer symbol."""
    glibc = (bundle / "GLIBC").read_text().strip()
    assert _glibc_key(glibc) <= (2, 35), glibc
    for name in [f"pycni-{p}" for p in PLUGINS] + list(PLUGINS) + ["pycni-agent", "pycni-install"]:
        assert os.readlink(bundle / name) == "pycni", name
    proc = subprocess.run([str(bundle / "pycni"), "--version"], capture_output=True, text=True, check=True)
    assert proc.stdout.startswith("pycni ")


def test_no_costly_runtime_hook_runs_before_each_plugin(bundle):
    """PyInstaller's inspect/multiprocessing/pkg_resources/setuptools hooks would run on every
    plugin exec (~180 ms together): scripts/bundle leaves them out."""
    readers = pytest.importorskip("PyInstaller.archive.readers")
    scripts = [name for name in readers.CArchiveReader(str(bundle / "pycni")).toc if name.startswith("pyi_rth_")]
    assert scripts == ["pyi_rth_pkgutil"]


def _install_in_root(root: Path, bundle: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    shutil.copytree(bundle, root / "tmp" / "pycni-bundle", symlinks=True, dirs_exist_ok=True)
    return in_root(root, ["/tmp/pycni-bundle/pycni-install", "--host-root", "/", *args], {})


def _bridge_conf(name: str, bridge: str, subnet: ipaddress.IPv4Network) -> dict:
    return {
        "cniVersion": "1.0.0", "name": name, "type": "pycni-bridge", "bridge": bridge,
        "isGateway": True, "ipMasq": True,
        "ipam": {"type": "pycni-host-local", "ranges": [[{"subnet": str(subnet)}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }


def _nft_ruleset(host) -> str:
    return host.run("nft", "-j", "list", "ruleset").stdout


def test_version_add_check_del_in_a_root_without_python(bundle, node_root, host_netns, pod_netns):
    """Installed by its own installer into a python-less root; VERSION, then a real pod's ADD
    (veth, address, bridge, masquerade through the bundled nft), CHECK and DEL, all chroot'ed."""
    proc = _install_in_root(node_root, bundle)
    assert proc.returncode == 0, proc.stderr.decode()
    bin_dir = node_root / "opt" / "cni" / "bin"
    assert (bin_dir / "pycni-bridge").is_symlink()
    assert not any(node_root.glob("usr/bin/python*"))

    version = in_root(node_root, ["/opt/cni/bin/pycni-bridge"], bare_env(CNI_COMMAND="VERSION"),
                      b'{"cniVersion": "1.0.0"}', host_netns)
    assert version.returncode == 0, version.stderr.decode()
    assert "1.1.0" in json.loads(version.stdout)["supportedVersions"]

    subnet = free_subnet(4)
    bridge = f"cnb{uuid.uuid4().hex[:8]}"
    conf = json.dumps(_bridge_conf("bundlenet", bridge, subnet)).encode()
    cid = uuid.uuid4().hex
    env = bare_env(CNI_CONTAINERID=cid, CNI_NETNS=pod_netns.path, CNI_IFNAME="eth0", CNI_PATH="/opt/cni/bin")
    add = in_root(node_root, ["/opt/cni/bin/pycni-bridge"], {**env, "CNI_COMMAND": "ADD"}, conf, host_netns)
    assert add.returncode == 0, (add.stdout, add.stderr)
    ip = ipaddress.ip_interface(json.loads(add.stdout)["ips"][0]["address"])
    assert ip.ip in subnet
    pod_addrs = [a["local"] for link in pod_netns.ip_json("addr", "show", "eth0") for a in link["addr_info"]]
    assert str(ip.ip) in pod_addrs
    assert host_netns.ip_json("link", "show", bridge)
    assert str(ip.ip) in _nft_ruleset(host_netns)  # the masquerade element, written by the bundled nft
    # the reservation is in the node root's dataDir, not the machine's
    assert (node_root / "var/lib/cni/networks/bundlenet" / str(ip.ip)).exists()

    check = in_root(node_root, ["/opt/cni/bin/pycni-bridge"], {**env, "CNI_COMMAND": "CHECK"},
                    json.dumps({**json.loads(conf), "prevResult": json.loads(add.stdout)}).encode(), host_netns)
    assert check.returncode == 0, (check.stdout, check.stderr)

    delete = in_root(node_root, ["/opt/cni/bin/pycni-bridge"], {**env, "CNI_COMMAND": "DEL"}, conf, host_netns)
    assert delete.returncode == 0, (delete.stdout, delete.stderr)
    assert not pod_netns.ip_json("link", "show")[1:], "the pod's eth0 is still there"
    assert str(ip.ip) not in _nft_ruleset(host_netns)
    assert not (node_root / "var/lib/cni/networks/bundlenet" / str(ip.ip)).exists()
    host_netns.run("ip", "link", "del", bridge, check=False)


def _run_version(exe: Path) -> dict:
    rc, out, err = run_plugin(exe, bare_env(CNI_COMMAND="VERSION"), {"cniVersion": "1.0.0"})
    assert rc == 0, err
    assert out is not None
    return out


def test_install_beside_foreign_files_and_uninstall_leaves_the_directory_as_it_was(bundle, tmp_path):
    """Default names install next to what is there; reference names of foreign files are left
    alone unless --force, which keeps them and puts them back at uninstall."""
    root = tmp_path / "node"
    bin_dir = root / "opt" / "cni" / "bin"
    bin_dir.mkdir(parents=True)
    shutil.copy2("/usr/lib/cni/bridge", bin_dir / "bridge")
    (bin_dir / "host-local").symlink_to("/usr/lib/cni/host-local")
    (bin_dir / "README").write_text("the node's own\n")
    before = tree_state(bin_dir)
    installer = str(bundle / "pycni-install")

    out = subprocess.run([installer, "--host-root", str(root), "--names", "both"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "bridge" in out.stderr and "host-local" in out.stderr  # reported as left alone
    assert os.readlink(bin_dir / "host-local") == "/usr/lib/cni/host-local"
    for name in [f"pycni-{p}" for p in PLUGINS] + ["loopback", "portmap", "tuning"]:
        assert os.readlink(bin_dir / name) == "pycni/current/pycni", name
        assert "1.0.0" in _run_version(bin_dir / name)["supportedVersions"]
    assert not [p.name for p in bin_dir.iterdir() if p.name.startswith(".")]
    manifest = json.loads((bin_dir / "pycni" / "manifest.json").read_text())
    assert "bridge" not in manifest["names"]

    forced = subprocess.run([installer, "--host-root", str(root), "--names", "both", "--force"],
                            capture_output=True, text=True)
    assert forced.returncode == 0, forced.stderr
    assert os.readlink(bin_dir / "bridge") == "pycni/current/pycni"
    assert "1.1.0" in _run_version(bin_dir / "bridge")["supportedVersions"]
    assert (bin_dir / "pycni" / "displaced" / "bridge").samefile(bin_dir / "pycni" / "displaced" / "bridge")

    gone = subprocess.run([installer, "--host-root", str(root), "--uninstall"], capture_output=True, text=True)
    assert gone.returncode == 0, gone.stderr
    assert tree_state(bin_dir) == before


def test_uninstall_removes_a_bin_dir_it_created(bundle, tmp_path):
    root = tmp_path / "node"
    root.mkdir()
    installer = str(bundle / "pycni-install")
    subprocess.run([installer, "--host-root", str(root)], check=True, capture_output=True)
    assert (root / "opt/cni/bin/pycni-loopback").is_symlink()
    subprocess.run([installer, "--host-root", str(root), "--uninstall"], check=True, capture_output=True)
    assert not (root / "opt/cni/bin").exists()
    assert (root / "opt/cni").is_dir()  # only the directory it made itself


def test_upgrade_during_add_del_loop_never_fails_a_call(bundle, tmp_path, host_netns, netns_factory):
    """Builds switch under a loop of real ADD/DEL: every call succeeds, every name always resolves
    to one complete build folder, at most two builds stay, nothing temporary is left."""
    root = tmp_path / "node"
    bin_dir = root / "opt/cni/bin"
    installer = str(bundle / "pycni-install")
    subprocess.run([installer, "--host-root", str(root)], check=True, capture_output=True)
    builds = [copy_as_build(bundle, tmp_path / f"build{i}", f"0.0.0-upgrade{i}") for i in range(4)]
    expected_files = sorted(str(p.relative_to(bundle)) for p in bundle.rglob("*") if p.name != "BUILD-ID")

    subnet = free_subnet(4)
    bridge = f"cnu{uuid.uuid4().hex[:8]}"
    conf = _bridge_conf("upgradenet", bridge, subnet)
    conf["ipMasq"] = False
    conf["ipam"]["dataDir"] = str(tmp_path / "ipam")
    pods = [netns_factory("pycni-pod") for _ in range(2)]
    stop = threading.Event()
    failures: list[str] = []
    calls = [0]
    mixed: list[str] = []

    def churn(pod) -> None:
        while not stop.is_set():
            cid = uuid.uuid4().hex
            for verb in ("ADD", "DEL"):
                env = bare_env(CNI_COMMAND=verb, CNI_CONTAINERID=cid, CNI_NETNS=pod.path, CNI_IFNAME="eth0",
                               CNI_PATH=str(bin_dir), PYCNI_AGENT_SOCKET="")
                rc, out, err = run_plugin(bin_dir / "pycni-bridge", env, conf, netns=host_netns)
                calls[0] += 1
                if rc != 0:
                    failures.append(f"{verb} rc={rc} {out} {err[-300:]}")

    def watch() -> None:
        while not stop.is_set():
            for name in ("pycni-bridge", "pycni-host-local"):
                real = Path(os.path.realpath(bin_dir / name))
                folder = real.parent
                try:
                    if folder.name != (folder / "BUILD-ID").read_text().strip() or not real.is_file():
                        mixed.append(f"{name} -> {real}")
                except OSError as exc:
                    mixed.append(f"{name} -> {real}: {exc}")

    threads = [threading.Thread(target=churn, args=(pod,)) for pod in pods] + [threading.Thread(target=watch)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for build in builds * 2:
            subprocess.run([installer, "--host-root", str(root), "--source", str(build)], check=True,
                           capture_output=True)
            store = bin_dir / "pycni"
            folders = [p.name for p in store.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0] != "."]
            # current + previous, and at most one more per churn thread still running an old one
            assert len(folders) <= 2 + len(pods), folders
            current = store / os.readlink(store / "current")
            assert sorted(str(p.relative_to(current)) for p in current.rglob("*")
                          if p.name != "BUILD-ID") == expected_files
            time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        host_netns.run("ip", "link", "del", bridge, check=False)
    assert calls[0] >= 8, calls
    assert failures == []
    assert mixed == []
    # nothing runs an old build any more: the next install keeps exactly current + previous
    subprocess.run([installer, "--host-root", str(root), "--source", str(builds[0])], check=True, capture_output=True)
    store = bin_dir / "pycni"
    left = sorted(p.name for p in store.iterdir() if p.is_dir() and not p.is_symlink() and p.name[0] != ".")
    assert left == ["0.0.0-upgrade0", "0.0.0-upgrade3"]
    assert not [p for p in bin_dir.rglob(".*") if p.name != ".lock"]


def test_bundle_plugins_forward_to_the_bundle_agent(bundle, tmp_path, host_netns, pod_netns):
    """The DaemonSet's path: pycni-agent from the bundle serves the bundle's pycni-bridge (the
    request shows in the agent's log), and `pycni-agent --check` turns ready."""
    run_dir = tmp_path / "run"
    run_dir.mkdir(mode=0o700)
    sock = run_dir / "agent.sock"
    agent_exe = str(bundle / "pycni-agent")
    assert subprocess.run([agent_exe, "--check", "--socket", str(sock)], capture_output=True).returncode == 1
    log = open(tmp_path / "agent.log", "wb")
    agent = subprocess.Popen(["ip", "netns", "exec", host_netns.name, agent_exe, "--socket", str(sock),
                              "--log-requests"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([agent_exe, "--check", "--socket", str(sock)], capture_output=True).returncode != 0:
            assert agent.poll() is None, (tmp_path / "agent.log").read_text()
            assert time.monotonic() < deadline, "the agent never accepted connections"
            time.sleep(0.2)
        bridge = f"cna{uuid.uuid4().hex[:8]}"
        conf = _bridge_conf("agentnet", bridge, free_subnet(4))
        conf["ipMasq"] = False
        conf["ipam"]["dataDir"] = str(tmp_path / "ipam")
        conf["agent"] = "required"  # never quietly in-process
        cid = uuid.uuid4().hex
        for verb in ("ADD", "DEL"):
            env = bare_env(CNI_COMMAND=verb, CNI_CONTAINERID=cid, CNI_NETNS=pod_netns.path, CNI_IFNAME="eth0",
                           CNI_PATH=str(bundle), PYCNI_AGENT_SOCKET=str(sock))
            rc, out, err = run_plugin(bundle / "pycni-bridge", env, conf, netns=host_netns)
            assert rc == 0, (verb, out, err, (tmp_path / "agent.log").read_text())
            if verb == "ADD":
                assert out is not None and out["ips"]
                assert pod_netns.ip_json("link", "show", "eth0")
        # The agent logs a request after it has sent the reply: give the last line a moment.
        deadline = time.monotonic() + 10
        text = (tmp_path / "agent.log").read_text()
        while "DEL" not in text and time.monotonic() < deadline:
            time.sleep(0.05)
            text = (tmp_path / "agent.log").read_text()
        assert "ADD" in text and "DEL" in text and cid[:12] in text, text
        host_netns.run("ip", "link", "del", bridge, check=False)
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=40)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        log.close()
