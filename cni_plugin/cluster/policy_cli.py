"""`pycni apply|delete -f FILE` and `pycni policy explain|stats`: network policy for operators.

    pycni apply -f FILE.yaml      validate every object of the file (NetworkPolicy, ANP, BANP, Pod,
                                  Namespace; YAML or JSON, several documents or a List), then store
                                  them in etcd at <prefix>/policy/<kind>/<namespace>/<name>;
                                  one invalid object refuses the whole file, naming the field, and
                                  nothing is written
    pycni delete -f FILE.yaml     delete the file's objects (by kind, namespace and name)
    pycni policy explain FROM TO PORT[/PROTO]
                                  allowed or denied, and which policies and rules decide, from the
                                  compiled models of the nodes (the world as etcd holds it)
    pycni policy stats            drops per policy on THIS node: the agent's counters, read with
                                  `nft -j list table inet pycni` (no etcd needed)

etcd is found as for `pycni cluster` (--etcd-endpoints, --etcd-prefix, env PYCNI_ETCD_*).
"""

from __future__ import annotations

from typing import Any

import click

from .cli import etcd_options

DEFAULT_STATUS = "/run/pycni/policy-status.json"


def _validated(path: str, namespace: str) -> list[dict[str, Any]]:
    """The file's raw objects, after explain.validate_apply accepted them all."""
    from ..policy import explain
    from ..policy import model as pm

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise click.ClickException(f"{path}: {exc.strerror or exc}") from exc
    try:
        explain.validate_apply(text, namespace)
        return pm.documents(text)
    except pm.PolicyError as exc:
        raise click.ClickException(f"{path}: {exc} (nothing was applied)") from exc


def _label(obj: dict[str, Any], namespace: str) -> str:
    from .policy_source import NAMESPACED

    meta = obj.get("metadata") or {}
    ns = (meta.get("namespace") or namespace) if obj.get("kind") in NAMESPACED else ""
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{meta.get('name')}"


@click.command("apply")
@click.option("-f", "--filename", "path", required=True, type=click.Path(dir_okay=False),
              help="YAML or JSON file of NetworkPolicy, AdminNetworkPolicy, BaselineAdminNetworkPolicy, Pod, "
                   "Namespace objects.")
@click.option("-n", "--namespace", default="default", show_default=True,
              help="Namespace of objects that name none.")
@etcd_options
def apply_command(store: Any, path: str, namespace: str) -> None:
    """Validate and store the objects of FILE (all or nothing) for every node's agent."""
    from .policy_source import EtcdPolicyStore

    objects = _validated(path, namespace)
    EtcdPolicyStore(store).apply(objects, namespace)
    for obj in objects:
        click.echo(f"{_label(obj, namespace)} applied")


@click.command("delete")
@click.option("-f", "--filename", "path", required=True, type=click.Path(dir_okay=False))
@click.option("-n", "--namespace", default="default", show_default=True)
@etcd_options
def delete_command(store: Any, path: str, namespace: str) -> None:
    """Delete the objects of FILE (matched by kind, namespace and name)."""
    from .policy_source import EtcdPolicyStore, object_key, with_namespace

    objects = _validated(path, namespace)
    policy = EtcdPolicyStore(store)
    found = set(policy.delete(objects, namespace))
    for obj in objects:
        key = object_key(policy.prefix, with_namespace(obj, namespace))
        click.echo(f"{_label(obj, namespace)} {'deleted' if key in found else 'not found'}")


@click.group("policy")
def policy_group() -> None:
    """Network policy: why a connection is allowed or denied, and what was dropped."""


@policy_group.command("explain")
@click.argument("source")
@click.argument("destination")
@click.argument("port")
@etcd_options
def explain_command(store: Any, source: str, destination: str, port: str) -> None:
    """Is SOURCE -> DESTINATION on PORT[/PROTO] allowed? SOURCE and DESTINATION are namespace/pod,
    node/NAME or an address; PORT is 80, 80/TCP, 53/UDP, 9000/SCTP."""
    from ..policy import explain
    from ..policy import model as pm
    from . import policy_world
    from .policy_source import EtcdPolicyStore

    snapshot = EtcdPolicyStore(store).snapshot()
    try:
        world = policy_world.build(snapshot.objects, snapshot.attachments, [], "")
        click.echo(explain.explain(world, source, destination, port), nl=False)
    except pm.PolicyError as exc:
        raise click.ClickException(str(exc)) from exc


@policy_group.command("stats")
@click.option("--status-file", default=DEFAULT_STATUS, show_default=True,
              help="The policy status file pycni-agent writes (it names each counter's policy).")
def stats_command(status_file: str) -> None:
    """Packets and bytes dropped per policy on this node."""
    import json

    from ..firewall.nftables import NftRunner
    from ..policy import compile as pc
    from ..policy import explain
    from ..spec.errors import CNIError

    try:
        with open(status_file, encoding="utf-8") as fh:
            status = json.load(fh)
    except (OSError, ValueError) as exc:
        raise click.ClickException(f"no policy status at {status_file}: is pycni-agent enforcing policy? ({exc})") \
            from exc
    try:
        listing = NftRunner().listing("inet")
    except CNIError as exc:
        raise click.ClickException(f"{exc.msg}: {exc.details}") from exc
    labels = status.get("counters") or {}
    model = pc.NodeModel(status.get("node"), (), (), (), (), tuple(sorted(labels.items())))
    click.echo(explain.format_stats(model, pc.counters_from_listing(listing)), nl=False)
