"""Apply cluster_render.py's transactions with `nft` (through NftRunner), in the caller's netns."""

from __future__ import annotations

from typing import Any

from . import cluster_render as cr
from . import render
from .nftables import NftRunner


class NftClusterMasquerade:
    """The `cluster_masq` chain of `inet pycni`: replaced whole on every apply, deleted by remove."""

    def __init__(self, nft: str | None = None, runner: NftRunner | None = None) -> None:
        self._nft = runner or NftRunner(nft)

    def apply(self, rules: cr.Rules) -> bool:
        """Put exactly `rules` in the chain (no rules: remove it); False when it already held them."""
        listing = self._nft.listing(render.FAMILY)
        if not rules:
            script = cr.render_remove(listing)
        elif cr.is_current(listing, rules):
            script = ""
        else:
            script = cr.render_apply(rules)
        if not script:
            return False
        self._nft.run(["-f", "-"], script, "cluster masquerade setup")
        return True

    def remove(self) -> bool:
        """Delete the chain; False when it was not there."""
        script = cr.render_remove(self._nft.listing(render.FAMILY))
        if not script:
            return False
        self._nft.run(["-f", "-"], script, "cluster masquerade removal")
        return True

    def rules(self) -> list[dict[str, Any]]:
        return cr.parse_rules(self._nft.listing(render.FAMILY))
