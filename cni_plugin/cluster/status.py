"""The controller's status file: what `pycni cluster status` shows and what bridge STATUS reads.

One JSON document, rewritten atomically by the agent after every reconcile:

    {"node": "n1", "ready": true, "reason": "", "backend": "vxlan", "subnets": [...],
     "address": "198.18.0.2", "datastore": "etcd", "datastoreReachable": true,
     "lastSync": 1733200000.0, "lastError": "", "peers": [{"name", "subnets", "address",
     "via", "reason"}], "applied": {"added": 0, "removed": 0, "errors": []}, "updated": ...}

`ready` is true once the node holds its subnet and the conflist is written. It stays true through
a datastore outage (the data path is kept as it is); it turns false when the subnet is lost.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .conflist import write_atomic

DEFAULT_STATUS_FILE = "/run/pycni/cluster-status.json"


def write(path: str, status: dict[str, Any]) -> None:
    document = dict(status, updated=time.time())
    write_atomic(path, (json.dumps(document, indent=2, sort_keys=True) + "\n").encode(), mode=0o644)


def read(path: str) -> dict[str, Any] | None:
    """The status document, or None when there is none (the agent has not run its controller)."""
    try:
        with open(path, "rb") as handle:
            data = json.loads(handle.read())
    except FileNotFoundError:
        return None
    except ValueError:
        return {"ready": False, "reason": f"status file {path} is not JSON"}
    return data if isinstance(data, dict) else {"ready": False, "reason": f"status file {path} is not an object"}


def not_ready_reason(path: str) -> str:
    """'' when the node is ready; else why not (bridge STATUS turns it into code 50)."""
    status = read(path)
    if status is None:
        return "the node has no cluster subnet yet (pycni-agent has written no status)"
    if not status.get("ready"):
        return str(status.get("reason") or "the node is not ready")
    return ""
