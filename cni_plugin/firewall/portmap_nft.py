"""Apply portmap_render.py's transactions with `nft` (through NftRunner), in the caller's netns.

ADD, DEL and GC each hold an exclusive flock on LOCK_FILE for list + decide + apply (lock.py), so
two pods asking for the same host port at once cannot both pass the conflict check (the kernel's
EEXIST on `create element` is the second guard, also against writers that do not lock). One file
for the node: each holder runs two nft commands, and a file per network namespace would pile up.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from . import lock, render
from . import portmap_render as pr
from .nftables import NftRunner, apply_removal

LOCK_FILE = lock.lock_path("portmap")
LOCK_TIMEOUT = lock.LOCK_TIMEOUT  # seconds


@contextlib.contextmanager
def locked(path: str | None = None, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the node's portmap lock; TryAgainLater (11) after `timeout` (lock.py)."""
    with lock.locked(path or LOCK_FILE, "portmap", timeout):
        yield


class NftPortmap:
    """Host-port DNAT and hairpin masquerade elements in `inet pycni`."""

    def __init__(self, nft: str | None = None, lock_path: str | None = None) -> None:
        self._nft = NftRunner(nft)
        self._lock_path = lock_path

    def entries(self) -> pr.Entries:
        return pr.parse_entries(self._nft.listing(render.FAMILY))

    def chains(self) -> set[str]:
        return pr.chains_present(self._nft.listing(render.FAMILY))

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The node's portmap lock, for a caller that pairs a host step with the transaction
        (ADD's route_localnet and its rollback); then call add/remove/entries with held=True."""
        return locked(self._lock_path)

    def _maybe_locked(self, held: bool) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext() if held else locked(self._lock_path)

    def add(self, wanted: pr.Entries, *, held: bool = False) -> list[tuple[pr.PortEntry, pr.PortEntry]]:
        """Install `wanted` atomically. Returns the conflicts instead when another attachment
        already holds one of the ports (then nothing was changed)."""
        with self._maybe_locked(held):
            plan = pr.plan_add(wanted, self.entries())
            if plan.conflicts:
                return list(plan.conflicts)
            with lock.tables():
                self._nft.run(["-f", "-"], plan.script, "host port setup")
        return []

    def _delete_where(self, select: Callable[[pr.Entries], pr.Entries]) -> pr.Entries:
        """Under the portmap lock: delete the entries `select` picks from the table's; the last
        ones take the portmap chains and maps (and the table, if nothing else is in it) along."""
        with lock.tables(exclusive=True):
            listing = self._nft.listing(render.FAMILY)
            doomed = select(pr.parse_entries(listing))
            lines = pr.render_removal(listing, doomed)
            teardown = bool(render.deleted_objects(lines))
            script = render.script_of(render.with_table_teardown(listing, lines))
            if script:
                apply_removal(self._nft, script, teardown, lambda: pr.render_delete(doomed), "host port removal")
        return doomed

    def remove(self, comment: str, *, held: bool = False) -> pr.Entries:
        with self._maybe_locked(held):
            return self._delete_where(lambda entries: entries.with_comment(comment))

    def gc(self, network: str, keep_comments: set[str]) -> pr.Entries:
        def stale(entries: pr.Entries) -> pr.Entries:
            mine = entries.of_network(network)
            return pr.Entries(
                ports=tuple(e for e in mine.ports if e.comment not in keep_comments),
                masq=tuple(e for e in mine.masq if e.comment not in keep_comments),
            )

        with locked(self._lock_path):
            return self._delete_where(stale)

    def usable(self) -> None:
        """A dry run (-c) of the skeleton: nft exists and the kernel has nat, fib and maps."""
        self._nft.run(["-c", "-f", "-"], "\n".join(pr.render_skeleton()) + "\n", "status probe")
