"""The bundle's OCI image (scripts/image) in containerd: `ctr images import`, then `ctr run` of the
installer against a scratch node root, whose plugins then run chroot'ed into a python-less root.

The daemon is the machine's containerd with its own root, state and socket under a temp dir, the
CRI plugin disabled (only the image store, snapshotter and runc are used), in a mount namespace
of its own; it is stopped by its pid and everything is removed afterwards.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bundle_support import REPO, image_script, in_root, session_bundle, session_roots
from tests.conftest import bare_env

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def bundle(tmp_path_factory) -> Path:
    return session_bundle(tmp_path_factory)


@pytest.fixture(scope="session")
def base_roots(bundle, tmp_path_factory) -> dict[str, Path]:
    return session_roots(bundle, tmp_path_factory)

CONFIG = """\
version = 2
root = "{base}/root"
state = "{base}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{base}/c.sock"
[ttrpc]
  address = "{base}/c.sock.ttrpc"
"""


class Ctr:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.namespace = f"pycni-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["ctr", "--address", str(self.base / "c.sock"), "-n", self.namespace, *argv],
                              capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def containerd() -> Iterator[Ctr]:
    base = Path(tempfile.mkdtemp(prefix="pycni-ctr-"))  # short: the socket path must stay < 108 bytes
    (base / "config.toml").write_text(CONFIG.format(base=base))
    log = open(base / "containerd.log", "wb")
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "slave", "containerd", "--config",
                             str(base / "config.toml")], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    ctr = Ctr(base)
    try:
        deadline = time.monotonic() + 30
        while ctr("version").returncode != 0:
            assert proc.poll() is None, (base / "containerd.log").read_text()
            assert time.monotonic() < deadline, "containerd did not come up"
            time.sleep(0.2)
        yield ctr
    finally:
        for line in ctr("containers", "ls", "-q").stdout.split():
            ctr("tasks", "kill", "-s", "SIGKILL", line)
            ctr("containers", "rm", line)
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        subprocess.run(["umount", "-R", "-l", str(base / "root")], check=False, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def test_image_imports_and_installs_onto_a_scratch_node(bundle, base_roots, containerd, tmp_path, host_netns):
    archive = tmp_path / "pycni-image.tar"
    subprocess.run([str(REPO / ".venv" / "bin" / "python"), str(REPO / "scripts" / "image"), "--bundle", str(bundle),
                    "--out", str(archive), "--tag", "pycni:test"], check=True)
    imported = containerd("images", "import", str(archive))
    assert imported.returncode == 0, imported.stderr
    listed = containerd("images", "ls", "-q").stdout.split()
    assert "docker.io/library/pycni:test" in listed

    # the node: a copy of the python-less Debian root; the installer sees it at /host
    node = tmp_path / "node"
    subprocess.run(["cp", "-a", str(base_roots["debian"]), str(node)], check=True)  # (device nodes in /dev)
    run = containerd("run", "--rm", "--mount", f"type=bind,src={node},dst=/host,options=rbind:rw",
                     "docker.io/library/pycni:test", f"install-{uuid.uuid4().hex[:6]}",
                     "/opt/pycni/pycni-install", "--host-root", "/host", "--agent-run-dir", "/run/pycni")
    assert run.returncode == 0, run.stderr + run.stdout
    bin_dir = node / "opt" / "cni" / "bin"
    assert (bin_dir / "pycni-bridge").is_symlink()
    assert (node / "run" / "pycni").stat().st_mode & 0o777 == 0o700
    manifest = json.loads((bin_dir / "pycni" / "manifest.json").read_text())
    assert manifest["build"] == (bundle / "BUILD-ID").read_text().strip()

    # what containerd/kubelet on that node would exec
    for d in ("proc", "dev", "run/netns"):
        (node / d).mkdir(parents=True, exist_ok=True)
    version = in_root(node, ["/opt/cni/bin/pycni-loopback"], bare_env(CNI_COMMAND="VERSION"), b"{}", host_netns)
    assert version.returncode == 0, version.stderr
    assert "1.0.0" in json.loads(version.stdout)["supportedVersions"]

    # the agent's readiness probe, in the image: nothing listens yet
    probe = containerd("run", "--rm", "docker.io/library/pycni:test", f"probe-{uuid.uuid4().hex[:6]}",
                       "/opt/pycni/pycni-agent", "--check")
    assert probe.returncode == 1 and "nothing accepts connections" in probe.stderr + probe.stdout


def test_image_is_deterministic(bundle, tmp_path):
    build = image_script()["build"]
    a = build(bundle, tmp_path / "a.tar", ["pycni:x"])
    b = build(bundle, tmp_path / "b.tar", ["pycni:x"])
    assert a == b
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
