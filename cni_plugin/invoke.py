"""Delegation to IPAM plugins: one seam, two transports.

* pycni's own host-local runs in-process: ipam.main.HANDLERS is called with the same CmdArgs
  (verb swapped), so there is no second interpreter start. That is `type: pycni-host-local`, and
  also any type whose executable on CNI_PATH is a pycni host-local shim (a CNI_NAMES=reference
  install serves `type: host-local`). ipam is imported lazily; if it cannot be imported the exec
  transport is used instead.
* any other type is executed from CNI_PATH as SPEC §4 says: same CNI_* environment with
  CNI_COMMAND set, the whole network config on stdin, result or error JSON on stdout.

A delegate's CNI error keeps its code (DelegatedError carries it); a delegate that fails without
a parseable CNI error is DelegateFailure (107).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from .spec import convert
from .spec.errors import CNIError, DelegateFailure
from .spec.skel import CmdArgs, Handlers
from .spec.types import Result

IN_PROCESS_TYPES = frozenset({"pycni-host-local"})
# How much of an executable is read for the shim marker (== scripts/install.py HEAD_BYTES): a
# script has it on line 2, a compiled shim in its .note.pycni section near the ELF headers.
HEAD_BYTES = 4096
DELEGATE_TIMEOUT = 120


class DelegatedError(CNIError):
    """A CNI error reported by a delegated plugin; `code` is the delegate's own."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg, details)
        self.code = code


def _is_pycni_host_local(plugin_type: str, path: tuple[str, ...]) -> bool:
    """Whether the executable CNI_PATH resolves `plugin_type` to is pycni's host-local shim."""
    from .entry import SHIM_MARKER

    try:
        exe = find_plugin(plugin_type, path)
        if getattr(sys, "frozen", False) and plugin_type in ("host-local", "pycni-host-local"):
            # The bundle (scripts/bundle): every name is a symlink to one executable; that
            # executable, reached under the host-local name, is this very program's host-local.
            return os.path.realpath(exe) == os.path.realpath(sys.executable)
        with open(exe, "rb") as f:
            head = f.read(HEAD_BYTES)
    except (DelegateFailure, OSError):
        return False
    return f"{SHIM_MARKER} host-local ".encode() in head


def _load_in_process(plugin_type: str, path: tuple[str, ...] = ()) -> Handlers | None:
    if plugin_type not in IN_PROCESS_TYPES and not _is_pycni_host_local(plugin_type, path):
        return None
    try:
        from ipam import main as ipam_main  # lazy: only bridge ADD/DEL/... with pycni IPAM pay for it
    except ImportError:
        return None
    handlers = getattr(ipam_main, "HANDLERS", None)
    return handlers if isinstance(handlers, Handlers) else None


def find_plugin(plugin_type: str, path: tuple[str, ...]) -> str:
    if "/" in plugin_type or plugin_type in ("", ".", ".."):
        raise DelegateFailure(f"invalid delegate plugin type {plugin_type!r}")
    for directory in path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise DelegateFailure(f"failed to find plugin {plugin_type!r} in path", ":".join(path) or "(CNI_PATH empty)")


def _child_env(args: CmdArgs, verb: str) -> dict[str, str]:
    env = dict(args.environ) if args.environ else dict(os.environ)
    env.update(
        {
            "CNI_COMMAND": verb,
            "CNI_CONTAINERID": args.container_id,
            "CNI_NETNS": args.netns,
            "CNI_IFNAME": args.ifname,
            "CNI_ARGS": args.args,
            "CNI_PATH": ":".join(args.path),
        }
    )
    return env


def exec_plugin(plugin_type: str, verb: str, args: CmdArgs, config: dict[str, Any]) -> dict[str, Any] | None:
    """Run `plugin_type` from CNI_PATH; its parsed stdout (None when empty) or its error raised."""
    exe = find_plugin(plugin_type, args.path)
    data = json.dumps(config).encode()
    try:
        proc = subprocess.run(
            [exe], input=data, env=_child_env(args, verb), capture_output=True, timeout=DELEGATE_TIMEOUT
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DelegateFailure(f"{plugin_type} {verb} could not run", str(exc)) from exc
    out = proc.stdout.decode(errors="replace")
    parsed: Any = None
    if out.strip():
        try:
            parsed = json.loads(out)
        except ValueError:
            parsed = None
    if proc.returncode != 0:
        if isinstance(parsed, dict) and isinstance(parsed.get("code"), int):
            raise DelegatedError(
                parsed["code"], f"{plugin_type}: {parsed.get('msg', '')}", str(parsed.get("details", ""))
            )
        detail = (proc.stderr.decode(errors="replace").strip() or out.strip())[-500:]
        raise DelegateFailure(f"{plugin_type} {verb} failed with exit {proc.returncode}", detail)
    return parsed if isinstance(parsed, dict) else None


def supported_versions(plugin_type: str, args: CmdArgs) -> list[str]:
    """The delegate's VERSION answer (empty when it gives none)."""
    reply = exec_plugin(plugin_type, "VERSION", args, {"cniVersion": args.cni_version})
    found = (reply or {}).get("supportedVersions") or []
    return [v for v in found if isinstance(v, str)]


def _best_common(ours: str, theirs: list[str], minimum: str) -> str | None:
    candidates = [v for v in theirs if _vkey(minimum) <= _vkey(v) <= _vkey(ours)]
    return max(candidates, key=_vkey) if candidates else None


def _vkey(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except ValueError:
        return (0,)


def _delegate(verb: str, plugin_type: str, args: CmdArgs, config: dict[str, Any] | None) -> Any:
    config = args.config if config is None else config
    handlers = _load_in_process(plugin_type, args.path)
    if handlers is not None:
        sub = args._replace(command=verb, config=config, stdin_data=json.dumps(config).encode())
        return handlers.for_verb(verb)(sub)
    try:
        return exec_plugin(plugin_type, verb, args, config)
    except DelegatedError as exc:
        if exc.code != 1:
            raise
        # Version negotiation (pycni extension, README "pycni-bridge"): the Go IPAM plugins stop at 1.0.0,
        # so a 1.1.0 network would otherwise be unusable with them. Retry once with the highest
        # version both sides speak; STATUS/GC do not exist before 1.1.0, so they are skipped.
        if verb in ("STATUS", "GC"):
            return None
        minimum = "0.4.0" if verb == "CHECK" else "0.3.0"
        fallback = _best_common(args.cni_version, supported_versions(plugin_type, args), minimum)
        if fallback is None or fallback == config.get("cniVersion"):
            raise
        downgraded = dict(config, cniVersion=fallback)
        if isinstance(config.get("prevResult"), dict):
            prev = convert.result_from_wire(config["prevResult"], args.cni_version)
            downgraded["prevResult"] = convert.result_to_wire(prev, fallback)
        return exec_plugin(plugin_type, verb, args, downgraded)


def is_in_process(plugin_type: str, path: tuple[str, ...] = ()) -> bool:
    """Whether `plugin_type` would be served in-process (pycni's own IPAM, importable)."""
    return _load_in_process(plugin_type, path) is not None


def delegate_add(plugin_type: str, args: CmdArgs, config: dict[str, Any] | None = None) -> Result:
    outcome = _delegate("ADD", plugin_type, args, config)
    if isinstance(outcome, Result):
        return outcome
    if outcome is None:
        raise DelegateFailure(f"{plugin_type} ADD returned no result")
    version = str(outcome.get("cniVersion") or args.cni_version)
    return convert.result_from_wire(outcome, version)


def delegate_del(plugin_type: str, args: CmdArgs, config: dict[str, Any] | None = None) -> None:
    _delegate("DEL", plugin_type, args, config)


def delegate_check(plugin_type: str, args: CmdArgs, config: dict[str, Any] | None = None) -> None:
    _delegate("CHECK", plugin_type, args, config)


def delegate_status(plugin_type: str, args: CmdArgs, config: dict[str, Any] | None = None) -> None:
    _delegate("STATUS", plugin_type, args, config)


def delegate_gc(plugin_type: str, args: CmdArgs, config: dict[str, Any] | None = None) -> None:
    _delegate("GC", plugin_type, args, config)
