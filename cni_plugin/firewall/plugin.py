"""The firewall plugin: forward-accept rules for the pod's addresses, an admin chain, and bridge
isolation (`ingressPolicy`), chained after an interface plugin (plugins/meta/firewall).

Keys as the reference: `backend`, `iptablesAdminChainName` (default `CNI-ADMIN`),
`ingressPolicy` (`open` default, `same-bridge`, `isolated`), `firewalldZone` (accepted, unused).
Differences (README, firewall): the default backend is `nftables` (the reference: firewalld if
running, else iptables); `firewalld` is refused with code 2; pod rules carry the attachment tag,
so DEL works without prevResult or netns and GC removes orphans; isolation lives in the chosen
backend (the reference always uses iptables for it), and `isolated` also blocks traffic bridged
between pods without br_netfilter (nftables backend).

The layouts are in policy_render.py. ADD passes prevResult through unchanged.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from ..config import PassThroughModel, field, parse_config
from ..rollback import Sweep, Undo
from ..spec.errors import (
    CheckFailed,
    FirewallFailure,
    InvalidConfig,
    PluginNotAvailable,
    UnsupportedField,
)
from ..spec.skel import CmdArgs, Handlers, ifname_problem
from ..spec.types import IPAddress, Result
from . import lock
from . import policy_render as pr
from .nftables import NftRunner, apply_removal
from .render import FAMILY, attachment_tag, script_of, with_table_teardown

# Names that belong to pycni's own chains in `inet pycni`; the admin chain must not take one.
RESERVED_PREFIXES = ("fw_", "masq_", "hostports_", "pods", "nets")
_CHAIN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,27}$")  # iptables: 28 chars; nft: an identifier
IPTABLES_CANDIDATES = ("/usr/sbin", "/sbin", "/usr/bin", "/bin")


def _admin_chain(value: str) -> str:
    value = value or pr.DEFAULT_ADMIN_CHAIN
    if not _CHAIN_NAME.match(value):
        raise ValueError("must be 1-28 characters: a letter, then letters, digits, '_', '.' or '-'")
    if value.startswith(RESERVED_PREFIXES) or value in ("FORWARD", pr.FORWARD_CHAIN, pr.STAGE1, pr.STAGE2):
        raise ValueError(f"{value!r} is a name pycni uses for its own chains")
    return value


class FirewallConf(PassThroughModel):
    name: str
    backend: Literal["", "nftables", "iptables", "firewalld"] = "nftables"
    admin_chain: str = field(pr.DEFAULT_ADMIN_CHAIN, alias="iptablesAdminChainName", check=_admin_chain)
    firewalld_zone: str = field("trusted", alias="firewalldZone")
    ingress_policy: Literal["", "open", "same-bridge", "isolated"] = field("open", alias="ingressPolicy")

    @property
    def policy(self) -> str:
        return self.ingress_policy or "open"

    @property
    def backend_name(self) -> str:
        return self.backend or "nftables"


def load_conf(args: CmdArgs, *, strict: bool = True) -> FirewallConf:
    conf = parse_config(FirewallConf, args.config)
    if strict and conf.backend == "firewalld":
        raise UnsupportedField("backend firewalld is not supported by pycni-firewall", "backend=firewalld")
    return conf


@dataclass(frozen=True)
class Target:
    """What ADD/CHECK act on, read from prevResult (pure)."""

    addresses: tuple[IPAddress, ...]
    bridge: str
    host_if: str


def target(prev: Result, policy: str) -> Target:
    """Every prevResult address (as the reference); for isolation the bridge is interfaces[0] and
    (isolated) the host-side port is the first other interface outside the sandbox."""
    addresses = tuple(dict.fromkeys(ip.address.ip for ip in prev.ips))
    if policy == "open":
        return Target(addresses, "", "")
    hint = 'chain "firewall" after "bridge"'
    if not prev.interfaces or prev.interfaces[0].sandbox or ifname_problem(prev.interfaces[0].name):
        raise InvalidConfig(f"ingressPolicy {policy} needs the bridge as prevResult interfaces[0]", hint)
    bridge = prev.interfaces[0].name
    host_if = ""
    if policy == "isolated":
        ports = [i.name for i in prev.interfaces[1:] if not i.sandbox and not ifname_problem(i.name)]
        if not ports:
            raise InvalidConfig("ingressPolicy isolated needs the host-side veth in prevResult", hint)
        host_if = ports[0]
    return Target(addresses, bridge, host_if)


# --- backends ------------------------------------------------------------------------------------------


class Backend(Protocol):
    def add(self, conf: FirewallConf, tag: str, t: Target) -> None: ...

    def remove(self, conf: FirewallConf, tag: str) -> None: ...

    def gc(self, conf: FirewallConf, keep: set[str]) -> None: ...

    def check(self, conf: FirewallConf, tag: str, t: Target) -> None: ...

    def usable(self) -> None: ...


class NftFirewall:
    """ADD, DEL and GC hold the node's firewall lock (lock.py) around list + decide + apply: the
    last DEL of a network deletes its chain and sets, and an ADD of the same network must not
    slip in between that DEL's listing and its transaction."""

    def __init__(self, runner: NftRunner | None = None, lock_path: str | None = None) -> None:
        self._nft = runner or NftRunner()
        self._lock_path = lock_path or lock.lock_path("firewall")

    def _locked(self) -> AbstractContextManager[None]:
        return lock.locked(self._lock_path, "firewall")

    def add(self, conf: FirewallConf, tag: str, t: Target) -> None:
        script = pr.render_add(
            conf.name, tag, t.addresses, admin=conf.admin_chain, policy=conf.policy, bridge=t.bridge, host_if=t.host_if
        )
        with self._locked(), lock.tables():
            self._nft.run(["-f", "-"], script, f"firewall setup for {conf.name}")

    def _remove_where(self, conf: FirewallConf, doomed: Callable[[str], bool]) -> None:
        """Under the firewall lock already. The network's last DEL/GC also removes what the
        firewall's networks shared, once none is left (render_shared_teardown), and the tables
        when nothing of any pycni part is left in them."""
        with lock.tables(exclusive=True):
            inet, bridge = self._nft.listing(FAMILY), self._nft.listing("bridge")
            plan = pr.plan_removal(conf.name, inet, bridge, doomed)
            lines = pr.render_shared_teardown(inet, bridge, plan.script.splitlines())
            lines = with_table_teardown(bridge, with_table_teardown(inet, lines, pr.T), pr.BRIDGE_T)
            if not lines:
                return
            apply_removal(
                self._nft, script_of(lines), plan.teardown or lines != plan.script.splitlines(),
                lambda: pr.render_delete(conf.name, plan.entries, plan.ports), f"firewall removal for {conf.name}",
            )

    def remove(self, conf: FirewallConf, tag: str) -> None:
        with self._locked():
            self._remove_where(conf, lambda t: t == tag)

    def gc(self, conf: FirewallConf, keep: set[str]) -> None:
        with self._locked():
            self._remove_where(conf, lambda t: t not in keep)
            # Per-bridge isolation elements are shared; drop only those naming a link that is gone.
            bridges, _ = pr.parse_isolation(self._nft.listing(FAMILY))
            if bridges:
                from .. import netlink  # only here: ADD/DEL never pay for pyroute2's import

                with netlink.Netlink() as host:
                    gone = sorted(bridges - set(host.link_names()))
                if gone:
                    self._nft.run(["-f", "-"], pr.render_bridge_delete(gone), "firewall isolation cleanup")

    def check(self, conf: FirewallConf, tag: str, t: Target) -> None:
        listing = self._nft.listing(FAMILY)
        present = pr.chains(listing)
        expected = {pr.chain_name(conf.name): 4, pr.admin_jump_chain(conf.admin_chain): 1, conf.admin_chain: 0}
        if conf.policy != "open":
            expected[pr.ISO_CHAIN] = 1
        for chain, rules in expected.items():
            if chain not in present or present[chain] < rules:
                raise CheckFailed(f"nftables chain {chain} is missing or incomplete in table {pr.T}")
        mine = {e.address for e in pr.parse_entries(conf.name, listing) if e.tag == tag}
        missing = [str(a) for a in t.addresses if a not in mine]
        if missing:
            raise CheckFailed("firewall entries missing", ", ".join(missing))
        if conf.policy == "open":
            return
        bridges, intra = pr.parse_isolation(listing)
        if t.bridge not in bridges or (t.bridge in intra) != (conf.policy == "same-bridge"):
            raise CheckFailed(f"isolation of bridge {t.bridge} ({conf.policy}) is not in place")
        if conf.policy == "isolated":
            ports = pr.parse_ports(self._nft.listing("bridge"))
            if pr.PortEntry(t.host_if, pr.port_comment(conf.name, tag)) not in ports:
                raise CheckFailed(f"isolated port {t.host_if} is missing from {pr.BRIDGE_T} {pr.ISO_PORTS}")

    def usable(self) -> None:
        script = "\n".join(pr.render_skeleton("pycni-status-probe", pr.DEFAULT_ADMIN_CHAIN)) + "\n"
        self._nft.run(["-c", "-f", "-"], script, "status probe")


def _iptables_binary(family: int) -> str:
    name = "iptables" if family == 4 else "ip6tables"
    found = shutil.which(name) or next(
        (f"{d}/{name}" for d in IPTABLES_CANDIDATES if shutil.which(f"{d}/{name}")), None
    )
    if not found:
        raise FirewallFailure(f"{name} is not usable", f"the {name} executable was not found")
    return found


class IptFirewall:
    """The reference's iptables layout (policy_render.py), through the iptables/ip6tables tools."""

    def _run(self, family: int, argv: list[str], what: str, ok_codes: tuple[int, ...] = (0,)) -> tuple[int, str]:
        exe = _iptables_binary(family)
        try:
            proc = subprocess.run([exe, "-w", "10", "-t", "filter", *argv], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.SubprocessError) as exc:
            raise FirewallFailure(f"iptables: {what} failed", str(exc)) from exc
        if proc.returncode not in ok_codes:
            raise FirewallFailure(f"iptables: {what} failed", proc.stderr.strip() or f"exit {proc.returncode}")
        return proc.returncode, proc.stdout

    def _ensure_chain(self, family: int, chain: str) -> None:
        if self._run(family, ["-n", "-L", chain], f"list chain {chain}", ok_codes=(0, 1, 2))[0] != 0:
            self._run(family, ["-N", chain], f"create chain {chain}", ok_codes=(0, 1))  # 1: a racer made it

    def _ensure(self, family: int, rule: pr.IptRule) -> None:
        if self._run(family, ["-C", rule.chain, *rule.spec], "rule lookup", ok_codes=(0, 1))[0] == 0:
            return
        verb = ["-I", rule.chain, "1"] if rule.first else ["-A", rule.chain]
        self._run(family, [*verb, *rule.spec], f"add rule to {rule.chain}")

    def _families(self, t: Target | None) -> list[int]:
        if t is not None:
            return sorted({a.version for a in t.addresses} | ({4} if t.bridge else set()))
        return [f for f in (4, 6) if self._available(f)]

    @staticmethod
    def _available(family: int) -> bool:
        try:
            _iptables_binary(family)
        except FirewallFailure:
            return False
        return True

    def add(self, conf: FirewallConf, tag: str, t: Target) -> None:
        for family in self._families(t):
            chains, rules = pr.ipt_setup(conf.admin_chain)
            if conf.policy != "open":
                iso_chains, iso_rules = pr.ipt_isolation(t.bridge, conf.policy)
                chains, rules = chains + iso_chains, rules + iso_rules
            for chain in chains:
                self._ensure_chain(family, chain)
            for rule in rules:
                self._ensure(family, rule)
            for address in t.addresses:
                if address.version == family:
                    for rule in pr.ipt_pod_rules(conf.name, tag, address):
                        self._ensure(family, rule)

    def _tagged(self, family: int, conf: FirewallConf) -> Iterator[tuple[str, tuple[str, ...]]]:
        rc, out = self._run(family, ["-S", pr.FORWARD_CHAIN], "list rules", ok_codes=(0, 1))
        if rc != 0:
            return  # no CNI-FORWARD chain: nothing of ours
        for spec in pr.parse_ipt_rules(out, pr.FORWARD_CHAIN):
            tag = pr.rule_tag(spec, conf.name)
            if tag is not None:
                yield tag, spec

    def _remove_where(self, conf: FirewallConf, doomed: Any) -> None:
        sweep = Sweep()
        for family in self._families(None):
            for tag, spec in list(self._tagged(family, conf)):
                if doomed(tag):
                    sweep.run(self._run, family, ["-D", pr.FORWARD_CHAIN, *spec], "remove rule", (0, 1))
        sweep.finish()

    def remove(self, conf: FirewallConf, tag: str) -> None:
        self._remove_where(conf, lambda t: t == tag)

    def gc(self, conf: FirewallConf, keep: set[str]) -> None:
        self._remove_where(conf, lambda t: t not in keep)

    def check(self, conf: FirewallConf, tag: str, t: Target) -> None:
        for family in self._families(t):
            _, rules = pr.ipt_setup(conf.admin_chain)
            if conf.policy != "open":
                rules = rules + pr.ipt_isolation(t.bridge, conf.policy)[1]
            for address in t.addresses:
                if address.version == family:
                    rules = rules + pr.ipt_pod_rules(conf.name, tag, address)
            for rule in rules:
                if self._run(family, ["-C", rule.chain, *rule.spec], "rule lookup", ok_codes=(0, 1, 2))[0] != 0:
                    raise CheckFailed(f"iptables rule missing in {rule.chain}", " ".join(rule.spec))

    def usable(self) -> None:
        self._run(4, ["-n", "-L", "FORWARD"], "status probe")


def backend_for(conf: FirewallConf) -> Backend:
    """The seam tests patch. firewalld never reaches here on ADD/CHECK (code 2 in load_conf)."""
    if conf.backend_name == "iptables":
        return IptFirewall()
    return NftFirewall()


# --- handlers ------------------------------------------------------------------------------------------


def _require_prev(args: CmdArgs) -> Result:
    prev = args.prev_result()
    if prev is None:
        raise InvalidConfig("firewall must be chained: prevResult is missing")
    return prev


def add(args: CmdArgs) -> Result:
    conf = load_conf(args)
    prev = _require_prev(args)
    t = target(prev, conf.policy)
    tag = attachment_tag(args.container_id, args.ifname)
    backend = backend_for(conf)
    with Undo() as undo:
        undo.push(f"firewall removal ({tag})", backend.remove, conf, tag)
        backend.add(conf, tag, t)
        undo.disarm()
    return prev


def delete(args: CmdArgs) -> None:
    """By tag: no prevResult or netns needed. firewalld never had anything (ADD refused it)."""
    conf = load_conf(args, strict=False)
    if conf.backend == "firewalld":
        return
    backend_for(conf).remove(conf, attachment_tag(args.container_id, args.ifname))


def check(args: CmdArgs) -> None:
    conf = load_conf(args)
    prev = _require_prev(args)
    backend_for(conf).check(conf, attachment_tag(args.container_id, args.ifname), target(prev, conf.policy))


def status(args: CmdArgs) -> None:
    conf = load_conf(args, strict=False)
    if conf.backend == "firewalld":
        raise PluginNotAvailable("backend firewalld is not supported by pycni-firewall")
    try:
        backend_for(conf).usable()
    except FirewallFailure as exc:
        raise PluginNotAvailable(f"the {conf.backend_name} backend is not usable", str(exc)) from exc


def gc(args: CmdArgs) -> None:
    conf = load_conf(args, strict=False)
    valid = args.valid_attachments()
    if conf.backend == "firewalld" or valid is None:
        return
    keep = {attachment_tag(cid, ifname) for cid, ifname in valid}
    backend_for(conf).gc(conf, keep)


HANDLERS = Handlers(add=add, delete=delete, check=check, status=status, gc=gc)
