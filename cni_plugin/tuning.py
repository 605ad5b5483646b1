"""The tuning plugin: net sysctls and link attributes of CNI_IFNAME in the pod, restored on DEL.

A chained plugin (plugins/meta/tuning): it creates nothing, changes the pod interface that an
earlier plugin made, and passes prevResult through (with the new MAC when it sets one).

Keys as the reference: `sysctl`, `mac`, `mtu`, `promisc`, `allmulti`, `txQLen`, `dataDir`;
`args.cni.{sysctl,mac,mtu,promisc,allmulti,txQLen}` override them, the MAC also comes from
`runtimeConfig.mac` and CNI_ARGS `MAC` (precedence args.cni > runtimeConfig > CNI_ARGS > `mac`, as
the reference's parseConf). The sysctl allowlist is `/etc/cni/tuning/allowlist.conf` (one regex a
line, searched in the key as written), enforced only when the file exists.

Originals are saved to `<dataDir>/<containerID>_<ifname>.json` in the reference's format (`mac`,
`mtu`, `promisc`, `allmulti`, `txQLen`, only for the attributes this ADD changes), plus two keys
the reference ignores: `pycniSysctl` (original sysctl values, which the reference never restores)
and `pycniNetwork` (so GC of one network never touches another network's files). DEL restores
them and removes the file; GC removes the files of attachments that are no longer valid.

Differences from the reference (README, tuning): sysctl keys are split into components before
`IFNAME` is substituted (an interface name with dots works) and a key is refused when it is not
strictly below /proc/sys/net; sysctls are restored on DEL; a failed ADD undoes what it changed;
DEL removes the state file also when the pod namespace is gone; STATUS and GC exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import netlink, netns
from .config import PassThroughModel, field, parse_config
from .rollback import Undo
from .spec.errors import (
    CheckFailed,
    CNIError,
    InvalidConfig,
    InvalidNetns,
    IOFailure,
    LinkNotFound,
    NetlinkFailure,
    NetnsNotFound,
    PluginNotAvailable,
)
from .spec.skel import CmdArgs, Handlers
from .spec.types import Interface, Result

DEFAULT_DATA_DIR = "/run/cni/tuning"
ALLOWLIST_PATH = "/etc/cni/tuning/allowlist.conf"
IFNAME_TOKEN = "IFNAME"
MAC_ARGS = frozenset({"MAC"})
_MAC = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(\1[0-9a-fA-F]{2}){4}$")


# --- configuration ------------------------------------------------------------------------------------


SysctlValue = str | int | float


class ArgsCNI(PassThroughModel):
    sysctl: dict[str, SysctlValue] | None = None
    mac: str | None = None
    promisc: bool | None = None
    mtu: int | None = field(None, ge=0, le=65535)
    allmulti: bool | None = None
    txqlen: int | None = field(None, alias="txQLen", ge=0)


class Args(PassThroughModel):
    cni: ArgsCNI | None = None


class RuntimeConfig(PassThroughModel):
    mac: str = ""


def _absolute(value: str) -> str:
    value = value or DEFAULT_DATA_DIR
    if not os.path.isabs(value):
        raise ValueError("dataDir must be an absolute path")
    return value


class TuningConf(PassThroughModel):
    """The reference tuning's keys (plugins/meta/tuning TuningConf), same names and defaults."""

    name: str
    data_dir: str = field(DEFAULT_DATA_DIR, alias="dataDir", check=_absolute)
    sysctl: dict[str, SysctlValue] | None = None
    mac: str = ""
    promisc: bool = False
    mtu: int = field(0, ge=0, le=65535)
    txqlen: int | None = field(None, alias="txQLen", ge=0)
    allmulti: bool | None = None
    runtime_config: RuntimeConfig | None = field(None, alias="runtimeConfig")
    args: Args | None = None


@dataclass(frozen=True)
class Sysctl:
    key: str  # as written in the config (what the allowlist is matched against)
    path: str  # below /proc/sys/net, '/'-separated, IFNAME substituted
    value: str

    @property
    def dotted(self) -> str:
        return "net." + self.path.replace("/", ".")


@dataclass(frozen=True)
class Plan:
    """What one ADD changes, all inputs merged (pure)."""

    sysctls: tuple[Sysctl, ...] = ()
    mac: str = ""
    mtu: int = 0
    promisc: bool = False
    allmulti: bool | None = None
    txqlen: int | None = None

    @property
    def touches_link(self) -> bool:
        return bool(self.mac or self.mtu or self.promisc or self.allmulti is not None or self.txqlen is not None)


def sysctl_path(key: str, ifname: str) -> str:
    """The path below /proc/sys/net that sysctl `key` names, with IFNAME components substituted.

    `key` is dotted (`net.ipv4.conf.IFNAME.arp_filter`) or, as sysctl(8) allows, slashed
    (`net/ipv4/conf/eth0.100/rp_filter`, dots literal). Anything not strictly below
    /proc/sys/net is refused: no empty, `.` or `..` component, so no path traversal.
    """
    parts = key.split("/") if "/" in key else key.split(".")
    if len(parts) < 2 or parts[0] != "net":
        raise InvalidConfig("invalid sysctl key: only keys under net. (/proc/sys/net) are allowed", key)
    out = []
    for part in parts[1:]:
        if part == IFNAME_TOKEN:
            part = ifname
        if part in ("", ".", "..") or "/" in part or "\0" in part:
            raise InvalidConfig("invalid sysctl key: empty, '.' or '..' path component", key)
        out.append(part)
    return "/".join(out)


def _value(value: SysctlValue) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def valid_mac(mac: str, where: str) -> str:
    if not _MAC.match(mac):
        raise InvalidConfig(f"invalid MAC address in {where}", mac)
    mac = mac.replace("-", ":").lower()
    if int(mac[:2], 16) & 1:
        raise InvalidConfig(f"invalid MAC address in {where}", f"{mac} is a multicast address")
    return mac


def make_plan(conf: TuningConf, ifname: str, cni_args_mac: str = "") -> Plan:
    """Merge config, CNI_ARGS, runtimeConfig and args.cni (reference parseConf order)."""
    cni = conf.args.cni if conf.args is not None and conf.args.cni is not None else ArgsCNI()
    sysctls: dict[str, SysctlValue] = dict(conf.sysctl or {})
    sysctls.update(cni.sysctl or {})
    mac, where = conf.mac, "mac"
    if cni_args_mac:
        mac, where = cni_args_mac, "CNI_ARGS MAC"
    if conf.runtime_config is not None and conf.runtime_config.mac:
        mac, where = conf.runtime_config.mac, "runtimeConfig.mac"
    if cni.mac is not None:
        mac, where = cni.mac, "args.cni.mac"
    resolved = tuple(Sysctl(key, sysctl_path(key, ifname), _value(v)) for key, v in sysctls.items())
    paths = [s.path for s in resolved]
    dupes = sorted({p for p in paths if paths.count(p) > 1})
    if dupes:
        raise InvalidConfig("sysctl keys name the same sysctl twice", ", ".join(dupes))
    return Plan(
        sysctls=resolved,
        mac=valid_mac(mac, where) if mac else "",
        mtu=cni.mtu if cni.mtu is not None else conf.mtu,
        promisc=cni.promisc if cni.promisc is not None else conf.promisc,
        allmulti=cni.allmulti if cni.allmulti is not None else conf.allmulti,
        txqlen=cni.txqlen if cni.txqlen is not None else conf.txqlen,
    )


class _JSONObject(dict):  # type: ignore[type-arg]
    """A decoded JSON object that remembers which of its keys appeared more than once."""

    repeated: tuple[str, ...] = ()


def duplicate_sysctl_keys(stdin: bytes) -> list[str]:
    """Keys given twice in a `sysctl` object of the raw config (the reference rejects them; a
    decoded dict would silently keep the last one)."""
    found: set[str] = set()

    def hook(pairs: list[tuple[str, Any]]) -> _JSONObject:
        obj = _JSONObject(pairs)
        keys = [k for k, _ in pairs]
        obj.repeated = tuple(k for k in set(keys) if keys.count(k) > 1)
        for key, value in pairs:
            if key == "sysctl" and isinstance(value, _JSONObject):
                found.update(value.repeated)
        return obj

    try:
        json.loads(stdin, object_pairs_hook=hook)
    except ValueError:
        return []
    return sorted(found)


# --- allowlist (pure parsing; the file is read by the handlers) ----------------------------------------------


def parse_allowlist(text: str, where: str = ALLOWLIST_PATH) -> list[re.Pattern[str]]:
    """One regular expression a line (surrounding blanks stripped, empty lines skipped)."""
    patterns = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            patterns.append(re.compile(line))
        except re.error as exc:
            raise InvalidConfig(
                f"invalid regular expression in the sysctl allowlist {where}", f"line {number}: {exc}"
            ) from exc
    return patterns


def disallowed(keys: Iterable[str], patterns: list[re.Pattern[str]]) -> list[str]:
    """Keys (as written) that no pattern matches; a pattern matches anywhere (Go regexp.MatchString)."""
    return [key for key in keys if not any(p.search(key) for p in patterns)]


def read_allowlist(path: str | None = None) -> list[re.Pattern[str]] | None:
    """The allowlist's patterns, or None when the file does not exist (nothing enforced)."""
    path = path or ALLOWLIST_PATH
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise IOFailure(f"cannot read the sysctl allowlist {path}", str(exc)) from exc
    return parse_allowlist(text, path)


def enforce_allowlist(plan: Plan, path: str | None = None) -> None:
    patterns = read_allowlist(path)
    if patterns is None or not plan.sysctls:
        return
    refused = disallowed([s.key for s in plan.sysctls], patterns)
    if refused:
        raise InvalidConfig(
            f"sysctl not allowed by {path or ALLOWLIST_PATH}",
            f"{', '.join(refused)}; allowed: {', '.join(p.pattern for p in patterns)}",
        )


# --- saved originals ------------------------------------------------------------------------------------


def state_path(data_dir: str, container_id: str, ifname: str) -> str:
    return os.path.join(data_dir, f"{container_id}_{ifname}.json")


@dataclass
class Saved:
    """The reference's configToRestore, plus pycni's sysctl originals and network name."""

    mac: str = ""
    mtu: int = 0
    promisc: bool | None = None
    allmulti: bool | None = None
    txqlen: int | None = None
    sysctl: dict[str, str] = dataclasses.field(default_factory=dict)
    network: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.mac:
            out["mac"] = self.mac
        if self.promisc is not None:
            out["promisc"] = self.promisc
        if self.mtu:
            out["mtu"] = self.mtu
        if self.allmulti is not None:
            out["allmulti"] = self.allmulti
        if self.txqlen is not None:
            out["txQLen"] = self.txqlen
        if self.sysctl:
            out["pycniSysctl"] = dict(self.sysctl)
        if self.network:
            out["pycniNetwork"] = self.network
        return out

    @classmethod
    def from_json(cls, data: Any) -> Saved:
        if not isinstance(data, dict):
            return cls()

        def typed(key: str, kind: type) -> Any:
            value = data.get(key)
            return value if isinstance(value, kind) and not (kind is int and isinstance(value, bool)) else None

        sysctl = data.get("pycniSysctl")
        return cls(
            mac=typed("mac", str) or "",
            mtu=typed("mtu", int) or 0,
            promisc=typed("promisc", bool),
            allmulti=typed("allmulti", bool),
            txqlen=typed("txQLen", int),
            sysctl={str(k): str(v) for k, v in sysctl.items()} if isinstance(sysctl, dict) else {},
            network=typed("pycniNetwork", str) or "",
        )


def load_saved(path: str) -> Saved | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return Saved.from_json(json.load(fh))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        _warn(f"ignoring unreadable state file {path}: {exc}")
        return Saved()


def write_saved(path: str, saved: Saved) -> None:
    """Temp file + fsync + rename: a crash leaves the old file or the new one, never half of one."""
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(saved.to_json(), fh, indent=1)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except OSError as exc:
        raise IOFailure(f"cannot save the original interface settings to {path}", str(exc)) from exc


def remove_saved(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _warn(message: str) -> None:
    sys.stderr.write(f"pycni-tuning: {message}\n")


# --- handlers ------------------------------------------------------------------------------------------


def load(args: CmdArgs) -> tuple[TuningConf, Plan]:
    dupes = duplicate_sysctl_keys(args.stdin_data)
    if dupes:
        raise InvalidConfig("duplicated sysctl keys are not allowed", ", ".join(dupes))
    conf = parse_config(TuningConf, args.config)
    legacy = args.cni_args(MAC_ARGS | {"IgnoreUnknown"}).get("MAC", "") if args.args else ""
    return conf, make_plan(conf, args.ifname, legacy)


def with_mac(prev: Result, ifname: str, netns_path: str, mac: str) -> Result:
    """prevResult with the pod interface's MAC replaced (the one in the sandbox, else by name)."""
    in_pod = [i for i, iface in enumerate(prev.interfaces) if iface.name == ifname and iface.sandbox]
    targets = set(in_pod or [i for i, iface in enumerate(prev.interfaces) if iface.name == ifname])
    interfaces = tuple(
        Interface(name=iface.name, mac=mac, sandbox=iface.sandbox, mtu=iface.mtu,
                  socket_path=iface.socket_path, pci_id=iface.pci_id) if i in targets else iface
        for i, iface in enumerate(prev.interfaces)
    )
    return prev.with_changes(interfaces=interfaces)


def _pod(path: str) -> netlink.Netlink:
    try:
        return netlink.Netlink(path)
    except NetnsNotFound as exc:
        raise InvalidNetns(f"network namespace {path} does not exist") from exc


def _read_originals(pod: netlink.Netlink, ifname: str, plan: Plan, network: str) -> Saved:
    saved = Saved(network=network)
    for s in plan.sysctls:
        current = pod.sysctl_get(s.path)
        if current is None:
            raise InvalidConfig(f"sysctl {s.key} does not exist in the pod namespace", f"/proc/sys/net/{s.path}")
        saved.sysctl[s.path] = current
    if plan.touches_link:
        link = pod.link(ifname)
        if plan.mac:
            saved.mac = link.mac
        if plan.mtu:
            saved.mtu = link.mtu
        if plan.promisc:
            saved.promisc = pod.promisc(ifname)
        if plan.allmulti is not None:
            saved.allmulti = pod.allmulti(ifname)
        if plan.txqlen is not None:
            saved.txqlen = pod.txqlen(ifname)
    return saved


def _merge_existing(existing: Saved | None, fresh: Saved) -> Saved:
    """A second ADD of the same attachment (no DEL between) keeps the first ADD's originals."""
    if existing is None:
        return fresh
    return Saved(
        mac=existing.mac or fresh.mac,
        mtu=existing.mtu or fresh.mtu,
        promisc=existing.promisc if existing.promisc is not None else fresh.promisc,
        allmulti=existing.allmulti if existing.allmulti is not None else fresh.allmulti,
        txqlen=existing.txqlen if existing.txqlen is not None else fresh.txqlen,
        sysctl={**fresh.sysctl, **existing.sysctl},
        network=fresh.network,
    )


def add(args: CmdArgs) -> Result:
    conf, plan = load(args)
    enforce_allowlist(plan)
    prev = args.prev_result()
    if prev is None:
        raise InvalidConfig("tuning must be chained: prevResult is missing")
    netns.require_netns(args.netns)
    path = state_path(conf.data_dir, args.container_id, args.ifname)

    with _pod(args.netns) as pod, Undo() as undo:
        if plan.touches_link and not pod.link_exists(args.ifname):
            raise NetlinkFailure(f"interface {args.ifname} not found in {args.netns}", "ENODEV")
        saved = _read_originals(pod, args.ifname, plan, conf.name)
        if saved.sysctl or plan.touches_link:
            existing = load_saved(path)
            write_saved(path, _merge_existing(existing, saved))
            if existing is None:
                undo.push(f"remove {path}", remove_saved, path)
        for s in plan.sysctls:
            undo.push(f"restore sysctl {s.dotted}", pod.sysctl_set, s.path, saved.sysctl[s.path])
            pod.sysctl_set(s.path, s.value)
        if plan.mac:
            undo.push("restore MAC", pod.set_mac, args.ifname, saved.mac)
            pod.set_mac(args.ifname, plan.mac)
        if plan.promisc:
            undo.push("restore promisc", pod.set_promisc, args.ifname, bool(saved.promisc))
            pod.set_promisc(args.ifname, True)
        if plan.mtu:
            undo.push("restore MTU", pod.set_mtu, args.ifname, saved.mtu)
            pod.set_mtu(args.ifname, plan.mtu)
        if plan.allmulti is not None:
            undo.push("restore allmulticast", pod.set_allmulti, args.ifname, bool(saved.allmulti))
            pod.set_allmulti(args.ifname, plan.allmulti)
        if plan.txqlen is not None:
            undo.push("restore txqueuelen", pod.set_txqlen, args.ifname, saved.txqlen or 0)
            pod.set_txqlen(args.ifname, plan.txqlen)
        undo.disarm()
    return with_mac(prev, args.ifname, args.netns, plan.mac) if plan.mac else prev


def _restore(pod: netlink.Netlink, ifname: str, saved: Saved) -> list[str]:
    """Put the originals back; returns what failed (DEL never fails on it, as the reference)."""
    failures: list[str] = []
    have_link = pod.link_exists(ifname)
    steps: list[tuple[str, Any, tuple[Any, ...]]] = []
    if have_link:
        if saved.txqlen is not None:
            steps.append(("txqueuelen", pod.set_txqlen, (ifname, saved.txqlen)))
        if saved.allmulti is not None:
            steps.append(("allmulticast", pod.set_allmulti, (ifname, saved.allmulti)))
        if saved.mtu:
            steps.append(("MTU", pod.set_mtu, (ifname, saved.mtu)))
        if saved.promisc is not None:
            steps.append(("promisc", pod.set_promisc, (ifname, saved.promisc)))
        if saved.mac:
            steps.append(("MAC", pod.set_mac, (ifname, saved.mac)))
    for key, value in saved.sysctl.items():
        if pod.sysctl_get(key) is None:
            continue  # e.g. conf/<ifname>/... after the interface went away
        steps.append((f"sysctl net/{key}", pod.sysctl_set, (key, value)))
    for what, fn, fn_args in steps:
        try:
            fn(*fn_args)
        except (CNIError, LinkNotFound) as exc:
            failures.append(f"{what}: {exc}")
    return failures


def delete(args: CmdArgs) -> None:
    conf = parse_config(TuningConf, args.config)
    path = state_path(conf.data_dir, args.container_id, args.ifname)
    saved = load_saved(path)
    if saved is None:
        return  # nothing changed by us, or already restored: DEL is idempotent
    if args.netns:
        try:
            with netlink.Netlink(args.netns) as pod:
                for failure in _restore(pod, args.ifname, saved):
                    _warn(f"DEL: could not restore {failure}")
        except (NetnsNotFound, InvalidNetns):
            pass  # the pod is gone, and with it everything there was to restore
    try:
        remove_saved(path)
    except OSError as exc:
        raise IOFailure(f"cannot remove {path}", str(exc)) from exc


def _same(configured: str, current: str) -> bool:
    return configured.split() == current.split()  # the kernel may print "a\tb" for "a b"


def check(args: CmdArgs) -> None:
    conf, plan = load(args)
    if args.prev_result() is None:
        raise InvalidConfig("tuning must be chained: prevResult is missing")
    try:
        pod = netlink.Netlink(args.netns)
    except NetnsNotFound as exc:
        raise CheckFailed(f"network namespace {args.netns} does not exist") from exc
    with pod:
        for s in plan.sysctls:
            current = pod.sysctl_get(s.path)
            if current is None or not _same(s.value, current):
                raise CheckFailed(f"sysctl {s.dotted} is {current!r}, configured {s.value!r}")
        try:
            link = pod.link(args.ifname)
        except LinkNotFound as exc:
            raise CheckFailed(f"interface {args.ifname} does not exist in {args.netns}") from exc
        if plan.mac and link.mac != plan.mac:
            raise CheckFailed(f"{args.ifname} MAC is {link.mac}, configured {plan.mac}")
        if plan.mtu and link.mtu != plan.mtu:
            raise CheckFailed(f"{args.ifname} MTU is {link.mtu}, configured {plan.mtu}")
        if plan.promisc and not pod.promisc(args.ifname):
            raise CheckFailed(f"{args.ifname} is not in promiscuous mode")
        if plan.allmulti is not None and pod.allmulti(args.ifname) != plan.allmulti:
            raise CheckFailed(f"{args.ifname} allmulticast is not {'on' if plan.allmulti else 'off'}")
        if plan.txqlen is not None and pod.txqlen(args.ifname) != plan.txqlen:
            raise CheckFailed(f"{args.ifname} txqueuelen is {pod.txqlen(args.ifname)}, configured {plan.txqlen}")


def status(args: CmdArgs) -> None:
    conf = parse_config(TuningConf, args.config)
    try:
        read_allowlist()
    except CNIError as exc:
        raise PluginNotAvailable("the sysctl allowlist is unusable", str(exc)) from exc
    probe = conf.data_dir
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe) or not os.access(probe, os.W_OK | os.X_OK):
        raise PluginNotAvailable(f"dataDir {conf.data_dir} cannot be written", probe)


def gc(args: CmdArgs) -> None:
    """Remove this network's state files whose attachment is not valid (no pod left to restore)."""
    conf = parse_config(TuningConf, args.config)
    valid = args.valid_attachments()
    if valid is None:
        return  # no list: nothing is known to be stale
    keep = {os.path.basename(state_path(conf.data_dir, c, i)) for c, i in valid}
    try:
        names = os.listdir(conf.data_dir)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise IOFailure(f"cannot list {conf.data_dir}", str(exc)) from exc
    errors = []
    for name in sorted(names):
        if not name.endswith(".json") or name.startswith(".") or name in keep:
            continue
        path = os.path.join(conf.data_dir, name)
        saved = load_saved(path)
        if saved is None or saved.network != conf.name:
            continue  # another network's (or the reference's, which records none): not ours to judge
        try:
            remove_saved(path)
        except OSError as exc:
            errors.append(f"{name}: {exc}")
    if errors:
        raise IOFailure("GC could not remove some tuning state files", "; ".join(errors))


HANDLERS = Handlers(add=add, delete=delete, check=check, status=status, gc=gc)
