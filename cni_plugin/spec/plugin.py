"""What an executable is, and the two answers that need no handler: VERSION and the about line.

Kept apart from skel.py so that VERSION, which podman sends to every plugin of a chain each time
it loads a network, imports only `json` and this module (no dataclasses, no ipaddress, and never
pyroute2 or pydantic).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from .version import ALL_VERSIONS, LATEST

if TYPE_CHECKING:  # typing costs ~4 ms at run time on the VERSION path
    from collections.abc import Callable
    from typing import IO, Any


class Plugin:
    """A plugin name, its supported versions, and a lazy loader of its handlers."""

    __slots__ = ("name", "about", "load_handlers", "versions")

    def __init__(
        self,
        name: str,
        about: str,
        load_handlers: Callable[[], Any],
        versions: tuple[str, ...] = ALL_VERSIONS,
    ) -> None:
        self.name = name
        self.about = about
        self.load_handlers = load_handlers
        self.versions = versions


def about_text(plugin: Plugin) -> str:
    from .. import __version__

    return (
        f"CNI {plugin.name} plugin (pycni {__version__}): {plugin.about}\n"
        f"CNI protocol versions supported: {', '.join(plugin.versions)}\n"
    )


def read_version_input(stdin: IO[bytes]) -> bytes:
    """VERSION may come with no stdin at all: never block on a terminal for it."""
    try:
        if stdin.isatty():
            return b""
        return stdin.read()
    except (OSError, ValueError):
        return b""


def version_reply(plugin: Plugin, data: bytes) -> str:
    """The VERSION answer: the input's cniVersion echoed (SPEC §2), else the latest, plus ours."""
    requested = LATEST
    if data.strip():
        try:
            parsed = json.loads(data)
        except ValueError:
            parsed = None  # VERSION answers whatever else stdin holds
        if isinstance(parsed, dict) and isinstance(parsed.get("cniVersion"), str):
            requested = parsed["cniVersion"]
    return json.dumps({"cniVersion": requested, "supportedVersions": list(plugin.versions)}, indent=4) + "\n"
