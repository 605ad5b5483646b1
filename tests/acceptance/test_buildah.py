"""Acceptance: buildah 1.28 (Debian) runs build steps on a CNI network served by pycni.

`buildah run --network <net>` loads the same conflist podman wrote (same containers.conf:
pycni's directory first in `cni_plugin_dirs`, /usr/lib/cni second), ADDs the builder's namespace
for the duration of the command and DELs it afterwards. Checked as a user would: inside the run
the builder has an address of the network and reaches a podman container and the gateway; after
the run no veth, reservation, netns or rule of it is left, and a second run works the same;
the machine's own container configuration and state directories are untouched.
Private world and fake host: tests/acceptance/podman_support.py.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from tests.acceptance.conftest import chain_types
from tests.acceptance.podman_support import IMAGE, PodmanWorld, unique, world_fixtures

RUN_NETNS = Path("/run/netns")


world, bw = world_fixtures("buildah")  # the module's world; `bw` cleans up after each test


def runtime_netns() -> set[str]:
    """Namespaces podman/buildah made (they name them netns-<uuid>)."""
    return {p.name for p in RUN_NETNS.iterdir() if p.name.startswith("netns-")} if RUN_NETNS.is_dir() else set()


def test_buildah_run_on_a_cni_network(bw: PodmanWorld, plugin_origins, installed_bin: Path):
    net = bw.network_create()
    origins = plugin_origins("buildah", chain_types(net.conflist), bw.plugin_dirs)
    assert origins["bridge"] == installed_bin and origins["host-local"] == installed_bin
    bw.run_detached("target", "--network", net.name)
    target = bw.only_address("target")
    builder = bw.buildah("from", "--name", unique("pycni-builder"), IMAGE).stdout.strip().splitlines()[-1]
    veths, namespaces = bw.veths(), runtime_netns()
    script = (f"ip -o -4 addr show dev eth0 && busybox ping -c1 -W5 {target.ip} "
              f"&& busybox ping -c1 -W5 {net.gateway}")

    addresses = []
    for _ in range(2):  # a second run on the same builder: DEL of the first left nothing in the way
        out = bw.buildah("run", "--network", net.name, builder, "--", "sh", "-c", script).stdout

        seen = [ipaddress.ip_interface(m) for m in re.findall(r"\binet (\S+)", out)]
        assert len(seen) == 1 and seen[0].network == net.subnet, out
        assert seen[0].ip not in (target.ip, net.gateway)
        assert out.count("1 packets received") == 2, out  # the podman container, then the gateway
        addresses.append(seen[0].ip)
        # After the run: only the podman container still holds an address, veth or namespace.
        assert list(net.reservations()) == [str(target.ip)]
        assert bw.veths() == veths
        assert runtime_netns() <= namespaces
        assert bw.traces(builder, addresses) == []

    bw.buildah("rm", builder)
    assert bw.buildah("containers", "-q").stdout.strip() == ""
    bw.podman("rm", "-f", "-t", "0", "target")
    assert net.reservations() == {}
    assert bw.veths() == []
    assert net.result_cache() == []
    # Configuration and state stayed private: nothing changed in /etc/containers,
    # /var/lib/containers, /run/containers, /run/libpod, /dev/shm/libpod_lock, /etc/cni/net.d.
    assert bw.machine_changes() == []

