"""DiskStore on a real filesystem (tmp_path): layout, index, locking, fault injection, reboot reclaim.

Also the handlers end to end in-process through skel.dispatch (no root needed: IPAM never
touches a namespace).
"""

from __future__ import annotations

import errno
import fcntl
import io
import ipaddress
import json
import os
import stat
import types
from pathlib import Path

import pytest

from cni_plugin.entry import PLUGINS
from cni_plugin.spec import skel
from cni_plugin.spec.errors import StoreFailure, TryAgainLater
from ipam import allocator, config, disk
from ipam.disk import DiskStore
from ipam.store import Owner

ip = ipaddress.ip_address
NET = "net1"


def netconf(data_dir: Path, ranges=None, **ipam) -> dict:
    ranges = ranges or [[{"subnet": "10.10.0.0/24"}], [{"subnet": "fd10::/120"}]]
    return {
        "cniVersion": "1.1.0",
        "name": NET,
        "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": ranges, **ipam},
    }


def run(verb: str, conf: dict, cid: str = "c1", ifname: str = "eth0", cni_args: str = "") -> tuple[int, dict | None]:
    env = {
        "CNI_COMMAND": verb,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/var/run/netns/none",
        "CNI_IFNAME": ifname,
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": cni_args,
    }
    out = io.StringIO()
    rc = skel.dispatch(PLUGINS["host-local"], env, io.BytesIO(json.dumps(conf).encode()), out, io.StringIO())
    text = out.getvalue()
    return rc, (json.loads(text) if text.strip() else None)


def ip_files(data_dir: Path) -> dict[str, str]:
    d = data_dir / NET
    return {p.name: p.read_bytes().decode() for p in d.iterdir() if disk.parse_ip_name(p.name) is not None}


def assert_consistent(data_dir: Path) -> None:
    """Every reservation file is complete, and the owner index (after any rebuild) agrees."""
    files = ip_files(data_dir)
    owners: dict[Owner, set[str]] = {}
    for name, text in files.items():
        cid, sep, ifname = text.partition("\r\n")
        assert sep and cid and ifname, f"half-written reservation {name}: {text!r}"
        owners.setdefault(Owner(cid, ifname), set()).add(name)
    with DiskStore(str(data_dir), NET) as store:
        for owner, names in owners.items():
            assert {str(i) for i in store.owned_by(owner)} == names
    leftovers = [p.name for p in (data_dir / NET / disk.META_DIR).iterdir() if p.name.startswith(disk.TMP_PREFIX)]
    assert leftovers == []


# --- layout and verbs -------------------------------------------------------------------------


def test_add_writes_the_reference_layout(tmp_path):
    rc, result = run("ADD", netconf(tmp_path))
    assert rc == 0, result
    assert [i["address"] for i in result["ips"]] == ["10.10.0.2/24", "fd10::2/120"]
    assert [i["gateway"] for i in result["ips"]] == ["10.10.0.1", "fd10::1"]
    d = tmp_path / NET
    assert (d / "10.10.0.2").read_bytes() == b"c1\r\neth0"
    assert stat.S_IMODE((d / "10.10.0.2").stat().st_mode) == 0o600
    assert (d / "fd10::2").read_bytes() == b"c1\r\neth0"
    assert (d / "last_reserved_ip.0").read_text() == "10.10.0.2"
    assert (d / "last_reserved_ip.1").read_text() == "fd10::2"
    assert (d / "lock").exists()


def test_routes_and_dns_in_the_result(tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("nameserver 10.10.0.53\nsearch svc.local\n")
    conf = netconf(
        tmp_path, routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": "10.10.0.254"}], resolvConf=str(resolv)
    )
    rc, result = run("ADD", conf)
    assert rc == 0, result
    assert result["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "192.0.2.0/24", "gw": "10.10.0.254"}]
    assert result["dns"] == {"nameservers": ["10.10.0.53"], "search": ["svc.local"]}


def test_del_is_idempotent_and_releases_everything(tmp_path):
    conf = netconf(tmp_path)
    assert run("ADD", conf)[0] == 0
    assert run("ADD", conf, cid="c2")[0] == 0
    assert run("DEL", conf)[0] == 0
    assert sorted(ip_files(tmp_path)) == ["10.10.0.3", "fd10::3"]
    assert run("DEL", conf)[0] == 0
    # DEL must not need a valid config (nor a netns)
    assert run("DEL", {"cniVersion": "1.1.0", "name": NET, "ipam": {"dataDir": str(tmp_path)}}, cid="c2")[0] == 0
    assert ip_files(tmp_path) == {}


def test_del_without_netns_or_store_succeeds(tmp_path):
    conf = netconf(tmp_path)
    env = {"CNI_COMMAND": "DEL", "CNI_CONTAINERID": "c1", "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    out = io.StringIO()
    rc = skel.dispatch(PLUGINS["host-local"], env, io.BytesIO(json.dumps(conf).encode()), out, io.StringIO())
    assert (rc, out.getvalue()) == (0, "")
    assert not (tmp_path / NET).exists()  # DEL of nothing creates nothing
    run("ADD", conf)
    rc = skel.dispatch(PLUGINS["host-local"], env, io.BytesIO(json.dumps(conf).encode()), out, io.StringIO())
    assert rc == 0 and ip_files(tmp_path) == {}


def test_check_verifies_reservation_and_prev_result(tmp_path):
    conf = netconf(tmp_path)
    rc, result = run("ADD", conf)
    assert run("CHECK", {**conf, "prevResult": result})[0] == 0
    assert run("CHECK", conf)[0] == 0
    rc, err = run("CHECK", conf, cid="nobody")
    assert (rc, err["code"]) == (1, 3)
    wrong = {**result, "ips": [{"address": "10.10.0.77/24"}, result["ips"][1]]}
    rc, err = run("CHECK", {**conf, "prevResult": wrong})
    assert (rc, err["code"]) == (1, 108)
    assert "10.10.0.2" in err["details"]


def test_exhausted_range_is_code_100_and_status_50(tmp_path):
    conf = netconf(tmp_path, ranges=[[{"subnet": "10.11.0.0/29"}]])  # 5 addresses
    assert run("STATUS", conf)[0] == 0
    for i in range(5):
        assert run("ADD", conf, cid=f"c{i}")[0] == 0
    rc, err = run("ADD", conf, cid="c9")
    assert (rc, err["code"]) == (1, 100)
    assert "no IP addresses available" in err["msg"]
    rc, err = run("STATUS", conf)
    assert (rc, err["code"]) == (1, 50)
    run("DEL", conf, cid="c3")
    assert run("STATUS", conf)[0] == 0


def test_status_unusable_data_dir_is_50(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    rc, err = run("STATUS", netconf(blocker))
    assert (rc, err["code"]) == (1, 50)


def test_duplicate_add_is_code_102(tmp_path):
    conf = netconf(tmp_path)
    run("ADD", conf)
    rc, err = run("ADD", conf)
    assert (rc, err["code"]) == (1, 102)
    assert sorted(ip_files(tmp_path)) == ["10.10.0.2", "fd10::2"]


def test_requested_ip_via_cni_args_and_taken(tmp_path):
    conf = netconf(tmp_path)
    rc, result = run("ADD", conf, cni_args="IgnoreUnknown=1;K8S_POD_NAME=x;IP=10.10.0.50")
    assert rc == 0 and result["ips"][0]["address"] == "10.10.0.50/24"
    rc, err = run("ADD", conf, cid="c2", cni_args="IP=10.10.0.50")
    assert (rc, err["code"]) == (1, 101)
    assert sorted(ip_files(tmp_path)) == ["10.10.0.50", "fd10::2"]


def test_gc_releases_unlisted_keeps_listed_and_metadata(tmp_path):
    conf = netconf(tmp_path)
    for cid in ("keep", "drop"):
        run("ADD", conf, cid=cid)
    (tmp_path / NET / "10.10.0.99").write_text("legacy")  # a legacy id-only file of a live container
    (tmp_path / NET / "10.10.0.98").write_text("gone-legacy")
    valid = [{"containerID": "keep", "ifname": "eth0"}, {"containerID": "legacy", "ifname": "eth0"}]
    assert run("GC", {**conf, "cni.dev/valid-attachments": valid})[0] == 0
    assert sorted(ip_files(tmp_path)) == ["10.10.0.2", "10.10.0.99", "fd10::2"]
    d = tmp_path / NET
    assert (d / "lock").exists() and (d / "last_reserved_ip.0").exists()
    # the older key is accepted too; an empty list is meaningful: release everything
    assert run("GC", {**conf, "cni.dev/attachments": []})[0] == 0
    assert ip_files(tmp_path) == {}
    assert (d / "lock").exists()
    assert_consistent(tmp_path)


def test_gc_without_a_list_does_nothing(tmp_path):
    conf = netconf(tmp_path)
    run("ADD", conf)
    assert run("GC", conf)[0] == 0
    assert len(ip_files(tmp_path)) == 2


# --- the index: O(1) lookups, rebuilt when stale -----------------------------------------------


def test_del_and_add_do_not_read_every_file(tmp_path, mocker):
    conf = netconf(tmp_path, ranges=[[{"subnet": "10.12.0.0/22"}]])
    cfg = config.load(conf)
    with DiskStore(str(tmp_path), NET) as store:
        for n in range(300):
            allocator.allocate(store, cfg.range_sets, Owner(f"bulk{n}", "eth0"))
    reads = mocker.spy(DiskStore, "_read")
    scans = mocker.spy(disk.os, "scandir")
    assert run("ADD", conf, cid="one")[0] == 0
    assert run("DEL", conf, cid="bulk150")[0] == 0
    assert run("DEL", conf, cid="one")[0] == 0
    assert scans.call_count == 0
    assert reads.call_count < 20  # stamp, boot id, owner entries, the released files: not 300
    assert "10.12.0.152" not in ip_files(tmp_path)
    assert len(ip_files(tmp_path)) == 299


def test_stale_index_is_rebuilt_after_a_foreign_change(tmp_path):
    conf = netconf(tmp_path)
    run("ADD", conf)
    # the reference plugin (or an operator) adds a reservation behind our back
    (tmp_path / NET / "10.10.0.40").write_text("foreign\r\neth0")
    with DiskStore(str(tmp_path), NET) as store:
        assert store.rebuilt
        assert store.owned_by(Owner("foreign", "eth0")) == [ip("10.10.0.40")]
    with DiskStore(str(tmp_path), NET) as store:
        assert not store.rebuilt  # our own commit re-stamped it
    assert run("DEL", conf, cid="foreign")[0] == 0
    assert "10.10.0.40" not in ip_files(tmp_path)


def test_damaged_index_entry_is_rebuilt(tmp_path):
    conf = netconf(tmp_path)
    run("ADD", conf)
    for entry in (tmp_path / NET / disk.META_DIR / disk.OWNERS_DIR).iterdir():
        entry.write_text("{garbage")
    assert run("DEL", conf)[0] == 0
    assert ip_files(tmp_path) == {}


def test_lock_timeout_is_code_11(tmp_path):
    conf = netconf(tmp_path, lockTimeout=0.2)
    (tmp_path / NET).mkdir()
    fd = os.open(tmp_path / NET / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        rc, err = run("ADD", conf)
        assert (rc, err["code"]) == (1, 11)
        with pytest.raises(TryAgainLater):
            DiskStore(str(tmp_path), NET, lock_timeout=0.05).__enter__()
    finally:
        os.close(fd)
    assert ip_files(tmp_path) == {}
    assert run("ADD", conf)[0] == 0


# --- fault injection: every write step fails once ----------------------------------------------

WRITE_STEPS = ("open", "write", "fsync", "link", "unlink", "rename")


class FaultyOS(types.SimpleNamespace):
    """Stands in for `os` inside ipam.disk: the nth call to a write step raises EIO."""

    def __init__(self, step: str, nth: int) -> None:
        super().__init__()
        self._step, self._nth, self.calls, self.fired = step, nth, 0, False

    def __getattr__(self, name: str):
        real = getattr(os, name)
        if name != self._step:
            return real

        def faulty(*a, **kw):
            if name == "open" and not (a[1] & (os.O_WRONLY | os.O_RDWR)):
                return real(*a, **kw)  # only opens for writing count as write steps
            self.calls += 1
            if self.calls == self._nth:
                self.fired = True
                raise OSError(errno.EIO, "injected fault")
            return real(*a, **kw)

        return faulty


def _count_steps(tmp_path: Path, step: str) -> int:
    probe = FaultyOS(step, nth=10**9)
    conf = netconf(tmp_path / "probe")
    run("ADD", conf, cid="base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(disk, "os", probe)
        run("ADD", conf, cid="victim")
        run("DEL", conf, cid="base")
    return probe.calls


@pytest.mark.parametrize("step", WRITE_STEPS)
def test_a_fault_at_any_write_step_leaves_the_store_consistent(tmp_path, step):
    total = _count_steps(tmp_path, step)
    assert total > 0
    for nth in range(1, total + 1):
        data = tmp_path / f"run{nth}"
        conf = netconf(data)
        assert run("ADD", conf, cid="base")[0] == 0
        faulty = FaultyOS(step, nth)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(disk, "os", faulty)
            rc_add, out_add = run("ADD", conf, cid="victim")
            rc_del, out_del = run("DEL", conf, cid="base")
        assert faulty.fired
        for rc, out in ((rc_add, out_add), (rc_del, out_del)):
            if rc:
                assert out["code"] in (5, 109), out  # a documented code, never 999
        assert_consistent(data)
        files = ip_files(data)
        # a failed ADD left nothing, a successful one left a full dual-stack pair
        victim = sorted(n for n, t in files.items() if t.startswith("victim\r\n"))
        assert len(victim) in (0, 2)
        assert (rc_add == 0) == (len(victim) == 2)
        # the store keeps working: retry DEL, add and release a newcomer
        assert run("DEL", conf, cid="base")[0] == 0
        assert run("ADD", conf, cid="after")[0] == 0
        for cid in ("victim", "after"):
            assert run("DEL", conf, cid=cid)[0] == 0
        assert ip_files(data) == {}, f"{step} #{nth}"


def test_failing_link_in_the_middle_releases_the_first_set(tmp_path, mocker):
    conf = netconf(tmp_path)
    real_link = os.link

    def link(src, dst):
        if dst.endswith("fd10::2"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_link(src, dst)

    mocker.patch.object(disk.os, "link", side_effect=link)
    rc, err = run("ADD", conf)
    mocker.stopall()
    assert (rc, err["code"]) == (1, 109)
    assert ip_files(tmp_path) == {}
    assert_consistent(tmp_path)


def test_store_failure_is_typed(tmp_path, mocker):
    mocker.patch.object(disk.os, "link", side_effect=OSError(errno.EROFS, "ro"))
    with pytest.raises(StoreFailure):
        with DiskStore(str(tmp_path), NET) as store:
            store.reserve(Owner("c", "eth0"), ip("10.0.0.2"), 0)


# --- reboot reclaim ------------------------------------------------------------------------------


def _store(tmp_path: Path, boot: str, **kw) -> DiskStore:
    return DiskStore(str(tmp_path), NET, boot_id=lambda: boot, **kw)


def _reserve(store: DiskStore, cid: str, addr: str) -> None:
    assert store.reserve(Owner(cid, "eth0"), ip(addr), 0)


def test_reboot_reclaims_old_reservations_and_keeps_new_ones(tmp_path):
    with _store(tmp_path, "boot-1") as s:
        _reserve(s, "old1", "10.0.0.2")
        _reserve(s, "old2", "10.0.0.3")
    with _store(tmp_path, "boot-1") as s:  # same boot: nothing touched
        assert len(s.reservations()) == 2
    with _store(tmp_path, "boot-2") as s:
        assert sorted(str(e.ip) for e in s.reclaimed) == ["10.0.0.2", "10.0.0.3"]
        _reserve(s, "new", "10.0.0.4")
    with _store(tmp_path, "boot-2") as s:
        assert {str(k): v.container_id for k, v in s.reservations().items()} == {"10.0.0.4": "new"}
        assert s.owned_by(Owner("old1", "eth0")) == []
    assert (tmp_path / NET / disk.META_DIR / disk.BOOT_FILE).read_text() == "boot-2"


def test_reboot_with_foreign_changes_uses_file_times(tmp_path):
    with _store(tmp_path, "boot-1") as s:
        _reserve(s, "old", "10.0.0.2")
    d = tmp_path / NET
    os.utime(d / "10.0.0.2", (1000, 1000))
    # the reference plugin reserved one in the new boot before pycni's first request
    (d / "10.0.0.9").write_text("fresh\r\neth0")
    with _store(tmp_path, "boot-2", boot_time=lambda: 5000.0) as s:
        assert [str(e.ip) for e in s.reclaimed] == ["10.0.0.2"]
    assert sorted(ip_files(tmp_path)) == ["10.0.0.9"]


def test_first_use_without_a_record_only_reclaims_files_older_than_the_boot(tmp_path):
    d = tmp_path / NET
    d.mkdir()
    (d / "10.0.0.5").write_text("ancient\r\neth0")
    os.utime(d / "10.0.0.5", (1000, 1000))
    (d / "10.0.0.6").write_text("current\r\neth0")
    with _store(tmp_path, "boot-1", boot_time=lambda: 5000.0):
        pass
    assert sorted(ip_files(tmp_path)) == ["10.0.0.6"]


def test_reclaim_can_be_turned_off(tmp_path):
    with _store(tmp_path, "boot-1") as s:
        _reserve(s, "old", "10.0.0.2")
    with _store(tmp_path, "boot-2", reclaim_on_reboot=False) as s:
        assert s.reclaimed == []
    assert sorted(ip_files(tmp_path)) == ["10.0.0.2"]
    # the config key reaches the store
    conf = netconf(tmp_path, reclaimOnReboot=False)
    assert config.load(conf).reclaim_on_reboot is False
