"""invoke: one seam, two transports (exec from CNI_PATH, in-process for pycni's own IPAM)."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from cni_plugin import invoke
from cni_plugin.spec.errors import DelegateFailure
from cni_plugin.spec.skel import CmdArgs, Handlers
from cni_plugin.spec.types import IPConfig, Result

RESULT_100 = {"cniVersion": "1.0.0", "ips": [{"address": "198.18.0.2/24", "gateway": "198.18.0.1"}],
              "routes": [{"dst": "0.0.0.0/0"}]}


def _args(path: Path, version: str = "1.0.0", **config) -> CmdArgs:
    conf = {"cniVersion": version, "name": "n", "ipam": {"type": "fake"}, **config}
    return CmdArgs(command="ADD", container_id="c1", netns="/run/netns/x", ifname="eth0", args="IgnoreUnknown=1",
                   path=(str(path),), stdin_data=json.dumps(conf).encode(), config=conf, cni_version=version,
                   environ={"PATH": "/usr/bin:/bin"})


def _script(tmp_path: Path, name: str, body: str) -> Path:
    exe = tmp_path / name
    exe.write_text(f"#!{sys.executable}\nimport json, os, sys\n{body}\n")
    exe.chmod(0o755)
    return exe


def test_exec_add_passes_env_and_stdin_and_parses_result(tmp_path):
    record = tmp_path / "record.json"
    _script(tmp_path, "fake", f"""
data = json.load(sys.stdin)
env = {{k: v for k, v in os.environ.items() if k.startswith("CNI_")}}
open({str(record)!r}, "w").write(json.dumps({{"env": env, "conf": data}}))
print(json.dumps({RESULT_100!r}))
""")
    result = invoke.delegate_add("fake", _args(tmp_path))
    assert isinstance(result, Result)
    assert str(result.ips[0].address) == "198.18.0.2/24" and result.ips[0].interface is None
    seen = json.loads(record.read_text())
    assert seen["env"]["CNI_COMMAND"] == "ADD" and seen["env"]["CNI_IFNAME"] == "eth0"
    assert seen["env"]["CNI_ARGS"] == "IgnoreUnknown=1" and seen["env"]["CNI_PATH"] == str(tmp_path)
    assert seen["conf"]["name"] == "n", "the whole net config goes to IPAM"


def test_exec_delegate_error_keeps_its_code(tmp_path):
    _script(tmp_path, "fake", 'print(json.dumps({"cniVersion": "1.0.0", "code": 100, "msg": "no addresses", '
                              '"details": "range full"})); sys.exit(1)')
    with pytest.raises(invoke.DelegatedError) as info:
        invoke.delegate_add("fake", _args(tmp_path))
    assert info.value.code == 100 and "no addresses" in info.value.msg and info.value.details == "range full"
    assert info.value.to_wire("1.0.0")["code"] == 100


def test_exec_garbage_failure_is_delegate_failure(tmp_path):
    _script(tmp_path, "fake", 'sys.stderr.write("panic: oops"); sys.exit(2)')
    with pytest.raises(DelegateFailure) as info:
        invoke.delegate_del("fake", _args(tmp_path))
    assert info.value.code == 107 and "oops" in info.value.details


def test_missing_plugin_is_delegate_failure(tmp_path):
    with pytest.raises(DelegateFailure, match="failed to find plugin"):
        invoke.delegate_add("nope", _args(tmp_path))
    with pytest.raises(DelegateFailure):
        invoke.delegate_add("../etc/passwd", _args(tmp_path))


def test_exec_version_fallback_for_older_delegates(tmp_path):
    """A 1.1.0 network with a delegate that stops at 1.0.0 (the Go IPAM plugins): retried at 1.0.0."""
    _script(tmp_path, "fake", """
if os.environ["CNI_COMMAND"] == "VERSION":
    print(json.dumps({"cniVersion": "1.0.0", "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]})); sys.exit(0)
data = json.load(sys.stdin)
if data["cniVersion"] == "1.1.0":
    print(json.dumps({"cniVersion": "1.1.0", "code": 1, "msg": "incompatible CNI versions"})); sys.exit(1)
if os.environ["CNI_COMMAND"] in ("STATUS", "GC"):
    sys.exit(3)
print(json.dumps(RESULT))
""".replace("RESULT", repr(RESULT_100)))
    args = _args(tmp_path, version="1.1.0")
    assert str(invoke.delegate_add("fake", args).ips[0].address) == "198.18.0.2/24"
    assert invoke.delegate_status("fake", args) is None  # no STATUS before 1.1.0: nothing to ask


def test_in_process_transport_for_pycni_host_local(monkeypatch, tmp_path):
    calls: list[tuple[str, str]] = []

    def handler(verb):
        def run(args: CmdArgs):
            calls.append((verb, args.command))
            return Result(ips=(IPConfig(address=__import__("ipaddress").ip_interface("198.18.9.9/24")),))
        return run

    fake_main = types.ModuleType("ipam.main")
    fake_main.HANDLERS = Handlers(add=handler("add"), delete=handler("del"), check=handler("check"),
                                  status=handler("status"), gc=handler("gc"))
    monkeypatch.setitem(sys.modules, "ipam.main", fake_main)
    import ipam

    monkeypatch.setattr(ipam, "main", fake_main, raising=False)
    args = _args(tmp_path)  # nothing executable on CNI_PATH: only the in-process path can answer
    assert invoke.is_in_process("pycni-host-local")
    assert str(invoke.delegate_add("pycni-host-local", args).ips[0].address) == "198.18.9.9/24"
    invoke.delegate_del("pycni-host-local", args)
    invoke.delegate_gc("pycni-host-local", args)
    assert calls == [("add", "ADD"), ("del", "DEL"), ("gc", "GC")]


def test_in_process_falls_back_to_exec_when_ipam_is_not_importable(monkeypatch, tmp_path):
    import ipam

    monkeypatch.setitem(sys.modules, "ipam.main", None)  # import raises ImportError
    monkeypatch.delattr(ipam, "main", raising=False)
    _script(tmp_path, "pycni-host-local", f"print(json.dumps({RESULT_100!r}))")
    assert not invoke.is_in_process("pycni-host-local")
    assert str(invoke.delegate_add("pycni-host-local", _args(tmp_path)).ips[0].address) == "198.18.0.2/24"


def _executable(path, text: str):
    path.write_text(text)
    path.chmod(0o755)
    return path


def test_a_pycni_host_local_shim_under_the_reference_name_runs_in_process(tmp_path):
    # A CNI_NAMES=reference install puts pycni's host-local on CNI_PATH as `host-local`.
    _executable(tmp_path / "host-local", "#!/venv/bin/python3 -IS\n# pycni-shim: host-local 0.1.0; generated\n")
    assert invoke.is_in_process("host-local", (str(tmp_path),))


def test_a_foreign_host_local_is_executed(tmp_path):
    _executable(tmp_path / "host-local", "\x7fELF not ours")
    assert not invoke.is_in_process("host-local", (str(tmp_path),))
    # nor is another pycni plugin that happens to carry the IPAM's name
    _executable(tmp_path / "host-local", "#!/venv/bin/python3 -IS\n# pycni-shim: bridge 0.1.0; generated\n")
    assert not invoke.is_in_process("host-local", (str(tmp_path),))


def test_the_installer_writes_the_marker_invoke_looks_for():
    import importlib.util
    from pathlib import Path

    from cni_plugin.entry import SHIM_MARKER

    spec = importlib.util.spec_from_file_location("install", Path(__file__).parents[2] / "scripts" / "install.py")
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)
    assert install.MARKER == SHIM_MARKER
    assert f"{SHIM_MARKER} host-local " in install.shim_text(Path("/venv/bin/python3"), [], "host-local", "0.1.0")
