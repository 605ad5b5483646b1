#!/usr/bin/env python3
"""Benchmark (not a test): host-local IPAM ADD/DEL alone, pycni vs the Go reference.

For each implementation and each store size (0 and 1000 existing allocations), run ADD then DEL
of a fresh container, interleaved in one run (round-robin over the combinations, so machine noise
hits all of them alike), and print the p50 wall time of each exec, the ratios pycni/Go, and the
growth from 0 to 1000 allocations. Also times pycni's in-process entry point (what pycni's bridge
uses: no second interpreter), when this interpreter can import the project.

    scripts/bench_ipam.py [--ours PATH] [--go PATH] [--iterations N] [--sizes 0,1000]

Stdlib only. --ours defaults to pycni-host-local on CNI_PATH-ish places, else installs into a
temporary directory with scripts/install.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUBNET = ipaddress.ip_network("198.18.0.0/16")
NET = "bench"

IN_PROCESS = r"""
import io, json, sys, time
from cni_plugin.entry import PLUGINS
from cni_plugin.spec import skel
config, iterations, tag = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
plugin = PLUGINS["host-local"]
def call(verb, cid):
    env = {"CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": "/var/run/netns/none",
           "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}
    out = io.StringIO()
    t = time.perf_counter()
    rc = skel.dispatch(plugin, env, io.BytesIO(json.dumps(config).encode()), out, io.StringIO())
    dt = time.perf_counter() - t
    if rc:
        raise SystemExit(out.getvalue())
    return dt
call("ADD", "warm"); call("DEL", "warm")
add, dele = [], []
for i in range(iterations):
    add.append(call("ADD", f"{tag}{i}"))
    dele.append(call("DEL", f"{tag}{i}"))
print(json.dumps({"add": add, "del": dele}))
"""


def config(data_dir: Path) -> dict:
    return {
        "cniVersion": "1.0.0",
        "name": NET,
        "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": str(SUBNET)}]]},
    }


def prefill(data_dir: Path, count: int) -> None:
    d = data_dir / NET
    d.mkdir(parents=True)
    hosts = SUBNET.hosts()
    next(hosts)  # .0.1 is the gateway
    last = None
    for n in range(count):
        last = next(hosts)
        (d / str(last)).write_bytes(f"existing{n}\r\neth0".encode())
    if last is not None:
        (d / "last_reserved_ip.0").write_text(str(last))


def exec_once(exe: str, verb: str, cid: str, data: bytes) -> float:
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_COMMAND": verb,
        "CNI_CONTAINERID": cid,
        "CNI_NETNS": "/var/run/netns/none",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
    }
    started = time.perf_counter()
    proc = subprocess.run([exe], input=data, env=env, capture_output=True)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{exe} {verb} {cid} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def find_ours(tmp: Path) -> str:
    for candidate in ("/opt/cni/bin/pycni-host-local", shutil.which("pycni-host-local") or ""):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    bin_dir = tmp / "bin"
    subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "install.py"),
            "--prefix",
            str(tmp / "prefix"),
            "--bin-dir",
            str(bin_dir),
            "--names",
            "prefixed",
            "--python",
            sys.executable,
        ],
        check=True,
    )
    return str(bin_dir / "pycni-host-local")


def p50_ms(values: list[float]) -> float:
    return statistics.median(values) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", help="the pycni-host-local executable")
    parser.add_argument("--go", default="/usr/lib/cni/host-local")
    parser.add_argument("--iterations", type=int, default=25)
    parser.add_argument("--sizes", default="0,1000")
    opts = parser.parse_args()
    sizes = [int(s) for s in opts.sizes.split(",")]

    with tempfile.TemporaryDirectory(prefix="bench-ipam-") as tmp_name:
        tmp = Path(tmp_name)
        impls = {"pycni": opts.ours or find_ours(tmp), "go": opts.go}
        dirs: dict[tuple[str, int], Path] = {}
        for impl in impls:
            for size in sizes:
                d = tmp / f"{impl}-{size}"
                prefill(d, size)
                dirs[impl, size] = d
        # warm-up (and pycni's one-off index build over the prefilled files), not measured
        for (impl, _size), d in dirs.items():
            data = json.dumps(config(d)).encode()
            exec_once(impls[impl], "ADD", "warmup", data)
            exec_once(impls[impl], "DEL", "warmup", data)

        samples: dict[tuple[str, int, str], list[float]] = {}
        combos = list(dirs)
        for i in range(opts.iterations):
            random.shuffle(combos)
            for impl, size in combos:
                data = json.dumps(config(dirs[impl, size])).encode()
                cid = f"bench{i}"
                samples.setdefault((impl, size, "ADD"), []).append(exec_once(impls[impl], "ADD", cid, data))
                samples.setdefault((impl, size, "DEL"), []).append(exec_once(impls[impl], "DEL", cid, data))

        in_process: dict[tuple[int, str], list[float]] = {}
        for size in sizes:
            d = tmp / f"inproc-{size}"
            prefill(d, size)
            proc = subprocess.run(
                [sys.executable, "-c", IN_PROCESS, json.dumps(config(d)), str(opts.iterations), "inproc"],
                cwd=REPO,
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                got = json.loads(proc.stdout)
                in_process[size, "ADD"], in_process[size, "DEL"] = got["add"], got["del"]
            else:
                print(f"(in-process run skipped: {proc.stderr.strip().splitlines()[-1:]})", file=sys.stderr)

    print(f"host-local IPAM, p50 of {opts.iterations} interleaved runs per cell (ms); exec = one process per call")
    print(f"pycni: {impls['pycni']}\ngo:    {impls['go']}\n")
    header = f"{'verb':<5}{'allocs':>7}{'go exec':>10}{'pycni exec':>12}{'ratio':>8}{'pycni in-proc':>15}{'ratio':>8}"
    print(header)
    print("-" * len(header))
    for verb in ("ADD", "DEL"):
        for size in sizes:
            go = p50_ms(samples["go", size, verb])
            ours = p50_ms(samples["pycni", size, verb])
            inproc = p50_ms(in_process[size, verb]) if (size, verb) in in_process else float("nan")
            print(f"{verb:<5}{size:>7}{go:>10.2f}{ours:>12.2f}{ours / go:>7.1f}x{inproc:>15.2f}{inproc / go:>7.2f}x")
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        print(f"\ngrowth {lo} -> {hi} allocations (p50 difference, ms):")
        for verb in ("ADD", "DEL"):
            parts = []
            for impl in ("go", "pycni"):
                parts.append(f"{impl} {p50_ms(samples[impl, hi, verb]) - p50_ms(samples[impl, lo, verb]):+.2f}")
            if (hi, verb) in in_process and (lo, verb) in in_process:
                delta = p50_ms(in_process[hi, verb]) - p50_ms(in_process[lo, verb])
                parts.append(f"pycni in-proc {delta:+.2f}")
            print(f"  {verb}: " + ", ".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
