"""Pure: a policy source's snapshot and the attachments -> the policy engine's World.

A pod's labels and container ports come from its Pod object; its addresses and node from the
attachment the bridge plugin recorded at ADD (this node's own files, and in etcd mode the records
other nodes published), else from the Pod object's status.podIPs/spec.nodeName (Kubernetes).
A local attachment wins: it is what this node's kernel carries now, before the kubelet has
posted status.podIPs. An attachment whose pod has no Pod object is a pod without labels.

An invalid policy object fails the whole snapshot (PolicyError, naming the object and field): the
controller then keeps enforcing what it applied before rather than a subset of the policies (a
dropped policy would silently open what it isolates).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from ..policy import model as m


def _name(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind', 'object')} {ns + '/' if ns else ''}{meta.get('name', '?')}"


def parse_objects(objects: Iterable[Mapping[str, Any]]) -> list[m.PolicyObject]:
    out = []
    for obj in objects:
        try:
            out.append(m.parse_object(dict(obj)))
        except m.PolicyError as exc:
            raise m.PolicyError(f"{_name(obj)}: {exc.field}" if exc.field else _name(obj), exc.reason) from exc
    return out


Placed = dict[str, tuple[tuple[m.IPAddress, ...], str | None]]


def attachment_pods(records: Iterable[Mapping[str, Any]], default_node: str | None) -> Placed:
    """pod key -> (addresses, node) from attachment records, in order; records without a pod name
    skipped. An address in two records belongs to the later one (a stale record, whose DEL never
    ran, must not keep a reused address: two pods of one address would make the nft map refuse
    the transaction)."""
    out: Placed = {}
    owner: dict[m.IPAddress, str] = {}
    for r in records:
        ns, name = str(r.get("namespace") or ""), str(r.get("name") or "")
        if not ns or not name:
            continue
        ips: list[m.IPAddress] = []
        for text in r.get("ips") or []:
            try:
                ips.append(ipaddress.ip_address(str(text)))
            except ValueError:
                continue
        key = f"{ns}/{name}"
        for ip in ips:
            previous = owner.get(ip)
            if previous is not None and previous != key:
                prev_ips, prev_node = out[previous]
                out[previous] = (tuple(a for a in prev_ips if a != ip), prev_node)
            owner[ip] = key
        node = str(r.get("node") or "") or default_node
        prev = out.get(key)
        merged = tuple(dict.fromkeys((*(prev[0] if prev else ()), *ips)))  # a pod with two attachments
        out[key] = (merged, node)
    return out


def build(objects: Iterable[Mapping[str, Any]], remote: Iterable[Mapping[str, Any]],
          local: Iterable[Mapping[str, Any]], node: str) -> m.World:
    """The World this node compiles. remote: attachments other nodes published (records of this
    node among them are ignored: `local`, read from disk, is the truth here)."""
    parsed = parse_objects(objects)
    addresses = attachment_pods((r for r in remote if r.get("node") != node), None)
    addresses.update(attachment_pods(local, node))
    pods: dict[str, m.Pod] = {}
    others: list[m.PolicyObject] = []
    for o in parsed:
        if isinstance(o, m.Pod):
            pods[o.key] = o
        else:
            others.append(o)
    for key, (ips, where) in addresses.items():
        ns, name = key.split("/", 1)
        base = pods.get(key) or m.Pod(ns, name)
        pods[key] = replace(base, ips=ips, node_name=where)
    return m.build_world([*others, *pods.values()])
