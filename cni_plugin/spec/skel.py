"""The dispatcher: environment + stdin -> one verb handler -> stdout, with spec error handling.

Environ and the three streams are parameters, so every error path is testable in-process
(after pkg/skel/skel.go). Handlers are loaded lazily: VERSION and the env/config checks never
import the plugin module, and so never pay for pyroute2.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import IO, Any, NamedTuple

from . import convert
from .errors import (
    CNIError,
    DecodingFailure,
    IncompatibleVersion,
    InternalError,
    InvalidConfig,
    InvalidEnvironment,
    InvalidNetns,
    IOFailure,
)
from .plugin import Plugin, about_text, read_version_input, version_reply
from .types import Result
from .version import IMPLICIT_VERSION, LATEST, require_supported, require_verb_allowed

__all__ = ["CmdArgs", "Handlers", "Plugin", "dispatch", "main", "parse_cni_args"]

VERBS = ("ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC")
# GC's list of attachments to keep: libcni sends both keys (cni#1101); 1.1.0 names the first.
GC_ATTACHMENT_KEYS = ("cni.dev/valid-attachments", "cni.dev/attachments")
NO_ENVIRON: Mapping[str, str] = MappingProxyType({})  # CmdArgs built without one (tests, delegates)

# SPEC §2 and pkg/skel: which CNI_* variables each verb needs.
REQUIRED_ENV: dict[str, tuple[str, ...]] = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}

# The container ID and network name share one character class (SPEC §2, skel validation).
ID_PATTERN = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
IFNAME_MAX = 15  # IFNAMSIZ - 1


def ifname_problem(name: str) -> str | None:
    """Why `name` is not a valid Linux interface name, or None (rules of pkg/utils ValidateInterfaceName)."""
    if not name:
        return "is empty"
    if len(os.fsencode(name)) > IFNAME_MAX:  # IFNAMSIZ counts bytes, not characters
        return f"is longer than {IFNAME_MAX} bytes"
    if name in (".", ".."):
        return "may not be '.' or '..'"
    for char in name:
        if char in "/:" or char.isspace():
            return f"contains {char!r}"
    return None


def parse_cni_args(raw: str) -> dict[str, str]:
    """CNI_ARGS 'K=V;K2=V2' -> dict. A pair without '=' is an invalid environment (code 4)."""
    pairs: dict[str, str] = {}
    for item in raw.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidEnvironment("invalid CNI_ARGS", f"{item!r} is not KEY=VALUE")
        pairs[key] = value
    return pairs


class CmdArgs(NamedTuple):
    """One invocation, as the handlers see it."""

    command: str
    container_id: str
    netns: str
    ifname: str
    args: str
    path: tuple[str, ...]
    stdin_data: bytes
    config: dict[str, Any]
    cni_version: str
    environ: Mapping[str, str] = NO_ENVIRON

    @property
    def network_name(self) -> str:
        return str(self.config.get("name", ""))

    def prev_result(self) -> Result | None:
        raw = self.config.get("prevResult")
        if raw is None:
            return None
        return convert.result_from_wire(raw, self.cni_version)

    def cni_args(self, known: frozenset[str] | set[str]) -> dict[str, str]:
        """CNI_ARGS restricted to `known` keys.

        An unknown key is an error unless IgnoreUnknown is 1/true (pkg/types/args.go).
        """
        pairs = parse_cni_args(self.args)
        ignore = pairs.pop("IgnoreUnknown", "").lower() in ("1", "true")
        unknown = sorted(k for k in pairs if k not in known)
        if unknown and not ignore:
            raise InvalidEnvironment(
                "unknown CNI_ARGS keys", f"{', '.join(unknown)} (set IgnoreUnknown=1 to allow them)"
            )
        return {k: v for k, v in pairs.items() if k in known}

    def valid_attachments(self) -> set[tuple[str, str]] | None:
        """GC: the (containerID, ifname) attachments to keep, from both keys.

        None when the request lists no attachments at all: GC then removes nothing (keep on
        doubt). A malformed list is code 7 naming the entry.
        """
        present = [key for key in GC_ATTACHMENT_KEYS if key in self.config]
        if not present:
            return None
        valid: set[tuple[str, str]] = set()
        for key in present:
            raw = self.config[key]
            if not isinstance(raw, list):
                raise InvalidConfig("invalid network configuration", f"{key}: expected a list of attachments")
            for i, item in enumerate(raw):
                cid = item.get("containerID") if isinstance(item, dict) else None
                ifname = item.get("ifname", "") if isinstance(item, dict) else None
                if not isinstance(cid, str) or not cid or not isinstance(ifname, str):
                    problem = f"{key}.{i}: needs containerID and ifname strings"
                    raise InvalidConfig("invalid network configuration", problem)
                valid.add((cid, ifname))
        return valid


class Handlers(NamedTuple):
    add: Callable[[CmdArgs], Result]
    delete: Callable[[CmdArgs], None]
    check: Callable[[CmdArgs], None]
    status: Callable[[CmdArgs], None]
    gc: Callable[[CmdArgs], None]

    def for_verb(self, verb: str) -> Callable[[CmdArgs], Any]:
        return {
            "ADD": self.add,
            "DEL": self.delete,
            "CHECK": self.check,
            "STATUS": self.status,
            "GC": self.gc,
        }[verb]


def _validate_environment(verb: str, environ: Mapping[str, str]) -> None:
    problems = [f"{name} is missing" for name in REQUIRED_ENV[verb] if not environ.get(name)]
    # Only the values a verb uses are validated (as pkg/skel): VERSION, GC and STATUS answer
    # whatever CNI_CONTAINERID/CNI_IFNAME a runtime happens to pass along.
    uses = REQUIRED_ENV[verb]
    container_id = environ.get("CNI_CONTAINERID", "") if "CNI_CONTAINERID" in uses else ""
    # fullmatch: with match, `$` also matches before a trailing newline ("ctr\n" would pass).
    if container_id and not ID_PATTERN.fullmatch(container_id):
        problems.append(f"CNI_CONTAINERID {container_id!r} must match {ID_PATTERN.pattern}")
    ifname = environ.get("CNI_IFNAME", "") if "CNI_IFNAME" in uses else ""
    if ifname:
        reason = ifname_problem(ifname)
        if reason:
            problems.append(f"CNI_IFNAME {ifname!r} {reason}")
    if problems:
        raise InvalidEnvironment("invalid or missing environment variables", "; ".join(problems))


def _read_stdin(stdin: IO[bytes]) -> bytes:
    try:
        return stdin.read()
    except (OSError, ValueError) as exc:
        raise IOFailure("cannot read the network configuration from stdin", str(exc)) from exc


def _decode_config(data: bytes) -> dict[str, Any]:
    try:
        config = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodingFailure("the network configuration is not valid JSON", str(exc)) from exc
    if not isinstance(config, dict):
        raise DecodingFailure("the network configuration must be a JSON object")
    return config


def _config_version(config: dict[str, Any]) -> str:
    version = config.get("cniVersion", IMPLICIT_VERSION)
    if not isinstance(version, str):
        raise IncompatibleVersion("cniVersion must be a string", repr(version))
    return version or IMPLICIT_VERSION


def _is_own_netns(path: str) -> bool:
    # Running ADD against the runtime's own namespace would rewire the host (skel's code-8 check).
    # thread-self: in pycni-agent the calling thread sits in the caller's namespace, not the process's.
    try:
        target, own = os.stat(path), os.stat("/proc/thread-self/ns/net")
    except OSError:
        return False
    return (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino)


def _print_json(stdout: IO[str], obj: dict[str, Any]) -> None:
    stdout.write(json.dumps(obj, indent=4) + "\n")
    stdout.flush()


def dispatch(
    plugin: Plugin,
    environ: Mapping[str, str],
    stdin: IO[bytes],
    stdout: IO[str],
    stderr: IO[str],
) -> int:
    """Run one CNI invocation; returns the exit code (0 or 1)."""
    verb = environ.get("CNI_COMMAND", "")
    if not verb:
        stderr.write(about_text(plugin))
        return 0

    started = time.monotonic()
    reply_version = LATEST
    config: dict[str, Any] = {}
    try:
        if verb not in VERBS:
            raise InvalidEnvironment(f"unknown CNI_COMMAND {verb!r}", f"expected one of {', '.join(VERBS)}")
        _validate_environment(verb, environ)
        if verb == "VERSION":
            stdout.write(version_reply(plugin, read_version_input(stdin)))
            stdout.flush()
            return 0
        data = _read_stdin(stdin)

        config = _decode_config(data)
        version = _config_version(config)
        require_supported(version, plugin.versions)
        reply_version = version
        require_verb_allowed(verb, version)
        name = config.get("name")
        if not isinstance(name, str) or not ID_PATTERN.fullmatch(name):
            raise InvalidConfig(
                "invalid network name", f"'name' must be a string matching {ID_PATTERN.pattern}, got {name!r}"
            )
        netns = environ.get("CNI_NETNS", "")
        override = environ.get("CNI_NETNS_OVERRIDE", "").lower() in ("1", "true")
        if netns and verb in ("ADD", "CHECK", "DEL") and not override and _is_own_netns(netns):
            raise InvalidNetns(
                f"CNI_NETNS {netns} is the plugin's own network namespace",
                "set CNI_NETNS_OVERRIDE=1 if this is intended",
            )

        args = CmdArgs(
            command=verb,
            container_id=environ.get("CNI_CONTAINERID", ""),
            netns=netns,
            ifname=environ.get("CNI_IFNAME", ""),
            args=environ.get("CNI_ARGS", ""),
            path=tuple(p for p in environ.get("CNI_PATH", "").split(":") if p),
            stdin_data=data,
            config=config,
            cni_version=version,
            environ=environ,
        )
        outcome = plugin.load_handlers().for_verb(verb)(args)
        if verb == "ADD":
            _print_json(stdout, convert.result_to_wire(outcome, version))
        _log(plugin, environ, config, verb, started, stderr, None)
        return 0
    except CNIError as exc:
        _print_json(stdout, exc.to_wire(reply_version))
        _log(plugin, environ, config, verb, started, stderr, exc)
        return 1
    except Exception as exc:  # noqa: BLE001 - the last-resort mapping the spec wants as 999
        trace = traceback.format_exc()
        stderr.write(trace)
        error = InternalError(f"unexpected {type(exc).__name__}", str(exc))
        _print_json(stdout, error.to_wire(reply_version))
        _log(plugin, environ, config, verb, started, stderr, error, trace)
        return 1


def _log(
    plugin: Plugin,
    environ: Mapping[str, str],
    config: Mapping[str, Any],
    verb: str,
    started: float,
    stderr: IO[str],
    error: CNIError | None,
    trace: str = "",
) -> None:
    from .. import log

    log.record(
        destination=log.destination(config, environ),
        plugin=plugin.name,
        verb=verb,
        container_id=environ.get("CNI_CONTAINERID", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        duration=time.monotonic() - started,
        error=error,
        trace=trace,
        stderr=stderr,
    )


def main(plugin: Plugin) -> int:
    """The executable's whole body: real environment and streams."""
    return dispatch(plugin, os.environ, sys.stdin.buffer, sys.stdout, sys.stderr)
