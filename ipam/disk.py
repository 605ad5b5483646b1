"""DiskStore: host-local reservations on disk, in the reference plugin's layout.

Layout of `<dataDir>/<network>/` (compatible with plugins/ipam/host-local/backend/disk, so a node
can switch between the reference and pycni in both directions):

    lock                   flock(2) target, shared with the reference (go-filemutex)
    <ip>                   one file per reservation: "<containerID>\\r\\n<ifname>" (0600)
    last_reserved_ip.<n>   the last address reserved in range set n (round-robin cursor)
    .pycni/                pycni-only metadata (the reference ignores it: it never matches an owner)
      stamp                "v1 <inode> <mtime_ns>" of the network directory when the index was last
                           known complete; any change made behind our back moves the mtime
      owners/<hash>        the owner index: JSON {id, ifname, ips} per (containerID, ifname)
      boot_id              the boot during which the store was last used (reboot reclaim)
      tmp-*                temporary files (always written here, then linked or renamed)

Rules:
- The lock is taken once per request, for the whole request, with a bounded wait (TryAgainLater,
  code 11). The reference ignores Lock()'s return value; we check it.
- A reservation is published crash-atomically: content into a temp file, fsync, then os.link to
  the address's name (link fails with EEXIST if taken: the exclusive create). A kill -9 at any
  instant leaves the full file or no file, never an empty one. Other files use temp + rename.
- Lookups by owner read one index file, so ADD/DEL cost does not grow with the allocations.
  The index is trusted only if the stamp matches the directory's (inode, mtime_ns): every create,
  link, rename or unlink in the directory (ours, the reference's, an operator's, a crashed
  request's) changes the mtime, so a mismatch means "rebuild from the files" (O(allocations),
  once). Caveat: before Linux 6.13 (multigrain timestamps) a foreign change in the same clock tick
  as our last write may go unseen until the next change.
- Reboot reclaim: see `_reclaim_after_reboot`.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import ipaddress
import json
import os
import random
import time
from collections.abc import Callable, Mapping
from typing import NamedTuple

from cni_plugin.spec.errors import IOFailure, StoreFailure, TryAgainLater
from cni_plugin.spec.types import IPAddress

from .store import Owner

LOCK_FILE = "lock"
LAST_RESERVED_PREFIX = "last_reserved_ip."
META_DIR = ".pycni"
OWNERS_DIR = "owners"
STAMP_FILE = "stamp"
BOOT_FILE = "boot_id"
TMP_PREFIX = "tmp-"
STAMP_VERSION = "v1"
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"


def current_boot_id() -> str:
    with open(BOOT_ID_PATH, encoding="ascii") as f:
        return f.read().strip()


def current_boot_time() -> float:
    """Seconds since the epoch at which this boot started (/proc/stat btime)."""
    with open("/proc/stat", encoding="ascii") as f:
        for line in f:
            if line.startswith("btime "):
                return float(line.split()[1])
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def parse_ip_name(name: str) -> IPAddress | None:
    """The address a directory entry names, or None for lock/last_reserved/metadata files."""
    if not name or name[0] == "." or name == LOCK_FILE or name.startswith(LAST_RESERVED_PREFIX):
        return None
    try:
        return ipaddress.ip_address(name)
    except ValueError:
        return None


def owner_key(owner: Owner) -> str:
    return hashlib.sha256(owner.file_content().encode()).hexdigest()[:40]


class Entry(NamedTuple):
    ip: IPAddress
    owner: Owner
    mtime: float


class DiskStore:
    """One locked request against `<data_dir>/<network>/`. Use as a context manager."""

    def __init__(
        self,
        data_dir: str,
        network: str,
        *,
        lock_timeout: float = 10.0,
        reclaim_on_reboot: bool = True,
        boot_id: Callable[[], str] = current_boot_id,
        boot_time: Callable[[], float] = current_boot_time,
    ) -> None:
        self.dir = os.path.join(data_dir, network)
        self.meta = os.path.join(self.dir, META_DIR)
        self.owners_dir = os.path.join(self.meta, OWNERS_DIR)
        self.lock_timeout = lock_timeout
        self.reclaim_on_reboot = reclaim_on_reboot
        self._boot_id = boot_id
        self._boot_time = boot_time
        self._lock_fd = -1
        self._owners: dict[Owner, list[IPAddress]] = {}
        self._dirty_owners: set[Owner] = set()
        self._last: dict[int, IPAddress] = {}
        self._tmp: tuple[str, Owner] | None = None
        self._mutated = False
        self._broken = False
        self._stamp_ok = False
        self._counter = 0
        self.rebuilt = False  # for tests and the CLI: did this request rebuild the index?
        self.reclaimed: list[Entry] = []

    # --- request lifecycle -------------------------------------------------------------------

    def __enter__(self) -> DiskStore:
        try:
            os.makedirs(self.owners_dir, mode=0o755, exist_ok=True)
            self._lock_fd = os.open(os.path.join(self.dir, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise IOFailure(f"cannot use the IPAM data directory {self.dir}", os.strerror(exc.errno or 0)) from exc
        try:
            self._acquire()
            self._sweep_tmp()
            fresh = self._stamp_ok = self._index_is_fresh()
            if not fresh:
                self._rebuild()
            self._check_boot(fresh)
        except BaseException:
            self._unlock()
            raise
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if self._broken:
                try:
                    self._invalidate()
                except OSError:
                    pass  # the directory's mtime already moved: the stamp is stale anyway
            else:
                self._commit()
        finally:
            self._drop_tmp()
            self._unlock()

    def _acquire(self) -> None:
        deadline = time.monotonic() + self.lock_timeout
        delay = 0.0005
        while True:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise TryAgainLater(
                        f"timed out waiting for the IPAM lock of {self.dir}",
                        f"another request held {os.path.join(self.dir, LOCK_FILE)} for {self.lock_timeout:g}s",
                    ) from None
                time.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 0.02)
            except OSError as exc:
                raise IOFailure(f"cannot lock {self.dir}", os.strerror(exc.errno or 0)) from exc

    def _unlock(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # closing the only descriptor releases the flock
            self._lock_fd = -1

    # --- small file helpers ------------------------------------------------------------------

    def _guard(self, what: str, exc: OSError) -> StoreFailure:
        self._broken = True
        return StoreFailure(f"IPAM store {self.dir}: cannot {what}", os.strerror(exc.errno or 0))

    def _tmp_path(self) -> str:
        self._counter += 1
        return os.path.join(self.meta, f"{TMP_PREFIX}{os.getpid()}-{self._counter}-{random.getrandbits(32):08x}")

    def _write_tmp(self, data: bytes, sync: bool) -> str:
        path = self._tmp_path()
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            if sync:
                os.fsync(fd)
        finally:
            os.close(fd)
        return path

    def _replace(self, path: str, data: bytes, sync: bool = False) -> None:
        tmp = self._write_tmp(data, sync)
        try:
            os.rename(tmp, path)
        except OSError:
            _unlink_quietly(tmp)
            raise

    @staticmethod
    def _read(path: str) -> str | None:
        try:
            with open(path, encoding="utf-8", errors="replace", newline="") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def _ip_path(self, ip: IPAddress) -> str:
        return os.path.join(self.dir, str(ip))

    # --- the index ---------------------------------------------------------------------------

    def _dir_signature(self) -> str:
        st = os.stat(self.dir)
        return f"{STAMP_VERSION} {st.st_ino} {st.st_mtime_ns}"

    def _index_is_fresh(self) -> bool:
        try:
            stamp = self._read(os.path.join(self.meta, STAMP_FILE))
            return stamp is not None and stamp.strip() == self._dir_signature()
        except OSError as exc:
            raise self._guard("read the index stamp", exc) from exc

    def _sweep_tmp(self) -> None:
        """Remove temp files of a request killed mid-write: temp files only exist while their
        writer holds the lock, so any seen by a lock holder are orphans. .pycni/ holds a handful
        of entries, so this stays O(1)."""
        try:
            for name in os.listdir(self.meta):
                if name.startswith(TMP_PREFIX):
                    _unlink_quietly(os.path.join(self.meta, name))
        except OSError as exc:
            raise self._guard("sweep temporary files", exc) from exc

    def _invalidate(self) -> None:
        _unlink_quietly(os.path.join(self.meta, STAMP_FILE))

    def _rebuild(self) -> None:
        """Recreate the owner index from the reservation files (the source of truth)."""
        try:
            self._invalidate()
            for entry in os.scandir(self.owners_dir):
                _unlink_quietly(entry.path)
            grouped: dict[Owner, list[IPAddress]] = {}
            for e in self.entries():
                grouped.setdefault(e.owner, []).append(e.ip)
            self._owners = grouped
            self._dirty_owners = set(grouped)
            self.rebuilt = True
        except OSError as exc:
            raise self._guard("rebuild the owner index", exc) from exc

    def _load_owner(self, owner: Owner) -> list[IPAddress]:
        if owner in self._owners:
            return self._owners[owner]
        ips: list[IPAddress] = []
        try:
            text = self._read(os.path.join(self.owners_dir, owner_key(owner)))
        except OSError as exc:
            raise self._guard("read the owner index", exc) from exc
        if text is not None:
            try:
                doc = json.loads(text)
                if doc.get("id") == owner.container_id and doc.get("ifname") == owner.ifname:
                    ips = [ipaddress.ip_address(v) for v in doc.get("ips", [])]
            except (ValueError, AttributeError):
                # A damaged index entry: trust the files instead, rebuild everything.
                self._rebuild()
                return self._owners.get(owner, [])
        self._owners[owner] = ips
        return ips

    def _commit(self) -> None:
        if self._stamp_ok and not (self._mutated or self._last or self._dirty_owners):
            return  # a read-only request on a fresh index: nothing to write
        try:
            for index, ip in self._last.items():
                self._replace(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{index}"), str(ip).encode())
            if self._mutated or self._last:
                dir_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.fsync(dir_fd)  # make the links/unlinks durable, not just visible
                finally:
                    os.close(dir_fd)
            for owner in self._dirty_owners:
                path = os.path.join(self.owners_dir, owner_key(owner))
                ips = self._owners.get(owner, [])
                if ips:
                    doc = {"id": owner.container_id, "ifname": owner.ifname, "ips": [str(i) for i in ips]}
                    self._replace(path, json.dumps(doc).encode())
                else:
                    _unlink_quietly(path)
            self._dirty_owners.clear()
            self._last.clear()
            self._replace(os.path.join(self.meta, STAMP_FILE), self._dir_signature().encode())
        except OSError:
            # Not fatal: the reservation files (the truth) are complete. Without a matching stamp
            # the next request rebuilds the index from them; the directory's mtime has moved if
            # anything was reserved or released, so a failing unlink here is covered too.
            try:
                self._invalidate()
            except OSError:
                pass

    # --- Store protocol ----------------------------------------------------------------------

    def reserve(self, owner: Owner, ip: IPAddress, set_index: int) -> bool:
        holders = self._load_owner(owner)
        path = self._ip_path(ip)
        try:
            if self._tmp is None or self._tmp[1] != owner:
                self._drop_tmp()
                self._tmp = (self._write_tmp(owner.file_content().encode(), sync=True), owner)
            try:
                os.link(self._tmp[0], path)  # the exclusive create: EEXIST when taken
            except FileExistsError:
                return False
            self._mutated = True
        except OSError as exc:
            raise self._guard(f"reserve {ip}", exc) from exc
        tmp, self._tmp = self._tmp[0], None
        try:
            os.unlink(tmp)
        except OSError:
            # The reservation stands; the stray temp file is swept by the next rebuild, which
            # skipping the commit (broken) forces.
            self._broken = True
        self._owners[owner] = [*holders, ip]
        self._dirty_owners.add(owner)
        self._last[set_index] = ip
        return True

    def release(self, ip: IPAddress) -> None:
        path = self._ip_path(ip)
        try:
            text = self._read(path)
            if text is None:
                return
            owner = Owner.from_file_content(text)
            holders = self._load_owner(owner)
            os.unlink(path)
            self._mutated = True
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._guard(f"release {ip}", exc) from exc
        self._owners[owner] = [i for i in holders if i != ip]
        self._dirty_owners.add(owner)

    def owned_by(self, owner: Owner) -> list[IPAddress]:
        return list(self._load_owner(owner))

    def last_reserved(self, set_index: int) -> IPAddress | None:
        if set_index in self._last:
            return self._last[set_index]
        try:
            text = self._read(os.path.join(self.dir, f"{LAST_RESERVED_PREFIX}{set_index}"))
            return ipaddress.ip_address(text.strip()) if text else None
        except (OSError, ValueError):
            return None  # only the round-robin position is lost (as the reference)

    def entries(self) -> list[Entry]:
        """Every reservation file, read: O(allocations)."""
        found = []
        for item in os.scandir(self.dir):
            ip = parse_ip_name(item.name)
            if ip is None or not item.is_file(follow_symlinks=False):
                continue
            try:
                text = self._read(item.path)
                mtime = item.stat(follow_symlinks=False).st_mtime
            except FileNotFoundError:
                continue
            if text is not None:
                found.append(Entry(ip, Owner.from_file_content(text), mtime))
        return found

    def reservations(self) -> Mapping[IPAddress, Owner]:
        try:
            return {e.ip: e.owner for e in self.entries()}
        except OSError as exc:
            raise self._guard("list reservations", exc) from exc

    def reserved_names(self) -> list[IPAddress]:
        """Reserved addresses from the directory listing alone (no reads): STATUS."""
        try:
            return [ip for ip in (parse_ip_name(n) for n in os.listdir(self.dir)) if ip is not None]
        except OSError as exc:
            raise self._guard("list reservations", exc) from exc

    def _drop_tmp(self) -> None:
        if self._tmp is not None:
            _unlink_quietly(self._tmp[0])
            self._tmp = None

    # --- reboot reclaim ----------------------------------------------------------------------

    def _check_boot(self, index_was_fresh: bool) -> None:
        try:
            current = self._boot_id()
        except OSError:
            return  # no boot id (not Linux /proc?): nothing to compare, reclaim nothing
        path = os.path.join(self.meta, BOOT_FILE)
        try:
            recorded = self._read(path)
        except OSError as exc:
            raise self._guard("read the boot id", exc) from exc
        recorded = recorded.strip() if recorded is not None else None
        if recorded == current:
            return
        if self.reclaim_on_reboot:
            self._reclaim_after_reboot(recorded, index_was_fresh)
        try:
            self._replace(path, current.encode())
        except OSError as exc:
            raise self._guard("record the boot id", exc) from exc

    def _reclaim_after_reboot(self, recorded: str | None, index_was_fresh: bool) -> None:
        """First request of a new boot: release the reservations of earlier boots.

        Their network namespaces died with the old kernel and the runtime will never send DEL
        (plugins#252, #697). Which reservations are old:
        - a different boot id is recorded and nothing touched the directory since our last request
          (index fresh): every reservation predates this boot;
        - otherwise (no record, e.g. first use after the reference plugin, or someone changed the
          directory since): only files last modified before this boot started (/proc/stat btime).
        A reservation made in this boot is never released.
        """
        try:
            entries = self.entries()
            if not entries:
                return
            if recorded is not None and index_was_fresh:
                old = entries
            else:
                started = self._boot_time()
                old = [e for e in entries if e.mtime < started]
            for e in old:
                self.release(e.ip)
            self.reclaimed = old
        except OSError as exc:
            raise self._guard("reclaim reservations of an earlier boot", exc) from exc


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.EISDIR):
            raise
