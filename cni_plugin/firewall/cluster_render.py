"""Pure nftables rendering of the cluster masquerade: traffic from this node's pods to anything
outside the cluster is masqueraded; pod-to-pod (any node) and node-to-pod never are. No I/O.

One chain of its own in pycni's `inet pycni` table (shared with the bridge masquerade and
portmap, each in objects of their own):

    chain cluster_masq { type nat hook postrouting priority srcnat; policy accept;
        ip saddr 10.244.1.0/24 ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade
        ip6 saddr fd00:10:244:1::/64 ip6 daddr != { fd00:10:244::/56, ff00::/8 } masquerade
    }

The source match is this node's own pod subnet: a packet from another node's pod that this node
forwards is never rewritten. Node-to-pod traffic has the node's address as source and so never
matches. Each reconcile replaces the chain's rules whole in one transaction ("add chain" of an
existing chain is a no-op, then flush and re-add), so a subnet change never leaves a window with
no rule or with two. Every rule carries the digest of the whole rule list as its comment: a
reconcile whose rules are already in place sees the digest and sends no transaction at all.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from ..spec.types import IPNetwork
from .render import FAMILY, TABLE, objects

T = f"{FAMILY} {TABLE}"
CHAIN = "cluster_masq"


def render_rule(source: IPNetwork, keep: Sequence[IPNetwork]) -> str:
    ip = "ip" if source.version == 4 else "ip6"
    rule = f"{ip} saddr {source}"
    if keep:
        rule += f" {ip} daddr != {{ {', '.join(str(k) for k in keep)} }}"
    return rule + " masquerade"


Rules = Sequence[tuple[IPNetwork, Sequence[IPNetwork]]]


def digest(rules: Rules) -> str:
    text = "\n".join(render_rule(source, keep) for source, keep in rules)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def render_apply(rules: Rules) -> str:
    """The whole chain as one transaction: declare, flush, re-add every rule (tagged with the
    digest of the list)."""
    tag = digest(rules)
    lines = [
        f"add table {T}",
        f"add chain {T} {CHAIN} {{ type nat hook postrouting priority srcnat; policy accept; }}",
        f"flush chain {T} {CHAIN}",
    ]
    lines += [f'add rule {T} {CHAIN} {render_rule(source, keep)} comment "{tag}"' for source, keep in rules]
    return "\n".join(lines) + "\n"


def is_current(listing: dict[str, Any], rules: Rules) -> bool:
    """True when the chain holds exactly `rules` (by count and digest comment)."""
    found = parse_rules(listing)
    tag = digest(rules)
    return chain_exists(listing) and len(found) == len(rules) and all(r.get("comment") == tag for r in found)


def chain_exists(listing: dict[str, Any]) -> bool:
    return CHAIN in objects(listing)[0]


def render_remove(listing: dict[str, Any]) -> str:
    """Delete the chain when the listing has it; "" when there is nothing to delete (deleting a
    missing chain would fail the transaction)."""
    if not chain_exists(listing):
        return ""
    return f"flush chain {T} {CHAIN}\ndelete chain {T} {CHAIN}\n"


def parse_rules(listing: dict[str, Any]) -> list[dict[str, Any]]:
    """The chain's rules (nft -j rule objects), in order; empty when the chain does not exist."""
    return [
        item["rule"] for item in listing.get("nftables", [])
        if isinstance(item, dict) and isinstance(item.get("rule"), dict) and item["rule"].get("chain") == CHAIN
    ]
