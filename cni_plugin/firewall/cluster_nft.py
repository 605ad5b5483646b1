"""Apply cluster_render.py's transactions with `nft` (through NftRunner), in the caller's netns."""

from __future__ import annotations

from typing import Any

from . import cluster_render as cr
from . import lock, render
from .nftables import NftRunner


class NftClusterMasquerade:
    """The `cluster_masq` chain of `inet pycni`: replaced whole on every apply, deleted by remove."""

    def __init__(self, nft: str | None = None, runner: NftRunner | None = None) -> None:
        self._nft = runner or NftRunner(nft)

    def apply(self, rules: cr.Rules) -> bool:
        """Put exactly `rules` in the chain (no rules: remove it); False when it already held them."""
        if not rules:
            return self.remove()
        # Shared: a plugin's last DEL (exclusive) never deletes the table under this transaction.
        with lock.tables():
            listing = self._nft.listing(render.FAMILY)
            if cr.is_current(listing, rules):
                return False
            self._nft.run(["-f", "-"], cr.render_apply(rules), "cluster masquerade setup")
        return True

    def remove(self) -> bool:
        """Delete the chain (and the table, when nothing else of pycni's is left in it); False when
        it was not there."""
        with lock.tables(exclusive=True):
            listing = self._nft.listing(render.FAMILY)
            script = cr.render_remove(listing)
            if not script:
                return False
            lines = render.with_table_teardown(listing, script.splitlines())
            self._nft.run(["-f", "-"], "\n".join(lines) + "\n", "cluster masquerade removal")
        return True

    def rules(self) -> list[dict[str, Any]]:
        return cr.parse_rules(self._nft.listing(render.FAMILY))
