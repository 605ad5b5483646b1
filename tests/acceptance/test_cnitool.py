"""Acceptance: libcni's own client, cnitool, runs every conflist in conf/ on the installed pycni.

For each `conf/*.conflist`: a copy with subnets picked at run time (never overlapping a machine
route), a unique bridge name and a temp `dataDir` goes into a temp NETCONFPATH; cnitool runs
ADD, CHECK and DEL for two pods inside a fake host namespace, with
CNI_PATH=<pycni bin dir>:/usr/lib/cni (pycni first, the Go reference second for the plugins pycni
does not have yet). Checked as a user would: each pod has an address from the subnet on eth0,
the second pod pings the first, CHECK passes, after DEL (twice) eth0 is gone, no IPAM reservation
is left in dataDir, no veth is left on the host, cnitool's result cache is gone.

cnitool is not a Debian binary package: `bash scripts/build-cnitool` builds it (CI does). A
missing cnitool fails the test; it is never skipped. PYCNI_CNITOOL names another binary,
PYCNI_CONF_DIR another directory of conflists.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import os
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests.acceptance.conftest import chain_types
from tests.conftest import GO_PLUGINS, REPO, Netns, free_subnet

CONF_DIR = Path(os.environ.get("PYCNI_CONF_DIR") or REPO / "conf")
CONFLISTS = sorted(CONF_DIR.glob("*.conflist"))
# libcni (Debian's 1.1.2) caches results here; cnitool has no flag or variable to move it.
RESULTS_CACHE = Path("/var/lib/cni/results")
IFNAME = "eth0"


def cnitool_path() -> str:
    explicit = os.environ.get("PYCNI_CNITOOL")
    found = (
        explicit
        or shutil.which("cnitool")
        or ("/usr/local/bin/cnitool" if os.access("/usr/local/bin/cnitool", os.X_OK) else None)
    )
    if not found or not os.access(found, os.X_OK):
        pytest.fail(
            f"cnitool is not installed ({explicit or 'not on PATH nor /usr/local/bin'}): "
            "build it with `bash scripts/build-cnitool` (as root; Debian source package "
            "golang-github-appc-cni), as .ci/run does",
            pytrace=False,
        )
    return found


def cnitool_container_id(netns_path: str) -> str:
    """The container ID cnitool derives from the netns path (cnitool.go: sha512, first 10 bytes)."""
    return "cnitool-" + hashlib.sha512(os.path.abspath(netns_path).encode()).hexdigest()[:20]


def cache_files(net: str, netns_path: str) -> list[Path]:
    return sorted(RESULTS_CACHE.glob(f"{net}-{cnitool_container_id(netns_path)}-*"))


def rewrite(conf: dict, bridge: str, data_dir: Path) -> tuple[dict, list]:
    """The conflist with subnets free on this machine, a unique bridge name and a temp dataDir.

    Every IPv4 subnet becomes a free /24, every IPv6 one a free /64; gateway, rangeStart and
    rangeEnd keep their offset in the subnet; route destinations equal to an old subnet follow it.
    """
    conf = copy.deepcopy(conf)
    mapping: dict[str, ipaddress._BaseNetwork] = {}

    def new_subnet(old: str):
        if old not in mapping:
            version = ipaddress.ip_network(old, strict=False).version
            while (subnet := free_subnet(version)) in mapping.values():
                pass
            mapping[old] = subnet
        return mapping[old]

    def fix_range(rng: dict) -> None:
        old = ipaddress.ip_network(rng["subnet"], strict=False)
        new = new_subnet(rng["subnet"])
        rng["subnet"] = str(new)
        for key in ("gateway", "rangeStart", "rangeEnd"):
            if key in rng:
                offset = int(ipaddress.ip_address(rng[key])) - int(old.network_address)
                if not 0 < offset < new.num_addresses - 1:
                    raise AssertionError(f"{key} {rng[key]} does not fit a test subnet {new}")
                rng[key] = str(new.network_address + offset)

    for plugin in conf["plugins"]:
        if plugin.get("type", "").endswith("bridge"):
            plugin["bridge"] = bridge
        ipam = plugin.get("ipam")
        if not ipam:
            continue
        if ipam.get("type", "").endswith("host-local"):
            ipam["dataDir"] = str(data_dir)
        if "subnet" in ipam:
            fix_range(ipam)
        for rangeset in ipam.get("ranges", []):
            for rng in rangeset:
                fix_range(rng)
        for route in ipam.get("routes", []):
            if route.get("dst") in mapping:
                route["dst"] = str(mapping[route["dst"]])
    return conf, list(mapping.values())


def reservations(data_dir: Path) -> list[str]:
    """host-local reservation files (named by an IP address) anywhere under dataDir."""
    found = []
    for path in data_dir.rglob("*") if data_dir.exists() else ():
        try:
            ipaddress.ip_address(path.name)
        except ValueError:
            continue
        found.append(str(path.relative_to(data_dir)))
    return found


def host_veths(host: Netns) -> list[str]:
    return [link["ifname"] for link in host.ip_json("link", "show", "type", "veth")]


def eth0_addresses(pod: Netns) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    links = pod.ip_json("addr", "show", "dev", IFNAME)
    return [
        ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}")
        for link in links
        for a in link.get("addr_info", [])
        if a.get("scope") == "global"
    ]


def ping(src: Netns, dst: ipaddress._BaseAddress, tries: int = 10) -> subprocess.CompletedProcess[str]:
    # An IPv6 address may still be tentative (DAD) for a moment after ADD: retry briefly.
    for _ in range(tries):
        proc = src.run("ping", f"-{dst.version}", "-c", "1", "-W", "1", str(dst), check=False)
        if proc.returncode == 0:
            break
        time.sleep(0.3)
    return proc


@pytest.mark.parametrize("conflist", CONFLISTS, ids=[p.name for p in CONFLISTS])
def test_cnitool_add_check_del(conflist, host_netns, netns_factory, installed_bin, tmp_path, plugin_origins):
    cnitool = cnitool_path()
    original = json.loads(conflist.read_text())
    net = original["name"]
    bridge = "pyc" + uuid.uuid4().hex[:8]
    data_dir = tmp_path / "ipam"
    conf, subnets = rewrite(original, bridge, data_dir)
    assert subnets, f"{conflist.name} has no subnet to test"
    netconfpath = tmp_path / "net.d"
    netconfpath.mkdir()
    (netconfpath / conflist.name).write_text(json.dumps(conf, indent=2))

    cni_path = [Path(installed_bin), GO_PLUGINS]
    origins = plugin_origins(f"cnitool {conflist.name}", chain_types(conf), cni_path)
    print(f"\n{conflist.name}: " + ", ".join(f"{t} <- {d}" for t, d in origins.items()))

    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "CNI_PATH": os.pathsep.join(map(str, cni_path)),
        "NETCONFPATH": str(netconfpath),
    }

    def run(command: str, pod: Netns) -> subprocess.CompletedProcess[str]:
        return host_netns.run(cnitool, command, net, pod.path, check=False, env=env, timeout=60)

    def must(command: str, pod: Netns) -> subprocess.CompletedProcess[str]:
        proc = run(command, pod)
        assert proc.returncode == 0, f"cnitool {command} {net} {pod.path} failed: {proc.stderr or proc.stdout}"
        return proc

    pods = [netns_factory("pycni-pod") for _ in range(2)]
    added: list[Netns] = []
    try:
        results = []
        for pod in pods:
            added.append(pod)
            results.append(json.loads(must("add", pod).stdout))
            assert cache_files(net, pod.path), "libcni cached no result for the ADD"

        for pod, result in zip(pods, results, strict=True):
            have = eth0_addresses(pod)
            for subnet in subnets:
                in_subnet = [a for a in have if a.ip in subnet]
                assert in_subnet, f"{pod.name} eth0 has no address from {subnet}: {have}"
                assert any(ip["address"] == str(a) for ip in result["ips"] for a in in_subnet), (
                    f"ADD result {result['ips']} does not report eth0's {in_subnet}"
                )

        for address in [a.ip for a in eth0_addresses(pods[0])]:
            proc = ping(pods[1], address)
            assert proc.returncode == 0, f"second pod cannot ping {address}: {proc.stdout}{proc.stderr}"

        for pod in pods:
            must("check", pod)

        for pod in pods:
            must("del", pod)
            added.remove(pod)
            must("del", pod)  # runtimes repeat DEL; it must stay a success
            gone = pod.run("ip", "link", "show", IFNAME, check=False)
            assert gone.returncode != 0, f"{IFNAME} still in {pod.name} after DEL"
            assert not cache_files(net, pod.path), "libcni result cache left after DEL"

        assert reservations(data_dir) == [], f"IPAM reservations left in dataDir: {reservations(data_dir)}"
        assert host_veths(host_netns) == [], f"veths left on the host: {host_veths(host_netns)}"
    finally:
        for pod in reversed(added):
            run("del", pod)
        for pod in pods:
            for path in cache_files(net, pod.path):
                path.unlink(missing_ok=True)
