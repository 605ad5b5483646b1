"""host-local handlers on cni_plugin.spec.skel: `HANDLERS` (executable and in-process use).

pycni's own plugins call `HANDLERS.add/delete/check/status/gc` in-process with their CmdArgs
(`config` = the whole network config, `ipam` inside), exactly what an exec'd IPAM would get.

Hot path: DEL needs only `dataDir` and never imports the config models (ipam.config);
ADD/CHECK/STATUS import them on first use.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from typing import Any

from cni_plugin.spec.errors import (
    CheckFailed,
    InvalidConfig,
    IOFailure,
    PluginNotAvailable,
    UnknownContainer,
)
from cni_plugin.spec.skel import GC_ATTACHMENT_KEYS, CmdArgs, Handlers
from cni_plugin.spec.types import DNS, IPAddress, IPConfig, Result

from . import allocator
from .disk import DiskStore
from .store import Owner

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
GC_KEYS = GC_ATTACHMENT_KEYS


def _ipam_section(config: dict[str, Any]) -> dict[str, Any]:
    section = config.get("ipam")
    return section if isinstance(section, dict) else {}


def _lenient(config: dict[str, Any]) -> tuple[str, float, bool]:
    """dataDir, lockTimeout, reclaimOnReboot read without validation (DEL and GC must not get stuck
    on a config that went bad after ADD)."""
    ipam = _ipam_section(config)
    data_dir = ipam.get("dataDir")
    if not (isinstance(data_dir, str) and data_dir.startswith("/")):
        data_dir = DEFAULT_DATA_DIR
    timeout = ipam.get("lockTimeout")
    if not (isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and 0 < timeout <= 600):
        timeout = 10.0
    reclaim = ipam.get("reclaimOnReboot")
    return data_dir, float(timeout), reclaim if isinstance(reclaim, bool) else True


def _store(args: CmdArgs, data_dir: str, timeout: float, reclaim: bool) -> DiskStore:
    return DiskStore(data_dir, args.network_name, lock_timeout=timeout, reclaim_on_reboot=reclaim)


def _load(args: CmdArgs) -> Any:
    from . import config

    ip = args.cni_args({"IP"}).get("IP") if args.args else None
    return config.load(args.config, ip, args.cni_version)


def _dns(path: str) -> DNS:
    if not path:
        return DNS()
    from .config import parse_resolv_conf

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse_resolv_conf(f.read())
    except OSError as exc:
        raise InvalidConfig(
            "invalid network configuration", f"ipam.resolvConf: cannot read {path}: {exc.strerror}"
        ) from exc


def add(args: CmdArgs) -> Result:
    cfg = _load(args)
    dns = _dns(cfg.resolv_conf)
    owner = Owner(args.container_id, args.ifname)
    with _store(args, cfg.data_dir, cfg.lock_timeout, cfg.reclaim_on_reboot) as store:
        allocations = allocator.allocate(store, cfg.range_sets, owner, cfg.requested)
    ips = tuple(
        IPConfig(address=ipaddress.ip_interface((a.ip, a.range.subnet.prefixlen)), gateway=a.range.gateway)
        for a in allocations
    )
    return Result(ips=ips, routes=cfg.routes, dns=dns)


def delete(args: CmdArgs) -> None:
    """Release every address of (containerID, ifname); nothing held is success (idempotent)."""
    data_dir, timeout, reclaim = _lenient(args.config)
    if not os.path.isdir(os.path.join(data_dir, args.network_name)):
        return  # never allocated here: nothing to release, and nothing to create
    with _store(args, data_dir, timeout, reclaim) as store:
        allocator.release(store, Owner(args.container_id, args.ifname))


def check(args: CmdArgs) -> None:
    cfg = _load(args)
    owner = Owner(args.container_id, args.ifname)
    with _store(args, cfg.data_dir, cfg.lock_timeout, cfg.reclaim_on_reboot) as store:
        held = store.owned_by(owner) or store.owned_by(Owner(args.container_id, ""))
    if not held:
        raise UnknownContainer(
            f"host-local: no address reserved for container {args.container_id} interface {args.ifname}",
            f"network {args.network_name}",
        )
    prev = args.prev_result()
    if prev is None:
        return
    in_prev = {ip.address.ip for ip in prev.ips}
    missing = sorted(str(ip) for ip in held if ip not in in_prev)
    if missing:
        raise CheckFailed("reserved addresses are missing from prevResult", ", ".join(missing))
    foreign = sorted(str(ip) for ip in in_prev if ip not in held and any(s.contains(ip) for s in cfg.range_sets))
    if foreign:
        raise CheckFailed(
            "prevResult holds addresses of this network not reserved for the container", ", ".join(foreign)
        )


def status(args: CmdArgs) -> None:
    """Code 50 when the data directory is unusable or a range set has no free address."""
    cfg = _load(args)
    try:
        with _store(args, cfg.data_dir, cfg.lock_timeout, cfg.reclaim_on_reboot) as store:
            reserved = store.reserved_names()
    except IOFailure as exc:
        raise PluginNotAvailable(f"IPAM data directory unusable: {exc.msg}", exc.details) from exc
    for index, rset in enumerate(cfg.range_sets):
        used = sum(1 for ip in reserved if rset.contains(ip))
        if used >= rset.size():
            raise PluginNotAvailable(
                f"range set {index} ({rset}) has no free address", f"{used} of {rset.size()} reserved"
            )


def _valid_owners(config: dict[str, Any]) -> tuple[set[Owner], set[str]] | None:
    for key in GC_KEYS:
        if key in config:
            raw = config[key]
            break
    else:
        return None
    if not isinstance(raw, list):
        raise InvalidConfig("invalid network configuration", f"{key}: expected a list of attachments")
    owners: set[Owner] = set()
    for i, item in enumerate(raw):
        cid = item.get("containerID") if isinstance(item, dict) else None
        ifname = item.get("ifname", "") if isinstance(item, dict) else None
        if not isinstance(cid, str) or not cid or not isinstance(ifname, str):
            raise InvalidConfig("invalid network configuration", f"{key}.{i}: needs containerID and ifname strings")
        owners.add(Owner(cid, ifname))
    return owners, {o.container_id for o in owners}


def gc(args: CmdArgs) -> None:
    """Release every reservation of this network not listed as a valid attachment.

    An empty list is meaningful (release everything); no list at all does nothing. A legacy
    id-only reservation is kept when any attachment of that container is valid.
    """
    valid = _valid_owners(args.config)
    if valid is None:
        return
    data_dir, timeout, reclaim = _lenient(args.config)
    with _store(args, data_dir, timeout, reclaim) as store:
        for ip in stale(store.reservations(), valid):
            store.release(ip)


def parse_attachments(config: dict[str, Any]) -> tuple[set[Owner], set[str]] | None:
    """The valid attachments of a GC request (or of the admin CLI's --valid file)."""
    return _valid_owners(config)


def stale(reservations: Mapping[IPAddress, Owner], valid: tuple[set[Owner], set[str]]) -> list[IPAddress]:
    """Reservations GC releases: owner not listed (legacy id-only files: container not listed)."""
    owners, ids = valid
    return sorted(
        (
            ip
            for ip, owner in reservations.items()
            if not (owner.container_id in ids if not owner.ifname else owner in owners)
        ),
        key=lambda ip: (ip.version, ip),
    )


HANDLERS = Handlers(add=add, delete=delete, check=check, status=status, gc=gc)
