"""The installed `pycni-host-local` under load and under kill -9, on a real filesystem."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import bare_env, free_subnet, ipam_reservations, run_plugin

pytestmark = pytest.mark.integration
NET = "stress"


def conf(data_dir: Path, subnet, **extra) -> dict:
    return {
        "cniVersion": "1.1.0",
        "name": NET,
        "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": str(subnet)}]], **extra},
    }


def env(verb: str, cid: str) -> dict[str, str]:
    return bare_env(
        CNI_COMMAND=verb,
        CNI_CONTAINERID=cid,
        CNI_NETNS="/var/run/netns/none",
        CNI_IFNAME="eth0",
        CNI_PATH="/opt/cni/bin",
    )


def reservations(data_dir: Path) -> dict[str, str]:
    return ipam_reservations(data_dir / NET)


def launch(exe: Path, verb: str, cid: str, config: dict) -> subprocess.Popen:
    proc = subprocess.Popen(
        [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(verb, cid)
    )
    proc.stdin.write(json.dumps(config).encode())
    proc.stdin.close()
    return proc


def finish(proc: subprocess.Popen) -> tuple[int, dict | None]:
    out = proc.stdout.read()
    proc.wait(timeout=120)
    proc.stdout.close()
    proc.stderr.close()
    return proc.returncode, (json.loads(out) if out.strip() else None)


def test_64_concurrent_processes_on_a_nearly_full_24(installed_bin, tmp_path):
    exe = installed_bin / "pycni-host-local"
    subnet = free_subnet(4, 24)
    # 64 interpreters start at once on a CI box of 2 cores: a contender can wait longer than the
    # default 10 s for its turn at the lock. The lock timeout itself is tested in test_ipam_disk.
    config = conf(tmp_path, subnet, lockTimeout=60)
    # Pre-fill: 253 allocatable (.2-.254, gateway .1 skipped); leave exactly 60 free for 64 contenders.
    d = tmp_path / NET
    d.mkdir()
    hosts = list(subnet.hosts())[1:]  # .2 .. .254
    prefilled = {str(h): f"pre{i}\r\neth0" for i, h in enumerate(hosts[: len(hosts) - 60])}
    for name, text in prefilled.items():
        (d / name).write_bytes(text.encode())

    started = time.monotonic()
    procs = {f"ctr{i:02d}": launch(exe, "ADD", f"ctr{i:02d}", config) for i in range(64)}
    results = {cid: finish(p) for cid, p in procs.items()}
    add_time = time.monotonic() - started

    winners = {cid: r["ips"][0]["address"].split("/")[0] for cid, (rc, r) in results.items() if rc == 0}
    losers = {cid: r for cid, (rc, r) in results.items() if rc != 0}
    assert len(winners) == 60, losers
    assert len(set(winners.values())) == 60, "one address handed to two live owners"
    assert not set(winners.values()) & set(prefilled)
    assert {r["code"] for r in losers.values()} == {100}, losers  # exhaustion, documented, never 999
    on_disk = reservations(tmp_path)
    for cid, addr in winners.items():
        assert on_disk[addr] == f"{cid}\r\neth0"
    assert len(on_disk) == 253

    procs = {cid: launch(exe, "DEL", cid, config) for cid in results}
    dels = {cid: finish(p) for cid, p in procs.items()}
    assert all(rc == 0 for rc, _ in dels.values()), dels
    assert reservations(tmp_path) == prefilled, "DEL left reservations behind or took foreign ones"
    assert not [p for p in (d / ".pycni").iterdir() if p.name.startswith("tmp-")]
    print(f"64 concurrent ADDs in {add_time:.1f}s")


CHURN = r"""
import io, json, sys
from cni_plugin.entry import PLUGINS
from cni_plugin.spec import skel
config = json.loads(sys.argv[1])
n = 0
while True:
    for verb in ("ADD", "DEL"):
        env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": f"churn{n % 7}", "CNI_NETNS": "/var/run/netns/none",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/bin"}
        skel.dispatch(PLUGINS["host-local"], env, io.BytesIO(json.dumps(config).encode()), io.StringIO(), io.StringIO())
    n += 1
"""


def in_process(verb: str, cid: str, config: dict) -> int:
    import io

    from cni_plugin.entry import PLUGINS
    from cni_plugin.spec import skel

    return skel.dispatch(
        PLUGINS["host-local"], env(verb, cid), io.BytesIO(json.dumps(config).encode()), io.StringIO(), io.StringIO()
    )


def test_kill_9_at_random_instants_leaves_a_consistent_store(installed_bin, tmp_path):
    """A process churning ADD/DEL is killed -9 over and over; every reservation stays whole and the
    next ADD/DEL works."""
    import random

    exe = installed_bin / "pycni-host-local"
    subnet = free_subnet(4, 26)
    config = conf(tmp_path, subnet)
    repo = Path(__file__).resolve().parents[2]
    for round_ in range(8):
        child = subprocess.Popen(
            [sys.executable, "-c", CHURN, json.dumps(config)],
            cwd=repo,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(random.uniform(0.4, 0.9))
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        for name, text in reservations(tmp_path).items():
            cid, sep, ifname = text.partition("\r\n")
            assert sep and cid.startswith("churn") and ifname == "eth0", f"round {round_}: {name}={text!r}"
        # the next requests work and see the same truth
        rc, result, _ = run_plugin(exe, env("ADD", f"probe{round_}"), config)
        assert rc == 0, result
        for cid in [f"churn{n}" for n in range(7)] + [f"probe{round_}"]:
            assert in_process("DEL", cid, config) == 0
        assert reservations(tmp_path) == {}, f"round {round_}"
        leftovers = [p.name for p in (tmp_path / NET / ".pycni").iterdir() if p.name.startswith("tmp-")]
        assert leftovers == []  # a killed request's temp files are swept by the next one


def test_a_simulated_reboot_reclaims_old_reservations_and_keeps_new_ones(installed_bin, tmp_path):
    exe = installed_bin / "pycni-host-local"
    config = conf(tmp_path, free_subnet(4, 24))
    for cid in ("before1", "before2"):
        assert run_plugin(exe, env("ADD", cid), config)[0] == 0
    boot_file = tmp_path / NET / ".pycni" / "boot_id"
    assert boot_file.read_text() == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    boot_file.write_text("00000000-0000-0000-0000-000000000000")  # the store was last used in another boot

    rc, result, _ = run_plugin(exe, env("ADD", "after"), config)
    assert rc == 0, result
    owners = {text.split("\r\n")[0] for text in reservations(tmp_path).values()}
    assert owners == {"after"}
    assert run_plugin(exe, env("ADD", "after2"), config)[0] == 0  # same boot now: nothing reclaimed
    owners = {text.split("\r\n")[0] for text in reservations(tmp_path).values()}
    assert owners == {"after", "after2"}

    # with reclaimOnReboot off, a foreign boot id releases nothing
    off = {**config, "ipam": {**config["ipam"], "reclaimOnReboot": False}}
    boot_file.write_text("00000000-0000-0000-0000-000000000000")
    assert run_plugin(exe, env("ADD", "after3"), off)[0] == 0
    assert len(reservations(tmp_path)) == 3
