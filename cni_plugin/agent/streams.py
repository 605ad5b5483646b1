"""sys.stderr per worker thread: what a handler writes to sys.stderr reaches its own caller.

Handlers and helpers write warnings with `sys.stderr.write` (bridge._warn, rollback.Undo). In a
plugin process that is the runtime's pipe; in the agent, many requests run at once, so sys.stderr
is replaced by a router that sends each thread's writes to its request's buffer.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any


class StderrRouter:
    def __init__(self, default: IO[str]) -> None:
        self._default = default
        self._local = threading.local()

    def _target(self) -> IO[str]:
        return getattr(self._local, "target", None) or self._default

    def write(self, text: str) -> int:
        return self._target().write(text)

    def writelines(self, lines: Any) -> None:
        self._target().writelines(lines)

    def flush(self) -> None:
        self._target().flush()

    def __getattr__(self, name: str) -> Any:  # encoding, fileno, isatty, ...: the real stream's
        return getattr(self._default, name)

    @contextmanager
    def redirect(self, target: IO[str]) -> Iterator[None]:
        self._local.target = target
        try:
            yield
        finally:
            self._local.target = None
