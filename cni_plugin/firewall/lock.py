"""The node-wide lock pycni's nftables writers hold around "list, decide, apply".

A DEL (or GC) lists the table, decides what to delete - the attachment's elements and, when they
were the network's last, the network's chains and sets - and applies that as one transaction. An
ADD of another pod of the same network landing between the listing and the transaction would
lose its elements with the sets, so ADD, DEL and GC of one backend take the same lock. (portmap
needs it for its host-port conflict check.)

One exclusive flock(2) per backend (`masquerade`, `firewall`, `portmap`, `spoofcheck`) under
LOCK_DIR, plus `tables` (see `tables()`) around the transactions themselves; not
per network or per network namespace: such files would pile up, and each holder runs only one to
three `nft` commands. A flock belongs to an open file description, so it works between processes
and between the agent's worker threads alike (each `locked()` opens its own), and the kernel drops
it when the holder dies. Waiting is non-blocking polls (no signals: the agent is threaded) until
`timeout`, then TryAgainLater (11) for the runtime to retry.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import time
from collections.abc import Iterator

from ..spec.errors import FirewallFailure, TryAgainLater

LOCK_DIR = "/run/pycni"
LOCK_TIMEOUT = 30.0  # seconds
LOCK_POLL = 0.02


def lock_path(name: str) -> str:
    """The lock file of backend `name` (`masquerade`, `firewall`, `portmap`)."""
    return os.path.join(LOCK_DIR, f"{name}.lock")


TABLES = "tables"


@contextlib.contextmanager
def tables(exclusive: bool = False, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """The lock on pycni's nftables tables themselves (`inet pycni`, `bridge pycni`), innermost:
    taken after a backend's own lock, never the other way round.

    Every transaction that adds objects or elements to a pycni table holds it shared (they run
    side by side); the removal that may delete a table holds it exclusive from its listing to its
    transaction. `delete table` takes everything in the table with it, so without this an ADD
    of another backend (or of another pycni part with chains of its own, e.g. the cluster agent)
    landing between "the listing shows nothing left" and "delete table" would be wiped out.
    """
    with locked(lock_path(TABLES), "nftables tables", timeout, shared=not exclusive):
        yield


@contextlib.contextmanager
def locked(path: str, what: str, timeout: float = LOCK_TIMEOUT, *, shared: bool = False) -> Iterator[None]:
    """Hold an exclusive (or, `shared`, a shared) flock on `path` (created 0600, its directory
    0700 if missing).

    FirewallFailure (106) when the file cannot be opened or locked, TryAgainLater (11) when another
    holder keeps it past `timeout` seconds. `what` names the lock in those errors.
    Not re-entrant: a second `locked()` of the same path in one thread waits for itself.
    """
    try:
        os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise FirewallFailure(f"cannot open the {what} lock {path}", exc.strerror or str(exc)) from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise FirewallFailure(f"cannot lock {path}", exc.strerror or str(exc)) from exc
                if time.monotonic() > deadline:
                    raise TryAgainLater(f"{what} lock {path} is busy", f"not acquired within {timeout:g} s") from exc
                time.sleep(LOCK_POLL)
        yield
    finally:
        os.close(fd)  # closing the description drops the flock
