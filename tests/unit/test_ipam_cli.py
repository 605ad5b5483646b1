"""The admin CLI: `pycni ipam ls` and `pycni ipam gc` (dry run by default)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from cni_plugin.cli import main

from .test_ipam_disk import NET, ip_files, netconf, run


def _populate(tmp_path):
    conf = netconf(tmp_path)
    for cid in ("alive", "dead"):
        assert run("ADD", conf, cid=cid)[0] == 0


def test_ls_lists_ip_container_ifname_age(tmp_path):
    _populate(tmp_path)
    result = CliRunner().invoke(main, ["ipam", "ls", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NETWORK", "IP", "CONTAINER", "IFNAME", "AGE"]
    assert lines[1].split()[:4] == [NET, "10.10.0.2", "alive", "eth0"]
    assert len(lines) == 5
    as_json = CliRunner().invoke(main, ["ipam", "ls", "-d", str(tmp_path), "-n", NET, "--json"])
    rows = json.loads(as_json.output)
    assert {(r["ip"], r["containerID"]) for r in rows} >= {("fd10::3", "dead")}


def test_ls_unknown_network_fails(tmp_path):
    result = CliRunner().invoke(main, ["ipam", "ls", "-d", str(tmp_path), "-n", "nope"])
    assert result.exit_code == 1 and "nope" in result.output


def test_gc_is_a_dry_run_unless_apply(tmp_path):
    _populate(tmp_path)
    valid = tmp_path / "valid.json"
    valid.write_text(json.dumps([{"containerID": "alive", "ifname": "eth0"}]))
    args = ["ipam", "gc", "-d", str(tmp_path), "-n", NET, "--valid", str(valid)]
    dry = CliRunner().invoke(main, args)
    assert dry.exit_code == 0, dry.output
    assert "would release 10.10.0.3 (dead eth0)" in dry.output
    assert len(ip_files(tmp_path)) == 4
    applied = CliRunner().invoke(main, [*args, "--apply"])
    assert applied.exit_code == 0, applied.output
    assert sorted(ip_files(tmp_path)) == ["10.10.0.2", "fd10::2"]


def test_gc_accepts_the_gc_object_form_and_rejects_garbage(tmp_path):
    _populate(tmp_path)
    valid = tmp_path / "valid.json"
    valid.write_text(json.dumps({"cni.dev/valid-attachments": []}))
    result = CliRunner().invoke(main, ["ipam", "gc", "-d", str(tmp_path), "-n", NET, "--valid", str(valid), "--apply"])
    assert result.exit_code == 0 and ip_files(tmp_path) == {}
    valid.write_text("{not json")
    result = CliRunner().invoke(main, ["ipam", "gc", "-d", str(tmp_path), "-n", NET, "--valid", str(valid)])
    assert result.exit_code == 1 and "not JSON" in result.output
