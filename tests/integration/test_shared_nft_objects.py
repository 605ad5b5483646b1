"""Issue 15: the nftables objects pycni's plugins share (the `inet pycni` and `bridge pycni`
tables, the firewall's admin jump and isolation, portmap's maps and chains, macspoofchk's chain)
go with the last network that used them: after the last DEL, or a GC that finds no live
attachment, the node's ruleset is what it was before pycni ran.

Everything runs in the test's own fake node namespace; the plugins are the installed executables,
chained as libcni does (bridge, portmap, firewall).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import bare_env, free_subnet, run_plugin

from .bridge_support import GO, run_conflist

pytestmark = pytest.mark.integration

VERSION = "1.1.0"


def ruleset(ns) -> list[dict]:
    """`nft -j list ruleset` without the metainfo header: what a user compares."""
    out = ns.run("nft", "-j", "list", "ruleset").stdout
    return [item for item in json.loads(out or '{"nftables": []}')["nftables"] if "metainfo" not in item]


def pycni_tables(ns) -> list[str]:
    return [f"{i['table']['family']} {i['table']['name']}" for i in ruleset(ns) if "table" in i]


def plugins_for(tmp_path: Path, index: int, policy: str, port: int) -> list[dict]:
    bridge = f"sn{index}{os.urandom(2).hex()}"
    return [
        {"type": "pycni-bridge", "bridge": bridge, "isGateway": True, "ipMasq": True, "macspoofchk": True,
         "ipam": {"type": "pycni-host-local", "dataDir": str(tmp_path / "ipam"),
                  "ranges": [[{"subnet": str(free_subnet(4))}]]}},
        {"type": "pycni-portmap", "capabilities": {"portMappings": True},
         "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 80, "protocol": "tcp"}]}},
        {"type": "pycni-firewall", "ingressPolicy": policy},
    ]


def exe_for(installed_bin: Path):
    return lambda kind: installed_bin / kind


def common(cid: str, pod, installed_bin: Path) -> dict[str, str]:
    return dict(CNI_CONTAINERID=cid, CNI_NETNS=pod.path, CNI_IFNAME="eth0", CNI_PATH=f"{installed_bin}:{GO}")


def add_network(installed_bin, host, netns_factory, tmp_path, index: int, policy: str, pods: int = 2):
    """`pods` pods on network `index`, each with a host port; returns [(plugins, network, cid, pod, result)]."""
    base, network = plugins_for(tmp_path, index, policy, 0), f"shared-nft-{index}-{os.urandom(2).hex()}"
    attached = []
    for n in range(pods):
        pod, cid = netns_factory("pycni-pod"), f"sn{index}-{n}-{os.urandom(3).hex()}"
        plugins = [dict(p) for p in base]
        plugins[1]["runtimeConfig"] = {"portMappings": [
            {"hostPort": 18500 + index * 10 + n, "containerPort": 80, "protocol": "tcp"}]}
        result = run_conflist(host, plugins, "ADD", common(cid, pod, installed_bin), network=network,
                              version=VERSION, exe_for=exe_for(installed_bin))
        attached.append((plugins, network, cid, pod, result))
    return attached


def add_two_networks(installed_bin, host, netns_factory, tmp_path):
    """Two networks (isolated and same-bridge), two pods each."""
    return [a for index, policy in enumerate(("isolated", "same-bridge"))
            for a in add_network(installed_bin, host, netns_factory, tmp_path, index, policy)]


def delete(installed_bin, host, attachment) -> None:
    plugins, network, cid, pod, result = attachment
    run_conflist(host, plugins, "DEL", common(cid, pod, installed_bin), network=network,
                 version=VERSION, exe_for=exe_for(installed_bin), cached=result)


def test_the_last_del_leaves_the_ruleset_as_it_was(installed_bin, host_netns, netns_factory, tmp_path):
    before = ruleset(host_netns)
    attached = add_two_networks(installed_bin, host_netns, netns_factory, tmp_path)
    assert {"inet pycni", "bridge pycni"} <= set(pycni_tables(host_netns))
    for i, attachment in enumerate(attached):
        delete(installed_bin, host_netns, attachment)
        if i < len(attached) - 1:
            assert "inet pycni" in pycni_tables(host_netns)  # the others still use it
    assert ruleset(host_netns) == before, host_netns.run("nft", "list", "ruleset").stdout


def test_gc_of_every_network_leaves_the_ruleset_as_it_was(installed_bin, host_netns, netns_factory, tmp_path):
    before = ruleset(host_netns)
    attached = add_two_networks(installed_bin, host_netns, netns_factory, tmp_path)
    # The runtime lost every pod (no DEL came): GC of each network, with no live attachment.
    networks = {network: plugins for plugins, network, *_ in attached}
    for network, plugins in networks.items():
        for plugin in plugins:
            conf = dict(plugin, cniVersion=VERSION, name=network, **{"cni.dev/valid-attachments": []})
            rc, out, err = run_plugin(installed_bin / plugin["type"], bare_env(CNI_COMMAND="GC", CNI_PATH=str(GO)),
                                      conf, netns=host_netns)
            assert rc == 0, (plugin["type"], out, err)
    assert ruleset(host_netns) == before, host_netns.run("nft", "list", "ruleset").stdout


def test_another_pycni_users_chain_keeps_the_table(installed_bin, host_netns, netns_factory, tmp_path):
    """A chain of another pycni part in `inet pycni` (say the cluster agent's masquerade) keeps the
    table, and an operator's rule in the admin chain keeps that chain and its jump; everything else
    of the plugins goes. Once those are gone too, the next DEL removes the rest."""
    before = ruleset(host_netns)
    (attachment,) = add_network(installed_bin, host_netns, netns_factory, tmp_path, 0, "isolated", pods=1)
    host_netns.run("nft", "add chain inet pycni cluster_masq { type nat hook postrouting priority srcnat; }")
    host_netns.run("nft", "add rule inet pycni CNI-ADMIN ip saddr 198.51.100.7 drop")
    delete(installed_bin, host_netns, attachment)
    chains = {i["chain"]["name"] for i in ruleset(host_netns) if "chain" in i}
    sets = [i for i in ruleset(host_netns) if "set" in i or "map" in i]
    assert pycni_tables(host_netns) == ["inet pycni"] and sets == []
    assert {c for c in chains if not c.startswith("fw_admin_")} == {"cluster_masq", "CNI-ADMIN"}, chains
    assert len(chains) == 3, chains

    host_netns.run("nft", "flush chain inet pycni CNI-ADMIN")
    host_netns.run("nft", "delete chain inet pycni cluster_masq")
    delete(installed_bin, host_netns, attachment)  # a repeated DEL (idempotent) finds only leftovers
    assert ruleset(host_netns) == before, host_netns.run("nft", "list", "ruleset").stdout
