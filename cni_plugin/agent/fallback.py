"""The shim's way out when the agent cannot serve a request: run the plugin in this process.

Imported only on that path, so it may import anything. Rules (README "pycni-agent"):
- `"agent": "required"`: never run here. STATUS answers PluginNotAvailable (50), every other verb
  but VERSION TryAgainLater (11).
- an ADD the agent had started (it said "started" and then vanished) may be half done: answer
  TryAgainLater (11); the runtime's DEL removes whatever it left (deterministic names and tags).
- everything else runs in-process, exactly as the daemonless executable would (entry.main).
"""

from __future__ import annotations

import io
import os
import sys

from ..spec.errors import CNIError, PluginNotAvailable, TryAgainLater
from . import mode


def _fail(exc: CNIError, version: str) -> int:
    out = mode.error_bytes(exc, version)
    try:
        sys.stdout.buffer.write(out)
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    return 1


def run_here(plugin: str, socket_path: str, data: bytes | None, started: bool, reason: str) -> int:
    verb = os.environ.get("CNI_COMMAND", "")
    if verb not in mode.AGENTLESS_VERBS:
        if data is None:
            try:
                data = sys.stdin.buffer.read()
            except (OSError, ValueError):
                data = None  # the in-process dispatcher reports IOFailure (5) itself
        config = mode.parse_config(data) if data is not None else None
        version = mode.reply_version(config)
        try:
            wanted = mode.mode_of(config)
        except CNIError as exc:
            return _fail(exc, version)
        where = f"pycni-agent at {socket_path}"
        if wanted == mode.REQUIRED:
            sys.stderr.write(f"pycni: {where} is required by the configuration and unusable: {reason}\n")
            if verb == "STATUS":
                return _fail(PluginNotAvailable(f"{where} is not available", reason), version)
            return _fail(TryAgainLater(f"{where} is not available", reason), version)
        if started and verb == "ADD":
            return _fail(
                TryAgainLater(
                    f"{where} stopped while serving ADD",
                    "the attachment may be half made; DEL removes it, then ADD again",
                ),
                version,
            )
    if data is None and sys.stdin is None and verb == "VERSION":
        data = b""  # fd 0 closed: VERSION reads it as empty (spec.plugin.read_version_input's rule)
    if data is not None:
        sys.stdin = io.TextIOWrapper(io.BytesIO(data))
    from ..entry import main

    return main(plugin)
