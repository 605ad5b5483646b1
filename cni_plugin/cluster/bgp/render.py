"""BIRD 2 configuration for one node, pure: (cluster config, this node, the others) -> text.

What the rendered config does:
- `protocol static pods4/pods6` puts this node's pod subnet(s) into BIRD's tables as blackhole
  routes. They exist only to be announced: the kernel protocol never exports them (the bridge
  owns the node's local pod route), and their preference (200) beats any BGP copy of our own
  subnet a confused peer might send.
- `protocol kernel kernel4/kernel6` exports BGP-learnt routes inside the cluster CIDRs into the
  kernel's main table. The kernel marks them with protocol 12 (`bird` in rt_protos): BIRD 2
  always installs with RTPROT_BIRD, and treats every proto-12 route in its table as its own.
  pycni's reconcile only touches its own protocol number, so the two never fight. `learn off`:
  BIRD imports nothing from the kernel. `persist`: a BIRD that exits leaves its routes in place
  (pods keep talking while it restarts). `graceful restart`: a BIRD started with -R defers the
  first kernel sync until BGP has relearnt everything (End-of-RIB), so a restart never
  withdraws a live route it is about to relearn.
- `protocol bgp` per session, all from one template: iBGP to every other on-link node when
  nodeToNodeMesh, plus each configured router peer (a ToR: eBGP with its own AS; a route
  reflector: iBGP, same AS). One session carries IPv4 and IPv6 (multiprotocol channels).
  Import accepts only prefixes inside the cluster CIDRs and never our own subnet; export
  announces only our own subnets, with next hop self.

The output is deterministic (sorted sessions, no timestamps): an unchanged cluster renders
identical text, so the process side can skip reloads by comparing strings.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from collections.abc import Sequence

from ...spec.types import IPAddress, IPNetwork
from ..model import BgpPeer, ClusterConfig, NodeRecord

# The route protocol number BIRD 2 writes into the kernel (RTPROT_BIRD, /etc/iproute2/rt_protos).
PROTOCOL_NUMBER = 12
SYMBOL_MAX = 40  # BIRD symbols are limited to 64 characters; leave room for the prefix


def router_id_for(me: NodeRecord) -> str:
    """The node's BGP router id: its IPv4 underlay address, else a stable 32-bit id from its name.

    The router id must be unique in the AS and stable across restarts; a hash of the node name
    is both for an IPv6-only node (CRC-32, never 0, which BIRD refuses).
    """
    v4 = me.address(4)
    if v4 is not None:
        return str(v4)
    value = zlib.crc32(me.name.encode()) or 1
    return str(ipaddress.IPv4Address(value))


def _symbol(prefix: str, text: str) -> str:
    """A BIRD protocol name for `text`: letters, digits, underscores; unique when sanitising lost characters."""
    clean = re.sub(r"[^A-Za-z0-9_]", "_", text)[:SYMBOL_MAX]
    if clean != text:
        clean = f"{clean}_{zlib.crc32(text.encode()):08x}"
    return f"{prefix}_{clean}"


def _quoted(text: str) -> str:
    """Text safe inside a BIRD string literal (a node name in a description)."""
    return re.sub(r'["\\\x00-\x1f]', "_", text)


def _session_family(me: NodeRecord) -> int:
    """The address family the sessions run over: the family of the node's preferred address."""
    return me.addresses[0].version if me.addresses else 4


def mesh_peers(
    config: ClusterConfig,
    me: NodeRecord,
    nodes: Sequence[NodeRecord],
    local_networks: Sequence[IPNetwork] | None = None,
) -> tuple[list[tuple[NodeRecord, IPAddress]], list[NodeRecord]]:
    """The node-to-node mesh: ([(node, address) to peer with], [nodes left out]).

    A mesh session is a direct iBGP session, so it only works to a node on one of this node's
    connected networks (`local_networks`; None means "assume a flat L2 underlay"). Nodes off-link
    (behind a router) or without an address of the session family are left out and returned so
    the caller can report them: across L3 segments the routers carry their routes (peer with
    the ToR). A node whose address is also a configured router peer is not meshed twice.
    """
    if not config.bgp.node_to_node_mesh:
        return [], []
    family = _session_family(me)
    routers = {p.address for p in config.bgp.peers}
    meshed: list[tuple[NodeRecord, IPAddress]] = []
    left_out: list[NodeRecord] = []
    for node in sorted(nodes, key=lambda n: n.name):
        if node.name == me.name:
            continue
        address = node.address(family)
        if address is None or (
            local_networks is not None and not any(address in net for net in local_networks if net.version == family)
        ):
            left_out.append(node)
        elif address not in routers:
            meshed.append((node, address))
    return meshed, left_out


def router_peers(
    config: ClusterConfig, local_networks: Sequence[IPNetwork] | None = None
) -> tuple[list[BgpPeer], list[BgpPeer]]:
    """The configured routers this node peers with, and those it leaves to the nodes of other segments.

    One peers list serves the whole cluster: each node peers with the routers on its own
    segments (its top-of-rack routers), and with every router configured with `multihop`.
    """
    mine: list[BgpPeer] = []
    elsewhere: list[BgpPeer] = []
    for peer in config.bgp.peers:
        if peer.multihop is not None or local_networks is None or any(peer.address in n for n in local_networks):
            mine.append(peer)
        else:
            elsewhere.append(peer)
    return mine, elsewhere


def _prefix_set(nets: Sequence[IPNetwork], anything_inside: bool) -> str:
    """A BIRD prefix set: exactly these networks, or (anything_inside) every prefix they contain."""
    items = [f"{n}{{{n.prefixlen},{n.max_prefixlen}}}" if anything_inside else str(n) for n in nets]
    return "[ " + ", ".join(items) + " ]"


def _peer_block(name: str, address: IPAddress, local: IPAddress | None, as_number: int, peer: BgpPeer | None,
                direct: bool, description: str, as_number_local: int) -> list[str]:
    lines = [f"protocol bgp {name} from pycni_peer {{", f'  description "{description}";']
    if local is not None:
        lines.append(f"  source address {local};")
    lines.append(f"  neighbor {address} as {as_number};")
    if peer is not None and peer.multihop is not None:
        lines.append(f"  multihop {peer.multihop};")
    elif direct:
        lines.append("  direct;")
    if peer is not None and peer.as_number != as_number_local:
        # Every node shares one AS: a subnet of another rack comes back from the ToR with our own
        # AS in its path, which plain loop detection would drop. No loop is possible here (we
        # announce only our own subnet and never accept it back), so accept our AS once.
        lines.append("  allow local as 1;")
    if peer is not None and peer.password is not None:
        lines.append(f'  password "{peer.password}";')
    lines.append("}")
    return lines


def render_bird_config(
    config: ClusterConfig,
    me: NodeRecord,
    peers: Sequence[NodeRecord],
    router_id: str | None = None,
    *,
    local_networks: Sequence[IPNetwork] | None = None,
) -> str:
    """The BIRD 2 config for node `me` given every other node (`peers`; `me` among them is ignored).

    `router_id` defaults to router_id_for(me); `local_networks` are the node's connected
    underlay networks (see mesh_peers). Raises ValueError when the node has no pod subnet.
    """
    bgp = config.bgp
    families = sorted({c.version for c in config.cluster_cidrs})
    own = {v: me.subnet(v) for v in families}
    if not any(own.values()):
        raise ValueError(f"node {me.name} has no pod subnet to announce")
    family = _session_family(me)
    local = me.address(family)
    rid = router_id or router_id_for(me)
    meshed, left_out = mesh_peers(config, me, peers, local_networks)

    out: list[str] = [
        f"# BIRD 2 config for node {me.name}, rendered by pycni-agent (bgp backend).",
        "# Do not edit: the agent rewrites it whenever the cluster changes.",
        f"router id {rid};",
        # Errors and session changes on stderr (the agent sends them to a log file); no debug.
        "log stderr { info, remote, warning, error, auth, fatal, bug };",
        # One timestamp format for `show protocols`, so its Since column parses the same way.
        "timeformat protocol iso long;",
        f"graceful restart wait {bgp.graceful_restart_time};",
        "",
    ]
    for v in families:
        cidr = config.cidr(v)
        assert cidr is not None
        out.append(f"define CLUSTER{v} = {_prefix_set([cidr], anything_inside=True)};")
        subnet = own[v]
        if subnet is not None:
            out.append(f"define OWN{v} = {_prefix_set([subnet], anything_inside=True)};")
    out += [
        "",
        "# Interfaces: direct sessions need to know which networks are on-link.",
        "protocol device {",
        "  scan time 10;",
        "}",
        "",
    ]
    for v in families:
        subnet = own[v]
        own_clause = f" && !(net ~ OWN{v})" if subnet is not None else ""
        out += [
            f"filter pycni_import{v} {{",
            "  # Only pod subnets of this cluster, never our own (ours is the local bridge's).",
            f"  if net ~ CLUSTER{v}{own_clause} then accept;",
            "  reject;",
            "}",
            f"filter pycni_export{v} {{",
            "  # Only this node's own pod subnet(s): no transit for anyone.",
        ]
        if subnet is not None:
            out.append(f'  if proto = "pods{v}" && net ~ OWN{v} then accept;')
        out += [
            "  reject;",
            "}",
            f"filter pycni_kernel{v} {{",
            "  # Into the kernel: what BGP learnt (never our blackhole statics).",
            f"  if source = RTS_BGP && net ~ CLUSTER{v}{own_clause} then accept;",
            "  reject;",
            "}",
            "",
        ]
    for v in families:
        subnet = own[v]
        if subnet is None:
            continue
        out += [
            "# This node's pod subnet, to announce (not installed: the bridge owns the local route).",
            f"protocol static pods{v} {{",
            f"  ipv{v} {{ import all; export none; }};",
            f"  route {subnet} blackhole;",
            "}",
            "",
        ]
    for v in families:
        out += [
            f"protocol kernel kernel{v} {{",
            f"  ipv{v} {{ import none; export filter pycni_kernel{v}; }};",
            "  learn off;",
            "  persist;",
            f"  graceful restart {'on' if bgp.graceful_restart else 'off'};",
            "  scan time 10;",
            "}",
            "",
        ]
    out += [
        "template bgp pycni_peer {",
        f"  local as {bgp.as_number};",
        f"  hold time {bgp.hold_time};",
        f"  keepalive time {bgp.keepalive_time};",
        f"  connect retry time {bgp.connect_retry_time};",
        # BIRD waits 5 s after start before it connects; never longer than a retry.
        f"  connect delay time {min(5, bgp.connect_retry_time)};",
        # BIRD's default error wait (60-300 s) would keep a session down for a minute after its
        # peer restarted; a restarted peer should be back within a few seconds.
        f"  error wait time {min(5, bgp.connect_retry_time)}, {max(5, bgp.connect_retry_time)};",
    ]
    if bgp.graceful_restart:
        out += ["  graceful restart on;", f"  graceful restart time {bgp.graceful_restart_time};"]
    else:
        out.append("  graceful restart off;")
    for v in families:
        out.append(f"  ipv{v} {{ import filter pycni_import{v}; export filter pycni_export{v}; next hop self; }};")
    out += ["}", ""]

    for node, address in meshed:
        out += _peer_block(_symbol("mesh", node.name), address, local, bgp.as_number, None, True,
                           f"mesh: node {_quoted(node.name)}", bgp.as_number)
        out.append("")
    for node in left_out:
        out.append(f"# node {_quoted(node.name)}: not on-link, no mesh session (the routers carry its subnet)")
    if left_out:
        out.append("")
    routers, elsewhere = router_peers(config, local_networks)
    for peer in elsewhere:
        out.append(f"# router {peer.address}: not on-link here (another segment's router), no session")
    if elsewhere:
        out.append("")
    for peer in routers:
        kind = "iBGP" if peer.as_number == bgp.as_number else "eBGP"
        peer_local = local if local is not None and local.version == peer.address.version else None
        out += _peer_block(_symbol("peer", str(peer.address)), peer.address, peer_local, peer.as_number, peer,
                           True, f"router {peer.address} ({kind}, AS {peer.as_number})", bgp.as_number)
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"
