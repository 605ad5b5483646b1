"""`python -m cni_plugin.agent --socket PATH` (installed as `pycni-agent`): run in the foreground."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from .server import (
    DEFAULT_DRAIN_TIMEOUT,
    DEFAULT_MAX_REQUEST,
    DEFAULT_SOCKET,
    DEFAULT_WORKERS,
    FAULT_ENV,
    Agent,
    AgentError,
    Settings,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pycni-agent",
        description="Serve the pycni plugins warm over a unix socket (the installed shims forward to it).",
    )
    parser.add_argument("--socket", default=DEFAULT_SOCKET, help=f"socket path (default {DEFAULT_SOCKET})")
    parser.add_argument("--workers", type=int, default=DEFAULT_WORKERS,
                        help=f"requests served at once (default {DEFAULT_WORKERS})")
    parser.add_argument("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST,
                        help=f"largest request accepted (default {DEFAULT_MAX_REQUEST})")
    parser.add_argument("--drain-timeout", type=float, default=DEFAULT_DRAIN_TIMEOUT,
                        help=f"seconds to finish requests in flight on SIGTERM (default {DEFAULT_DRAIN_TIMEOUT:g})")
    parser.add_argument("--log-requests", action="store_true", help="one line per request on stderr")
    from ..cluster.setup import add_arguments  # argparse only: the cluster modules load with --datastore

    add_arguments(parser)
    opts = parser.parse_args(argv)
    controller = None
    if opts.datastore:
        logging.basicConfig(stream=sys.__stderr__, level=logging.INFO,
                            format="pycni-agent: cluster: %(message)s")
        from ..cluster.setup import build_controller

        try:
            controller = build_controller(opts)
        except (ValueError, OSError) as exc:
            print(f"pycni-agent: {exc}", file=sys.stderr)
            return 2
    settings = Settings(
        socket_path=opts.socket,
        workers=opts.workers,
        max_request=opts.max_request_bytes,
        drain_timeout=opts.drain_timeout,
        log_requests=opts.log_requests,
    )
    try:
        return Agent(settings, fault=os.environ.get(FAULT_ENV, ""), controller=controller).run()
    except AgentError as exc:
        print(f"pycni-agent: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
