"""pycni-agent's cluster flags -> a Controller (datastore, data plane, settings).

Only the agent imports this, and only with --datastore: a plain plugin agent never loads the
datastore clients.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket

from ..spec.types import IPAddress
from . import conflist, status
from .controller import Controller, ControllerSettings
from .model import Datastore, parse_cluster_config

DEFAULT_STATE_DIR = "/var/lib/pycni/cluster"
# TEST-NET-1 (RFC 5737): connect() on a UDP socket only asks the kernel which source address its
# routing would use; no packet is sent.
ROUTE_PROBE = "192.0.2.1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cluster controller (pods on every node reach each other)")
    group.add_argument("--datastore", choices=("etcd", "kubernetes"),
                       help="run the cluster controller with node subnets from this source")
    group.add_argument("--etcd-endpoints", default=os.environ.get("PYCNI_ETCD_ENDPOINTS", ""),
                       help="etcd client URLs, comma-separated (env PYCNI_ETCD_ENDPOINTS)")
    group.add_argument("--etcd-prefix", default="/pycni", help="etcd key prefix (default /pycni)")
    group.add_argument("--lease-ttl", type=int, default=60,
                       help="etcd: seconds a node's subnet outlives its agent (default 60)")
    group.add_argument("--kubeconfig", default=os.environ.get("KUBECONFIG") or None,
                       help="kubernetes: kubeconfig file (default: the in-cluster service account)")
    group.add_argument("--cluster-config", help="kubernetes: the cluster config JSON file")
    group.add_argument("--node-name", default=os.environ.get("NODE_NAME") or socket.gethostname(),
                       help="this node's name (env NODE_NAME; default the host name)")
    group.add_argument("--node-ip", default=os.environ.get("NODE_IP", ""),
                       help="this node's underlay address(es), comma-separated, the preferred first "
                            "(default: the source address of the default route)")
    group.add_argument("--cni-conf-dir", default="/etc/cni/net.d", help="where the node's conflist is written")
    group.add_argument("--cni-conf-file", default=conflist.DEFAULT_FILE_NAME, help="the conflist's file name")
    group.add_argument("--network-name", default=conflist.DEFAULT_NETWORK_NAME, help="the conflist's network name")
    group.add_argument("--bridge", default=conflist.DEFAULT_BRIDGE, help="the pods' bridge")
    group.add_argument("--plugin-names", choices=("reference", "prefixed"), default="reference",
                       help="plugin types in the conflist: bridge/host-local/portmap, or pycni-*")
    group.add_argument("--ipam-data-dir", default="/var/lib/cni/networks", help="host-local dataDir in the conflist")
    group.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help="where the node remembers its subnets")
    group.add_argument("--status-file", default=status.DEFAULT_STATUS_FILE, help="the controller's status file")
    group.add_argument("--resync-interval", type=float, default=30.0, help="seconds between full reconciles")
    group.add_argument("--metrics-listen", default="",
                       help="HOST:PORT for /metrics (Prometheus text) and /healthz (default: off)")


def default_node_addresses() -> tuple[IPAddress, ...]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((ROUTE_PROBE, 9))
        return (ipaddress.ip_address(probe.getsockname()[0]),)


def parse_addresses(text: str) -> tuple[IPAddress, ...]:
    return tuple(ipaddress.ip_address(part.strip()) for part in text.split(",") if part.strip())


def build_datastore(opts: argparse.Namespace) -> Datastore:
    if opts.datastore == "etcd":
        from .etcd import EtcdDatastore

        endpoints = [e.strip() for e in opts.etcd_endpoints.split(",") if e.strip()]
        if not endpoints:
            raise ValueError("--datastore etcd needs --etcd-endpoints (or PYCNI_ETCD_ENDPOINTS)")
        return EtcdDatastore(endpoints, prefix=opts.etcd_prefix, lease_ttl=opts.lease_ttl)
    from .kubernetes import KubernetesDatastore

    if not opts.cluster_config:
        raise ValueError("--datastore kubernetes needs --cluster-config FILE")
    with open(opts.cluster_config, "rb") as handle:
        config = parse_cluster_config(handle.read())
    return KubernetesDatastore(config, opts.node_name, kubeconfig=opts.kubeconfig)


def build_controller(opts: argparse.Namespace) -> Controller:
    """ValueError (or ClusterConfigError) on bad flags: the agent refuses to start."""
    from .dataplane import Dataplane

    addresses = parse_addresses(opts.node_ip) if opts.node_ip else default_node_addresses()
    if opts.resync_interval <= 0:
        raise ValueError("--resync-interval must be positive")
    settings = ControllerSettings(
        node_name=opts.node_name,
        node_addresses=addresses,
        conf_dir=opts.cni_conf_dir,
        conf_file=opts.cni_conf_file,
        conflist=conflist.ConflistSettings(
            network_name=opts.network_name,
            bridge=opts.bridge,
            ipam_data_dir=opts.ipam_data_dir,
            plugin_prefix="pycni-" if opts.plugin_names == "prefixed" else "",
            status_file=opts.status_file,
        ),
        state_dir=opts.state_dir,
        status_file=opts.status_file,
        resync_interval=opts.resync_interval,
        renew_interval=max(1.0, opts.lease_ttl / 3),
        datastore_name=opts.datastore,
        metrics_listen=opts.metrics_listen,
    )
    return Controller(build_datastore(opts), settings, Dataplane())
