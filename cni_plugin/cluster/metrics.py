"""Prometheus text exposition of the cluster controller's state (`pycni-agent --metrics-listen`).

    GET /metrics   pycni_cluster_* gauges and counters (text format 0.0.4)
    GET /healthz   200 once the node holds its subnet and its conflist is written, else 503

Rendering is pure (`render(status)`, from the same document the status file holds); the server is
a stdlib ThreadingHTTPServer in a daemon thread, so a slow scraper never blocks the controller.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
VIAS = ("host-gw", "vxlan", "bgp", "unreachable")


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(status: dict[str, Any]) -> str:
    node = _label(str(status.get("node", "")))
    peers = status.get("peers", [])
    lines = [
        "# HELP pycni_cluster_ready 1 when this node holds its subnet and its conflist is written.",
        "# TYPE pycni_cluster_ready gauge",
        f'pycni_cluster_ready{{node="{node}"}} {1 if status.get("ready") else 0}',
        "# HELP pycni_cluster_datastore_reachable 1 when the last datastore call succeeded.",
        "# TYPE pycni_cluster_datastore_reachable gauge",
        f'pycni_cluster_datastore_reachable{{node="{node}",datastore="{_label(str(status.get("datastore", "")))}"}} '
        f'{1 if status.get("datastoreReachable") else 0}',
        "# HELP pycni_cluster_peers Peers by how this node reaches them.",
        "# TYPE pycni_cluster_peers gauge",
    ]
    for via in VIAS:
        count = sum(1 for p in peers if p.get("via") == via)
        lines.append(f'pycni_cluster_peers{{node="{node}",via="{via}"}} {count}')
    lines += [
        "# HELP pycni_cluster_reconciles_total Completed reconcile passes.",
        "# TYPE pycni_cluster_reconciles_total counter",
        f'pycni_cluster_reconciles_total{{node="{node}"}} {int(status.get("reconciles", 0))}',
        "# HELP pycni_cluster_last_sync_timestamp_seconds When the last reconcile pass completed.",
        "# TYPE pycni_cluster_last_sync_timestamp_seconds gauge",
        f'pycni_cluster_last_sync_timestamp_seconds{{node="{node}"}} {float(status.get("lastSync") or 0):.3f}',
    ]
    return "\n".join(lines) + "\n"


def serve(address: str, status: Callable[[], dict[str, Any]]) -> ThreadingHTTPServer:
    """Listen on HOST:PORT (IPv6 as [::1]:PORT) and answer from `status()`; returns the running server."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            current = status()
            if self.path.split("?")[0] == "/metrics":
                self._reply(200, render(current))
            elif self.path.split("?")[0] == "/healthz":
                ready = bool(current.get("ready"))
                self._reply(200 if ready else 503, "ok\n" if ready else f"{current.get('reason', 'not ready')}\n")
            else:
                self._reply(404, "not found\n")

        def _reply(self, code: int, body: str) -> None:
            data = body.encode()
            self.send_response(code)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - scrapes are not logged
            return

    server_class = ThreadingHTTPServer
    if ":" in host:
        import socket

        class V6Server(ThreadingHTTPServer):
            address_family = socket.AF_INET6

        server_class = V6Server
    server = server_class((host, int(port)), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="pycni-metrics", daemon=True).start()
    return server
