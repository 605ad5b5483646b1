#!/usr/bin/env python3
"""pycni demo: two pods on a bridge inside a throwaway "node" namespace.

    make demo CNI_BIN_DIR=/opt/cni/bin      (or: python3 scripts/demo.py --bin-dir DIR), as root

The plugins run as a runtime runs them: the installed pycni-bridge from the bin directory
(CNI_BIN_DIR, default /opt/cni/bin) with a bare environment; in a checkout with nothing
installed there, the same entry point from the source tree.

Creates four network namespaces - node, pod1, pod2, outside - and never touches this machine's
own interfaces, routes or firewall: the bridge, the veths and the nftables table all live inside
the node namespace, which is deleted at the end (also on failure or Ctrl-C).

1. ADD pod1 and pod2 with pycni-bridge (isGateway, isDefaultGateway, ipMasq) and pycni's
   host-local IPAM, exactly as a runtime does (CNI_* env, config on stdin, result on stdout).
2. Show the addresses, the bridge and the masquerade table.
3. Ping pod1 -> pod2, pod1 -> node (gateway), pod1 -> outside; a TCP listener in "outside"
   prints the source address it sees: the node's, because of masquerade (outside has no route
   back to the pod subnet).
4. DEL both pods and show that no veth, no IP reservation and no masquerade entry is left.

Subnets are picked at run time from 198.18.0.0/15 (RFC 2544) so that they overlap no route
of this machine.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from cni_plugin import netns  # noqa: E402 - the checkout's package, also without an install

GO_PLUGINS = Path("/usr/lib/cni")
POOL = ipaddress.ip_network("198.18.0.0/15")
BOLD, DIM, GREEN, RED, RESET = ("\033[1m", "\033[2m", "\033[32m", "\033[31m", "\033[0m") if sys.stdout.isatty() \
    else ("", "", "", "", "")


def step(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def sh(*argv: str, check: bool = True, show: bool = False) -> str:
    if show:
        print(f"{DIM}$ {' '.join(argv)}{RESET}", flush=True)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if show and proc.stdout.strip():
        print(proc.stdout.rstrip(), flush=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc.stdout


def free_subnets(count: int, prefix: int) -> list[ipaddress.IPv4Network]:
    taken = []
    for entry in json.loads(sh("ip", "-4", "-j", "route", "show", "table", "all") or "[]"):
        dst = entry.get("dst", "")
        if dst and dst != "default":
            try:
                taken.append(ipaddress.ip_network(dst, strict=False))
            except ValueError:
                pass
    picked: list[ipaddress.IPv4Network] = []
    span = 2 ** (prefix - POOL.prefixlen)
    for _ in range(500):
        net = ipaddress.ip_network((int(POOL.network_address) + (random.randrange(span) << (32 - prefix)), prefix))
        if not any(net.overlaps(r) for r in taken + picked):
            picked.append(net)
            if len(picked) == count:
                return picked
    raise SystemExit("demo: no free subnet in 198.18.0.0/15 on this machine")


class Demo:
    def __init__(self, bin_dir: Path) -> None:
        installed = bin_dir / "pycni-bridge"
        self.installed: Path | None = installed if installed.exists() else None
        tag = uuid.uuid4().hex[:6]
        self.ns = {role: f"pycni-demo-{tag}-{role}" for role in ("node", "pod1", "pod2", "outside")}
        self.workdir = Path(tempfile.mkdtemp(prefix="pycni-demo-"))
        self.data_dir = self.workdir / "ipam"
        self.created: list[str] = []
        self.pod_subnet, self.uplink = free_subnets(1, 24)[0], free_subnets(1, 30)[0]
        self.ipam_type = "pycni-host-local"
        self.cni_path = f"{bin_dir}:{GO_PLUGINS}"
        self.conf = {
            "cniVersion": "1.1.0",
            "name": "demo",
            "type": "pycni-bridge",
            "bridge": "cni-demo",
            "isGateway": True,
            "isDefaultGateway": True,
            "ipMasq": True,
            "ipam": {"type": self.ipam_type, "dataDir": str(self.data_dir),
                     "ranges": [[{"subnet": str(self.pod_subnet)}]]},
        }
        self.results: dict[str, dict] = {}

    # --- plumbing ---------------------------------------------------------------------------------

    def path(self, role: str) -> str:
        return f"/run/netns/{self.ns[role]}"

    def in_ns(self, role: str, *argv: str, **kw) -> str:
        return sh("ip", "netns", "exec", self.ns[role], *argv, **kw)

    def cni(self, verb: str, pod: str, conf: dict) -> tuple[int, dict | None, str]:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": verb, "CNI_CONTAINERID": f"demo-{pod}",
               "CNI_NETNS": self.path(pod), "CNI_IFNAME": "eth0", "CNI_PATH": self.cni_path,
               "PYTHONPATH": str(REPO)}
        if self.installed is not None:
            argv = [str(self.installed)]
            del env["PYTHONPATH"]
        else:
            argv = [sys.executable, "-c", "import sys; from cni_plugin.entry import main; sys.exit(main('bridge'))"]
        started = time.monotonic()
        proc = subprocess.run(["ip", "netns", "exec", self.ns["node"], *argv],
                              input=json.dumps(conf).encode(), env=env, capture_output=True)
        took = (time.monotonic() - started) * 1000
        out = proc.stdout.decode()
        print(f"{DIM}CNI_COMMAND={verb} CNI_CONTAINERID=demo-{pod} CNI_IFNAME=eth0 pycni-bridge "
              f"-> exit {proc.returncode} ({took:.0f} ms){RESET}", flush=True)
        return proc.returncode, (json.loads(out) if out.strip() else None), proc.stderr.decode()

    def setup(self) -> None:
        for name in self.ns.values():
            sh("ip", "netns", "add", name)
            self.created.append(name)
            sh("ip", "-n", name, "link", "set", "lo", "up")
        node_ip, out_ip = list(self.uplink.hosts())[:2]
        self.node_uplink_ip, self.outside_ip = node_ip, out_ip
        sh("ip", "link", "add", "up0", "netns", self.ns["node"], "type", "veth", "peer", "name", "up0",
           "netns", self.ns["outside"])
        sh("ip", "-n", self.ns["node"], "addr", "add", f"{node_ip}/30", "dev", "up0")
        sh("ip", "-n", self.ns["outside"], "addr", "add", f"{out_ip}/30", "dev", "up0")
        for role in ("node", "outside"):
            sh("ip", "-n", self.ns[role], "link", "set", "up0", "up")

    def cleanup(self) -> None:
        for name in reversed(self.created):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    # --- the story -------------------------------------------------------------------------------

    def run(self) -> bool:
        ok = True
        step(f"namespaces: {', '.join(self.ns.values())}")
        print(f"pod subnet {self.pod_subnet}, node <-> outside link {self.uplink}, IPAM {self.ipam_type}")
        self.setup()

        step("ADD pod1 and pod2 (pycni-bridge, cniVersion 1.1.0)")
        for pod in ("pod1", "pod2"):
            rc, result, err = self.cni("ADD", pod, self.conf)
            if rc != 0:
                raise RuntimeError(f"ADD {pod} failed: {result} {err}")
            self.results[pod] = result
            ifs = ", ".join(f"{i['name']}{' (in pod)' if i.get('sandbox') else ''}" for i in result["interfaces"])
            ips = ", ".join(f"{ip['address']} gw {ip.get('gateway')}" for ip in result["ips"])
            print(f"  {pod}: interfaces [{ifs}]  ips [{ips}]")

        step("addresses")
        for pod in ("pod1", "pod2"):
            sh("ip", "-n", self.ns[pod], "-br", "addr", "show", "eth0", show=True)
        sh("ip", "-n", self.ns["node"], "-br", "addr", "show", "cni-demo", show=True)
        sh("ip", "-n", self.ns["node"], "-br", "link", "show", "master", "cni-demo", show=True)
        self.in_ns("node", "nft", "list", "table", "inet", "pycni", show=True)

        pod2_ip = self.results["pod2"]["ips"][0]["address"].split("/")[0]
        gw = self.results["pod1"]["ips"][0]["gateway"]
        for label, target in (("pod1 -> pod2", pod2_ip), ("pod1 -> node (gateway)", gw),
                              ("pod1 -> outside", str(self.outside_ip))):
            step(f"ping {label} ({target})")
            good = subprocess.run(["ip", "netns", "exec", self.ns["pod1"], "ping", "-c", "2", "-W", "2", target],
                                  capture_output=True, text=True).returncode == 0
            print(f"  {GREEN + 'ok' if good else RED + 'FAILED'}{RESET}")
            ok &= good

        step("pod1 -> outside over TCP: which source address does outside see?")
        seen = self.outside_sees()
        pod1_ip = self.results["pod1"]["ips"][0]["address"].split("/")[0]
        good = seen == str(self.node_uplink_ip)
        print(f"  pod1 is {pod1_ip}; outside saw {seen}; the node's uplink is {self.node_uplink_ip}: "
              f"{GREEN + 'masquerade works' if good else RED + 'NOT masqueraded'}{RESET}")
        ok &= good

        step("CHECK pod1")
        rc, out, err = self.cni("CHECK", "pod1", dict(self.conf, prevResult=self.results["pod1"]))
        print(f"  {GREEN + 'ok' if rc == 0 else RED + f'FAILED {out}'}{RESET}")
        ok &= rc == 0

        step("DEL pod1 and pod2")
        for pod in ("pod1", "pod2"):
            rc, out, err = self.cni("DEL", pod, dict(self.conf, prevResult=self.results[pod]))
            ok &= rc == 0
            if rc != 0:
                print(f"  {RED}DEL {pod} failed: {out} {err}{RESET}")

        step("what is left in the node namespace")
        left_veths = [link["ifname"] for link in json.loads(sh("ip", "-n", self.ns["node"], "-j", "link", "show"))
                      if link["ifname"].startswith("veth")]
        reservations = sorted(p.name for p in (self.data_dir / "demo").glob("*")
                              if p.name[0].isdigit()) if (self.data_dir / "demo").exists() else []
        # The last DEL takes pycni's table with it when nothing of pycni is left in it.
        ruleset = json.loads(self.in_ns("node", "nft", "-j", "list", "ruleset"))
        tables = [i["table"]["name"] for i in ruleset["nftables"] if "table" in i]
        entries = [e for i in ruleset["nftables"] if "set" in i and i["set"]["name"].startswith("pods")
                   for e in i["set"].get("elem", [])]
        pods_eth0 = [p for p in ("pod1", "pod2")
                     if "eth0" in sh("ip", "-n", self.ns[p], "-br", "link", "show")]
        print(f"  veths on the node:        {left_veths or 'none'}")
        print(f"  pod interfaces (eth0):    {pods_eth0 or 'none'}")
        print(f"  IPAM reservations:        {reservations or 'none'}")
        print(f"  masquerade set elements:  {entries or 'none'}")
        print(f"  nftables tables:          {tables or 'none (the ruleset is as before the demo)'}")
        print(f"  bridge cni-demo stays (shared, like the reference): "
              f"{'yes' if 'cni-demo' in sh('ip', '-n', self.ns['node'], '-br', 'link') else 'no'}")
        ok &= not (left_veths or reservations or entries or pods_eth0)
        return ok

    def outside_sees(self) -> str:
        seen: dict[str, str] = {}
        ready = threading.Event()

        def serve() -> None:
            # A socket stays in the namespace it was created in.
            with netns.entered(self.path("outside")):
                srv = socket.socket()
            with srv:
                srv.bind((str(self.outside_ip), 0))
                srv.listen(1)
                srv.settimeout(10)
                seen["port"] = str(srv.getsockname()[1])
                ready.set()
                try:
                    conn, peer = srv.accept()
                    conn.close()
                    seen["peer"] = peer[0]
                except OSError as exc:
                    seen["peer"] = f"nothing ({exc})"

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        ready.wait(5)
        code = f"import socket; socket.create_connection(('{self.outside_ip}', {seen['port']}), timeout=5).close()"
        subprocess.run(["ip", "netns", "exec", self.ns["pod1"], sys.executable, "-c", code], capture_output=True)
        thread.join(15)
        return seen.get("peer", "nothing")


def main() -> int:
    if os.geteuid() != 0:
        print("demo: needs root (it creates network namespaces); run it as root", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description="pycni demo: two pods on a bridge, then DEL")
    parser.add_argument("--bin-dir", type=Path, default=Path(os.environ.get("CNI_BIN_DIR", "/opt/cni/bin")))
    demo = Demo(parser.parse_args().bin_dir)
    where = demo.installed or "the source tree (nothing installed in --bin-dir)"
    print(f"{DIM}pycni-bridge: {where}{RESET}")
    try:
        ok = demo.run()
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        ok = False
    except Exception as exc:  # noqa: BLE001 - report, then clean up
        print(f"\n{RED}demo failed: {exc}{RESET}", file=sys.stderr)
        ok = False
    finally:
        demo.cleanup()
    step("cleanup: namespaces " + ("removed" if not any(
        n in sh("ip", "netns", "list") for n in demo.ns.values()) else "NOT all removed"))
    print(f"\n{GREEN + 'demo passed' if ok else RED + 'demo FAILED'}{RESET}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
