"""Masquerade (SNAT) for pod traffic leaving its network, through nftables.

`render` is pure (names, tags, the nft transactions as text, parsing `nft -j` output);
`nftables` applies them through `nft -f -` (one atomic kernel transaction per call);
`fake` is an in-memory twin for unit tests. The layout is documented in the README (pycni-bridge, nftables layout).
Host ports (pycni-portmap): `portmap_render` (pure) and `portmap_nft` (applies it under a node-wide lock).
"""

from .backend import MasqEntry, Masquerade
from .render import TABLE, attachment_tag, network_id

__all__ = ["TABLE", "MasqEntry", "Masquerade", "attachment_tag", "network_id"]
