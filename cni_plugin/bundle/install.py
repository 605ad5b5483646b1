"""`pycni-install`: put the bundle onto a node's /opt/cni/bin (the DaemonSet's init container).

Layout it makes in BIN (default <host-root>/opt/cni/bin), next to whatever is there:

    pycni/<build-id>/        one complete bundle folder per installed build
    pycni/current            symlink -> <build-id>: the build every entry runs
    pycni/manifest.json      what this installer put into BIN (uninstall removes that and no more)
    pycni/displaced/<name>   a file of a plugin name replaced with --force, restored at uninstall
    pycni-bridge, ...        symlinks -> pycni/current/pycni (relative: valid on the host and in
                             the container that mounts BIN elsewhere)

Why this shape (kubelet/containerd exec these files at any moment):
- a build folder is copied under a temporary name in the same directory, every file fsync'd,
  then renamed into place: nobody can reach a half-written folder;
- an upgrade switches `current` with one rename: an exec resolves the entry symlinks either to
  the old or to the new complete folder, never to a mix, and no plugin name is ever missing;
- the previous build stays on disk (a plugin exec'd just before the switch keeps importing from
  its own folder); older ones are removed;
- the entry symlinks are created once (temporary name + rename) and never change on upgrade.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .main import PLUGIN_NAMES

STORE = "pycni"
CURRENT = "current"
MANIFEST = "manifest.json"
DISPLACED = "displaced"
EXECUTABLE = "pycni"
ENTRY_TARGET = f"{STORE}/{CURRENT}/{EXECUTABLE}"
KEEP_BUILDS = 2  # the current build and the one before it


class InstallError(Exception):
    pass


def names_for(mode: str) -> list[str]:
    prefixed = [f"pycni-{p}" for p in PLUGIN_NAMES]
    reference = list(PLUGIN_NAMES)
    return {"prefixed": prefixed, "reference": reference, "both": prefixed + reference}[mode]


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_tree_synced(src: Path, dest: Path) -> None:
    """Copy `src` to `dest` (which must not exist): symlinks as symlinks, every file and
    directory fsync'd, so that the rename that publishes `dest` publishes complete contents."""
    dest.mkdir(mode=0o755)
    for entry in sorted(src.iterdir()):
        target = dest / entry.name
        if entry.is_symlink():
            os.symlink(os.readlink(entry), target)
        elif entry.is_dir():
            copy_tree_synced(entry, target)
        else:
            with entry.open("rb") as fin, open(target, "xb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            os.chmod(target, entry.stat().st_mode & 0o7777)
    fsync_dir(dest)


def replace_symlink(link: Path, target: str) -> None:
    """Point `link` at `target` atomically: a symlink under a temporary name, then rename."""
    tmp = link.parent / f".{link.name}.pycni-tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, link)


def write_json_synced(path: Path, data: dict) -> None:
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_manifest(store: Path) -> dict:
    try:
        data = json.loads((store / MANIFEST).read_text())
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise InstallError(f"{store / MANIFEST} is not valid JSON ({exc}): remove it by hand") from exc
    return data if isinstance(data, dict) else {}


def is_our_entry(path: Path) -> bool:
    return path.is_symlink() and os.readlink(path) == ENTRY_TARGET


@contextlib.contextmanager
def locked(store: Path) -> Iterator[None]:
    # Two installers at once (a re-run init container, an operator) take turns.
    with open(store / ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def bundle_source() -> Path:
    """The bundle folder this executable runs from (PyInstaller: the real path of the bootloader)."""
    if not getattr(sys, "frozen", False):
        raise InstallError("not running from a bundle: give --source (a folder made by `make bundle`)")
    return Path(os.path.realpath(sys.executable)).parent


def build_id_of(source: Path) -> str:
    try:
        build_id = (source / "BUILD-ID").read_text().strip()
    except OSError as exc:
        raise InstallError(f"{source} is not a pycni bundle (no BUILD-ID): {exc}") from exc
    if not build_id or "/" in build_id or build_id.startswith(".") or build_id == CURRENT:
        raise InstallError(f"{source}/BUILD-ID: bad build id {build_id!r}")
    return build_id


def install(source: Path, bin_dir: Path, mode: str = "prefixed", force: bool = False) -> dict[str, Any]:
    """Install (or upgrade to) the bundle at `source` into `bin_dir`; returns the new manifest."""
    build_id = build_id_of(source)
    created_bin_dir = not bin_dir.exists()
    bin_dir.mkdir(parents=True, exist_ok=True)
    store = bin_dir / STORE
    if store.exists() and not (store / MANIFEST).exists() and not (store / CURRENT).is_symlink():
        if any(p.name != ".lock" for p in store.iterdir()):
            raise InstallError(f"{store} exists and was not made by pycni-install: move it away first")
    store.mkdir(exist_ok=True)
    with locked(store):
        old = read_manifest(store)
        names: list[str] = []
        displaced_names: list[str] = list(old.get("displaced", []))
        manifest: dict[str, Any] = {
            "build": build_id,
            "names": names,
            "displaced": displaced_names,
            "created_bin_dir": bool(old.get("created_bin_dir", created_bin_dir)),
        }
        # 1. the build folder, complete before it has its name
        folder = store / build_id
        if not folder.is_dir():
            for stale in store.glob(f".incoming-{build_id}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            incoming = store / f".incoming-{build_id}-{os.getpid()}"
            try:
                copy_tree_synced(source, incoming)
                os.rename(incoming, folder)
            except BaseException:
                shutil.rmtree(incoming, ignore_errors=True)
                raise
            fsync_dir(store)
        # 2. switch every entry at once
        current = store / CURRENT
        previous = os.readlink(current) if current.is_symlink() else None
        replace_symlink(current, build_id)
        fsync_dir(store)
        # 3. the entries (created once; an upgrade leaves them alone)
        wanted = names_for(mode)
        skipped = []
        for name in wanted:
            entry = bin_dir / name
            if is_our_entry(entry):
                names.append(name)
                continue
            if os.path.lexists(entry) and name not in old.get("names", []):
                if not force:
                    skipped.append(name)
                    continue
                displaced = store / DISPLACED
                displaced.mkdir(exist_ok=True)
                # a hard link (or a copy of the symlink) keeps the original while the name is replaced
                if entry.is_symlink():
                    replace_symlink(displaced / name, os.readlink(entry))
                else:
                    with contextlib.suppress(FileNotFoundError):
                        (displaced / name).unlink()
                    os.link(entry, displaced / name)
                if name not in displaced_names:
                    displaced_names.append(name)
            replace_symlink(entry, ENTRY_TARGET)
            names.append(name)
        # names installed before but not wanted now (another --names): remove them
        for name in old.get("names", []):
            if name not in wanted:
                _remove_entry(bin_dir, store, name, displaced_names)
        fsync_dir(bin_dir)
        # 4. builds older than the previous one go, unless a process still runs one
        keep = {build_id, previous} if previous else {build_id}
        busy = running_executables()
        for path in store.iterdir():
            if path.is_dir() and not path.is_symlink() and path.name not in keep and path.name != DISPLACED:
                if _identity(path / EXECUTABLE) in busy:
                    keep.add(path.name)
                    continue
                shutil.rmtree(path, ignore_errors=True)
        manifest["builds"] = sorted(p for p in keep if p and (store / p).is_dir())
        manifest["skipped"] = skipped
        write_json_synced(store / MANIFEST, manifest)
        fsync_dir(store)
    return manifest


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def running_executables() -> set[tuple[int, int] | None]:
    """(device, inode) of every running process's executable (/proc/<pid>/exe). A plugin started
    from an old build keeps needing its folder (PyInstaller re-executes itself by its real path and
    imports from _internal/): such a build is not removed. Device and inode, not paths: the
    DaemonSet's installer sees the node's files under /host (hostPID shows the node's processes)."""
    found: set[tuple[int, int] | None] = set()
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        identity = _identity(Path("/proc", pid, "exe"))
        if identity is not None:
            found.add(identity)
    return found


def _remove_entry(bin_dir: Path, store: Path, name: str, displaced: list[str]) -> None:
    entry = bin_dir / name
    if not is_our_entry(entry):
        return  # replaced by someone else since: theirs now
    saved = store / DISPLACED / name
    if name in displaced and os.path.lexists(saved):
        os.replace(saved, entry)
        displaced.remove(name)
    else:
        entry.unlink()


def uninstall(bin_dir: Path) -> list[str]:
    """Remove what the manifest lists (restoring displaced files), then the store; the names removed."""
    store = bin_dir / STORE
    if not store.is_dir():
        return []
    with locked(store):
        manifest = read_manifest(store)
        if not manifest and not (store / CURRENT).is_symlink():
            raise InstallError(f"{store} has no pycni manifest: not removing it")
        names = list(manifest.get("names", []))
        displaced = list(manifest.get("displaced", []))
        for name in names:
            _remove_entry(bin_dir, store, name, displaced)
        fsync_dir(bin_dir)
    shutil.rmtree(store)
    if manifest.get("created_bin_dir"):
        with contextlib.suppress(OSError):
            bin_dir.rmdir()  # only when empty
    return names


def prepare_run_dir(path: Path) -> None:
    """The agent's socket directory, 0700 root (the agent refuses one that others can enter;
    kubelet creates a missing hostPath directory 0755)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chown(path, 0, 0)
    os.chmod(path, 0o700)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pycni-install",
        description="Install the pycni bundle into a node's CNI bin directory (atomic; upgrade-safe).",
    )
    parser.add_argument("--host-root", type=Path, default=Path("/"),
                        help="the node's root file system as mounted here (default /; DaemonSet: /host)")
    parser.add_argument("--bin-dir", default="/opt/cni/bin", help="CNI bin directory on the node (default %(default)s)")
    parser.add_argument("--names", choices=("prefixed", "reference", "both"), default="prefixed",
                        help="pycni-<plugin> (default), <plugin> (bridge, host-local, ...) or both")
    parser.add_argument("--force", action="store_true",
                        help="replace files of those names pycni did not install (kept; restored by --uninstall)")
    parser.add_argument("--uninstall", action="store_true", help="remove what pycni-install installed")
    parser.add_argument("--agent-run-dir", metavar="DIR",
                        help="also create DIR (under --host-root) mode 0700 for pycni-agent's socket, e.g. /run/pycni")
    parser.add_argument("--source", type=Path, help="bundle folder to install (default: the one running)")
    opts = parser.parse_args(argv)
    bin_dir = opts.host_root / opts.bin_dir.lstrip("/")
    try:
        if opts.uninstall:
            removed = uninstall(bin_dir)
            print(f"pycni-install: removed {len(removed)} entries and {bin_dir / STORE}")
            return 0
        source = opts.source.resolve() if opts.source else bundle_source()
        manifest = install(source, bin_dir, opts.names, opts.force)
        if opts.agent_run_dir:
            prepare_run_dir(opts.host_root / opts.agent_run_dir.lstrip("/"))
    except (InstallError, OSError) as exc:
        print(f"pycni-install: {exc}", file=sys.stderr)
        return 1
    print(f"pycni-install: {manifest['build']} in {bin_dir / STORE}; entries: {', '.join(manifest['names'])}")
    if manifest["skipped"]:
        print(f"pycni-install: left alone (not pycni's; --force to replace): {', '.join(manifest['skipped'])}",
              file=sys.stderr)
    return 0
