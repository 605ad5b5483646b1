"""The README's first command ends in scripts/demo.py: it must keep passing as the plugins change."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO


def test_the_single_node_demo_passes_and_leaves_nothing(installed_bin):
    before = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "demo.py"), "--bin-dir", str(installed_bin)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "demo passed" in proc.stdout
    assert "nftables tables:          none" in proc.stdout  # the ruleset is as before the demo
    after = set(subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split())
    assert not {n for n in after - before if n.startswith("pycni-demo")}
