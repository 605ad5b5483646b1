"""A real etcd (Debian's etcd-server) for the cluster tests: private data dir, an address the test owns.

    with EtcdServer.start(tmp_path, host="127.0.0.1") as etcd:          # on the machine's loopback
        etcd.endpoint                                                       # "http://127.0.0.1:PORT"
    EtcdServer.start(tmp_path, host="198.18.7.1", netns="underlay-ns")     # inside a test namespace

stop() and kill() (SIGKILL) end it; start_again() brings the same member back on the same data
dir and address, as an operator's restart would. Nothing is left behind: the data dir is the
test's tmp_path and the process is reaped on exit, also when the test fails.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ETCD = "/usr/bin/etcd"
START_TIMEOUT = 20.0


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EtcdServer:
    def __init__(self, data_dir: Path, host: str, port: int, netns: str | None) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.netns = netns
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def endpoint(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @classmethod
    def start(cls, base: Path, host: str = "127.0.0.1", port: int | None = None,
              netns: str | None = None) -> EtcdServer:
        data_dir = base / f"etcd-{os.getpid()}-{time.monotonic_ns()}"
        data_dir.mkdir(parents=True)
        if port is None:
            # In a namespace the address is the test's own and nothing else listens there.
            port = 2379 if netns else _free_port(host)
        server = cls(data_dir, host, port, netns)
        server.start_again()
        return server

    def start_again(self) -> None:
        host = f"[{self.host}]" if ":" in self.host else self.host
        peer_port = self.port + 1
        argv = [
            ETCD, "--name", "pycni-test", "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"http://{host}:{self.port}",
            "--advertise-client-urls", f"http://{host}:{self.port}",
            "--listen-peer-urls", f"http://{host}:{peer_port}",
            "--initial-advertise-peer-urls", f"http://{host}:{peer_port}",
            "--initial-cluster", f"pycni-test=http://{host}:{peer_port}",
            "--log-level", "warn",
        ]
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        finally:
            log.close()
        self._wait_healthy()

    def _health(self) -> bool:
        url = f"{self.endpoint}/health"
        if self.netns:
            probe = subprocess.run(
                ["ip", "netns", "exec", self.netns, sys.executable, "-c",
                 "import urllib.request,sys; "
                 f"sys.exit(0 if b'true' in urllib.request.urlopen({url!r}, timeout=1).read() else 1)"],
                capture_output=True,
            )
            return probe.returncode == 0
        try:
            with urllib.request.urlopen(url, timeout=1) as reply:
                return b"true" in reply.read()
        except OSError:
            return False

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            if self._health():
                return
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"etcd did not become healthy in {START_TIMEOUT:g} s: {self.log_path.read_text()[-2000:]}")

    def _signal(self, sig: int) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def __enter__(self) -> EtcdServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()
