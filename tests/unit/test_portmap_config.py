"""portmap config, pod-address choice, element planning and verb orchestration (no root: the nft
backend, route_localnet and conntrack seams are replaced by in-memory fakes)."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import json
from typing import Any

import pytest

from cni_plugin import entry, portmap
from cni_plugin.firewall import attachment_tag, portmap_nft
from cni_plugin.firewall import portmap_render as pr
from cni_plugin.spec import skel
from cni_plugin.spec.errors import (
    CheckFailed,
    FirewallFailure,
    HostPortTaken,
    InvalidConfig,
    NetlinkFailure,
    PluginNotAvailable,
    TryAgainLater,
    UnsupportedField,
)
from cni_plugin.spec.types import Interface, IPConfig, Result

ip = ipaddress.ip_address
iface = ipaddress.ip_interface

PREV = {
    "cniVersion": "1.1.0",
    "interfaces": [{"name": "cni0", "mac": "02:00:00:00:00:01"}, {"name": "vethab", "mac": "02:00:00:00:00:02"},
                   {"name": "eth0", "mac": "02:00:00:00:00:03", "sandbox": "/run/netns/p"}],
    "ips": [{"address": "198.18.0.5/24", "gateway": "198.18.0.1", "interface": 2},
            {"address": "fd5c::5/64", "gateway": "fd5c::1", "interface": 2}],
}


def _config(mappings: list[dict] | None = None, prev: dict | None = PREV, **keys: Any) -> dict:
    conf: dict[str, Any] = {"cniVersion": "1.1.0", "name": "net", "type": "pycni-portmap", **keys}
    if mappings is not None:
        conf["runtimeConfig"] = {"portMappings": mappings}
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def _args(verb: str, conf: dict, container_id: str = "c1") -> skel.CmdArgs:
    return skel.CmdArgs(command=verb, container_id=container_id, netns="/run/netns/p", ifname="eth0", args="",
                        path=(), stdin_data=json.dumps(conf).encode(), config=conf, cni_version="1.1.0")


def _conf(**keys: Any) -> portmap.PortMapConf:
    return portmap.load_conf(_args("ADD", _config(**keys)))


# --- config ------------------------------------------------------------------------------------------


def test_reference_defaults():
    conf = _conf()
    assert conf.snat_on and conf.snat is None
    assert not conf.masq_all and conf.mappings == []
    assert not _conf(snat=False).snat_on


@pytest.mark.parametrize("runtime", [None, {}, {"portMappings": None}, {"portMappings": []}, {"other": 1}])
def test_absent_runtime_config_means_no_mappings(runtime):
    assert portmap.load_conf(_args("ADD", {**_config(), "runtimeConfig": runtime})).mappings == []


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"markMasqBit": 32}, "markMasqBit"),
        ({"markMasqBit": -1}, "markMasqBit"),
        ({"markMasqBit": 13, "externalSetMarkChain": "KUBE-MARK-MASQ"}, "externalSetMarkChain"),
        ({"backend": "ebpf"}, "backend"),
        ({"snat": "maybe"}, "snat"),
        ({"mappings": [{"hostPort": 0, "containerPort": 80}]}, "portMappings.0.hostPort"),
        ({"mappings": [{"hostPort": 65536, "containerPort": 80}]}, "portMappings.0.hostPort"),
        ({"mappings": [{"hostPort": 80, "containerPort": 0}]}, "portMappings.0.containerPort"),
        ({"mappings": [{"hostPort": 80}]}, "portMappings.0.containerPort"),
        ({"mappings": [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]}, "protocol"),
        ({"mappings": [{"hostPort": 80, "containerPort": 80, "hostIP": "node1"}]}, "hostIP"),
    ],
)
def test_bad_values_are_code_7_naming_the_key(keys, named):
    with pytest.raises(InvalidConfig) as info:
        _conf(**keys)
    assert named in info.value.details


def test_accepted_no_op_keys():
    conf = _conf(markMasqBit=14, backend="nftables", conditionsV4=[], conditionsV6=None)
    assert conf.mark_masq_bit == 14
    assert _conf(externalSetMarkChain="KUBE-MARK-MASQ").external_set_mark_chain == "KUBE-MARK-MASQ"


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"backend": "iptables"}, "backend"),
        ({"conditionsV4": ["!", "-d", "192.0.2.0/24"]}, "conditionsV4"),
        ({"conditionsV6": ["ip6 saddr != fc00::/7"]}, "conditionsV6"),
    ],
)
def test_behaviour_changing_keys_are_code_2_on_add_but_not_on_del(keys, named):
    with pytest.raises(UnsupportedField) as info:
        _conf(**keys)
    assert named in info.value.msg


@pytest.mark.parametrize(
    "keys",
    [{"backend": "iptables"}, {"markMasqBit": 99}, {"snat": "maybe"}, {"runtimeConfig": {"portMappings": "junk"}},
     {"runtimeConfig": {"portMappings": [{"hostPort": -1}]}}],
)
def test_del_gc_status_never_fail_on_config_that_add_refuses(fake, keys):
    portmap.add(_args("ADD", _config(WEB)))
    conf = {**_config(prev=None), **keys}
    portmap.delete(_args("DEL", {**conf, "runtimeConfig": {"portMappings": WEB}} if "runtimeConfig" not in keys
                         else conf))
    assert fake.state == pr.Entries()
    portmap.gc(_args("GC", conf))
    portmap.status(_args("STATUS", conf))


def test_mapping_keys_match_case_insensitively_like_go_json():
    # containerd's go-cni marshals its PortMapping struct without JSON tags.
    conf = _conf(mappings=[{"HostPort": 8080, "ContainerPort": 80, "Protocol": "TCP", "HostIP": ""},
                           {"hostport": 53, "CONTAINERPORT": 53, "protocol": "udp"}])
    assert [(m.host_port, m.container_port, m.protocol) for m in conf.mappings] == [(8080, 80, "tcp"), (53, 53, "udp")]
    exact_wins = _conf(mappings=[{"hostPort": 1, "HostPort": 2, "containerPort": 3}])
    assert exact_wins.mappings[0].host_port == 1


def test_protocol_is_normalised():
    conf = _conf(mappings=[{"hostPort": 1, "containerPort": 2, "protocol": "UDP"},
                           {"hostPort": 3, "containerPort": 4, "protocol": ""},
                           {"hostPort": 5, "containerPort": 6}])
    assert [m.protocol for m in conf.mappings] == ["udp", "tcp", "tcp"]


# --- pod addresses -----------------------------------------------------------------------------------


def test_pod_addresses_are_the_first_per_family_on_the_sandbox_interface():
    prev = Result(
        interfaces=(Interface("cni0"), Interface("eth0", sandbox="/p"), Interface("net1", sandbox="/p")),
        ips=(IPConfig(iface("10.0.0.1/24"), interface=0),   # host side: skipped
             IPConfig(iface("10.1.0.5/24"), interface=2),   # another pod interface: skipped
             IPConfig(iface("10.2.0.5/24"), interface=1),
             IPConfig(iface("10.2.0.6/24"), interface=1),   # second of the family: skipped
             IPConfig(iface("fd00::5/64"))),                # no interface index: counts
    )
    assert portmap.pod_addresses(prev, "eth0") == {4: iface("10.2.0.5/24"), 6: iface("fd00::5/64")}
    assert portmap.pod_addresses(prev, "net1") == {4: iface("10.1.0.5/24"), 6: iface("fd00::5/64")}


# --- planning ------------------------------------------------------------------------------------------

PODS = {4: iface("198.18.0.5/24"), 6: iface("fd5c::5/64")}
C = pr.portmap_comment("net", attachment_tag("c1", "eth0"))


def _plan(mappings: list[dict], pods: dict = PODS, **keys: Any) -> pr.Entries:
    return portmap.plan_entries(_conf(mappings=mappings, **keys), pods, C)


def _keys(entries: pr.Entries) -> list[str]:
    return [f"{e.map_name} {e.key_text()} -> {e.pod_ip} . {e.container_port}" for e in entries.ports]


@pytest.mark.parametrize(
    ("host_ip", "expected"),
    [
        ("", ["hostports4 tcp . 80 -> 198.18.0.5 . 8080", "hostports6 tcp . 80 -> fd5c::5 . 8080"]),
        ("0.0.0.0", ["hostports4 tcp . 80 -> 198.18.0.5 . 8080"]),
        ("::", ["hostports6 tcp . 80 -> fd5c::5 . 8080"]),
        ("192.0.2.1", ["hostipports4 192.0.2.1 . tcp . 80 -> 198.18.0.5 . 8080"]),
        ("2001:db8::1", ["hostipports6 2001:db8::1 . tcp . 80 -> fd5c::5 . 8080"]),
    ],
)
def test_host_ip_selects_family_and_map(host_ip, expected):
    assert _keys(_plan([{"hostPort": 80, "containerPort": 8080, "hostIP": host_ip}])) == expected


def test_masquerade_covers_subnet_and_ipv4_localhost():
    entries = _plan([{"hostPort": 80, "containerPort": 8080}])
    assert [m.key_text() for m in entries.masq] == [
        "198.18.0.0/24 . 198.18.0.5", "127.0.0.1 . 198.18.0.5", "fd5c::/64 . fd5c::5",
    ]
    assert {m.comment for m in entries.masq} == {C}


def test_masq_all_and_snat_off():
    assert [m.key_text() for m in _plan([{"hostPort": 80, "containerPort": 1}], masqAll=True).masq] == [
        "0.0.0.0/0 . 198.18.0.5", "::/0 . fd5c::5",
    ]
    assert _plan([{"hostPort": 80, "containerPort": 1}], snat=False).masq == ()


def test_masquerade_only_for_families_with_a_mapping():
    entries = _plan([{"hostPort": 80, "containerPort": 1, "hostIP": "192.0.2.1"}])
    assert {m.family for m in entries.masq} == {4}


def test_a_mapping_that_fits_no_pod_address_is_code_7():
    with pytest.raises(InvalidConfig) as info:
        _plan([{"hostPort": 80, "containerPort": 1, "hostIP": "2001:db8::1"}], pods={4: PODS[4]})
    assert "80" in info.value.details and "IPv4" in info.value.details
    with pytest.raises(InvalidConfig):
        _plan([{"hostPort": 80, "containerPort": 1}], pods={})


def test_identical_duplicates_collapse_but_contradictions_are_code_7():
    same = {"hostPort": 80, "containerPort": 1, "hostIP": "0.0.0.0"}
    assert len(_plan([same, same]).ports) == 1
    with pytest.raises(InvalidConfig, match="same host port"):
        _plan([same, {**same, "containerPort": 2}])
    with pytest.raises(InvalidConfig, match="same host port"):
        _plan([same, {**same, "hostIP": "192.0.2.1"}])
    assert len(_plan([same, {**same, "protocol": "udp"}]).ports) == 2


# --- verbs with an in-memory backend ------------------------------------------------------------------


class FakePortmap:
    """NftPortmap's contract over a list of elements, with the same conflict rules (plan_add)."""

    def __init__(self) -> None:
        self.state = pr.Entries()
        self.broken = False
        self.calls: list[str] = []

    def _check(self) -> None:
        if self.broken:
            raise FirewallFailure("nftables: fake failure", "broken on purpose")

    def entries(self) -> pr.Entries:
        self._check()
        return self.state

    def chains(self) -> set[str]:
        return set(pr.CHAINS) if self.state else set()

    def locked(self):
        return contextlib.nullcontext()

    def add(self, wanted: pr.Entries, *, held: bool = False) -> list:
        self._check()
        self.calls.append("add")
        plan = pr.plan_add(wanted, self.state)
        if plan.conflicts:
            return list(plan.conflicts)
        comments = {e.comment for e in wanted.ports}
        pod_ips = {m.pod_ip for m in wanted.masq}
        self.state = pr.Entries(
            ports=tuple(e for e in self.state.ports if e.comment not in comments) + wanted.ports,
            masq=tuple(e for e in self.state.masq if e.comment not in comments and e.pod_ip not in pod_ips)
            + wanted.masq,
        )
        return []

    def _drop(self, doomed: pr.Entries) -> pr.Entries:
        self.state = pr.Entries(ports=tuple(e for e in self.state.ports if e not in doomed.ports),
                                masq=tuple(e for e in self.state.masq if e not in doomed.masq))
        return doomed

    def remove(self, comment: str, *, held: bool = False) -> pr.Entries:
        self._check()
        return self._drop(self.state.with_comment(comment))

    def gc(self, network: str, keep: set[str]) -> pr.Entries:
        self._check()
        mine = self.state.of_network(network)
        return self._drop(pr.Entries(ports=tuple(e for e in mine.ports if e.comment not in keep),
                                     masq=tuple(e for e in mine.masq if e.comment not in keep)))

    def usable(self) -> None:
        self._check()


@pytest.fixture
def fake(monkeypatch):
    backend = FakePortmap()
    flushed: list[tuple] = []
    monkeypatch.setattr(portmap, "backend", lambda: backend)
    monkeypatch.setattr(portmap, "_route_localnet", lambda prev, pod: backend.calls.append(f"localnet {pod.ip}"))
    monkeypatch.setattr(portmap, "flush_conntrack", lambda *a: flushed.append(a) or 0)
    backend.flushed = flushed  # type: ignore[attr-defined]
    return backend


WEB = [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
       {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.1"}]


def test_add_requires_prev_result(fake):
    with pytest.raises(InvalidConfig, match="chained"):
        portmap.add(_args("ADD", _config(WEB, prev=None)))
    assert fake.calls == []


def test_add_without_mappings_touches_nothing(fake, monkeypatch):
    monkeypatch.setattr(portmap, "backend", lambda: pytest.fail("no nft without mappings"))
    result = portmap.add(_args("ADD", _config([])))
    assert result == skel.CmdArgs.prev_result(_args("ADD", _config([])))


def test_add_installs_elements_flushes_udp_and_passes_prev_through(fake):
    args = _args("ADD", _config(WEB))
    assert portmap.add(args) == args.prev_result()
    assert len(fake.state.ports) == 3 and len(fake.state.masq) == 3
    assert fake.calls == ["localnet 198.18.0.5", "add"]
    assert fake.flushed == [(4, "udp", 5353, "192.0.2.1")]
    portmap.check(_args("CHECK", _config(WEB)))


def test_conntrack_failure_is_only_a_warning(fake, monkeypatch, capsys):
    def broken(*a):
        raise NetlinkFailure("netlink: conntrack flush failed", "EPERM")

    monkeypatch.setattr(portmap, "flush_conntrack", broken)
    portmap.add(_args("ADD", _config(WEB)))
    assert "not deleted" in capsys.readouterr().err
    assert len(fake.state.ports) == 3


def test_an_unexpected_failure_after_the_transaction_rolls_it_back(fake, monkeypatch):
    def bug(*a):
        raise RuntimeError("injected")

    monkeypatch.setattr(portmap, "flush_conntrack", bug)
    with pytest.raises(RuntimeError):
        portmap.add(_args("ADD", _config(WEB)))
    assert fake.state == pr.Entries()


def test_a_taken_host_port_is_code_101_and_changes_nothing(fake):
    portmap.add(_args("ADD", _config(WEB)))
    before = fake.state
    other = [{"hostPort": 9000, "containerPort": 1}, {"hostPort": 8080, "containerPort": 80, "hostIP": "198.18.9.9"}]
    with pytest.raises(HostPortTaken) as info:
        portmap.add(_args("ADD", _config(other), container_id="c2"))
    assert "tcp/8080" in info.value.msg and "already mapped" in info.value.msg
    assert "198.18.0.5" in info.value.details
    assert fake.state == before


def test_repeated_add_of_the_same_attachment_is_not_a_conflict(fake):
    portmap.add(_args("ADD", _config(WEB)))
    portmap.add(_args("ADD", _config(WEB)))
    assert len(fake.state.ports) == 3


def test_del_removes_only_its_own_without_prev_result(fake):
    portmap.add(_args("ADD", _config(WEB)))
    theirs = [{"hostPort": 9000, "containerPort": 1}]
    prev2 = json.loads(json.dumps(PREV))
    prev2["ips"] = [{"address": "198.18.0.6/24", "interface": 2}]
    portmap.add(_args("ADD", _config(theirs, prev=prev2), container_id="c2"))
    portmap.delete(_args("DEL", _config(WEB, prev=None)))
    portmap.delete(_args("DEL", _config(WEB, prev=None)))
    assert {e.host_port for e in fake.state.ports} == {9000}
    assert {m.pod_ip for m in fake.state.masq} == {ip("198.18.0.6")}


def test_del_with_broken_nft_fails_only_when_mappings_were_asked(fake):
    fake.broken = True
    portmap.delete(_args("DEL", _config([], prev=None)))
    with pytest.raises(FirewallFailure):
        portmap.delete(_args("DEL", _config(WEB, prev=None)))


def test_check(fake):
    with pytest.raises(InvalidConfig):
        portmap.check(_args("CHECK", _config(WEB, prev=None)))
    with pytest.raises(CheckFailed, match="chains"):
        portmap.check(_args("CHECK", _config(WEB)))
    portmap.add(_args("ADD", _config(WEB)))
    portmap.check(_args("CHECK", _config(WEB)))
    portmap.check(_args("CHECK", _config([])))
    fake.state = pr.Entries(ports=fake.state.ports[1:], masq=fake.state.masq)
    with pytest.raises(CheckFailed, match="missing"):
        portmap.check(_args("CHECK", _config(WEB)))
    portmap.add(_args("ADD", _config(WEB)))
    fake.state = pr.Entries(ports=fake.state.ports, masq=fake.state.masq[1:])
    with pytest.raises(CheckFailed, match="masquerade"):
        portmap.check(_args("CHECK", _config(WEB)))


@pytest.mark.parametrize("key", ["cni.dev/valid-attachments", "cni.dev/attachments"])
def test_gc_keeps_listed_attachments_of_its_network_only(fake, key):
    portmap.add(_args("ADD", _config(WEB)))
    prev2 = json.loads(json.dumps(PREV))
    prev2["ips"] = [{"address": "198.18.0.6/24", "interface": 2}]
    portmap.add(_args("ADD", _config([{"hostPort": 9000, "containerPort": 1}], prev=prev2), container_id="c2"))
    other_net = {**_config([{"hostPort": 9001, "containerPort": 1}], prev=prev2), "name": "other"}
    portmap.add(_args("ADD", other_net, container_id="c3"))
    gc_conf = {"cniVersion": "1.1.0", "name": "net", "type": "pycni-portmap",
               key: [{"containerID": "c1", "ifname": "eth0"}]}
    portmap.gc(_args("GC", gc_conf))
    assert sorted(e.host_port for e in fake.state.ports) == [5353, 8080, 8080, 9001]  # 8080: IPv4 and IPv6


def test_status(fake):
    portmap.status(_args("STATUS", _config(prev=None)))
    fake.broken = True
    with pytest.raises(PluginNotAvailable):
        portmap.status(_args("STATUS", _config(prev=None)))


def test_dispatch_prints_prev_result_unchanged_and_errors_with_codes(fake):
    def run(conf: dict) -> dict:
        out = io.StringIO()
        env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c1", "CNI_NETNS": "/run/netns/p", "CNI_IFNAME": "eth0",
               "CNI_PATH": "/x"}
        skel.dispatch(entry.PLUGINS["portmap"], env, io.BytesIO(json.dumps(conf).encode()), out, io.StringIO())
        return json.loads(out.getvalue())

    assert run(_config(WEB)) == PREV
    assert run(_config(WEB, prev=None))["code"] == 7
    assert run(_config(WEB, backend="iptables"))["code"] == 2
    assert run(_config(WEB, prev=PREV, conditionsV4=["-s", "x"]))["code"] == 2


def test_a_busy_lock_is_try_again_later(tmp_path):
    path = str(tmp_path / "sub" / "portmap.lock")
    with portmap_nft.locked(path):
        with pytest.raises(TryAgainLater):
            with portmap_nft.locked(path, timeout=0.05):
                pass
    with portmap_nft.locked(path, timeout=0.05):
        pass  # released with the first holder


def test_route_localnet_is_kept_only_for_another_attachment_behind_that_interface():
    change = portmap.LocalnetChange(key="ipv4/conf/cni0/route_localnet", before="0",
                                    routes=(ipaddress.ip_network("198.18.0.0/24"),))
    loop = ipaddress.ip_network("127.0.0.1/32")

    def hairpin(source, pod, comment):
        return pr.HairpinEntry(family=4, source=source, pod_ip=ipaddress.ip_address(pod), comment=comment)

    ours, other = "n-ours", "n-other"
    assert not portmap.localnet_needed_by_others(change, pr.Entries(), ours)
    assert not portmap.localnet_needed_by_others(  # our own entries, or another's not from 127.0.0.1
        change, pr.Entries(masq=(hairpin(loop, "198.18.0.5", ours),
                                 hairpin(ipaddress.ip_network("198.18.0.0/24"), "198.18.0.6", other))), ours)
    assert not portmap.localnet_needed_by_others(  # another's, but behind another interface
        change, pr.Entries(masq=(hairpin(loop, "198.19.0.6", other),)), ours)
    assert portmap.localnet_needed_by_others(change, pr.Entries(masq=(hairpin(loop, "198.18.0.6", other),)), ours)
