"""What an executable is, and the two answers that need no handler: VERSION and the about line.

Kept apart from skel.py so that VERSION, which podman sends to every plugin of a chain each time
it loads a network, costs little more than the interpreter's start: this module imports no stdlib
module that a `python3 -IS` start has not loaded already, except `_json`. Not `json` (it imports
`re`, ~6 ms), not `typing` (~4-12 ms with what it pulls in), never pyroute2 or pydantic.
"""

from __future__ import annotations

import _json  # the C half of the stdlib's json: its scanner and string encoder, without `re`

from .version import ALL_VERSIONS, LATEST

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (mypy knows the name)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import IO, Any

JSON_WHITESPACE = " \t\n\r"


class _ScannerContext:
    """What `_json.make_scanner` reads off a json.JSONDecoder: the defaults of json.loads."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float  # NaN, Infinity, -Infinity, as json.loads reads them


_scan = _json.make_scanner(_ScannerContext)  # type: ignore[arg-type]  # typeshed wants a JSONDecoder; duck-typed


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


def parse_json_document(data: bytes) -> object:
    """`data` as json.loads reads it (UTF-8 text, one value, whitespace around); ValueError if not."""
    text = data.decode("utf-8").strip(JSON_WHITESPACE)  # UnicodeDecodeError is a ValueError
    try:
        value, end = _scan(text, 0)
    except (StopIteration, RecursionError) as exc:
        raise ValueError("not a JSON document") from exc
    if end != len(text):
        raise ValueError("extra data after the JSON value")
    return value


def version_reply(plugin: Plugin, data: bytes) -> str:
    """The VERSION answer: the input's cniVersion echoed (SPEC §2), else the latest, plus ours.

    Laid out as json.dumps(..., indent=4) lays it out; the strings are escaped by the same C
    encoder json.dumps uses (ensure_ascii)."""
    requested = LATEST
    if data.strip():
        try:
            parsed = parse_json_document(data)
        except ValueError:
            parsed = None  # VERSION answers whatever else stdin holds
        if isinstance(parsed, dict) and isinstance(parsed.get("cniVersion"), str):
            requested = parsed["cniVersion"]
    quote = _json.encode_basestring_ascii
    versions = ",\n".join(f"        {quote(v)}" for v in plugin.versions)
    return (
        f'{{\n    "cniVersion": {quote(requested)},\n    "supportedVersions": [\n{versions}\n    ]\n}}\n'
    )
