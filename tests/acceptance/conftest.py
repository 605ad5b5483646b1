"""Shared by the runtime acceptance tests: which plugin of a runtime's chain came from where.

A runtime resolves each `type` of a conflist to the first directory of its plugin path holding an
executable of that name. The tests put pycni's directory first and, for a plugin pycni does not
ship, the Go reference directory second; `plugin_origins` records what each runtime really took,
and the terminal summary lists every plugin that was borrowed from the reference, per runtime.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pytest

from tests.conftest import GO_PLUGINS

# runtime -> {plugin type: directory it was executed from}
_ORIGINS: dict[str, dict[str, Path]] = {}


def resolve_plugin(plugin_type: str, plugin_dirs: Sequence[Path]) -> Path | None:
    """The directory a runtime takes `plugin_type` from: the first one holding an executable."""
    for directory in plugin_dirs:
        candidate = Path(directory) / plugin_type
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return Path(directory)
    return None


def chain_types(conflist: dict) -> list[str]:
    """Every plugin type a conflist runs, its IPAM plugins included, in chain order."""
    types: list[str] = []
    for plugin in conflist.get("plugins", [conflist]):
        for name in (plugin.get("type"), (plugin.get("ipam") or {}).get("type")):
            if name and name not in types:
                types.append(name)
    return types


@pytest.fixture
def plugin_origins() -> Callable[[str, Iterable[str], Sequence[Path]], dict[str, Path]]:
    """record(runtime, types, plugin_dirs) -> {type: directory}; fails on a type found nowhere."""

    def record(runtime: str, types: Iterable[str], plugin_dirs: Sequence[Path]) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for plugin_type in types:
            directory = resolve_plugin(plugin_type, plugin_dirs)
            if directory is None:
                pytest.fail(f"{runtime}: no plugin {plugin_type!r} in {[str(d) for d in plugin_dirs]}")
            found[plugin_type] = directory
        _ORIGINS.setdefault(runtime, {}).update(found)
        return found

    return record


def pytest_terminal_summary(terminalreporter) -> None:
    if not _ORIGINS:
        return
    terminalreporter.section("plugins the runtimes took from the Go reference")
    for runtime, origins in sorted(_ORIGINS.items()):
        borrowed = sorted(t for t, d in origins.items() if d == GO_PLUGINS)
        terminalreporter.write_line(f"{runtime}: {', '.join(borrowed) if borrowed else 'none'}")
