"""The node's conflist: rendered from its subnets (pure), written atomically into the CNI config dir.

The layout is kindnet's: bridge + host-local on the node's subnet(s) + portmap, plus loopback's
absence (runtimes set lo up themselves). ipMasq is off in the bridge: the agent masquerades only
traffic that leaves the cluster CIDR (dataplane), so pod-to-pod and node-to-pod are never NATed.

Atomic: written to a temporary file in the same directory, fsync'd, renamed over the old one and
the directory fsync'd, so a runtime that lists the directory sees the old file or the new one,
never half of one. A file whose bytes would not change is not rewritten (no inotify churn).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from ..spec.types import IPNetwork

DEFAULT_NETWORK_NAME = "pycni"
DEFAULT_BRIDGE = "pycni0"
DEFAULT_FILE_NAME = "10-pycni.conflist"
CNI_VERSION = "1.0.0"


@dataclass(frozen=True)
class ConflistSettings:
    network_name: str = DEFAULT_NETWORK_NAME
    bridge: str = DEFAULT_BRIDGE
    ipam_data_dir: str = "/var/lib/cni/networks"
    plugin_prefix: str = ""  # "" for reference names (bridge, host-local), "pycni-" beside the Go plugins
    status_file: str = ""  # handed to the bridge: STATUS answers 50 while the node is not ready


def render(subnets: tuple[IPNetwork, ...], mtu: int, settings: ConflistSettings) -> dict[str, Any]:
    """The conflist for a node holding `subnets` (one per family), pods at `mtu`."""
    ordered = sorted(subnets, key=lambda s: s.version)
    bridge: dict[str, Any] = {
        "type": f"{settings.plugin_prefix}bridge",
        "bridge": settings.bridge,
        "isGateway": True,
        "ipMasq": False,
        "hairpinMode": True,
        "mtu": mtu,
        "ipam": {
            "type": f"{settings.plugin_prefix}host-local",
            "dataDir": settings.ipam_data_dir,
            "ranges": [[{"subnet": str(s)}] for s in ordered],
            "routes": [{"dst": "0.0.0.0/0" if s.version == 4 else "::/0"} for s in ordered],
        },
    }
    if settings.status_file:
        bridge["clusterStatusFile"] = settings.status_file
    return {
        "cniVersion": CNI_VERSION,
        "name": settings.network_name,
        "plugins": [
            bridge,
            {"type": f"{settings.plugin_prefix}portmap", "snat": True, "capabilities": {"portMappings": True}},
        ],
    }


def encode(conflist: dict[str, Any]) -> bytes:
    return (json.dumps(conflist, indent=2) + "\n").encode()


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> bool:
    """Write `data` to `path` so readers see the old or the new file; False when it was already so."""
    try:
        with open(path, "rb") as current:
            if current.read() == data:
                return False
    except FileNotFoundError:
        pass
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    # A dot name: runtimes (libcni) only load *.conf, *.conflist and *.json, never a temporary.
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fchmod(out.fileno(), mode)
            os.fsync(out.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True
