"""The `agent` config key and the CNI error bytes both the agent and the shim's fallback print.

`"agent": "preferred"` (the default) uses pycni-agent when it is running and runs the plugin
in-process otherwise; `"agent": "required"` never runs in-process: with the agent down, STATUS
answers PluginNotAvailable (50) and every other verb but VERSION answers TryAgainLater (11).
Any other value is InvalidConfig (7) on both paths, so a typo cannot silently mean "preferred".
"""

from __future__ import annotations

import json
from typing import Any

from ..spec.errors import CNIError, InvalidConfig
from ..spec.version import ALL_VERSIONS, IMPLICIT_VERSION, LATEST

CONFIG_KEY = "agent"
PREFERRED = "preferred"
REQUIRED = "required"
MODES = (PREFERRED, REQUIRED)
# Verbs that never need the agent: VERSION and the about line (no CNI_COMMAND) are answered alone.
AGENTLESS_VERBS = ("", "VERSION")


def parse_config(data: bytes) -> dict[str, Any] | None:
    """The config as a dict, or None when it is not a JSON object (the dispatcher reports that)."""
    try:
        config = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return config if isinstance(config, dict) else None


def mode_of(config: dict[str, Any] | None) -> str:
    if config is None or CONFIG_KEY not in config:
        return PREFERRED
    value = config[CONFIG_KEY]
    if value not in MODES:
        raise InvalidConfig(
            "invalid network configuration", f"{CONFIG_KEY}: must be one of {', '.join(MODES)}, got {value!r}"
        )
    return str(value)


def reply_version(config: dict[str, Any] | None) -> str:
    """The cniVersion an error is reported in: the config's when pycni speaks it, else the latest."""
    version = (config or {}).get("cniVersion", IMPLICIT_VERSION) or IMPLICIT_VERSION
    return version if version in ALL_VERSIONS else LATEST


def error_bytes(exc: CNIError, version: str) -> bytes:
    """Exactly what the dispatcher prints for `exc` (spec.skel._print_json)."""
    return (json.dumps(exc.to_wire(version), indent=4) + "\n").encode()
