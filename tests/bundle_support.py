"""The bundle tests' shared parts: the bundle itself, python-less node roots, running inside them.

- `bundle`: PYCNI_BUNDLE (a folder made by `make bundle`) or a fresh build by scripts/bundle
  into the session's temp dir (~15-25 s on 2 cores).
- node roots without python3, both cached per session:
  * `debian`: `debootstrap --variant=minbase bookworm` (~25 s, ~200 MB), cached across runs
    in PYCNI_TEST_CACHE (default /var/cache/pycni-test) and built when absent;
  * `libc`: an empty directory plus only the system libraries the bundle loads (libc, ld.so,
    libz, ...), the same files the image carries.
- `in_root`: a command run as a runtime on that node would run it: in the fake node's network
  namespace, chroot'ed into the root, with /proc, /dev and /run/netns bind-mounted inside a
  private mount namespace (nothing leaks to the machine; it all goes with the process).
"""

from __future__ import annotations

import contextlib
import os
import runpy
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from tests.conftest import Netns

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("PYCNI_TEST_CACHE", "/var/cache/pycni-test"))
DEBIAN_ROOT = CACHE / "debian-bookworm-minbase"
MIRROR = os.environ.get("PYCNI_DEBIAN_MIRROR", "http://deb.debian.org/debian")
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def image_script() -> dict:
    """scripts/image's functions (it is a script, not a module)."""
    return runpy.run_path(str(REPO / "scripts" / "image"))


def build_bundle(out: Path) -> Path:
    subprocess.run([sys.executable, str(REPO / "scripts" / "bundle"), "--out", str(out), "--python", sys.executable],
                   check=True, timeout=900)
    return out


_SESSION: dict[str, Path] = {}  # one build and one libc root per test session, whichever module asks first


def session_bundle(tmp_path_factory) -> Path:
    """The `bundle` fixture's value (test modules wrap it: a fixture here would need pytest_plugins)."""
    if "bundle" not in _SESSION:
        given = os.environ.get("PYCNI_BUNDLE")
        _SESSION["bundle"] = (Path(given).resolve() if given
                              else build_bundle(tmp_path_factory.mktemp("bundle") / "pycni"))
    return _SESSION["bundle"]


def debian_root() -> Path:
    """The cached debootstrap minbase root (built once: ~25 s with a nearby mirror)."""
    if (DEBIAN_ROOT / ".pycni-complete").exists():
        return DEBIAN_ROOT
    if shutil.which("debootstrap") is None:
        pytest.fail("debootstrap is not installed (scripts/bootstrap installs it)")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f".{DEBIAN_ROOT.name}.partial-{os.getpid()}"
    try:
        subprocess.run(["debootstrap", "--variant=minbase", "bookworm", str(partial), MIRROR],
                       check=True, capture_output=True, timeout=900)
        (partial / ".pycni-complete").touch()
        os.rename(partial, DEBIAN_ROOT)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return DEBIAN_ROOT


def libc_root(dest: Path, bundle: Path) -> Path:
    """A root holding only the system libraries the bundle loads (what the image carries)."""
    for lib in image_script()["system_libs"](bundle):
        target = dest / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), target)
    for directory in ("proc", "dev", "run", "tmp", "etc"):
        (dest / directory).mkdir(exist_ok=True)
    return dest


def has_python(root: Path) -> bool:
    return any(root.glob("usr/bin/python*")) or any(root.glob("usr/local/bin/python*")) or any(
        root.glob("usr/lib/python3*"))


def session_roots(bundle: Path, tmp_path_factory) -> dict[str, Path]:
    if "libc" not in _SESSION:
        _SESSION["libc"] = libc_root(tmp_path_factory.mktemp("libc-root"), bundle)
    roots = {"debian": debian_root(), "libc": _SESSION["libc"]}
    for root in roots.values():
        if has_python(root):
            pytest.fail(f"{root} has a python: it proves nothing")
    return roots


@contextlib.contextmanager
def overlay_root(lower: Path, tmp_path: Path) -> Iterator[Path]:
    """A writable node root (overlay over the cached base); unmounted afterwards."""
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "root"
    for d in (upper, work, merged):
        d.mkdir()
    subprocess.run(["mount", "-t", "overlay", f"overlay-pycni-{uuid.uuid4().hex[:8]}", "-o",
                    f"lowerdir={lower},upperdir={upper},workdir={work}", str(merged)], check=True)
    try:
        for d in ("proc", "dev", "run/netns", "tmp"):
            (merged / d).mkdir(parents=True, exist_ok=True)
        yield merged
    finally:
        subprocess.run(["umount", "-l", str(merged)], check=False)


def in_root(root: Path, argv: Sequence[str], env: Mapping[str, str], stdin: bytes = b"",
            host: Netns | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    """Run `argv` chroot'ed into `root` (in `host`'s network namespace when given)."""
    setup = ('set -e; mount --rbind /proc "$0/proc"; mount --rbind /dev "$0/dev"; '
             'mount --rbind /run/netns "$0/run/netns"; exec "$@"')
    inner = ["chroot", str(root), *argv]
    if host is not None:
        inner = ["nsenter", f"--net={host.path}", *inner]
    full = ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup, str(root), *inner]
    # unshare, sh, nsenter and chroot are the machine's; the plugin gets `env` as it is.
    return subprocess.run(full, input=stdin, env={"PATH": HOST_PATH, **env}, capture_output=True, timeout=timeout)


def tree_state(directory: Path) -> dict[str, tuple]:
    """What `ls -la` and a checksum would show of every entry: the 'left as it was' comparison."""
    state: dict[str, tuple] = {}
    for path in sorted(directory.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(directory))
        if path.is_symlink():
            state[rel] = ("link", os.readlink(path))
        elif path.is_dir():
            state[rel] = ("dir", st.st_mode)
        else:
            state[rel] = ("file", st.st_mode, st.st_size, st.st_ino, path.read_bytes().__hash__())
    return state


def copy_as_build(bundle: Path, dest: Path, build_id: str) -> Path:
    """A copy of the bundle that says it is build `build_id` (an 'upgrade' without a rebuild)."""
    shutil.copytree(bundle, dest, symlinks=True)
    (dest / "BUILD-ID").write_text(build_id + "\n")
    return dest
