"""The undo stack for ADD: push the inverse of each create right after it succeeds.

    with Undo(stderr) as undo:
        create_veth(...)
        undo.push("delete veth vethX", delete_veth, "vethX")
        ...
        undo.disarm()            # success: keep everything
        return result

If an exception escapes the block, the pushed steps run in reverse (LIFO) order. Each step is
meant to be idempotent; a step that raises is logged to stderr and the unwinding goes on, and the
original exception is the one that propagates (an undo failure never masks the cause). "Already
gone" (NotFound) counts as done. This is the Go plugins' success-flag-plus-defer pattern.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import IO, Any, Literal, NamedTuple

from .spec.errors import CNIError, NotFound


class _Step(NamedTuple):
    what: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


class Undo:
    def __init__(self, log: IO[str] | None = None) -> None:
        self._steps: list[_Step] = []
        self._log = log
        self.failures: list[str] = []
        self.ran: list[str] = []

    def push(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self._steps.append(_Step(what, fn, args, kwargs))

    def disarm(self) -> None:
        """Success: forget every step (nothing will be undone)."""
        self._steps.clear()

    def unwind(self) -> None:
        while self._steps:
            step = self._steps.pop()
            self.ran.append(step.what)
            try:
                step.fn(*step.args, **step.kwargs)
            except NotFound:
                pass  # already gone: that is what the undo wanted
            except Exception as exc:  # noqa: BLE001 - log and keep unwinding, never mask the cause
                line = f"pycni: rollback step {step.what!r} failed: {type(exc).__name__}: {exc}"
                self.failures.append(line)
                (self._log or sys.stderr).write(line + "\n")

    def __enter__(self) -> Undo:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> Literal[False]:
        if exc_type is not None:
            self.unwind()
        return False  # the original exception propagates


class Sweep:
    """DEL and GC: run every step even after one fails, then report all failures as one error.

    SPEC §2: DEL must do its best and finish; GC keeps going and aggregates errors. "Already
    gone" (NotFound) counts as done. The first CNI error is raised, its details extended with
    the others.
    """

    def __init__(self) -> None:
        self.errors: list[CNIError] = []

    def run(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except NotFound:
            pass
        except CNIError as exc:
            self.errors.append(exc)

    def finish(self) -> None:
        if not self.errors:
            return
        first = self.errors[0]
        if len(self.errors) > 1:
            first.details = "; ".join(filter(None, [first.details, *(str(e) for e in self.errors[1:])]))
        raise first
