"""scripts/cluster-bench: its route reader agrees with `ip -j route show proto N`, and a tiny run
measures, prints its tables and leaves nothing behind.

No timing is asserted (the machine is shared): what is asserted is what an operator reads from the
bench (a convergence row with numbers, the idle table), and that no namespace or process of the
run is left.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO, free_subnet
from tests.multinode import prefix_of

pytestmark = pytest.mark.integration

BENCH = REPO / "scripts" / "cluster-bench"


def load_bench() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("pycni_cluster_bench", str(BENCH))
    spec = importlib.util.spec_from_loader("pycni_cluster_bench", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pycni_cluster_bench"] = module  # dataclasses resolve annotations through sys.modules
    loader.exec_module(module)
    return module


_prefix_of = prefix_of  # the install prefix behind the session's installed_bin


def test_route_reader_sees_the_routes_ip_shows_for_a_protocol(netns_factory) -> None:
    bench = load_bench()
    ns = netns_factory("pycni-cbr")
    link, ours, birds, static = (free_subnet(4) for _ in range(4))
    gw = link.network_address + 2

    def ip(*argv: str) -> None:
        subprocess.run(["ip", "-n", ns.name, *argv], check=True, capture_output=True)

    ip("link", "add", "d0", "type", "veth", "peer", "name", "d1")  # no dummy module on every kernel
    ip("link", "set", "d1", "up")
    ip("addr", "add", f"{link.network_address + 1}/{link.prefixlen}", "dev", "d0")
    ip("link", "set", "d0", "up")
    ip("route", "add", str(ours), "via", str(gw), "proto", "112")
    ip("route", "add", str(birds), "via", str(gw), "proto", "12")
    ip("route", "add", str(static), "via", str(gw), "proto", "static")
    reader = bench.RouteReader(ns.name)
    try:
        assert reader.routes((112,)) == {str(ours)} == {r["dst"] for r in ns.ip_json("route", "show", "proto", "112")}
        assert reader.routes((112, 12)) == {str(ours), str(birds)}
        ip("route", "del", str(ours))
        assert reader.routes((112,)) == set()
    finally:
        reader.close()


def test_tiny_run_prints_its_tables_and_leaves_nothing(installed_bin: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--nodes", "2", "--backends", "host-gw", "--reps", "1", "--idle-seconds", "1",
         "--no-throughput", "--prefix", str(_prefix_of(installed_bin))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the bench cleans up on SIGTERM
            proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    rows = [line.split() for line in stdout.splitlines() if line.startswith("host-gw ")]
    # The convergence row (join and leave times as numbers) and the idle row.
    assert any(r[1] == "2" and r[2:4] == ["synthetic", "record"] and r[4].isdigit() for r in rows), stdout
    assert any(r[1] == "2" and r[2] == "1" for r in rows), stdout
    assert "left behind" not in stderr
    tag = f"pcl{proc.pid}"
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    assert tag not in left
    procs = subprocess.run(["pgrep", "-af", tag], capture_output=True, text=True).stdout
    assert procs.strip() == "", procs


def test_sigterm_mid_run_removes_everything_birds_too(installed_bin: Path) -> None:
    """Interrupted while a bgp cluster runs (agents and their BIRDs up): exit 130, nothing left."""
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--nodes", "2", "--backends", "bgp", "--reps", "3", "--no-throughput",
         "--prefix", str(_prefix_of(installed_bin))],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    tag = f"pcl{proc.pid}"
    seen: list[str] = []
    birds = ""
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "agents up and settled" in line:
                birds = subprocess.run(["pgrep", "-af", tag], capture_output=True, text=True).stdout
                proc.terminate()
                break
        rest, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=60)
    output = "".join(seen) + rest
    assert "bird -f" in birds, output  # the run was really interrupted with BIRDs up
    assert proc.returncode == 130, output
    assert "interrupted; everything removed" in output
    assert tag not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    left = subprocess.run(["pgrep", "-af", tag], capture_output=True, text=True).stdout
    assert left.strip() == "", left
