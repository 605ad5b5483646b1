"""The bgp backend's pure parts: config keys, the BIRD config renderer, the control-protocol parser."""

from __future__ import annotations

import io
import ipaddress
import os
import random
import subprocess
import tempfile

import pytest

from cni_plugin.cluster.bgp import mesh_peers, render_bird_config, router_id_for, router_peers
from cni_plugin.cluster.bgp.bird import BirdConfigError, BirdControl, _check_errors, parse_protocols
from cni_plugin.cluster.model import ClusterConfigError, NodeRecord, parse_cluster_config

net = ipaddress.ip_network
addr = ipaddress.ip_address


def bgp_config(**backend):
    return parse_cluster_config({
        "clusterCIDRs": ["10.244.0.0/16", "fd00:10:244::/56"],
        "backend": {"type": "bgp", **backend},
    })


def node(name: str, index: int, address: str, v6: bool = True) -> NodeRecord:
    subnets = (net(f"10.244.{index}.0/24"),) + ((net(f"fd00:10:244:{index}::/64"),) if v6 else ())
    return NodeRecord(name, subnets, (addr(address),))


ME = node("node-a", 1, "192.0.2.10")
B = node("node-b", 2, "192.0.2.11")
C = node("node-c", 3, "198.51.100.12")
ONLINK = [net("192.0.2.0/24")]
TOR_A = {"address": "192.0.2.1", "asNumber": 64513, "password": "s3cret"}
TOR_B = {"address": "198.51.100.1", "asNumber": 64513}


# --- config keys ---------------------------------------------------------------------------


def test_bgp_keys_parse_with_defaults_and_round_trip() -> None:
    config = bgp_config(peers=[TOR_B, TOR_A])
    assert config.backend == "bgp"
    assert config.bgp.as_number == 64512 and config.bgp.node_to_node_mesh and config.bgp.graceful_restart
    assert config.bgp.graceful_restart_time == 120
    # Sorted, whatever the order in the document: the rendered config does not depend on it.
    assert [str(p.address) for p in config.bgp.peers] == ["192.0.2.1", "198.51.100.1"]
    assert config.bgp.peers[0].password == "s3cret" and config.bgp.peers[1].password is None
    assert parse_cluster_config(config.to_json()) == config


def test_existing_backends_keep_their_json() -> None:
    config = parse_cluster_config({"clusterCIDRs": ["10.244.0.0/16"], "backend": {"type": "vxlan", "vni": 7}})
    assert config.to_json()["backend"] == {"type": "vxlan", "vni": 7, "port": 4789, "device": "pycni.1"}


@pytest.mark.parametrize(
    ("backend", "key"),
    [
        ({"asNumber": 0}, "asNumber"),
        ({"asNumber": 4294967296}, "asNumber"),
        ({"peers": [{"address": "192.0.2.300", "asNumber": 64513}]}, "address"),
        ({"peers": [{"address": "192.0.2.1", "asNumber": 0}]}, "asNumber"),
        ({"peers": [{"address": "192.0.2.1", "asNumber": 1, "password": "x" * 81}]}, "password"),
        ({"peers": [{"address": "192.0.2.1", "asNumber": 1, "password": ""}]}, "password"),
        ({"peers": [{"address": "192.0.2.1", "asNumber": 1, "password": 'a"; import all; "'}]}, "password"),
        ({"peers": [TOR_A, TOR_A]}, "twice"),
        ({"holdTime": 3, "keepaliveTime": 3}, "keepaliveTime"),
        ({"gracefulRestartTime": 4096}, "gracefulRestartTime"),
    ],
)
def test_invalid_bgp_keys_are_named(backend, key) -> None:
    with pytest.raises(ClusterConfigError, match=key):
        bgp_config(**backend)


def test_four_byte_as_and_longest_password_are_accepted() -> None:
    config = bgp_config(asNumber=4294967295, peers=[{**TOR_A, "password": "p" * 80}])
    assert config.bgp.as_number == 4294967295 and len(config.bgp.peers[0].password or "") == 80


# --- the renderer --------------------------------------------------------------------------


def test_router_id_is_the_ipv4_address_or_a_stable_hash() -> None:
    assert router_id_for(ME) == "192.0.2.10"
    v6_only = NodeRecord("node-x", (net("fd00:10:244:9::/64"),), (addr("2001:db8::9"),))
    rid = router_id_for(v6_only)
    assert rid == router_id_for(v6_only) and rid != "0.0.0.0"
    assert rid != router_id_for(NodeRecord("node-y", v6_only.subnets, v6_only.addresses))


def test_render_is_deterministic() -> None:
    config = bgp_config(peers=[TOR_A, TOR_B])
    others = [B, C, ME, node("node-d", 4, "192.0.2.13")]
    first = render_bird_config(config, ME, others, local_networks=ONLINK)
    for _ in range(5):
        random.shuffle(others)
        assert render_bird_config(config, ME, others, local_networks=ONLINK) == first


def test_mesh_covers_on_link_nodes_only() -> None:
    config = bgp_config()
    meshed, left_out = mesh_peers(config, ME, [ME, C, B], ONLINK)
    assert meshed == [(B, addr("192.0.2.11"))] and left_out == [C]
    # Without knowledge of the underlay (a flat L2 network): every other node.
    assert [n for n, _ in mesh_peers(config, ME, [ME, C, B])[0]] == [B, C]
    assert mesh_peers(bgp_config(nodeToNodeMesh=False), ME, [B, C]) == ([], [])


def test_routers_of_other_segments_are_left_to_their_nodes() -> None:
    config = bgp_config(peers=[TOR_A, TOR_B, {"address": "203.0.113.5", "asNumber": 64512, "multihop": 4}])
    mine, elsewhere = router_peers(config, ONLINK)
    assert [str(p.address) for p in mine] == ["192.0.2.1", "203.0.113.5"]
    assert [str(p.address) for p in elsewhere] == ["198.51.100.1"]


def test_rendered_config_announces_only_its_subnets_and_installs_only_bgp_routes() -> None:
    text = render_bird_config(bgp_config(peers=[TOR_A, TOR_B]), ME, [B, C], local_networks=ONLINK)
    assert "router id 192.0.2.10;" in text
    assert "route 10.244.1.0/24 blackhole;" in text and "route fd00:10:244:1::/64 blackhole;" in text
    assert "define CLUSTER4 = [ 10.244.0.0/16{16,32} ];" in text
    assert 'if proto = "pods4" && net ~ OWN4 then accept;' in text
    assert "if source = RTS_BGP && net ~ CLUSTER6 && !(net ~ OWN6) then accept;" in text
    for line in ("learn off;", "persist;", "graceful restart on;", "graceful restart time 120;", "local as 64512;"):
        assert line in text
    assert "neighbor 192.0.2.11 as 64512;" in text  # mesh, iBGP
    assert "neighbor 192.0.2.1 as 64513;" in text and 'password "s3cret";' in text  # the ToR, eBGP
    assert "neighbor 198.51.100.12" not in text and "neighbor 198.51.100.1 " not in text
    assert text.count("allow local as 1;") == 1  # eBGP to the ToR only
    assert text.count("next hop self;") == 2  # both channels of the template


def test_render_single_stack_node_and_errors() -> None:
    v4_only = node("node-a", 1, "192.0.2.10", v6=False)
    text = render_bird_config(bgp_config(), v4_only, [B])
    assert "protocol static pods6" not in text and "OWN6" not in text.split("filter pycni_import6")[1].split("}")[0]
    with pytest.raises(ValueError, match="no pod subnet"):
        render_bird_config(bgp_config(), NodeRecord("bare", (), (addr("192.0.2.9"),)), [B])


def test_odd_node_names_make_valid_distinct_symbols() -> None:
    odd = [node("node.b", 2, "192.0.2.11"), node("node-b", 3, "192.0.2.12"), node('q"uote\nx', 4, "192.0.2.13")]
    text = render_bird_config(bgp_config(), ME, odd)
    names = [line.split()[2] for line in text.splitlines() if line.startswith("protocol bgp ")]
    assert len(set(names)) == 3 and all(n.replace("_", "").isalnum() for n in names)
    assert '\nx"' not in text and 'q"uote' not in text


@pytest.mark.skipif(not os.path.exists("/usr/sbin/bird"), reason="bird2 is not installed")
@pytest.mark.parametrize("mesh", [True, False])
def test_bird_parses_the_rendered_config(mesh: bool) -> None:
    config = bgp_config(nodeToNodeMesh=mesh, peers=[TOR_A, TOR_B, {"address": "2001:db8::1", "asNumber": 65000}],
                        gracefulRestart=mesh)
    text = render_bird_config(config, ME, [B, C], local_networks=ONLINK + [net("2001:db8::/64")])
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as fh:
        fh.write(text)
        fh.flush()
        proc = subprocess.run(["/usr/sbin/bird", "-p", "-c", fh.name], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


# --- the control protocol ------------------------------------------------------------------

SHOW_PROTOCOLS = (
    "2002-Name       Proto      Table      State  Since         Info\n"
    "1002-device1    Device     ---        up     2026-12-03 06:26:26  \n"
    " kernel4    Kernel     master4    up     2026-12-03 06:26:26  \n"
    " mesh_node_b_e1901c11 BGP        ---        up     2026-12-03 06:26:27  Established   \n"
    " peer_192_0_2_1_db610037 BGP        ---        start  2026-12-03 06:26:26  Active        Socket: refused\n"
    "0000 \n"
)


def test_reply_lines_and_show_protocols_parse() -> None:
    reply = BirdControl._reply(io.StringIO(SHOW_PROTOCOLS))
    assert reply[0] == (2002, "Name       Proto      Table      State  Since         Info") and reply[-1] == (0, "")
    rows = parse_protocols(reply)
    assert [r["name"] for r in rows] == ["device1", "kernel4", "mesh_node_b_e1901c11", "peer_192_0_2_1_db610037"]
    assert rows[2] == {"name": "mesh_node_b_e1901c11", "proto": "BGP", "table": "---", "state": "up",
                       "since": "2026-12-03 06:26:27", "info": "Established"}
    assert rows[3]["state"] == "start" and rows[3]["info"] == "Active        Socket: refused"
    assert rows[0]["info"] == ""


def test_error_replies_raise_with_birds_message() -> None:
    reply = BirdControl._reply(io.StringIO("0002-Reading configuration from /x.conf\n8002 /x.conf:3:1 syntax error\n"))
    with pytest.raises(BirdConfigError, match="syntax error"):
        _check_errors(reply)
    _check_errors(BirdControl._reply(io.StringIO("0002-Reading configuration from /x.conf\n0020 Configuration OK\n")))


@pytest.mark.skipif(not os.path.exists("/usr/sbin/bird"), reason="bird2 is not installed")
def test_ipv6_only_node_renders_a_config_bird_accepts() -> None:
    router = {"address": "2001:db8::1", "asNumber": 65000}
    config = parse_cluster_config({"clusterCIDRs": ["fd00:10:244::/56"], "backend": {"type": "bgp", "peers": [router]}})
    me = NodeRecord("v6-a", (net("fd00:10:244:1::/64"),), (addr("2001:db8::a"),))
    peer = NodeRecord("v6-b", (net("fd00:10:244:2::/64"),), (addr("2001:db8::b"),))
    text = render_bird_config(config, me, [peer], local_networks=[net("2001:db8::/64")])
    assert f"router id {router_id_for(me)};" in text and "ipv4" not in text
    assert "neighbor 2001:db8::b as 64512;" in text and "source address 2001:db8::a;" in text
    with tempfile.NamedTemporaryFile("w", suffix=".conf") as fh:
        fh.write(text)
        fh.flush()
        proc = subprocess.run(["/usr/sbin/bird", "-p", "-c", fh.name], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
