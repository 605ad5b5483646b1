"""Apply render.py's transactions with the `nft` tool (`nft -f -`: one atomic kernel transaction).

Every nft failure becomes FirewallFailure (code 106) carrying nft's own message.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

from ..spec.errors import FirewallFailure
from ..spec.types import IPInterface
from . import lock, render
from .backend import MasqEntry, SpoofEntry

NFT_CANDIDATES = ("/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft")


def _bundled_nft() -> str | None:
    """The `nft` shipped inside the self-contained bundle (scripts/bundle), with its libraries
    beside it: nodes such as kind's and minikube's need not have nftables installed."""
    base = getattr(sys, "_MEIPASS", None) if getattr(sys, "frozen", False) else None
    candidate = os.path.join(base, "nft") if base else ""
    return candidate if candidate and os.access(candidate, os.X_OK) else None


def _nft_env(nft: str) -> dict[str, str] | None:
    # The bundle's nft finds its libraries (libnftables, libnftnl, ...) in its own folder only.
    if nft == _bundled_nft():
        return {**os.environ, "LD_LIBRARY_PATH": os.path.dirname(nft)}
    return None


def _nft_binary() -> str:
    bundled = _bundled_nft()
    if bundled:
        return bundled
    found = shutil.which("nft")
    if found:
        return found
    for candidate in NFT_CANDIDATES:
        if shutil.which(candidate):
            return candidate
    raise FirewallFailure("nftables is not usable", "the nft executable was not found")


def _warn(message: str) -> None:
    sys.stderr.write(f"pycni: {message}\n")


class NftRunner:
    """Runs `nft` for both backends: scripts as one transaction, and JSON table listings."""

    def __init__(self, nft: str | None = None) -> None:
        self._nft = nft

    def run(self, argv: list[str], script: str = "", what: str = "") -> str:
        nft = self._nft or _nft_binary()
        try:
            proc = subprocess.run([nft, *argv], input=script, capture_output=True, text=True, timeout=30,
                                  env=_nft_env(nft))
        except (OSError, subprocess.SubprocessError) as exc:
            raise FirewallFailure(f"nftables: {what} failed", str(exc)) from exc
        if proc.returncode != 0:
            raise FirewallFailure(f"nftables: {what} failed", proc.stderr.strip() or f"exit {proc.returncode}")
        return proc.stdout

    def listing(self, family: str) -> dict[str, Any]:
        """The pycni table of `family` as parsed `nft -j` JSON; {} when the table was never created."""
        try:
            out = self.run(["-j", "list", "table", family, render.TABLE], what=f"listing the {family} pycni table")
        except FirewallFailure as exc:
            # nft reports a missing table only as text (ENOENT's strerror); nothing else has it.
            if "No such file or directory" in exc.details:
                return {}
            raise
        return render.parse_listing(out)


def apply_removal(nft: NftRunner, script: str, teardown: bool, elements_only: Callable[[], str], what: str) -> None:
    """Run a DEL/GC transaction. If it also tears the network's chain and sets down and the kernel
    refuses (an operator's rule refers to one of the sets: EBUSY), the attachment's own elements
    must still go: run `elements_only()` and leave the network's objects in place."""
    try:
        nft.run(["-f", "-"], script, what)
    except FirewallFailure as exc:
        if not teardown:
            raise
        _warn(f"{what}: the network's chain and sets stay ({exc.msg}: {exc.details})")
        fallback = elements_only()
        if fallback:
            nft.run(["-f", "-"], fallback, what)


class NftMasquerade:
    """The Masquerade backend on the kernel's nftables, in the caller's network namespace.

    ADD, DEL and GC hold the node's masquerade lock (lock.py) around list + decide + apply: the
    last DEL of a network deletes its chain and sets, and an ADD of the same network must not
    slip in between that DEL's listing and its transaction.
    """

    def __init__(self, nft: str | None = None, lock_path: str | None = None, runner: NftRunner | None = None) -> None:
        self._nft = runner or NftRunner(nft)
        self._lock_path = lock_path or lock.lock_path("masquerade")

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return lock.locked(self._lock_path, "masquerade")

    def add(self, network: str, tag: str, addresses: Iterable[IPInterface]) -> None:
        script = render.render_add(network, tag, addresses)
        with self._locked(), lock.tables():
            self._nft.run(["-f", "-"], script, f"masquerade setup for {network}")

    def entries(self, network: str) -> list[MasqEntry]:
        return render.parse_entries(network, self._nft.listing(render.FAMILY))

    def _remove_where(self, network: str, doomed: Callable[[str], bool]) -> list[MasqEntry]:
        with self._locked(), lock.tables(exclusive=True):
            listing = self._nft.listing(render.FAMILY)
            plan = render.plan_removal(network, listing, doomed)
            script = render.script_of(render.with_table_teardown(listing, plan.script.splitlines()))
            if not script:
                return []
            apply_removal(
                self._nft, script, plan.teardown or script != plan.script,
                lambda: render.render_delete(network, plan.removed), f"masquerade removal for {network}",
            )
        return list(plan.removed)

    def remove(self, network: str, tag: str) -> list[MasqEntry]:
        return self._remove_where(network, lambda t: t == tag)

    def gc(self, network: str, keep: set[str]) -> list[MasqEntry]:
        return self._remove_where(network, lambda t: t not in keep)

    def usable(self) -> None:
        # A dry run (-c) of creating the table: proves nft exists and the kernel accepts inet nat.
        script = "\n".join(render.render_skeleton("pycni-status-probe")) + "\n"
        self._nft.run(["-c", "-f", "-"], script, "status probe")


class NftSpoofCheck:
    """macspoofchk on the kernel's nftables (`bridge pycni` table, see render.py).

    ADD, DEL and GC hold the node's spoofcheck lock: the DEL that removes the last elements also
    deletes the chain and sets (and the table, when nothing else is in it)."""

    def __init__(self, nft: str | None = None, lock_path: str | None = None) -> None:
        self._nft = NftRunner(nft)
        self._lock_path = lock_path or lock.lock_path("spoofcheck")

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return lock.locked(self._lock_path, "spoofcheck")

    def add(self, network: str, tag: str, host_if: str, mac: str) -> None:
        with self._locked(), lock.tables():
            self._nft.run(["-f", "-"], render.render_spoof_add(network, tag, host_if, mac), "macspoofchk setup")

    def _all(self) -> list[SpoofEntry]:
        return render.parse_spoof_entries(self._nft.listing("bridge"))

    def entries(self, network: str) -> list[SpoofEntry]:
        prefix = render.network_id(network) + "-"
        return [e for e in self._all() if e.comment.startswith(prefix)]

    def _delete_where(self, doomed: Callable[[SpoofEntry], bool]) -> list[SpoofEntry]:
        with self._locked(), lock.tables(exclusive=True):
            listing = self._nft.listing("bridge")
            found = render.parse_spoof_entries(listing)
            gone = [e for e in found if doomed(e)]
            lines = render.render_spoof_removal(listing, gone, everything=len(gone) == len(found))
            script = render.script_of(render.with_table_teardown(listing, lines, render.SPOOF_TABLE))
            if script:
                self._nft.run(["-f", "-"], script, "macspoofchk removal")
        return gone

    def remove(self, network: str, tag: str) -> list[SpoofEntry]:
        wanted = render.spoof_comment(network, tag)
        return self._delete_where(lambda e: e.comment == wanted)

    def gc(self, network: str, keep: set[str]) -> list[SpoofEntry]:
        prefix = render.network_id(network) + "-"
        keep_comments = {render.spoof_comment(network, tag) for tag in keep}
        return self._delete_where(lambda e: e.comment.startswith(prefix) and e.comment not in keep_comments)
