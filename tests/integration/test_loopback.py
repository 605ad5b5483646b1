"""The installed pycni-loopback, run as a runtime runs it, in real network namespaces."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import GO_PLUGINS, bare_env, run_plugin

pytestmark = pytest.mark.integration


def loopback_config(version: str) -> dict:
    # What containerd sends for its built-in cni-loopback network.
    return {"cniVersion": version, "name": "cni-loopback", "type": "loopback"}


def cni_env(command: str, netns: str, container_id: str = "ctr-1", ifname: str = "lo") -> dict[str, str]:
    return bare_env(
        CNI_COMMAND=command,
        CNI_CONTAINERID=container_id,
        CNI_NETNS=netns,
        CNI_IFNAME=ifname,
        CNI_PATH="/opt/cni/bin",
    )


def lo_state(ns) -> tuple[bool, list[str]]:
    (link,) = ns.ip_json("link", "show", "lo")
    addrs = ns.ip_json("addr", "show", "lo")[0].get("addr_info", [])
    return "UP" in link["flags"], sorted(f"{a['local']}/{a['prefixlen']}" for a in addrs)


def set_lo_down(ns) -> None:
    subprocess.run(["ip", "-n", ns.name, "link", "set", "lo", "down"], check=True)


@pytest.mark.parametrize("version", ["0.3.1", "1.1.0"])
def test_add_check_del(installed_bin, netns_factory, version):
    pod = netns_factory("pycni-lo")
    set_lo_down(pod)
    exe = installed_bin / "pycni-loopback"

    rc, result, err = run_plugin(exe, cni_env("ADD", pod.path), loopback_config(version))
    assert rc == 0, (result, err)
    assert result["cniVersion"] == version
    assert result["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": pod.path}]
    assert [ip["address"] for ip in result["ips"]] == ["127.0.0.1/8", "::1/128"]
    assert all(ip["interface"] == 0 for ip in result["ips"])
    assert ("version" in result["ips"][0]) == (version == "0.3.1")
    up, addrs = lo_state(pod)
    assert up and "127.0.0.1/8" in addrs

    rc, out, err = run_plugin(exe, cni_env("CHECK", pod.path), {**loopback_config(version), "prevResult": result})
    if version == "0.3.1":
        assert rc == 1 and out["code"] == 1, "CHECK below 0.4.0 is an incompatible version"
    else:
        assert rc == 0 and out is None, err

    for _ in range(2):  # DEL must be repeatable
        rc, out, err = run_plugin(exe, cni_env("DEL", pod.path), loopback_config(version))
        assert rc == 0 and out is None, (out, err)
    assert lo_state(pod)[0] is False


LOOPBACK = "pycni-loopback"


def test_check_fails_when_lo_is_down(installed_bin, pod_netns):
    exe = installed_bin / LOOPBACK
    rc, result, _ = run_plugin(exe, cni_env("ADD", pod_netns.path), loopback_config("1.0.0"))
    assert rc == 0
    set_lo_down(pod_netns)
    rc, out, _ = run_plugin(exe, cni_env("CHECK", pod_netns.path), {**loopback_config("1.0.0"), "prevResult": result})
    assert rc == 1 and out["code"] == 108 and "down" in out["msg"]


def test_chained_add_passes_prev_result_through(installed_bin, pod_netns):
    prev = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "0a:58:0a:f4:00:05", "sandbox": pod_netns.path}],
        "ips": [{"interface": 0, "address": "198.18.0.5/24", "gateway": "198.18.0.1"}],
    }
    rc, result, err = run_plugin(
        installed_bin / LOOPBACK, cni_env("ADD", pod_netns.path), {**loopback_config("1.0.0"), "prevResult": prev}
    )
    assert rc == 0, err
    assert result == prev


@pytest.mark.parametrize("netns_kind", ["vanished", "empty"])
def test_del_succeeds_without_a_namespace(installed_bin, netns_factory, netns_kind):
    if netns_kind == "vanished":
        ns = netns_factory("pycni-gone")
        path = ns.path
        subprocess.run(["ip", "netns", "del", ns.name], check=True)
    else:
        path = ""
    rc, out, err = run_plugin(installed_bin / LOOPBACK, cni_env("DEL", path), loopback_config("0.3.1"))
    assert rc == 0 and out is None, (out, err)


@pytest.mark.parametrize("version", ["0.3.1", "1.0.0"])
def test_same_result_as_the_go_reference(installed_bin, netns_factory, version):
    """Given the same input, the Go loopback and ours configure lo alike and report alike."""
    results = {}
    for name, exe in (("pycni", installed_bin / "pycni-loopback"), ("go", GO_PLUGINS / "loopback")):
        pod = netns_factory("pycni-cmp")
        set_lo_down(pod)
        rc, result, err = run_plugin(exe, cni_env("ADD", pod.path), loopback_config(version))
        assert rc == 0, (name, err)
        assert lo_state(pod)[0] is True, f"{name} left lo down"
        results[name] = {
            "interfaces": [{**i, "sandbox": "<netns>"} for i in result["interfaces"]],
            # Go 1.1.1 omits the 0.3.1 `version` field the spec requires; compare the rest.
            "ips": [{k: v for k, v in ip.items() if k != "version"} for ip in result["ips"]],
        }
    assert results["pycni"] == results["go"]


def test_refuses_lo_with_a_foreign_address(installed_bin, pod_netns):
    subprocess.run(["ip", "-n", pod_netns.name, "addr", "add", "198.18.9.9/32", "dev", "lo"], check=True)
    rc, out, _ = run_plugin(installed_bin / LOOPBACK, cni_env("ADD", pod_netns.path), loopback_config("1.0.0"))
    assert rc == 1 and out["code"] == 7 and "198.18.9.9/32" in out["details"]


# --- bad input: the right code, exit 1, stdout holds only the error JSON -----------------------------


def test_malformed_json(installed_bin, pod_netns):
    rc, out, _ = run_plugin(installed_bin / LOOPBACK, cni_env("ADD", pod_netns.path), b'{"cniVersion": ')
    assert rc == 1 and out["code"] == 6


def test_missing_environment_is_named_in_one_error(installed_bin):
    env = bare_env(CNI_COMMAND="ADD", CNI_IFNAME="lo")
    rc, out, _ = run_plugin(installed_bin / LOOPBACK, env, loopback_config("1.0.0"))
    assert rc == 1 and out["code"] == 4
    for name in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_PATH"):
        assert name in out["details"]


def test_unknown_version(installed_bin, pod_netns):
    rc, out, _ = run_plugin(installed_bin / LOOPBACK, cni_env("ADD", pod_netns.path), loopback_config("9.9.9"))
    assert rc == 1 and out["code"] == 1


def test_check_at_old_version(installed_bin, pod_netns):
    rc, out, _ = run_plugin(installed_bin / LOOPBACK, cni_env("CHECK", pod_netns.path), loopback_config("0.3.1"))
    assert rc == 1 and out["code"] == 1 and out["cniVersion"] == "0.3.1"


@pytest.mark.parametrize("ifname", ["a" * 16, "..", "eth/0", "eth:0", "eth 0"])
def test_invalid_ifname(installed_bin, pod_netns, ifname):
    env = cni_env("ADD", pod_netns.path, ifname=ifname)
    rc, out, _ = run_plugin(installed_bin / LOOPBACK, env, loopback_config("1.0.0"))
    assert rc == 1 and out["code"] == 4 and "CNI_IFNAME" in out["details"]


def test_netns_path_that_is_not_a_namespace(installed_bin, tmp_path):
    not_a_netns = tmp_path / "plain-file"
    not_a_netns.write_text("")
    rc, out, _ = run_plugin(installed_bin / LOOPBACK, cni_env("ADD", str(not_a_netns)), loopback_config("1.0.0"))
    assert rc == 1 and out["code"] == 8


def test_add_with_a_vanished_namespace_is_code_8(installed_bin, netns_factory):
    ns = netns_factory("pycni-gone")
    subprocess.run(["ip", "netns", "del", ns.name], check=True)
    rc, out, _ = run_plugin(installed_bin / LOOPBACK, cni_env("ADD", ns.path), loopback_config("1.0.0"))
    assert rc == 1 and out["code"] == 8


def test_version_in_a_bare_environment(installed_bin):
    for name in ("pycni-loopback", "loopback"):
        rc, out, _ = run_plugin(installed_bin / name, bare_env(CNI_COMMAND="VERSION"), {"cniVersion": "0.4.0"})
        assert rc == 0
        assert out == {
            "cniVersion": "0.4.0",
            "supportedVersions": ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        }
