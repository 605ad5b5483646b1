"""`pycni`: the operator's command line (click).

    pycni ipam ls [--network N] [--data-dir D] [--json]
    pycni ipam gc --network N --valid FILE [--data-dir D] [--apply]
    pycni cluster config set|get, pycni cluster nodes   (cni_plugin/cluster/cli.py)

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

from .cluster import cli as cluster_cli

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


main.add_command(cluster_cli.cluster)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
