"""`pycni`: the operator's command line (click).

    pycni ipam ls [--network N] [--data-dir D] [--json]
    pycni ipam gc --network N --valid FILE [--data-dir D] [--apply]
    pycni cluster status|nodes [--status-file F] [--json]
    pycni cluster config set FILE | get   --etcd-endpoints URLS [--etcd-prefix P]

`ls` only reads (no lock). `gc` prints what it would release and changes nothing unless --apply,
which takes the network's IPAM lock like any plugin request. The --valid file is JSON: a list of
{"containerID", "ifname"} objects, or a GC-style object holding `cni.dev/valid-attachments`.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import click

DEFAULT_DATA_DIR = "/var/lib/cni/networks"


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@click.group()
@click.version_option(package_name="pycni", message="pycni %(version)s")
def main() -> None:
    """pycni administration."""


@main.group()
def ipam() -> None:
    """Inspect and clean host-local IPAM reservations."""


@ipam.command("ls")
@click.option("--network", "-n", help="Only this network (default: every network in the data dir).")
@click.option("--data-dir", "-d", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(network: str | None, data_dir: str, as_json: bool) -> None:
    """List reservations: network, IP, container, ifname, age."""
    from ipam.disk import DiskStore

    if not os.path.isdir(data_dir):
        raise click.ClickException(f"no data directory {data_dir}")
    networks = (
        [network] if network else sorted(n for n in os.listdir(data_dir) if os.path.isdir(os.path.join(data_dir, n)))
    )
    now = time.time()
    rows: list[dict[str, Any]] = []
    for net in networks:
        if not os.path.isdir(os.path.join(data_dir, net)):
            raise click.ClickException(f"no network {net!r} in {data_dir}")
        for e in sorted(DiskStore(data_dir, net).entries(), key=lambda e: (e.ip.version, e.ip)):
            rows.append(
                {
                    "network": net,
                    "ip": str(e.ip),
                    "containerID": e.owner.container_id,
                    "ifname": e.owner.ifname,
                    "ageSeconds": int(now - e.mtime),
                }
            )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    header = ("NETWORK", "IP", "CONTAINER", "IFNAME", "AGE")
    table = [header] + [
        (r["network"], r["ip"], r["containerID"], r["ifname"] or "-", _age(r["ageSeconds"])) for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@ipam.command("gc")
@click.option("--network", "-n", required=True, help="The network (the directory under the data dir).")
@click.option(
    "--valid",
    "valid_file",
    required=True,
    type=click.File("r"),
    help="JSON list of valid {containerID, ifname} attachments ('-' for stdin).",
)
@click.option("--data-dir", "-d", default=DEFAULT_DATA_DIR, show_default=True, type=click.Path(file_okay=False))
@click.option("--apply", is_flag=True, help="Release the stale reservations (default: dry run).")
def gc(network: str, valid_file, data_dir: str, apply: bool) -> None:
    """Release every reservation of NETWORK whose attachment is not in --valid."""
    from cni_plugin.spec.errors import CNIError
    from ipam.disk import DiskStore
    from ipam.main import GC_KEYS, parse_attachments, stale

    try:
        doc = json.load(valid_file)
    except ValueError as exc:
        raise click.ClickException(f"--valid: not JSON: {exc}") from exc
    if isinstance(doc, list):
        doc = {GC_KEYS[0]: doc}
    try:
        valid = parse_attachments(doc)
    except CNIError as exc:
        raise click.ClickException(f"--valid: {exc}") from exc
    if valid is None:
        raise click.ClickException(f"--valid: expected a list or an object with {GC_KEYS[0]!r}")
    if not os.path.isdir(os.path.join(data_dir, network)):
        raise click.ClickException(f"no network {network!r} in {data_dir}")

    try:
        if apply:
            with DiskStore(data_dir, network) as store:
                reservations = store.reservations()
                victims = stale(reservations, valid)
                for ip in victims:
                    store.release(ip)
        else:
            reservations = {e.ip: e.owner for e in DiskStore(data_dir, network).entries()}
            victims = stale(reservations, valid)
    except CNIError as exc:
        raise click.ClickException(str(exc)) from exc
    verb = "released" if apply else "would release"
    for ip in victims:
        owner = reservations[ip]
        click.echo(f"{verb} {ip} ({owner.container_id} {owner.ifname or '-'})")
    summary = "released" if apply else "would be released (dry run: add --apply)"
    click.echo(f"{len(victims)} of {len(reservations)} reservations {summary}", err=True)



# --- cluster --------------------------------------------------------------------------------------------

STATUS_FILE_OPTION = click.option(
    "--status-file", default="/run/pycni/cluster-status.json", show_default=True,
    help="The status file pycni-agent's cluster controller writes.",
)


def _read_status(path: str) -> dict[str, Any]:
    from cni_plugin.cluster.status import read

    found = read(path)
    if found is None:
        raise click.ClickException(f"no cluster status at {path}: is pycni-agent running with --datastore?")
    return found


def _sync_age(status: dict[str, Any]) -> str:
    last = float(status.get("lastSync") or 0)
    return f"{_age(time.time() - last)} ago" if last else "never"


@main.group()
def cluster() -> None:
    """This node's place in the cluster: subnet, backend, peers."""


@cluster.command("status")
@STATUS_FILE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cluster_status(status_file: str, as_json: bool) -> None:
    """This node's subnet, backend and datastore state, and every peer with how it is reached."""
    status = _read_status(status_file)
    if as_json:
        click.echo(json.dumps(status, indent=2, sort_keys=True))
        return
    ready = "ready" if status.get("ready") else f"NOT READY ({status.get('reason', '')})"
    reachable = "reachable" if status.get("datastoreReachable") else "UNREACHABLE"
    click.echo(f"node       {status.get('node', '')}: {ready}")
    click.echo(f"subnets    {', '.join(status.get('subnets', [])) or '-'}")
    click.echo(f"addresses  {', '.join(status.get('addresses', [])) or '-'}")
    click.echo(f"backend    {status.get('backend') or '-'}   vtep MAC {status.get('vtepMAC') or '-'}")
    click.echo(f"datastore  {status.get('datastore', '')} {reachable}, revision {status.get('revision') or '-'}, "
               f"last sync {_sync_age(status)}")
    if status.get("lastError"):
        click.echo(f"last error {status['lastError']}")
    peers = status.get("peers", [])
    unreachable = sum(1 for p in peers if p.get("via") == "unreachable")
    click.echo(f"peers      {len(peers)}" + (f" ({unreachable} UNREACHABLE)" if unreachable else ""))
    _print_peers(peers)


def _print_peers(peers: list[dict[str, Any]]) -> None:
    if not peers:
        return
    rows = [("NODE", "SUBNETS", "ADDRESS", "VIA", "REASON")]
    rows += [(p.get("name", ""), ",".join(p.get("subnets", [])), p.get("address", ""), p.get("via", ""),
              p.get("reason", "")) for p in peers]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


@cluster.command("nodes")
@STATUS_FILE_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cluster_nodes(status_file: str, as_json: bool) -> None:
    """Every node this node knows of (itself first), as of the last sync."""
    status = _read_status(status_file)
    me = {"name": status.get("node", ""), "subnets": status.get("subnets", []),
          "address": (status.get("addresses") or [""])[0], "via": "self", "reason": ""}
    nodes = [me, *status.get("peers", [])]
    if as_json:
        click.echo(json.dumps(nodes, indent=2))
        return
    _print_peers(nodes)


@cluster.group("config")
def cluster_config() -> None:
    """The cluster-wide config in etcd (clusterCIDRs, subnetLen, backend)."""


ETCD_OPTIONS = [
    click.option("--etcd-endpoints", envvar="PYCNI_ETCD_ENDPOINTS", required=True,
                 help="etcd client URLs, comma-separated (env PYCNI_ETCD_ENDPOINTS)."),
    click.option("--etcd-prefix", default="/pycni", show_default=True),
]


def _etcd_options(fn: Any) -> Any:
    for option in reversed(ETCD_OPTIONS):
        fn = option(fn)
    return fn


def _etcd(endpoints: str, prefix: str) -> Any:
    from cni_plugin.cluster.etcd import EtcdDatastore

    return EtcdDatastore([e.strip() for e in endpoints.split(",") if e.strip()], prefix=prefix)


@cluster_config.command("set")
@_etcd_options
@click.argument("config_file", type=click.File("rb"))
def cluster_config_set(etcd_endpoints: str, etcd_prefix: str, config_file: Any) -> None:
    """Validate CONFIG_FILE (JSON) and store it as the cluster config; agents pick it up on their next sync."""
    from cni_plugin.cluster.model import ClusterConfigError, DatastoreError, parse_cluster_config

    try:
        config = parse_cluster_config(config_file.read())
        _etcd(etcd_endpoints, etcd_prefix).set_cluster_config(config)
    except (ClusterConfigError, DatastoreError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(config.to_json(), indent=2))


@cluster_config.command("get")
@_etcd_options
def cluster_config_get(etcd_endpoints: str, etcd_prefix: str) -> None:
    """Print the cluster config stored in etcd."""
    from cni_plugin.cluster.model import DatastoreError

    try:
        config = _etcd(etcd_endpoints, etcd_prefix).cluster_config()
    except DatastoreError as exc:
        raise click.ClickException(f"{type(exc).__name__}: {exc}") from exc
    click.echo(json.dumps(config.to_json(), indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
