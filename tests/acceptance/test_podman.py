"""Acceptance: podman 4.3 (Debian) with its CNI backend runs its containers on pycni.

podman's `network create` writes a conflist of reference plugin names: bridge (IPAM host-local),
portmap, firewall, tuning. `cni_plugin_dirs` lists the installed pycni directory (reference and
prefixed names) first and /usr/lib/cni second, so bridge and host-local are pycni's and a plugin
pycni does not ship yet comes from the Go reference (recorded by `plugin_origins`).

Everything runs in a fake host network namespace with private configuration and storage
(tests/acceptance/podman_support.py); checked as a user would, with podman's own commands and
what a container sees: addresses, pings, a published port, a second network, restart/stop, and
that removing containers and networks leaves no veth, no IPAM reservation and no rule behind.
"""

from __future__ import annotations

import ipaddress
import json
import random
import re
from pathlib import Path

from cni_plugin.firewall.render import network_id
from tests.acceptance.conftest import chain_types
from tests.acceptance.podman_support import INDEX_HTML, PodmanWorld, unique, world_fixtures
from tests.conftest import GO_PLUGINS, free_subnet

PODMAN_CHAIN = ["bridge", "portmap", "firewall", "tuning"]


world, pm = world_fixtures("podman")  # the module's world; `pm` cleans up after each test


def test_network_create_writes_conflist_with_pycni_bridge(pm: PodmanWorld, plugin_origins, installed_bin: Path):
    net = pm.network_create()

    conflist = json.loads((pm.net_dir / f"{net.name}.conflist").read_text())
    assert conflist["name"] == net.name
    assert [p["type"] for p in conflist["plugins"]] == PODMAN_CHAIN
    ipam = conflist["plugins"][0]["ipam"]
    assert ipam["type"] == "host-local"
    assert [r["subnet"] for rs in ipam["ranges"] for r in rs] == [str(net.subnet)]
    listed = pm.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
    assert net.name in listed
    inspected = json.loads(pm.podman("network", "inspect", net.name).stdout)[0]
    assert [s["subnet"] for s in inspected["subnets"]] == [str(net.subnet)]

    origins = plugin_origins("podman", chain_types(conflist), pm.plugin_dirs)
    assert origins["bridge"] == installed_bin and origins["host-local"] == installed_bin
    assert set(origins.values()) <= {installed_bin, GO_PLUGINS}


def test_two_containers_ping_each_other_and_ip_is_exact(pm: PodmanWorld):
    """Dual-stack network; `--ip` (podman sends it as CNI_ARGS IP=) gives exactly that address."""
    net = pm.network_create(ipv6=True)
    static = net.subnet.network_address + 77
    a = pm.run_detached("a", "--network", net.name)
    b = pm.run_detached("b", "--network", net.name, "--ip", str(static))

    addr_a = pm.only_address("a")
    assert addr_a.network == net.subnet and addr_a.ip not in (net.gateway, static)
    assert pm.addresses("b", "eth0") == [ipaddress.ip_interface(f"{static}/{net.subnet.prefixlen}")]
    assert pm.inspect("b")["NetworkSettings"]["Networks"][net.name]["IPAddress"] == str(static)
    assert pm.ping("a", static).returncode == 0
    assert pm.ping("b", addr_a.ip).returncode == 0
    assert pm.ping("a", net.gateway).returncode == 0
    six_a, six_b = pm.only_address("a", family=6), pm.only_address("b", family=6)
    assert six_a.network == net.subnet6 and six_b.network == net.subnet6
    assert pm.ping("a", six_b.ip).returncode == 0
    reserved = net.reservations()
    assert set(reserved) == {str(addr_a.ip), str(static), str(six_a.ip), str(six_b.ip)}
    assert a in reserved[str(addr_a.ip)] and b in reserved[str(static)]
    # The node side: the bridge holds the gateway, one veth per container is enslaved to it.
    links = pm.links()
    assert net.bridge in links
    ports = [n for n in pm.veths() if links[n].get("master") == net.bridge]
    assert len(ports) == 2
    bridge = pm.host.ip_json("-4", "addr", "show", "dev", net.bridge)[0]
    bridge_addrs = [f"{a['local']}/{a['prefixlen']}" for a in bridge["addr_info"]]
    assert f"{net.gateway}/{net.subnet.prefixlen}" in bridge_addrs

    # A taken address is refused by host-local (the message names it) and the failed ADD
    # leaves no veth and no reservation behind.
    taken = pm.podman("run", "-d", "--name", "c", "--network", net.name, "--ip", str(static),
                      "localhost/pycni-busybox:test", "sleep", "600", check=False)
    assert taken.returncode != 0
    assert str(static) in taken.stderr
    assert len(pm.veths()) == 2
    assert net.reservations() == reserved


def test_published_port_reaches_httpd_from_the_host(pm: PodmanWorld, netns_factory):
    net = pm.network_create()
    port = random.randrange(20000, 40000)
    cid = pm.run_detached("web", "--network", net.name, "-p", f"{port}:80",
                          command=("httpd", "-f", "-p", "80", "-h", "/www"))
    addr = pm.only_address("web")

    # From the node itself (busybox wget -T can crash: `timeout` bounds it instead).
    local = pm.on_host("timeout", "20", "busybox", "wget", "-qO-", f"http://127.0.0.1:{port}/")
    assert local.stdout == INDEX_HTML
    # From a client on the node's uplink, to the node's address: what "published" means.
    client = netns_factory("pycni-pmcl")
    uplink = free_subnet(4, 30)
    node_ip, client_ip = uplink.network_address + 1, uplink.network_address + 2
    pm.on_host("ip", "link", "add", "up0", "type", "veth", "peer", "name", "eth0", "netns", client.name)
    pm.on_host("ip", "addr", "add", f"{node_ip}/30", "dev", "up0")
    pm.on_host("ip", "link", "set", "up0", "up")
    client.run("ip", "addr", "add", f"{client_ip}/30", "dev", "eth0")
    client.run("ip", "link", "set", "eth0", "up")
    remote = client.run("timeout", "20", "busybox", "wget", "-qO-", f"http://{node_ip}:{port}/")
    assert remote.stdout == INDEX_HTML

    pm.podman("rm", "-f", "-t", "0", "web")
    assert pm.traces(cid, [addr.ip]) == []
    after = client.run("timeout", "20", "busybox", "wget", "-qO-", f"http://{node_ip}:{port}/", check=False)
    assert after.returncode != 0 and INDEX_HTML not in after.stdout


def test_network_connect_and_disconnect_a_second_network(pm: PodmanWorld):
    net1, net2 = pm.network_create(), pm.network_create()
    cid = pm.run_detached("multi", "--network", net1.name)
    pm.run_detached("peer2", "--network", net2.name)
    peer2 = pm.only_address("peer2")
    veths = len(pm.veths())

    pm.podman("network", "connect", net2.name, "multi")

    eth1 = pm.only_address("multi", "eth1")
    assert eth1.network == net2.subnet
    assert cid in net2.reservations()[str(eth1.ip)]
    assert len(pm.veths()) == veths + 1
    assert pm.ping("multi", peer2.ip).returncode == 0
    assert set(pm.inspect("multi")["NetworkSettings"]["Networks"]) == {net1.name, net2.name}

    pm.podman("network", "disconnect", net2.name, "multi")

    assert pm.exec("multi", "ip", "link", "show", "eth1", check=False).returncode != 0
    assert list(net2.reservations()) == [str(peer2.ip)]
    assert len(pm.veths()) == veths
    assert pm.traces(cid, [eth1.ip], ifnames=("eth1",)) == []
    assert pm.ping("multi", net1.gateway).returncode == 0
    assert pm.only_address("multi").network == net1.subnet


def test_restart_stop_start_and_rm(pm: PodmanWorld):
    net = pm.network_create()
    cid = pm.run_detached("life", "--network", net.name)
    first = pm.only_address("life")
    sandbox = pm.sandbox("life")
    assert Path(sandbox).exists()

    pm.podman("restart", "-t", "0", "life")
    again = pm.only_address("life")
    assert again.network == net.subnet
    assert pm.ping("life", net.gateway).returncode == 0
    assert list(net.reservations()) == [str(again.ip)]  # the old address was released
    assert len(pm.veths()) == 1

    pm.podman("stop", "-t", "0", "life")
    assert net.reservations() == {}
    assert pm.veths() == []
    assert not Path(sandbox).exists()
    assert net.result_cache() == []

    pm.podman("start", "life")
    third = pm.only_address("life")
    assert third.network == net.subnet
    assert pm.ping("life", net.gateway).returncode == 0
    last_sandbox = pm.sandbox("life")

    pm.podman("rm", "-f", "-t", "0", "life")
    assert net.reservations() == {}
    assert pm.veths() == []
    assert not Path(last_sandbox).exists()
    assert net.result_cache() == []
    assert pm.traces(cid, {first.ip, again.ip, third.ip}) == []


def test_run_rm_releases_the_address_when_the_container_exits(pm: PodmanWorld):
    net = pm.network_create()

    out = pm.podman("run", "--rm", "--network", net.name, "localhost/pycni-busybox:test",
                    "ip", "-o", "-4", "addr", "show", "dev", "eth0").stdout

    seen = [ipaddress.ip_interface(m) for m in re.findall(r"\binet (\S+)", out)]
    assert [a.network for a in seen] == [net.subnet]  # the container had an address of the network
    assert net.reservations() == {}
    assert pm.veths() == []
    assert pm.podman("ps", "-aq").stdout.strip() == ""


def test_rm_and_network_rm_leave_nothing(pm: PodmanWorld):
    net = pm.network_create()
    ids = [pm.run_detached("x1", "--network", net.name, "-p", f"{random.randrange(20000, 40000)}:80",
                           command=("httpd", "-f", "-p", "80", "-h", "/www")),
           pm.run_detached("x2", "--network", net.name)]
    addrs = [pm.only_address(name).ip for name in ("x1", "x2")]
    sandboxes = [pm.sandbox(name) for name in ("x1", "x2")]
    assert all(pm.traces(cid, [addr]) for cid, addr in zip(ids, addrs, strict=True))  # the check can see them

    pm.podman("rm", "-f", "-t", "0", "x1", "x2")
    pm.podman("network", "rm", net.name)
    pm.networks.remove(net)

    try:
        assert pm.podman("ps", "-aq").stdout.strip() == ""
        assert net.name not in pm.podman("network", "ls", "--format", "{{.Name}}").stdout.split()
        assert not (pm.net_dir / f"{net.name}.conflist").exists()
        assert net.bridge not in pm.links()
        assert pm.veths() == []
        assert net.reservations() == {}
        assert net.result_cache() == []
        assert not any(Path(s).exists() for s in sandboxes)
        for cid, addr in zip(ids, addrs, strict=True):
            assert pm.traces(cid, [addr]) == []
        assert pm.machine_changes() == []  # /etc/containers, /var/lib/containers, ... untouched
    finally:
        pm.forget_network(net)


def test_network_rm_leaves_no_per_network_rules(pm: PodmanWorld):
    net = pm.network_create()
    pm.run_detached("m1", "--network", net.name)
    pm.podman("rm", "-f", "-t", "0", "m1")
    pm.podman("network", "rm", net.name)
    pm.networks.remove(net)
    pm.forget_network(net)

    leftovers = [line for line in pm.ruleset().splitlines()
                 if network_id(net.name) in line or str(net.subnet) in line or f'"{net.name}"' in line]
    assert leftovers == []


def test_rm_of_the_last_container_and_network_leaves_the_ruleset_as_before(pm: PodmanWorld):
    """Issue 15: with no network of this world left, the node's nftables ruleset is what it was
    before: no `inet pycni`/`bridge pycni` table, no portmap map, firewall admin jump or chain."""
    def ruleset() -> list[dict]:
        out = pm.on_host("nft", "-j", "list", "ruleset").stdout
        return [i for i in json.loads(out or '{"nftables": []}')["nftables"] if "metainfo" not in i]

    before = ruleset()
    assert not [i for i in before if "table" in i and i["table"]["name"] == "pycni"], before
    nets = [pm.network_create(), pm.network_create()]
    pm.run_detached("r1", "--network", nets[0].name, "-p", f"{random.randrange(20000, 40000)}:80",
                    command=("httpd", "-f", "-p", "80", "-h", "/www"))
    pm.run_detached("r2", "--network", nets[1].name)
    pm.run_detached("r3", "--network", nets[1].name)
    tables = {f"{i['table']['family']} {i['table']['name']}" for i in ruleset() if "table" in i}
    assert "inet pycni" in tables, tables

    pm.podman("rm", "-f", "-t", "0", "r1", "r2")
    assert "inet pycni" in {f"{i['table']['family']} {i['table']['name']}" for i in ruleset() if "table" in i}
    pm.podman("rm", "-f", "-t", "0", "r3")
    for net in nets:
        pm.podman("network", "rm", net.name)
        pm.networks.remove(net)
        pm.forget_network(net)
    assert ruleset() == before, pm.on_host("nft", "list", "ruleset").stdout


def test_hand_written_conflist_with_prefixed_names(pm: PodmanWorld, plugin_origins, installed_bin: Path):
    """CNI_NAMES=prefixed beside the reference plugins: a conflist naming pycni-* types."""
    name, subnet = unique("pycni-pmhand"), free_subnet(4, 24)
    data_dir = pm.base / "ipam"
    conflist = {
        "cniVersion": "1.0.0", "name": name,
        "plugins": [
            {"type": "pycni-bridge", "bridge": "pycnipm0", "isGateway": True, "ipMasq": True,
             "ipam": {"type": "pycni-host-local", "dataDir": str(data_dir),
                      "ranges": [[{"subnet": str(subnet)}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (pm.net_dir / f"{name}.conflist").write_text(json.dumps(conflist))
    try:
        origins = plugin_origins("podman", chain_types(conflist), pm.plugin_dirs)
        assert origins["pycni-bridge"] == installed_bin and origins["pycni-host-local"] == installed_bin

        pm.run_detached("hand", "--network", name)
        addr = pm.only_address("hand")
        assert addr.network == subnet
        assert (data_dir / name / str(addr.ip)).exists()
        assert pm.ping("hand", subnet.network_address + 1).returncode == 0

        pm.podman("rm", "-f", "-t", "0", "hand")
        assert not (data_dir / name / str(addr.ip)).exists()
        assert pm.veths() == []
    finally:
        pm.podman("rm", "-f", "-t", "0", "hand", check=False)
        pm.podman("network", "rm", "-f", name, check=False)
