"""`pycni cluster`: the operator's view of the cluster network in etcd.

    pycni cluster config set FILE|-      validate a cluster config and store it at <prefix>/config
    pycni cluster config get             print the stored config (as the agents parse it)
    pycni cluster nodes [--json]         every node's subnets, underlay address and VTEP MAC
    pycni cluster forget NODE            remove a departed node's subnets now, not one TTL later
    pycni cluster status [--json]        this node: subnet, backend, datastore, peers and how each is
                                         reached (from the agent's status file; no etcd needed)

Where etcd is: --etcd-endpoints (comma-separated; env PYCNI_ETCD_ENDPOINTS, default
http://127.0.0.1:2379), --etcd-prefix (env PYCNI_ETCD_PREFIX, default /pycni), and for TLS
--etcd-cafile/--etcd-certfile/--etcd-keyfile (env PYCNI_ETCD_CAFILE, ..._CERTFILE, ..._KEYFILE).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])
DEFAULT_ENDPOINTS = "http://127.0.0.1:2379"


def etcd_options(func: F) -> F:
    """The options that say where etcd is; the command gets a ready EtcdDatastore as `store`."""

    @click.option("--etcd-endpoints", envvar="PYCNI_ETCD_ENDPOINTS", default=DEFAULT_ENDPOINTS, show_default=True,
                  help="Comma-separated etcd client URLs.")
    @click.option("--etcd-prefix", envvar="PYCNI_ETCD_PREFIX", default="/pycni", show_default=True,
                  help="Key prefix the cluster lives under.")
    @click.option("--etcd-cafile", envvar="PYCNI_ETCD_CAFILE", type=click.Path(dir_okay=False), default=None)
    @click.option("--etcd-certfile", envvar="PYCNI_ETCD_CERTFILE", type=click.Path(dir_okay=False), default=None)
    @click.option("--etcd-keyfile", envvar="PYCNI_ETCD_KEYFILE", type=click.Path(dir_okay=False), default=None)
    @click.option("--timeout", type=float, default=5.0, show_default=True, help="Seconds per etcd request.")
    @functools.wraps(func)
    def wrapper(etcd_endpoints: str, etcd_prefix: str, etcd_cafile: str | None, etcd_certfile: str | None,
                etcd_keyfile: str | None, timeout: float, **kwargs: Any) -> Any:
        # etcd3gw, requests and pydantic load only for these commands, not for every `pycni`
        from .etcd import EtcdDatastore
        from .model import ClusterConfigError, DatastoreError

        try:
            store = EtcdDatastore(etcd_endpoints, prefix=etcd_prefix, timeout=timeout, ca_cert=etcd_cafile,
                                  cert_cert=etcd_certfile, cert_key=etcd_keyfile)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--etcd-endpoints") from exc
        try:
            return func(store=store, **kwargs)
        except (DatastoreError, ClusterConfigError) as exc:
            raise click.ClickException(str(exc)) from exc
        finally:
            store.close()

    return wrapper  # type: ignore[return-value]


@click.group()
def cluster() -> None:
    """The cluster network: its config and the nodes' subnets (etcd datastore)."""


@cluster.group("config")
def config_group() -> None:
    """The cluster-wide config document (<prefix>/config)."""


@config_group.command("set")
@click.argument("source", type=click.File("r"))
@etcd_options
def config_set(store: Any, source: Any) -> None:
    """Validate the cluster config in SOURCE (a file, or - for stdin) and store it.

    Nothing is written when it does not validate; the error names the key."""
    text = source.read()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise click.ClickException(f"{source.name}: not JSON: {exc}") from exc
    parsed = store.set_cluster_config(data)
    click.echo(json.dumps(parsed.to_json(), indent=2))
    click.echo(f"stored at {store.config_key}", err=True)


@config_group.command("get")
@etcd_options
def config_get(store: Any) -> None:
    """Print the stored cluster config, with defaults filled in."""
    click.echo(json.dumps(store.cluster_config().to_json(), indent=2))


def _sync_age(status: dict[str, Any]) -> str:
    import time

    last = float(status.get("lastSync") or 0)
    if not last:
        return "never"
    return f"{max(0, int(time.time() - last))}s ago"


@cluster.command("status")
@click.option("--status-file", default="/run/pycni/cluster-status.json", show_default=True,
              help="The status file pycni-agent's cluster controller writes (--status-file).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status_command(status_file: str, as_json: bool) -> None:
    """This node's subnet, backend and datastore state, and every peer with how it is reached."""
    from .status import read

    status = read(status_file)
    if status is None:
        raise click.ClickException(f"no cluster status at {status_file}: is pycni-agent running with --datastore?")
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
    if status.get("bgp"):
        _print_bgp(status["bgp"])
    peers = status.get("peers", [])
    unreachable = sum(1 for p in peers if p.get("via") == "unreachable")
    click.echo(f"peers      {len(peers)}" + (f" ({unreachable} UNREACHABLE)" if unreachable else ""))
    if peers:
        rows = [("NODE", "SUBNETS", "ADDRESS", "VIA", "REASON")]
        rows += [(p.get("name", ""), ",".join(p.get("subnets", [])), p.get("address", ""), p.get("via", ""),
                  p.get("reason", "")) for p in peers]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        for row in rows:
            click.echo("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:4])) + "  " + row[4])


@cluster.command("forget")
@click.argument("node")
@etcd_options
def forget(store: Any, node: str) -> None:
    """Remove NODE's subnets now (a node gone for good); peers drop its routes on their next sync.

    Without this its claim ends one lease TTL after its agent last renewed it. Run it only for a
    node whose agent is stopped: a running agent claims its subnet again."""
    count = store.forget(node)
    click.echo(f"removed {count} subnet key(s) of {node}" if count else f"{node} holds no subnet")


def _print_bgp(bgp: dict[str, Any]) -> None:
    state = "running" if bgp.get("running") else "NOT RUNNING"
    click.echo(f"bgp        BIRD {state}, restarts {bgp.get('restarts', 0)}"
               + (f", error: {bgp['error']}" if bgp.get("error") else ""))
    for session in bgp.get("sessions", []):
        click.echo(f"  {session.get('name', '')}  {session.get('state', '')}  since {session.get('since', '')}  "
                   f"{session.get('info', '')}")


@cluster.command("nodes")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@etcd_options
def nodes(store: Any, as_json: bool) -> None:
    """List every node: name, pod subnets, underlay address, VTEP MAC."""
    snapshot = store.nodes()
    if as_json:
        click.echo(json.dumps({"revision": snapshot.revision, "nodes": [n.to_json() for n in snapshot.nodes],
                               "skipped": list(snapshot.skipped)}, indent=2))
        return
    rows = [("NODE", "SUBNETS", "ADDRESS", "VTEP-MAC")]
    for node in snapshot.nodes:
        rows.append((node.name, ",".join(map(str, node.subnets)) or "-",
                     str(node.addresses[0]) if node.addresses else "-", node.vtep_mac or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths, strict=True)) + "  " + row[3])
    for reason in snapshot.skipped:
        click.echo(f"skipped: {reason}", err=True)
