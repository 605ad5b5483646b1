"""The host-local `ipam` section: config models with the reference key names, and the merge rules.

Keys (plugins/ipam/host-local/backend/allocator/config.go), all under `ipam` unless noted:
- `ranges`: list of range sets, each a list of `{subnet, rangeStart, rangeEnd, gateway}`;
- legacy flat `subnet`/`rangeStart`/`rangeEnd`/`gateway`: prepended as set 0;
- top-level `runtimeConfig.ipRanges`: prepended before everything;
- requested addresses: CNI_ARGS `IP=`, top-level `args.cni.ips`, `runtimeConfig.ips` (merged,
  in that order, as host-local does);
- `routes`, `dataDir` (default /var/lib/cni/networks), `resolvConf`;
- pycni additions: `reclaimOnReboot` (default true) and `lockTimeout` (seconds, default 10).

Pure: no file access here (resolv.conf text is parsed by `parse_resolv_conf`; main.py reads it).
"""

from __future__ import annotations

import ipaddress
from typing import Any, NamedTuple

from cni_plugin.config import PassThroughModel, field, parse_config
from cni_plugin.spec.errors import InvalidConfig
from cni_plugin.spec.types import DNS, IPAddress, Route
from cni_plugin.spec.version import at_least

from .ranges import RangeSet, check_disjoint, make_range, make_range_set, parse_ip

DEFAULT_DATA_DIR = "/var/lib/cni/networks"
DEFAULT_LOCK_TIMEOUT = 10.0


class RangeModel(PassThroughModel):
    subnet: str
    rangeStart: str | None = None
    rangeEnd: str | None = None
    gateway: str | None = None


class RouteModel(PassThroughModel):
    dst: str
    gw: str | None = None
    mtu: int | None = None
    advmss: int | None = None
    priority: int | None = None
    table: int | None = None
    scope: int | None = None


class IPAMSection(PassThroughModel):
    type: str = ""
    ranges: list[list[RangeModel]] = field(default_factory=list)
    subnet: str | None = None
    rangeStart: str | None = None
    rangeEnd: str | None = None
    gateway: str | None = None
    routes: list[RouteModel] = field(default_factory=list)
    dataDir: str = DEFAULT_DATA_DIR
    resolvConf: str = ""
    reclaimOnReboot: bool = True
    lockTimeout: float = field(DEFAULT_LOCK_TIMEOUT, gt=0, le=600)


class CNIArgsModel(PassThroughModel):
    ips: list[str] = field(default_factory=list)


class ArgsModel(PassThroughModel):
    cni: CNIArgsModel | None = None


class RuntimeConfigModel(PassThroughModel):
    ips: list[str] = field(default_factory=list)
    ipRanges: list[list[RangeModel]] = field(default_factory=list)


class NetConfModel(PassThroughModel):
    name: str
    cniVersion: str = "0.1.0"
    ipam: IPAMSection
    args: ArgsModel | None = None
    runtimeConfig: RuntimeConfigModel | None = None


class IPAMConfig(NamedTuple):
    network: str
    range_sets: tuple[RangeSet, ...]
    requested: tuple[IPAddress, ...]
    routes: tuple[Route, ...]
    data_dir: str
    resolv_conf: str
    reclaim_on_reboot: bool
    lock_timeout: float


def _range_set(models: list[RangeModel], where: str) -> RangeSet:
    built = [
        make_range(m.subnet, m.rangeStart, m.rangeEnd, m.gateway, where=f"{where}.{i}") for i, m in enumerate(models)
    ]
    return make_range_set(built, where)


def _route(model: RouteModel, where: str) -> Route:
    try:
        dst = ipaddress.ip_network(model.dst, strict=False)
    except ValueError as exc:
        raise InvalidConfig("invalid network configuration", f"{where}.dst: {exc}") from exc
    gw = parse_ip(model.gw, f"{where}.gw") if model.gw else None
    if gw is not None and gw.version != dst.version:
        raise InvalidConfig("invalid network configuration", f"{where}.gw: {gw} is not of the family of {dst}")
    return Route(
        dst=dst,
        gw=gw,
        mtu=model.mtu,
        advmss=model.advmss,
        priority=model.priority,
        table=model.table,
        scope=model.scope,
    )


def load(config: dict[str, Any], cni_args_ip: str | None = None, cni_version: str | None = None) -> IPAMConfig:
    """The whole network config (as the runtime passes it to IPAM) -> a validated IPAMConfig."""
    net = parse_config(NetConfModel, config)
    ipam = net.ipam
    version = cni_version or net.cniVersion

    requested: list[IPAddress] = []
    if cni_args_ip:
        requested.append(parse_ip(cni_args_ip, "CNI_ARGS.IP"))
    if net.args is not None and net.args.cni is not None:
        requested += [parse_ip(v, f"args.cni.ips.{i}") for i, v in enumerate(net.args.cni.ips)]
    runtime = net.runtimeConfig or RuntimeConfigModel()
    requested += [parse_ip(v, f"runtimeConfig.ips.{i}") for i, v in enumerate(runtime.ips)]

    sets: list[RangeSet] = []
    names: list[str] = []
    for i, models in enumerate(runtime.ipRanges):
        sets.append(_range_set(models, f"runtimeConfig.ipRanges.{i}"))
        names.append(f"runtimeConfig.ipRanges.{i}")
    if ipam.subnet:
        flat = make_range(ipam.subnet, ipam.rangeStart, ipam.rangeEnd, ipam.gateway, where="ipam")
        sets.append(make_range_set([flat], "ipam.subnet"))
        names.append("ipam.subnet")
    for i, models in enumerate(ipam.ranges):
        sets.append(_range_set(models, f"ipam.ranges.{i}"))
        names.append(f"ipam.ranges.{i}")
    if not sets:
        raise InvalidConfig("invalid network configuration", "ipam.ranges: no IP ranges specified")
    check_disjoint(sets, names)
    per_family = [sum(1 for s in sets if s.version == v) for v in (4, 6)]
    if max(per_family) > 1 and not at_least(version, "0.3.0"):
        raise InvalidConfig(
            "invalid network configuration",
            f"ipam.ranges: CNI version {version} does not support more than one address per family",
        )
    if not ipam.dataDir.startswith("/"):
        raise InvalidConfig("invalid network configuration", f"ipam.dataDir: {ipam.dataDir!r} must be an absolute path")

    return IPAMConfig(
        network=net.name,
        range_sets=tuple(sets),
        requested=tuple(requested),
        routes=tuple(_route(r, f"ipam.routes.{i}") for i, r in enumerate(ipam.routes)),
        data_dir=ipam.dataDir,
        resolv_conf=ipam.resolvConf,
        reclaim_on_reboot=ipam.reclaimOnReboot,
        lock_timeout=ipam.lockTimeout,
    )


def data_dir_of(config: dict[str, Any]) -> str:
    """Just `ipam.dataDir`, leniently: DEL must work even if the rest of the config went bad."""
    ipam = config.get("ipam")
    value = ipam.get("dataDir") if isinstance(ipam, dict) else None
    return value if isinstance(value, str) and value.startswith("/") else DEFAULT_DATA_DIR


def parse_resolv_conf(text: str) -> DNS:
    """resolv.conf text -> DNS, as plugins/ipam/host-local/dns.go: nameserver/domain/search/options."""
    nameservers: list[str] = []
    search: list[str] = []
    options: list[str] = []
    domain = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        key = fields[0]
        if key == "nameserver":
            nameservers.append(fields[1])
        elif key == "domain":
            domain = fields[1]
        elif key == "search":
            search += fields[1:]
        elif key == "options":
            options += fields[1:]
    return DNS(nameservers=tuple(nameservers), domain=domain, search=tuple(search), options=tuple(options))
