"""pycni host-local against the Go reference plugins (/usr/lib/cni), both directions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import GO_PLUGINS, bare_env, free_subnet, ipam_reservations, run_plugin

pytestmark = pytest.mark.integration
NET = "interop"
GO_HOST_LOCAL = GO_PLUGINS / "host-local"


def conf(data_dir: Path, v4, v6, version: str = "1.0.0") -> dict:
    return {
        "cniVersion": version,
        "name": NET,
        "ipam": {
            "type": "host-local",
            "dataDir": str(data_dir),
            "ranges": [[{"subnet": str(v4)}], [{"subnet": str(v6)}]],
        },
    }


def env(verb: str, cid: str, ifname: str = "eth0", path: str = "/opt/cni/bin") -> dict[str, str]:
    return bare_env(
        CNI_COMMAND=verb, CNI_CONTAINERID=cid, CNI_NETNS="/var/run/netns/none", CNI_IFNAME=ifname, CNI_PATH=path
    )


def files(data_dir: Path) -> dict[str, str]:
    return ipam_reservations(data_dir / NET)


def ok(exe: Path, verb: str, cid: str, config: dict) -> dict | None:
    rc, out, err = run_plugin(exe, env(verb, cid), config)
    assert rc == 0, (exe.name, verb, cid, out, err)
    return out


def addresses(result: dict) -> list[str]:
    return [i["address"].split("/")[0] for i in result["ips"]]


@pytest.fixture
def subnets():
    return free_subnet(4, 24), free_subnet(6, 64)


def test_a_data_dir_written_by_go_is_understood_by_pycni(installed_bin, tmp_path, subnets):
    ours = installed_bin / "pycni-host-local"
    v4, v6 = subnets
    config = conf(tmp_path, v4, v6)
    go1 = addresses(ok(GO_HOST_LOCAL, "ADD", "go1", config))
    go2 = addresses(ok(GO_HOST_LOCAL, "ADD", "go2", config))
    assert go1 == [str(v4[2]), str(v6[2])] and go2 == [str(v4[3]), str(v6[3])]

    ok(ours, "CHECK", "go2", config)  # finds the reference's reservations
    rc, out, _ = run_plugin(ours, env("ADD", "go2"), config)
    assert (rc, out["code"]) == (1, 102)  # and refuses a duplicate for that owner
    mine = addresses(ok(ours, "ADD", "py1", config))
    assert mine == [str(v4[4]), str(v6[4])]  # round-robin continues from the Go cursor

    ok(ours, "DEL", "go1", config)
    assert set(files(tmp_path)) == {*go2, *mine}
    # ... and the other way: Go releases pycni's reservation and continues after our cursor
    ok(GO_HOST_LOCAL, "DEL", "py1", config)
    assert set(files(tmp_path)) == set(go2)
    go3 = addresses(ok(GO_HOST_LOCAL, "ADD", "go3", config))
    assert go3 == [str(v4[5]), str(v6[5])]
    for cid in ("go2", "go3"):
        ok(ours, "DEL", cid, config)
    assert files(tmp_path) == {}


def test_a_data_dir_written_by_pycni_is_understood_by_go(installed_bin, tmp_path, subnets):
    ours = installed_bin / "pycni-host-local"
    v4, v6 = subnets
    config = conf(tmp_path, v4, v6)
    a = addresses(ok(ours, "ADD", "a", config))
    b = addresses(ok(ours, "ADD", "b", config))
    assert files(tmp_path)[a[0]] == "a\r\neth0"  # byte-for-byte the reference format

    ok(GO_HOST_LOCAL, "CHECK", "a", config)
    rc, out, _ = run_plugin(GO_HOST_LOCAL, env("ADD", "b"), config)
    assert rc == 1 and "duplicate allocation" in out["msg"]
    c = addresses(ok(GO_HOST_LOCAL, "ADD", "c", config))
    assert c == [str(v4[4]), str(v6[4])]  # Go continues from pycni's last_reserved_ip.N

    ok(GO_HOST_LOCAL, "DEL", "a", config)
    assert set(files(tmp_path)) == {*b, *c}
    ok(ours, "DEL", "c", config)  # the index notices Go's changes and is rebuilt
    ok(ours, "DEL", "b", config)
    assert files(tmp_path) == {}


def test_go_bridge_with_pycni_host_local_gives_a_pod_a_working_address(installed_bin, tmp_path, host_netns, pod_netns):
    subnet = free_subnet(4, 24)
    gateway = str(subnet[1])
    config = {
        "cniVersion": "1.0.0",
        "name": NET,
        "type": "bridge",
        "bridge": "pycnibr0",
        "isGateway": True,
        "ipam": {
            "type": "pycni-host-local",
            "dataDir": str(tmp_path),
            "ranges": [[{"subnet": str(subnet)}]],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    }
    cni_env = bare_env(
        CNI_COMMAND="ADD",
        CNI_CONTAINERID="pod1",
        CNI_NETNS=pod_netns.path,
        CNI_IFNAME="eth0",
        CNI_PATH=f"{installed_bin}:{GO_PLUGINS}",
    )
    rc, result, err = run_plugin(GO_PLUGINS / "bridge", cni_env, config, netns=host_netns)
    assert rc == 0, (result, err)
    address = result["ips"][0]["address"]
    assert address == f"{subnet[2]}/24"
    assert files(tmp_path) == {str(subnet[2]): "pod1\r\neth0"}

    links = pod_netns.ip_json("addr", "show", "dev", "eth0")
    assert f"{subnet[2]}/24" in [f"{a['local']}/{a['prefixlen']}" for a in links[0]["addr_info"]]
    routes = pod_netns.ip_json("route", "show", "default")
    assert routes and routes[0]["gateway"] == gateway
    pod_netns.run("ping", "-c", "1", "-W", "2", gateway)  # through the veth and the bridge

    rc, out, err = run_plugin(GO_PLUGINS / "bridge", {**cni_env, "CNI_COMMAND": "DEL"}, config, netns=host_netns)
    assert rc == 0, (out, err)
    assert files(tmp_path) == {}
