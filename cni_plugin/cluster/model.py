"""The cluster's values, pure: cluster config, node records, the Datastore seam and its errors.

Cluster config (JSON, one document per cluster; in etcd at `<prefix>/config`, for the Kubernetes
source given to the agent as a file):

    {
      "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"],   one per family, at most two
      "subnetLen": 24,                                       per-node IPv4 prefix length
      "ipv6SubnetLen": 64,                                   per-node IPv6 prefix length
      "backend": {"type": "vxlan",                           host-gw | vxlan | auto | bgp
                  "vni": 1, "port": 4789, "device": "pycni.1"}
    }

The `bgp` backend (BIRD 2 carries the pod subnets; see cluster/bgp/) reads these backend keys:

    {"type": "bgp", "asNumber": 64512,                 the cluster's own AS (every node's)
     "nodeToNodeMesh": true,                           iBGP to every on-link node
     "peers": [{"address": "192.0.2.1",                routers: ToR, route reflector
                "asNumber": 64513, "password": "..."}],
     "gracefulRestart": true, "gracefulRestartTime": 120,
     "holdTime": 90, "keepaliveTime": 30, "connectRetryTime": 30}

A node's record is what every other node needs to reach its pods: the node's name, its pod
subnets (one per family), its underlay addresses (the first is the one tunnels and host-gw routes
use) and, for VXLAN, its VTEP MAC.
"""

from __future__ import annotations

import ipaddress
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..spec.types import IPAddress, IPNetwork

BACKENDS = ("host-gw", "vxlan", "auto", "bgp")
DEFAULT_VNI = 1
DEFAULT_VXLAN_PORT = 4789  # IANA; flannel's default is the kernel's old 8472
DEFAULT_VXLAN_DEVICE = "pycni.1"
IFNAMSIZ = 15
# VXLAN encapsulation: outer Ethernet is not counted in the MTU; IPv4 20 + UDP 8 + VXLAN 8 +
# inner Ethernet 14 = 50 bytes; an IPv6 underlay adds 20 more.
VXLAN_OVERHEAD = {4: 50, 6: 70}
DEFAULT_AS = 64512  # the first private 16-bit AS (RFC 6996), Calico's default too
MAX_AS = 4294967295  # 4-byte AS numbers (RFC 6793)
TCP_MD5_MAX_KEY = 80  # TCP_MD5SIG_MAXKEYLEN: the kernel refuses a longer BGP password
DEFAULT_GR_TIME = 120  # BGP graceful restart time (RFC 4724 encodes it in 12 bits: <= 4095 s)
DEFAULT_HOLD_TIME = 90  # RFC 4271's suggested hold time (BIRD's own default is 240)
DEFAULT_KEEPALIVE_TIME = 30  # a third of the hold time, as RFC 4271 suggests
DEFAULT_CONNECT_RETRY_TIME = 30  # BIRD's default is 120 s; a restarted peer reconnects itself


class ClusterConfigError(ValueError):
    """The cluster config is malformed (the message names the key)."""


class DatastoreError(Exception):
    """Base of the datastore errors."""


class DatastoreUnavailable(DatastoreError):
    """The datastore cannot be reached now; the data path stays as it is and the agent retries."""


class SubnetExhausted(DatastoreError):
    """Every per-node subnet of the cluster CIDR is held by another node."""


class NotReady(DatastoreError):
    """The node has no subnet yet (Kubernetes: spec.podCIDRs unset) or no cluster config."""


class PassThroughModel(BaseModel):
    """Base of the cluster config models: unknown keys are kept, values are immutable once parsed.

    pydantic is fine here: the agent parses the cluster config once at start. The CNI plugins'
    models (cni_plugin.config) are plain code, as every plugin exec pays for its imports.
    """

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


def _validated(model: type[ClusterConfigModel], data: Any) -> ClusterConfigModel:
    """`data` as `model`; ClusterConfigError naming every bad key (`cluster.backend.vni: ...`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [f"cluster.{'.'.join(str(p) for p in e['loc']) or '(config)'}: {e['msg']}" for e in exc.errors()]
        raise ClusterConfigError("; ".join(problems)) from exc


class BgpPeerModel(PassThroughModel):
    address: str
    asNumber: int = Field(ge=1, le=MAX_AS)
    password: str | None = None
    # A router that is not on-link (a route reflector elsewhere): eBGP TTL / iBGP multihop.
    multihop: int | None = Field(None, ge=1, le=255)

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_address(value))
        except ValueError as exc:
            raise ValueError(f"not an IP address: {value!r}") from exc

    @field_validator("password")
    @classmethod
    def _password(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not 1 <= len(value.encode()) <= TCP_MD5_MAX_KEY:
            raise ValueError(f"a BGP password has 1-{TCP_MD5_MAX_KEY} bytes (TCP MD5 key)")
        # The password is written into BIRD's config as a quoted string: keep it unambiguous.
        if any(c in value for c in '"\\') or not value.isprintable():
            raise ValueError("a BGP password holds printable characters other than \" and \\")
        return value


class BackendModel(PassThroughModel):
    type: Literal["host-gw", "vxlan", "auto", "bgp"] = "vxlan"
    vni: int = Field(DEFAULT_VNI, ge=1, le=0xFFFFFF)
    port: int = Field(DEFAULT_VXLAN_PORT, ge=1, le=65535)
    device: str = DEFAULT_VXLAN_DEVICE
    # bgp only (accepted and ignored by the other backends)
    asNumber: int = Field(DEFAULT_AS, ge=1, le=MAX_AS)
    peers: list[BgpPeerModel] = Field(default_factory=list)
    nodeToNodeMesh: bool = True
    gracefulRestart: bool = True
    gracefulRestartTime: int = Field(DEFAULT_GR_TIME, ge=1, le=4095)
    holdTime: int = Field(DEFAULT_HOLD_TIME, ge=3, le=65535)
    keepaliveTime: int = Field(DEFAULT_KEEPALIVE_TIME, ge=1, le=65535)
    connectRetryTime: int = Field(DEFAULT_CONNECT_RETRY_TIME, ge=1, le=65535)

    @model_validator(mode="after")
    def _check_bgp(self) -> BackendModel:
        if self.keepaliveTime >= self.holdTime:
            raise ValueError(f"keepaliveTime {self.keepaliveTime} must be shorter than holdTime {self.holdTime}")
        seen: set[str] = set()
        for peer in self.peers:
            if peer.address in seen:
                raise ValueError(f"peers: {peer.address} is listed twice")
            seen.add(peer.address)
        return self

    @field_validator("device")
    @classmethod
    def _ifname(cls, value: str) -> str:
        if not value or len(value) > IFNAMSIZ or "/" in value or value.strip() != value:
            raise ValueError(f"not a valid interface name (1-{IFNAMSIZ} characters): {value!r}")
        return value


class ClusterConfigModel(PassThroughModel):
    clusterCIDRs: list[str] = Field(min_length=1, max_length=2)
    subnetLen: int = Field(24, ge=8, le=30)
    ipv6SubnetLen: int = Field(64, ge=48, le=126)
    backend: BackendModel = Field(default_factory=lambda: BackendModel.model_validate({}))

    @model_validator(mode="after")
    def _check_cidrs(self) -> ClusterConfigModel:
        families: set[int] = set()
        for text in self.clusterCIDRs:
            try:
                net = ipaddress.ip_network(text, strict=True)
            except ValueError as exc:
                raise ValueError(f"clusterCIDRs: {exc}") from exc
            if net.version in families:
                raise ValueError(f"clusterCIDRs: two IPv{net.version} networks")
            families.add(net.version)
            size = self.subnetLen if net.version == 4 else self.ipv6SubnetLen
            if size <= net.prefixlen:
                key = "subnetLen" if net.version == 4 else "ipv6SubnetLen"
                raise ValueError(f"{key} {size} is not longer than {net}'s /{net.prefixlen}")
        return self


@dataclass(frozen=True)
class BgpPeer:
    """A router this node's BIRD peers with (a top-of-rack router, a route reflector)."""

    address: IPAddress
    as_number: int
    password: str | None = None
    multihop: int | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"address": str(self.address), "asNumber": self.as_number}
        if self.password is not None:
            data["password"] = self.password
        if self.multihop is not None:
            data["multihop"] = self.multihop
        return data


@dataclass(frozen=True)
class BgpSettings:
    as_number: int = DEFAULT_AS
    peers: tuple[BgpPeer, ...] = ()
    node_to_node_mesh: bool = True
    graceful_restart: bool = True
    graceful_restart_time: int = DEFAULT_GR_TIME
    hold_time: int = DEFAULT_HOLD_TIME
    keepalive_time: int = DEFAULT_KEEPALIVE_TIME
    connect_retry_time: int = DEFAULT_CONNECT_RETRY_TIME

    def to_json(self) -> dict[str, Any]:
        return {
            "asNumber": self.as_number,
            "peers": [p.to_json() for p in self.peers],
            "nodeToNodeMesh": self.node_to_node_mesh,
            "gracefulRestart": self.graceful_restart,
            "gracefulRestartTime": self.graceful_restart_time,
            "holdTime": self.hold_time,
            "keepaliveTime": self.keepalive_time,
            "connectRetryTime": self.connect_retry_time,
        }


@dataclass(frozen=True)
class ClusterConfig:
    cluster_cidrs: tuple[IPNetwork, ...]
    subnet_len: int = 24
    ipv6_subnet_len: int = 64
    backend: str = "vxlan"
    vni: int = DEFAULT_VNI
    vxlan_port: int = DEFAULT_VXLAN_PORT
    vxlan_device: str = DEFAULT_VXLAN_DEVICE
    bgp: BgpSettings = field(default_factory=BgpSettings)

    def subnet_len_for(self, version: int) -> int:
        return self.subnet_len if version == 4 else self.ipv6_subnet_len

    def cidr(self, version: int) -> IPNetwork | None:
        return next((c for c in self.cluster_cidrs if c.version == version), None)

    def to_json(self) -> dict[str, Any]:
        backend: dict[str, Any] = {
            "type": self.backend, "vni": self.vni, "port": self.vxlan_port, "device": self.vxlan_device,
        }
        if self.backend == "bgp":
            backend.update(self.bgp.to_json())
        return {
            "clusterCIDRs": [str(c) for c in self.cluster_cidrs],
            "subnetLen": self.subnet_len,
            "ipv6SubnetLen": self.ipv6_subnet_len,
            "backend": backend,
        }


def _peer_order(peer: BgpPeerModel) -> tuple[int, int]:
    # Sorted peers: one cluster config always renders the same BIRD config, however it was listed.
    address = ipaddress.ip_address(peer.address)
    return (address.version, int(address))


def parse_cluster_config(data: Any) -> ClusterConfig:
    """Validate a cluster config document (a dict, or JSON text/bytes); ClusterConfigError names the key."""
    if isinstance(data, (str, bytes)):
        try:
            data = json.loads(data)
        except ValueError as exc:
            raise ClusterConfigError(f"cluster config is not JSON: {exc}") from exc
    model = _validated(ClusterConfigModel, data)
    b = model.backend
    return ClusterConfig(
        cluster_cidrs=tuple(ipaddress.ip_network(c) for c in model.clusterCIDRs),
        subnet_len=model.subnetLen,
        ipv6_subnet_len=model.ipv6SubnetLen,
        backend=model.backend.type,
        vni=model.backend.vni,
        vxlan_port=model.backend.port,
        vxlan_device=model.backend.device,
        bgp=BgpSettings(
            as_number=b.asNumber,
            peers=tuple(
                BgpPeer(ipaddress.ip_address(p.address), p.asNumber, p.password, p.multihop)
                for p in sorted(b.peers, key=_peer_order)
            ),
            node_to_node_mesh=b.nodeToNodeMesh,
            graceful_restart=b.gracefulRestart,
            graceful_restart_time=b.gracefulRestartTime,
            hold_time=b.holdTime,
            keepalive_time=b.keepaliveTime,
            connect_retry_time=b.connectRetryTime,
        ),
    )


@dataclass(frozen=True)
class NodeRecord:
    """One node, as every peer sees it."""

    name: str
    subnets: tuple[IPNetwork, ...]  # at most one per family
    addresses: tuple[IPAddress, ...]  # underlay addresses, the preferred one first
    vtep_mac: str = ""  # the node's VXLAN device MAC ("" when it runs no VXLAN device)
    backend: str = ""  # the backend the node runs (informational)

    def subnet(self, version: int) -> IPNetwork | None:
        return next((s for s in self.subnets if s.version == version), None)

    def address(self, version: int) -> IPAddress | None:
        return next((a for a in self.addresses if a.version == version), None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "subnets": [str(s) for s in self.subnets],
            "addresses": [str(a) for a in self.addresses],
            "vtepMAC": self.vtep_mac,
            "backend": self.backend,
        }

    @classmethod
    def from_json(cls, data: Any) -> NodeRecord:
        """Parse a record; ValueError on anything malformed (a peer's bad record is skipped, not fatal)."""
        if isinstance(data, (str, bytes)):
            data = json.loads(data)
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not data["name"]:
            raise ValueError("node record without a name")
        return cls(
            name=data["name"],
            subnets=tuple(ipaddress.ip_network(s) for s in data.get("subnets", [])),
            addresses=tuple(ipaddress.ip_address(a) for a in data.get("addresses", [])),
            vtep_mac=str(data.get("vtepMAC", "") or "").lower(),
            backend=str(data.get("backend", "") or ""),
        )


@dataclass(frozen=True)
class NodeClaim:
    """What this node asks the datastore for: a subnet per family, publishing its address and MAC."""

    name: str
    addresses: tuple[IPAddress, ...]
    vtep_mac: str = ""
    backend: str = ""
    # The subnets this node held before (remembered on disk): a node that comes back asks for them.
    previous_subnets: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """All node records at one datastore revision (etcd revision, Kubernetes resourceVersion)."""

    nodes: tuple[NodeRecord, ...]
    revision: str = ""
    skipped: tuple[str, ...] = field(default=())  # records that did not parse, with the reason


class Datastore(Protocol):
    """The seam between the controller and where node subnets live (etcd, Kubernetes, memory).

    Level-triggered: watch() only says that something may have changed; the controller then calls
    nodes() again and reconciles against the whole snapshot, so a missed or merged event can never
    leave the data path wrong for longer than one resync.
    """

    def cluster_config(self) -> ClusterConfig:
        """The cluster-wide settings. NotReady when none is set; DatastoreUnavailable when unreachable."""
        ...

    def claim(self, claim: NodeClaim, config: ClusterConfig) -> NodeRecord:
        """Get (or keep) this node's subnets and publish its record. Idempotent; never hands one
        subnet to two nodes (SubnetExhausted when none is free, NotReady when the source assigns
        subnets itself and has not yet)."""
        ...

    def renew(self) -> None:
        """Keep this node's claim alive (etcd: refresh the lease). DatastoreUnavailable when unreachable."""
        ...

    def nodes(self) -> Snapshot:
        """Every node's record, this node's included."""
        ...

    def watch(self, revision: str, stop: threading.Event) -> Iterator[str]:
        """Yield a new revision each time the node records may have changed after `revision`;
        return when `stop` is set; raise DatastoreUnavailable when the stream breaks."""
        ...

    def release(self) -> None:
        """Give this node's subnets back (the node leaves the cluster for good)."""
        ...

    def close(self) -> None:
        ...
