"""Structured logging that never touches stdout (stdout belongs to the CNI result).

One JSON line per invocation: time, plugin, verb, container, ifname, duration, outcome.
Where it goes: the config key `logFile`, else the environment variable PYCNI_LOG_FILE; the
value is a file path or `stderr`. Unset means off.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

ENV_VAR = "PYCNI_LOG_FILE"
CONFIG_KEY = "logFile"


def destination(config: Mapping[str, Any], environ: Mapping[str, str]) -> str:
    value = config.get(CONFIG_KEY)
    if isinstance(value, str) and value:
        return value
    return environ.get(ENV_VAR, "")


def record(
    *,
    destination: str,
    plugin: str,
    verb: str,
    container_id: str,
    ifname: str,
    duration: float,
    error: Any = None,
    trace: str = "",
    stderr: IO[str] | None = None,
    **extra: Any,
) -> None:
    """Append one JSON line to `destination`; "stderr" means `stderr` (default sys.stderr)."""
    if not destination:
        return
    entry: dict[str, Any] = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()),
        "plugin": plugin,
        "verb": verb,
        "containerID": container_id,
        "ifname": ifname,
        "durationMs": round(duration * 1000, 3),
        "outcome": "ok" if error is None else "error",
    }
    if error is not None:
        entry["code"] = error.code
        entry["msg"] = str(error)
    if trace:
        entry["traceback"] = trace
    entry.update(extra)
    line = json.dumps(entry) + "\n"
    try:
        if destination == "stderr":
            (stderr or sys.stderr).write(line)
            return
        # O_APPEND makes each line one atomic write for concurrent plugin processes.
        fd = os.open(destination, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except (OSError, ValueError):  # ValueError: a closed stream
        pass  # a broken log destination must never fail the CNI operation
