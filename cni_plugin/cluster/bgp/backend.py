"""The bgp backend as the controller drives it: sync(desired cluster state) -> BIRD runs that config.

Unlike host-gw and VXLAN, pycni programs no route itself here: BIRD installs the routes to the
other nodes' subnets (protocol 12) and announces this node's. The controller's part is to keep
BIRD's config equal to the rendering of the current cluster, and to report the sessions.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ...spec.types import IPNetwork
from ..model import ClusterConfig, NodeRecord
from .bird import BIRD_BIN, Bird, BirdError, BirdUnavailable
from .render import mesh_peers, render_bird_config, router_peers

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BgpSyncResult:
    changed: bool  # BIRD was started or reloaded (False: it already ran this config)
    unmeshed: tuple[str, ...] = ()  # nodes off this node's segments: no mesh session (routers carry them)
    other_routers: tuple[str, ...] = ()  # configured routers of other segments: no session from here


class BgpBackend:
    """One node's BIRD, kept in step with the cluster. Files live in `state_dir`:
    bird.conf, bird.ctl (control socket, for `birdc -s`), bird.pid, bird.log."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        netns_path: str | None = None,
        *,
        bird_bin: str = BIRD_BIN,
        backoff: tuple[float, float] = (1.0, 30.0),
    ) -> None:
        state = Path(state_dir)
        self.bird = Bird(
            netns_path, state / "bird.conf", state / "bird.ctl", state / "bird.pid",
            log_path=state / "bird.log", bird_bin=bird_bin, backoff=backoff,
        )
        self._started = False

    def sync(
        self,
        config: ClusterConfig,
        me: NodeRecord,
        nodes: Sequence[NodeRecord],
        local_networks: Sequence[IPNetwork] | None = None,
    ) -> BgpSyncResult:
        """Render the config for `me` among `nodes` and make BIRD run it (start on first call).

        `local_networks`: the node's connected underlay networks (decides mesh and router
        sessions; None assumes one flat L2 segment). Raises BirdConfigError when BIRD refuses the
        config (the running one stays), BirdUnavailable when BIRD does not answer (the supervisor
        restarts it with the new file), ValueError when `me` has no subnet yet.
        """
        text = render_bird_config(config, me, nodes, local_networks=local_networks)
        if not self._started:
            self.bird.start(text)
            self._started = True
            self.bird.wait_ready()
            changed = True
        else:
            changed = self.bird.reload(text)
        _, left_out = mesh_peers(config, me, nodes, local_networks)
        _, elsewhere = router_peers(config, local_networks)
        if changed:
            log.info("BIRD runs the config for %d node(s), %d router(s)", len(nodes), len(config.bgp.peers))
        return BgpSyncResult(changed, tuple(n.name for n in left_out), tuple(str(p.address) for p in elsewhere))

    def status(self) -> dict[str, object]:
        """For `pycni cluster status`: {"running", "restarts", "sessions": [{name, state, since, info}], "error"}."""
        try:
            sessions = [{k: row[k] for k in ("name", "state", "since", "info")} for row in self.bird.sessions()]
            error = self.bird.last_error
            running = True
        except BirdUnavailable as exc:
            sessions, error, running = [], str(exc), False
        return {"running": running, "restarts": self.bird.restarts, "sessions": sessions, "error": error}

    def detach(self) -> None:
        """The agent exits but BIRD keeps routing (the next agent adopts it)."""
        self.bird.detach()
        self._started = False

    def close(self) -> None:
        """Stop BIRD: its peers withdraw this node's subnets (the node leaves the cluster)."""
        try:
            self.bird.stop()
        except BirdError as exc:
            log.warning("stopping BIRD: %s", exc)
        self._started = False
