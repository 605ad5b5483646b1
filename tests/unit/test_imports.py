"""VERSION stays light: podman calls it on every plugin of a chain each time it loads a network.

Each case runs in a fresh interpreter (this test process has long since imported everything) and
reports which heavy modules ended up in sys.modules.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("pyroute2", "pydantic")

# Runs in the child: `body` leaves the plugin's stdout in `out`; the last line reports.
CHILD = """
import io, json, os, sys
os.environ.clear()
{body}
heavy = sorted({{m.split(".")[0] for m in sys.modules}} & set({heavy!r}))
sys.__stdout__.write("\\n" + json.dumps({{"out": out, "heavy": heavy}}) + "\\n")
"""

VIA_MAIN = """
os.environ["CNI_COMMAND"] = "VERSION"
sys.stdin = io.TextIOWrapper(io.BytesIO(b'{"cniVersion": "0.3.1"}'))
sys.stdout = io.StringIO()
from cni_plugin import entry
assert entry.main("loopback") == 0
out = sys.stdout.getvalue()
"""

VIA_DISPATCH = """
from cni_plugin import entry
from cni_plugin.spec import skel
stdout = io.StringIO()
code = skel.dispatch(entry.PLUGINS["loopback"], {env!r}, io.BytesIO({stdin!r}), stdout, io.StringIO())
out = stdout.getvalue()
"""

LOAD_HANDLERS = """
from cni_plugin import entry
entry.PLUGINS["loopback"].load_handlers()
out = ""
"""


def run_child(body: str) -> tuple[dict, list[str]]:
    code = CHILD.format(body=body, heavy=HEAVY)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=30,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    return (json.loads(report["out"]) if report["out"].strip() else {}), report["heavy"]


def test_entry_main_version_imports_neither_pyroute2_nor_pydantic() -> None:
    reply, heavy = run_child(VIA_MAIN)
    assert reply["cniVersion"] == "0.3.1" and "0.3.1" in reply["supportedVersions"]
    assert heavy == []


@pytest.mark.parametrize(
    ("env", "stdin", "code"),
    [
        ({"CNI_COMMAND": "VERSION"}, b"", None),
        # Errors found before a handler runs must not pay for the handler's imports either.
        ({"CNI_COMMAND": "ADD"}, b"{}", 4),
        ({"CNI_COMMAND": "CHECK", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x", "CNI_IFNAME": "lo", "CNI_PATH": "/x"},
         b'{"cniVersion": "0.3.1", "name": "cni-loopback"}', 1),
    ],
    ids=["version", "missing-env", "check-at-0.3.1"],
)
def test_dispatch_before_a_handler_imports_neither(env: dict, stdin: bytes, code: int | None) -> None:
    reply, heavy = run_child(VIA_DISPATCH.format(env=env, stdin=stdin))
    assert reply.get("code") == code, reply
    assert heavy == []


def test_the_check_can_see_a_heavy_import() -> None:
    # Control: loading the loopback handlers does pull in pyroute2, so an empty list above means
    # VERSION really avoided it rather than the detector being blind.
    _, heavy = run_child(LOAD_HANDLERS)
    assert "pyroute2" in heavy


def test_an_installed_executable_answers_version_with_the_interpreters_own_modules() -> None:
    # As scripts/install.py writes it: `python3 -IS`, the package on sys.path, main(). Nothing the
    # bare interpreter has not loaded may come in but pycni's own modules, __future__ and _json.
    code = (
        "import sys\n"
        f"sys.path[:0] = [{str(REPO)!r}]\n"
        "before = set(sys.modules)\n"
        "from cni_plugin.entry import main\n"
        "rc = main('bridge')\n"
        "sys.stderr.write(' '.join(sorted(set(sys.modules) - before)))\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-IS", "-c", code], input=b'{"cniVersion": "1.0.0"}', capture_output=True, timeout=30,
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["cniVersion"] == "1.0.0"
    loaded = proc.stderr.decode().split()
    assert "cni_plugin.spec.plugin" in loaded  # the detector sees what the answer imported
    assert [m for m in loaded if not m.startswith("cni_plugin")] == ["__future__", "_json"]


PLUGIN_MODULES = ("cni_plugin.bridge", "ipam.main", "ipam.config", "cni_plugin.tuning", "cni_plugin.portmap",
                  "cni_plugin.bandwidth", "cni_plugin.firewall.plugin", "cni_plugin.loopback")


def loaded_after_importing(roots: tuple[str, ...], *modules: str) -> list[str]:
    """The modules under `roots` loaded by a fresh `python -IS` that imports `modules`, with the
    sys.path of an installed shim (the repo and the venv's site-packages, nothing from the env)."""
    site_packages = [p for p in sys.path if p.endswith("site-packages")]
    code = (
        "import json, sys; sys.path[:0] = sys.argv[1:]\n"
        f"for name in {modules!r}: __import__(name)\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {roots!r})))"
    )
    proc = subprocess.run([sys.executable, "-IS", "-c", code, str(REPO), *site_packages],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def pydantic_after_importing(*modules: str) -> list[str]:
    return loaded_after_importing(("pydantic", "pydantic_core"), *modules)


def test_no_plugin_module_imports_pydantic() -> None:
    # The config models are plain code (cni_plugin.config): a plugin exec must not pay ~50 ms for
    # pydantic. Only the agent's cluster config (parsed once at start) uses it.
    assert pydantic_after_importing(*PLUGIN_MODULES) == []


def test_the_check_can_see_pydantic() -> None:
    assert "pydantic" in pydantic_after_importing("cni_plugin.cluster.model")


# Every pod's path: its value types are NamedTuples. A frozen dataclass compiles six generated
# methods when its module is imported (~1 ms each class on a 2-core node, 17 classes on this
# path), and `dataclasses` itself imports inspect, ast, dis and tokenize; a NamedTuple costs ~0.1 ms.
POD_PATH_MODULES = ("cni_plugin.entry", "cni_plugin.spec.skel", "cni_plugin.bridge", "ipam.main", "ipam.config",
                    "cni_plugin.loopback")


def test_the_pod_path_does_not_import_dataclasses() -> None:
    assert loaded_after_importing(("dataclasses", "inspect"), *POD_PATH_MODULES) == []


def test_the_check_can_see_dataclasses() -> None:
    assert "dataclasses" in loaded_after_importing(("dataclasses",), "cni_plugin.tuning")


def test_an_installed_executable_ends_right_after_the_version_answer() -> None:
    # exit_after_version skips finalization: the answer must be complete and the status 0 anyway,
    # also through a pipe (flushed before the process ends).
    code = f"import sys\nsys.path[:0] = [{str(REPO)!r}]\nfrom cni_plugin.entry import main\n" \
           "sys.exit(main('loopback', exit_after_version=True))\n"
    proc = subprocess.run(
        [sys.executable, "-IS", "-c", code], input=b'{"cniVersion": "0.4.0"}', capture_output=True, timeout=30,
        env={"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr
    from cni_plugin.spec.version import ALL_VERSIONS

    assert json.loads(proc.stdout) == {"cniVersion": "0.4.0", "supportedVersions": list(ALL_VERSIONS)}
