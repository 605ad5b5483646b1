"""The text of `pycni policy explain` and `pycni policy stats`, and the check of `pycni policy apply`.

explain answers from the COMPILED per-node models (what the nodes enforce, compile.simulate),
and states the reference answer (evaluate.verdict) only if the two ever disagree, which would be
a pycni bug worth reporting. The lead wires these to the CLI and the datastore.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping

from . import compile as pc
from . import evaluate as ev
from .model import (
    PROTOCOLS,
    AdminPolicy,
    NetworkPolicy,
    PolicyError,
    PolicyObject,
    World,
    parse_text,
)


def parse_port(text: str) -> tuple[int, str]:
    """`80`, `80/TCP`, `53/udp` -> (port, protocol)."""
    number, _, proto = text.partition("/")
    proto = (proto or "TCP").upper()
    if proto not in PROTOCOLS:
        raise PolicyError("PORT/PROTO", f"unknown protocol {proto!r}: one of {', '.join(PROTOCOLS)}")
    if not number.isdigit() or not 1 <= int(number) <= 65535:
        raise PolicyError("PORT/PROTO", f"invalid port {number!r}")
    return int(number), proto


def parse_endpoint(world: World, text: str) -> ev.Endpoint:
    """`ns/pod`, `node/NAME` or an IP address."""
    if text.startswith("node/"):
        node = world.node(text[5:])
        if node is None:
            raise PolicyError(text, "no such node")
        return node
    if "/" in text:
        try:
            return world.pod(text)
        except KeyError:
            raise PolicyError(text, "no such pod (namespace/name)") from None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        raise PolicyError(text, "not a pod (namespace/name), node/NAME or an IP address") from None


def _where(world: World, ep: ev.Endpoint) -> str:
    if isinstance(ep, ev.Pod):
        return f"{ep.key}" + (f" (node {ep.node_name})" if ep.node_name else "")
    return ev.describe(ep)


_TIER_TEXT = {
    ev.TIER_DEFAULT: "no policy selects the pod for {d}",
    ev.TIER_NODE: "from the pod's own node: always allowed",
    ev.TIER_LOOPBACK: "a pod reaching itself never leaves its network namespace",
    ev.TIER_NOT_POD: "not a pod: no {d} policy applies here",
}


def _step_lines(step: ev.Step, at: str, chain: str | None) -> list[str]:
    word = "allowed" if step.allowed else "DENIED"
    lines = [f"  {step.direction} at {at}: {word}"]
    if step.tier in _TIER_TEXT:
        lines[0] += f" ({_TIER_TEXT[step.tier].format(d=step.direction)})"
    else:
        lines[0] += f" by {step.tier}"
    for ref in step.passed:
        lines.append(f"    {ref} (on to the lower tiers)")
    for ref in step.rules:
        lines.append(f"    {ref}")
    if chain and step.tier not in (ev.TIER_DEFAULT, ev.TIER_NODE, ev.TIER_LOOPBACK, ev.TIER_NOT_POD):
        lines.append(f"    enforced in chain {chain}")
    return lines


def explain(world: World, src_text: str, dst_text: str, port_text: str) -> str:
    """`pycni policy explain FROM TO PORT/PROTO`: allowed or denied, and which policies and rules
    decide, read from the nodes' compiled models."""
    src, dst = parse_endpoint(world, src_text), parse_endpoint(world, dst_text)
    port, proto = parse_port(port_text)
    src, dst = ev.resolve(world, src), ev.resolve(world, dst)
    version = next(
        (a.version for a in (dst, src) if isinstance(a, (ipaddress.IPv4Address, ipaddress.IPv6Address))), None
    )
    reference = ev.verdict(world, src, dst, port, proto, version)

    src_ip = _address(src, version)
    dst_ip = _address(dst, version)
    nodes = sorted({p.node_name for p in world.pods if p.node_name is not None})
    models = [pc.compile_node(world, n) for n in nodes] if nodes else [pc.compile_node(world, None)]
    lines = []
    if src_ip is not None and dst_ip is not None:
        decision = pc.simulate(models, src_ip, dst_ip, port, proto)
        # simulate() knows addresses only; a node or host-network source is the node's address.
        if reference.ingress.tier == ev.TIER_NODE:
            decision = ev.Decision(decision.egress.allowed, decision.egress, reference.ingress, *_names(reference))
    else:
        decision = reference
    word = "ALLOWED" if decision.allowed else "DENIED"
    lines.append(f"{ev.describe(src)} -> {ev.describe(dst)} {port}/{proto}: {word}")
    sc = pc.chain_names(src.key)["egress"] if isinstance(src, ev.Pod) else None
    dc = pc.chain_names(dst.key)["ingress"] if isinstance(dst, ev.Pod) else None
    lines += _step_lines(decision.egress, _where(world, src), sc)
    lines += _step_lines(decision.ingress, _where(world, dst), dc)
    if decision.allowed != reference.allowed:
        lines.append(
            f"  WARNING: the reference evaluation says {'allowed' if reference.allowed else 'denied'}: "
            "a pycni bug, please report it with this output"
        )
    return "\n".join(lines) + "\n"


def _names(d: ev.Decision) -> tuple[str, str, int, str]:
    return (d.src, d.dst, d.port, d.protocol)


def _address(ep: ev.Endpoint, version: int | None) -> ev.IPAddress | None:
    if isinstance(ep, ev.Pod):
        return ep.ip(version) if version else (ep.ips[0] if ep.ips else None)
    if isinstance(ep, ev.Node):
        cands = [a for a in ep.addresses if version is None or a.version == version]
        return cands[0] if cands else None
    return ep


def format_stats(model: pc.NodeModel, counters: Mapping[str, tuple[int, int]]) -> str:
    """`pycni policy stats`: drops per policy on this node, from the named counters' values
    (name -> (packets, bytes)) the nft side reads."""
    rows = [("POLICY", "DROPPED PACKETS", "BYTES")]
    for name, label in model.counters:
        packets, nbytes = counters.get(name, (0, 0))
        rows.append((label, str(packets), str(nbytes)))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows) + "\n"


def validate_apply(text: str, default_namespace: str | None = None) -> list[PolicyObject]:
    """The check `pycni policy apply -f FILE` runs before storing anything: every object parses
    and validates, or nothing is applied (the PolicyError names the object and the field)."""
    objects = parse_text(text, default_namespace)
    if not objects:
        raise PolicyError("", "the file holds no objects")
    seen: set[tuple[str, str]] = set()
    for o in objects:
        ident = (type(o).__name__, o.key if isinstance(o, (NetworkPolicy, AdminPolicy)) else repr(o))
        if ident in seen and isinstance(o, (NetworkPolicy, AdminPolicy)):
            raise PolicyError(
                f"{o.kind if isinstance(o, AdminPolicy) else 'NetworkPolicy'} {o.key}", "appears twice in the file"
            )
        seen.add(ident)
    banps = [o for o in objects if isinstance(o, AdminPolicy) and o.priority is None]
    if len(banps) > 1:
        raise PolicyError("BaselineAdminNetworkPolicy default", "appears twice in the file")
    return objects
