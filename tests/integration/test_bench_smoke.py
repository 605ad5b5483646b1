"""scripts/bench as a smoke test: a tiny daemonless run completes, cleans up and verifies clean.

No timing is asserted (the machine is shared); what is asserted is what an operator reads from
the bench: every metric was measured on both sides, the verification (no duplicate address, no
leaked IPAM file, no leftover veth or bridge port) is clean, and no namespace is left behind.
The checks the verification relies on are also shown to catch a leak and a duplicate.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import ipaddress
import json
import subprocess
import sys
import threading
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO

BENCH = REPO / "scripts" / "bench"


def load_bench() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("pycni_bench", str(BENCH))
    spec = importlib.util.spec_from_loader("pycni_bench", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["pycni_bench"] = module  # dataclasses resolve annotations through sys.modules
    loader.exec_module(module)
    return module


def namespaces_of(pid: int) -> list[str]:
    """The namespaces a bench process made: all are named pcb-<its pid>-..."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(f"pcb-{pid}-")]


def test_quick_daemonless_run_is_clean(installed_bin: Path, tmp_path: Path) -> None:
    report_file = tmp_path / "bench.json"
    proc = subprocess.Popen(
        [sys.executable, str(BENCH), "--quick", "--mode", "daemonless", "--bin-dir", str(installed_bin),
         "--rounds", "1", "--churn-pods", "2", "--sizes", "0,100", "--json", str(report_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.terminate()  # the bench cleans up on SIGTERM
            proc.communicate(timeout=60)
    assert proc.returncode == 0, stdout + stderr
    assert "verification: clean" in stdout

    report = json.loads(report_file.read_text())
    assert report["verification"]["clean"] is True
    assert report["verification"]["problems"] == []
    assert list(report["modes"]) == ["daemonless"]
    metrics = {m["name"]: m for m in report["modes"]["daemonless"]["metrics"]}
    expected = {f"{plugin} {verb}" for plugin in ("loopback", "bridge") for verb in ("VERSION", "ADD", "CHECK", "DEL")}
    expected |= {"churn 1 worker", "churn 4 workers", "bridge ADD @0 allocs", "bridge ADD @100 allocs",
                 "bridge DEL @0 allocs", "bridge DEL @100 allocs", "loopback peak RSS", "bridge peak RSS"}
    assert expected <= set(metrics)
    for name in expected:
        assert metrics[name]["pycni"]["n"] >= 1 and metrics[name]["go"]["n"] >= 1, name
        assert metrics[name]["ratio"] is not None, name
    assert metrics["bridge ADD"]["target"] == "<= 8x"
    assert namespaces_of(proc.pid) == []  # every pod and node namespace it made is gone


def test_verification_catches_leaks_and_duplicates(tmp_path: Path) -> None:
    bench = load_bench()
    b = bench.Bench(tmp_path, bench.QUICK, False, bench.Subnets.carve(ipaddress.ip_network("198.18.0.0/20")))
    network = tmp_path / "net"
    kept = bench.prefill(network, ipaddress.ip_network("198.18.0.0/22"), 3)
    b.verify_ipam("clean", network, kept)
    assert b.problems == []

    (network / "198.18.0.9").write_text("leaked\r\neth0")
    (network / sorted(kept)[0]).unlink()
    b.verify_ipam("dirty", network, kept)
    assert any("leaked IPAM files" in p and "198.18.0.9" in p for p in b.problems)
    assert any("IPAM files lost" in p for p in b.problems)

    live: dict[str, str] = {}
    lock = threading.Lock()
    b.problems.clear()
    b.claim("dup", live, lock, ["198.18.0.20"], "pod-a")
    b.claim("dup", live, lock, ["198.18.0.20"], "pod-b")
    b.claim("dup", live, lock, [sorted(kept)[1]], "pod-c", forbidden=kept)
    assert any("duplicate address 198.18.0.20" in p for p in b.problems)
    assert any("prefilled allocation" in p for p in b.problems)
