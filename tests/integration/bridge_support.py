"""Helpers shared by the bridge integration tests (no tests here).

Everything runs inside fake node namespaces from conftest; IPAM is the Go reference host-local
from /usr/lib/cni (or pycni's in-process host-local where a test says so), its dataDir a tmp dir.
"""

from __future__ import annotations

import io
import ipaddress
import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cni_plugin import entry, netns
from cni_plugin.spec import skel
from tests.conftest import bare_env, run_plugin

GO = Path("/usr/lib/cni")
VERSIONS = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def bridge_conf(
    version: str, name: str, bridge: str, data_dir: Path, subnets: list[Any], **extra: Any
) -> dict[str, Any]:
    ranges = [[{"subnet": str(s)}] for s in subnets]
    conf: dict[str, Any] = {
        "cniVersion": version,
        "name": name,
        "type": "pycni-bridge",
        "bridge": bridge,
        "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": ranges},
    }
    conf.update(extra)
    return conf


def env_for(verb: str, cid: str, pod_path: str, ifname: str = "eth0", path: str = str(GO), **more: str) -> dict:
    env = {
        "CNI_COMMAND": verb, "CNI_CONTAINERID": cid, "CNI_NETNS": pod_path, "CNI_IFNAME": ifname,
        "CNI_PATH": path, "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    }
    env.update(more)
    return env


def run_inproc(
    host, verb: str, conf: dict, cid: str, pod_path: str, ifname: str = "eth0", *, plugin: str = "bridge", **env: str
):
    """Dispatch `plugin` (a PLUGINS name) in-process, in a thread that sits in the fake node namespace.

    `env` adds or overrides variables (CNI_PATH defaults to the Go reference directory). Returns
    (exit code, parsed stdout or None, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    box: dict[str, Any] = {}

    def go() -> None:
        try:
            with netns.entered(host.path):
                box["rc"] = skel.dispatch(
                    entry.PLUGINS[plugin], env_for(verb, cid, pod_path, ifname, **env),
                    io.BytesIO(json.dumps(conf).encode()), out, err,
                )
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread below
            box["exc"] = exc

    thread = threading.Thread(target=go)
    thread.start()
    thread.join()
    if "exc" in box:
        raise box["exc"]
    text = out.getvalue()
    return box["rc"], (json.loads(text) if text.strip() else None), err.getvalue()


def run_conflist(
    host, plugins: list[dict], verb: str, common: dict, *, network: str, version: str,
    exe_for: Callable[[str], Path], cached: dict | None = None,
) -> dict | None:
    """Run `plugins` (one conflist's entries, without name/cniVersion) as libcni does in
    AddNetworkList / CheckNetworkList / DelNetworkList: ADD in order, each getting the previous
    plugin's result as prevResult; CHECK in order and DEL in reverse, each with `cached` (the
    list's ADD result). Every plugin gets the list's `network` name and `version`; `exe_for(type)`
    gives its executable; `common` is the CNI_* environment. Asserts that each call succeeds and
    returns the last ADD result (`cached` for CHECK and DEL)."""
    prev = cached
    for plugin in (list(reversed(plugins)) if verb == "DEL" else plugins):
        conf = dict(plugin, cniVersion=version, name=network)
        if prev is not None:
            conf["prevResult"] = prev
        rc, out, err = run_plugin(exe_for(plugin["type"]), bare_env(CNI_COMMAND=verb, **common), conf, netns=host)
        assert rc == 0, (verb, plugin["type"], out, err)
        if verb == "ADD":
            prev = out
    return prev


def installed_or_go(installed_bin: Path) -> Callable[[str], Path]:
    """`exe_for` for run_conflist: pycni-* types from the installed directory, others from /usr/lib/cni."""
    return lambda kind: installed_bin / kind if kind.startswith("pycni-") else GO / kind


class LockPollClock:
    """Stands in for cni_plugin/firewall/lock.py's `time`; `waiting` is set once someone polls for the lock."""

    monotonic = staticmethod(time.monotonic)

    def __init__(self) -> None:
        self.waiting = threading.Event()

    def sleep(self, seconds: float) -> None:
        self.waiting.set()
        time.sleep(seconds)


def links(ns) -> dict[str, dict]:
    return {link["ifname"]: link for link in ns.ip_json("-d", "link", "show")}


def veths(ns) -> list[str]:
    return [name for name in links(ns) if name.startswith("veth")]


def ip_files(data_dir: Path, network: str) -> list[str]:
    base = data_dir / network
    if not base.exists():
        return []
    return sorted(p.name for p in base.iterdir() if not p.name.startswith(("last_reserved", "lock", ".")))


def masq_elements(ns) -> list[tuple[str, str]]:
    proc = ns.run("nft", "-j", "list", "table", "inet", "pycni", check=False)
    if proc.returncode != 0:
        return []
    found = []
    for item in json.loads(proc.stdout).get("nftables", []):
        st = item.get("set")
        if st and st["name"].startswith("pods"):
            for elem in st.get("elem", []):
                e = elem["elem"] if isinstance(elem, dict) else {"val": elem}
                found.append((e["val"], e.get("comment", "")))
    return found


def spoof_elements(ns) -> list[str]:
    proc = ns.run("nft", "-j", "list", "table", "bridge", "pycni", check=False)
    if proc.returncode != 0:
        return []
    return [json.dumps(e) for item in json.loads(proc.stdout).get("nftables", []) if "set" in item
            for e in item["set"].get("elem", [])]


def pod_addresses(result: dict) -> list[ipaddress.IPv4Interface | ipaddress.IPv6Interface]:
    return [ipaddress.ip_interface(ip["address"]) for ip in result["ips"]]


def ping(ns, address, count: int = 1) -> bool:
    address = ipaddress.ip_address(str(address).split("/")[0])
    argv = ["ping", "-6" if address.version == 6 else "-4", "-c", str(count), "-W", "2", str(address)]
    return ns.run(*argv, check=False).returncode == 0


class Outside:
    """An 'outside' namespace routed through the fake node (no route back to pod subnets).

    `peer_seen()` opens a TCP listener there; a pod that connects is seen with the node's address
    only if masquerade rewrote its source.
    """

    def __init__(self, netns_factory, host, subnet) -> None:
        self.ns = netns_factory("pycni-out")
        hosts = list(subnet.hosts())
        self.host_ip, self.ip = hosts[0], hosts[1]
        tag = os.urandom(3).hex()
        a, b = f"vo{tag}", f"vi{tag}"
        subprocess.run(["ip", "link", "add", a, "netns", host.name, "type", "veth", "peer", "name", b,
                        "netns", self.ns.name], check=True)
        host.run("ip", "addr", "add", f"{self.host_ip}/{subnet.prefixlen}", "dev", a)
        host.run("ip", "link", "set", a, "up")
        self.ns.run("ip", "addr", "add", f"{self.ip}/{subnet.prefixlen}", "dev", b)
        self.ns.run("ip", "link", "set", b, "up")

    def connect_from(self, pod) -> str:
        """Connect from `pod` to a listener here; returns the source address the listener saw."""
        seen: dict[str, str] = {}
        ready = threading.Event()

        def serve() -> None:
            with netns.entered(self.ns.path):
                srv = socket.socket()
            with srv:
                srv.bind((str(self.ip), 0))
                srv.listen(1)
                srv.settimeout(10)
                seen["port"] = str(srv.getsockname()[1])
                ready.set()
                try:
                    conn, peer = srv.accept()
                    conn.close()
                    seen["peer"] = peer[0]
                except OSError as exc:
                    seen["peer"] = f"error: {exc}"

        thread = threading.Thread(target=serve)
        thread.start()
        ready.wait(5)
        code = f"import socket; socket.create_connection(('{self.ip}', {seen['port']}), timeout=5).close()"
        pod.run("python3", "-c", code, check=False)
        thread.join(15)
        return seen.get("peer", "none")
