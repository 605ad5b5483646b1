"""The bgp backend: BIRD 2 carries every node's pod subnets (no overlay, no tunnel device).

render.py is pure (cluster config + node records -> BIRD config text); bird.py runs and drives
the BIRD process (start, supervise, atomic reload, session state) over its control socket.
"""

from .backend import BgpBackend, BgpSyncResult
from .bird import Bird, BirdConfigError, BirdError, BirdUnavailable
from .render import PROTOCOL_NUMBER, mesh_peers, render_bird_config, router_id_for, router_peers

__all__ = [
    "PROTOCOL_NUMBER",
    "BgpBackend",
    "BgpSyncResult",
    "Bird",
    "BirdConfigError",
    "BirdError",
    "BirdUnavailable",
    "mesh_peers",
    "render_bird_config",
    "router_id_for",
    "router_peers",
]
