#!/usr/bin/env python3
"""Side-by-side benchmark: pycni vs the Go reference plugins (/usr/lib/cni), one interleaved run.

Whole-process timings, as a runtime sees them: every sample execs the plugin with a bare
environment and the config on stdin. Each round runs the pycni and the Go case back to back,
so both see the same machine load. Peak RSS comes from warm-up runs under GNU time(1). Reports p50/p99 and ratios
(pycni / Go).

The plugins run in a fake node namespace this script creates (it never touches the
machine's own interfaces), and every namespace it makes is removed at the end.

Usage (as root): scripts/bench.py [--bin-dir DIR] [--rounds N]
Stdlib only.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

GO = Path("/usr/lib/cni")
WARMUP_ROUNDS = 3  # run under time(1) for peak RSS; not timed
CLONE_NEWNET = 0x40000000


def setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns failed")
    finally:
        os.close(fd)


@dataclass
class Sample:
    ms: float | None  # None: a warm-up sample, measured for RSS only
    rss_kib: int


@dataclass
class Series:
    samples: list[Sample] = field(default_factory=list)

    def pct(self, q: float) -> float:
        xs = sorted(s.ms for s in self.samples if s.ms is not None)
        return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]

    def peak_rss_mib(self) -> float:
        return max(s.rss_kib for s in self.samples) / 1024


class Runner:
    """Runs a plugin once per step: timed when spawned directly, RSS-measured under GNU time.

    At exec the kernel folds the old address space's high-water mark into the child's maxrss,
    and a child spawned from this Python process starts on this process's pages: its own
    ru_maxrss would report ours. /usr/bin/time is a ~1 MiB parent, so under it the plugin's own
    peak shows. The first rounds run under time(1) (warm-up, RSS only); later rounds are timed
    without it, so no timing includes time(1) and no step runs twice.
    """

    measure_rss = False

    @staticmethod
    def run(exe: Path, env: dict[str, str], stdin: bytes) -> tuple[Sample, int, bytes]:
        argv = ["/usr/bin/time", "-f", "%M", str(exe)] if Runner.measure_rss else [str(exe)]
        started = time.perf_counter()
        proc = subprocess.run(argv, input=stdin, env=env, capture_output=True)
        elapsed = (time.perf_counter() - started) * 1000
        if Runner.measure_rss:
            rss = int(proc.stderr.decode().strip().splitlines()[-1])
            return Sample(None, rss), proc.returncode, proc.stdout
        return Sample(elapsed, 0), proc.returncode, proc.stdout


def cni_env(command: str, netns: str = "", container_id: str = "bench", ifname: str = "eth0",
            path: str = "") -> dict[str, str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command}
    if command != "VERSION":
        env.update(CNI_CONTAINERID=container_id, CNI_IFNAME=ifname, CNI_PATH=path)
        if netns:
            env["CNI_NETNS"] = netns
    return env


class Namespaces:
    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, prefix: str) -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        return name

    def remove(self, name: str) -> None:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
        if name in self.names:
            self.names.remove(name)

    def close(self) -> None:
        for name in list(self.names):
            self.remove(name)


# A case: given (exe, round index) run one measured step; setup/teardown are not timed.
Case = Callable[[Path, int], Sample]


def loopback_cases(ns: Namespaces) -> dict[str, tuple[Case, str, str]]:
    config = json.dumps({"cniVersion": "0.3.1", "name": "cni-loopback", "type": "loopback"}).encode()
    check_config = json.dumps({"cniVersion": "1.0.0", "name": "cni-loopback", "type": "loopback"}).encode()
    pod = ns.add("pycni-bench-pod")
    path = f"/run/netns/{pod}"

    def step(command: str, data: bytes) -> Case:
        def run(exe: Path, _round: int) -> Sample:
            sample, rc, out = Runner.run(exe, cni_env(command, path, ifname="lo", path=str(exe.parent)), data)
            if rc != 0:
                raise RuntimeError(f"{exe} {command} failed: {out.decode()}")
            return sample

        return run

    return {
        "loopback VERSION": (step("VERSION", config), "pycni-loopback", "loopback"),
        "loopback ADD": (step("ADD", config), "pycni-loopback", "loopback"),
        "loopback CHECK": (step("CHECK", check_config), "pycni-loopback", "loopback"),
        "loopback DEL": (step("DEL", config), "pycni-loopback", "loopback"),
    }


def bridge_cases(ns: Namespaces, bin_dir: Path) -> dict[str, tuple[Case, str, str]]:
    """ADD, CHECK and DEL of a pod on a bridge with host-local IPAM: pycni's pair vs Go's pair.

    Each implementation gets its own bridge, subnet and data dir; a pod namespace per round is
    created before ADD and removed after DEL, outside the timings.
    """
    import tempfile

    data = Path(tempfile.mkdtemp(prefix="pycni-bench-"))
    configs = {}
    for n, (impl, bridge_type, ipam_type) in enumerate(
        (("pycni", "pycni-bridge", "pycni-host-local"), ("go", "bridge", "host-local"))
    ):
        configs[impl] = {
            "cniVersion": "1.0.0", "name": f"bench-{impl}", "type": bridge_type, "bridge": f"bench{n}",
            "isGateway": True, "ipMasq": False,
            "ipam": {"type": ipam_type, "dataDir": str(data / impl), "ranges": [[{"subnet": f"198.18.{n}.0/24"}]]},
        }
    path = f"{bin_dir}:{GO}"
    pods: dict[tuple[str, int], str] = {}
    results: dict[tuple[str, int], dict] = {}

    def impl_of(exe: Path) -> str:
        return "pycni" if exe.parent == bin_dir else "go"

    def run(command: str, exe: Path, r: int, config: dict) -> Sample:
        pod = pods[(impl_of(exe), r)]
        env = cni_env(command, f"/run/netns/{pod}", container_id=f"bench-{r}", path=path)
        sample, rc, out = Runner.run(exe, env, json.dumps(config).encode())
        if rc != 0:
            raise RuntimeError(f"{exe} {command} failed: {out.decode()}")
        if command == "ADD":
            results[(impl_of(exe), r)] = json.loads(out)
        return sample

    def add(exe: Path, r: int) -> Sample:
        pods[(impl_of(exe), r)] = ns.add("pycni-bench-pod")
        return run("ADD", exe, r, configs[impl_of(exe)])

    def check(exe: Path, r: int) -> Sample:
        return run("CHECK", exe, r, {**configs[impl_of(exe)], "prevResult": results[(impl_of(exe), r)]})

    def delete(exe: Path, r: int) -> Sample:
        sample = run("DEL", exe, r, {**configs[impl_of(exe)], "prevResult": results[(impl_of(exe), r)]})
        ns.remove(pods.pop((impl_of(exe), r)))
        return sample

    return {
        "bridge ADD": (add, "pycni-bridge", "bridge"),
        "bridge CHECK": (check, "pycni-bridge", "bridge"),
        "bridge DEL": (delete, "pycni-bridge", "bridge"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", type=Path, default=Path(os.environ.get("CNI_BIN_DIR", "/opt/cni/bin")))
    parser.add_argument("--rounds", type=int, default=43)
    opts = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench: run as root (it creates network namespaces)")
    if not (opts.bin_dir / "pycni-loopback").exists():
        sys.exit(f"bench: no pycni executables in {opts.bin_dir}; run `make install CNI_BIN_DIR=...` first")

    ns = Namespaces()
    try:
        node = ns.add("pycni-bench-node")
        setns(f"/run/netns/{node}")  # children inherit the fake node namespace
        cases = {**loopback_cases(ns), **bridge_cases(ns, opts.bin_dir)}
        results: dict[str, dict[str, Series]] = {name: {"pycni": Series(), "go": Series()} for name in cases}
        for r in range(opts.rounds):
            Runner.measure_rss = r < WARMUP_ROUNDS
            for name, (case, ours, theirs) in cases.items():
                # Alternate who goes first so neither always runs on a warmer cache.
                order = [("pycni", opts.bin_dir / ours), ("go", GO / theirs)]
                for impl, exe in order if r % 2 == 0 else reversed(order):
                    results[name][impl].samples.append(case(exe, r))
        print(f"{'case':<22}{'pycni p50':>10}{'p99':>8}{'go p50':>9}{'p99':>8}{'ratio p50':>11}"
              f"{'RSS MiB':>9}{'go RSS':>8}{'ratio':>7}")
        for name, series in results.items():
            ours, theirs = series["pycni"], series["go"]
            print(f"{name:<22}{ours.pct(0.5):>10.1f}{ours.pct(0.99):>8.1f}{theirs.pct(0.5):>9.1f}"
                  f"{theirs.pct(0.99):>8.1f}{ours.pct(0.5) / theirs.pct(0.5):>10.2f}x"
                  f"{ours.peak_rss_mib():>9.1f}{theirs.peak_rss_mib():>8.1f}"
                  f"{ours.peak_rss_mib() / theirs.peak_rss_mib():>6.2f}x")
        print(f"({opts.rounds - WARMUP_ROUNDS} timed rounds after {WARMUP_ROUNDS} warm-up rounds that measured RSS;"
              " interleaved; times in ms, whole process)")
    finally:
        ns.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
