"""One request per container at a time (SPEC §3 lets runtimes rely on it; the agent enforces it)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class KeyedLocks:
    """A lock per key, created on first use and dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._entries: dict[str, list] = {}  # key -> [Lock, users]

    @contextmanager
    def hold(self, key: str | None, timeout: float) -> Iterator[bool]:
        """Yield True once `key` is held (None: no lock needed), False after `timeout` seconds."""
        if key is None:
            yield True
            return
        with self._guard:
            entry = self._entries.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        acquired = entry[0].acquire(timeout=timeout)
        try:
            yield acquired
        finally:
            if acquired:
                entry[0].release()
            with self._guard:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._entries[key]

    def __len__(self) -> int:
        with self._guard:
            return len(self._entries)
