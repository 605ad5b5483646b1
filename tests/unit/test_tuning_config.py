"""tuning: config merging, sysctl key resolution, allowlist, saved-state format (pure, no root)."""

from __future__ import annotations

import io
import ipaddress
import json

import pytest

from cni_plugin import entry, tuning
from cni_plugin.spec import skel
from cni_plugin.spec.errors import InvalidConfig
from cni_plugin.spec.types import Interface, IPConfig, Result


def conf(**keys):
    return tuning.parse_config(tuning.TuningConf, {"name": "net", **keys})


# --- sysctl keys ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "ifname", "path"),
    [
        ("net.core.somaxconn", "eth0", "core/somaxconn"),
        ("net.ipv4.conf.IFNAME.arp_filter", "eth0", "ipv4/conf/eth0/arp_filter"),
        # substituted after splitting: an interface name with a dot stays one component
        ("net.ipv4.conf.IFNAME.rp_filter", "eth0.100", "ipv4/conf/eth0.100/rp_filter"),
        # sysctl(8)'s slash form: dots are literal
        ("net/ipv4/conf/eth0.100/rp_filter", "eth0", "ipv4/conf/eth0.100/rp_filter"),
        ("net/ipv6/conf/IFNAME/accept_ra", "net1", "ipv6/conf/net1/accept_ra"),
    ],
)
def test_sysctl_path(key, ifname, path):
    assert tuning.sysctl_path(key, ifname) == path


@pytest.mark.parametrize(
    "key",
    [
        "kernel.hostname",
        "vm.swappiness",
        "net",
        "netx.core.somaxconn",
        "net..core",
        "net.core.",
        "net/../kernel/hostname",
        "net/core/../../kernel/hostname",
        "net/./core/somaxconn",
        "net//core",
        "/proc/sys/net/core/somaxconn",
        "",
    ],
)
def test_sysctl_outside_net_or_traversal_is_refused(key):
    with pytest.raises(InvalidConfig) as info:
        tuning.sysctl_path(key, "eth0")
    assert info.value.code == 7
    assert key in info.value.details


def test_ifname_cannot_smuggle_a_traversal():
    with pytest.raises(InvalidConfig):
        tuning.sysctl_path("net.ipv4.conf.IFNAME.x", "..")


# --- merging (reference parseConf order) -----------------------------------------------------------------


def test_args_cni_override_config():
    c = conf(
        sysctl={"net.core.somaxconn": "500", "net.ipv4.conf.IFNAME.arp_filter": "1"},
        mtu=1400, promisc=True, allmulti=False, txQLen=100,
        args={"cni": {"sysctl": {"net.core.somaxconn": "600"}, "mtu": 1300, "promisc": False,
                      "allmulti": True, "txQLen": 0}},
    )
    plan = tuning.make_plan(c, "eth0")
    assert {s.path: s.value for s in plan.sysctls} == {"core/somaxconn": "600", "ipv4/conf/eth0/arp_filter": "1"}
    assert (plan.mtu, plan.promisc, plan.allmulti, plan.txqlen) == (1300, False, True, 0)


def test_nothing_configured_touches_nothing():
    plan = tuning.make_plan(conf(), "eth0")
    assert plan.sysctls == () and not plan.touches_link
    assert tuning.make_plan(conf(txQLen=0), "eth0").touches_link  # 0 is a value, as in the reference


@pytest.mark.parametrize(
    ("keys", "cni_args_mac", "expected"),
    [
        ({"mac": "02:00:00:00:00:01"}, "", "02:00:00:00:00:01"),
        ({"mac": "02:00:00:00:00:01"}, "02:00:00:00:00:02", "02:00:00:00:00:02"),
        ({"runtimeConfig": {"mac": "02:00:00:00:00:03"}}, "02:00:00:00:00:02", "02:00:00:00:00:03"),
        ({"runtimeConfig": {"mac": "02:00:00:00:00:03"}, "args": {"cni": {"mac": "02-00-00-00-00-0A"}}},
         "02:00:00:00:00:02", "02:00:00:00:00:0a"),
    ],
)
def test_mac_precedence(keys, cni_args_mac, expected):
    assert tuning.make_plan(conf(**keys), "eth0", cni_args_mac).mac == expected


@pytest.mark.parametrize("mac", ["zz:00:00:00:00:01", "02:00:00:00:00", "03:00:00:00:00:01", "02:00-00:00:00:01"])
def test_bad_mac_is_code_7_naming_the_source(mac):
    with pytest.raises(InvalidConfig) as info:
        tuning.make_plan(conf(args={"cni": {"mac": mac}}), "eth0")
    assert "args.cni.mac" in info.value.msg


@pytest.mark.parametrize(
    ("keys", "where"),
    [({"mtu": -1}, "mtu"), ({"txQLen": -5}, "txQLen"), ({"dataDir": "relative/dir"}, "dataDir"),
     ({"promisc": "yes please"}, "promisc"), ({"args": {"cni": {"mtu": "big"}}}, "args.cni.mtu")],
)
def test_invalid_values_name_the_key(keys, where):
    with pytest.raises(InvalidConfig) as info:
        conf(**keys)
    assert where in info.value.details


def test_two_keys_naming_one_sysctl_are_refused():
    with pytest.raises(InvalidConfig):
        tuning.make_plan(conf(sysctl={"net.core.somaxconn": "1", "net/core/somaxconn": "2"}), "eth0")


def test_duplicate_keys_in_raw_json():
    raw = b'{"name": "n", "sysctl": {"net.core.somaxconn": "1", "net.core.somaxconn": "2"}, "x": {"a": 1, "a": 2}}'
    assert tuning.duplicate_sysctl_keys(raw) == ["net.core.somaxconn"]
    assert tuning.duplicate_sysctl_keys(b'{"sysctl": {"a": "1"}}') == []
    nested = b'{"args": {"cni": {"sysctl": {"k": "1", "k": "1"}}}}'
    assert tuning.duplicate_sysctl_keys(nested) == ["k"]


# --- allowlist ----------------------------------------------------------------------------------------


def test_allowlist_is_regexes_searched_in_the_key_as_written():
    patterns = tuning.parse_allowlist("  ^net\\.ipv4\\.conf\\.IFNAME\\.[a-z_]*$\n\nsomaxconn\n")
    assert len(patterns) == 2
    keys = ["net.ipv4.conf.IFNAME.arp_filter", "net.core.somaxconn", "net.ipv4.ip_forward"]
    assert tuning.disallowed(keys, patterns) == ["net.ipv4.ip_forward"]


def test_allowlist_bad_regex_names_the_line():
    with pytest.raises(InvalidConfig) as info:
        tuning.parse_allowlist("ok\n[unclosed\n", "/x/allow.conf")
    assert "/x/allow.conf" in info.value.msg and "line 2" in info.value.details


def test_allowlist_enforced_only_when_present(tmp_path):
    plan = tuning.make_plan(conf(sysctl={"net.core.somaxconn": "1"}), "eth0")
    tuning.enforce_allowlist(plan, str(tmp_path / "missing.conf"))  # no file: nothing enforced
    allow = tmp_path / "allowlist.conf"
    allow.write_text("^net\\.ipv4\\.\n")
    with pytest.raises(InvalidConfig) as info:
        tuning.enforce_allowlist(plan, str(allow))
    assert "net.core.somaxconn" in info.value.details
    allow.write_text("^net\\.core\\.somaxconn$\n")
    tuning.enforce_allowlist(plan, str(allow))


# --- saved state --------------------------------------------------------------------------------------


def test_state_file_is_reference_compatible(tmp_path):
    path = tuning.state_path(str(tmp_path / "d"), "ctr1", "eth0")
    assert path.endswith("/d/ctr1_eth0.json")
    saved = tuning.Saved(mac="02:00:00:00:00:01", mtu=1500, promisc=False, allmulti=True, txqlen=0,
                         sysctl={"ipv4/conf/eth0/arp_filter": "0"}, network="net")
    tuning.write_saved(path, saved)
    data = json.loads(open(path).read())
    # the reference's configToRestore keys, plus two pycni keys the reference ignores
    assert data == {"mac": "02:00:00:00:00:01", "mtu": 1500, "promisc": False, "allmulti": True, "txQLen": 0,
                    "pycniSysctl": {"ipv4/conf/eth0/arp_filter": "0"}, "pycniNetwork": "net"}
    assert tuning.load_saved(path) == saved
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o700
    # a file written by the reference plugin
    open(path, "w").write('{\n "mac": "02:00:00:00:00:09",\n "promisc": true\n}')
    assert tuning.load_saved(path) == tuning.Saved(mac="02:00:00:00:00:09", promisc=True)
    tuning.remove_saved(path)
    tuning.remove_saved(path)  # idempotent
    assert tuning.load_saved(path) is None


def test_second_add_keeps_first_originals():
    first = tuning.Saved(mac="02:00:00:00:00:01", sysctl={"a": "0"}, network="n")
    fresh = tuning.Saved(mac="02:00:00:00:00:99", mtu=1500, sysctl={"a": "1", "b": "7"}, network="n")
    merged = tuning._merge_existing(first, fresh)
    assert merged.mac == "02:00:00:00:00:01" and merged.mtu == 1500 and merged.sysctl == {"a": "0", "b": "7"}


def test_result_mac_updated_on_the_pod_interface_only():
    prev = Result(
        interfaces=(Interface("cni0", "02:00:00:00:00:aa"), Interface("eth0", "02:00:00:00:00:bb"),
                    Interface("eth0", "02:00:00:00:00:cc", sandbox="/run/netns/p")),
        ips=(IPConfig(ipaddress.ip_interface("10.1.0.2/24"), interface=2),),
    )
    out = tuning.with_mac(prev, "eth0", "/run/netns/p", "02:00:00:00:00:01")
    assert [i.mac for i in out.interfaces] == ["02:00:00:00:00:aa", "02:00:00:00:00:bb", "02:00:00:00:00:01"]
    assert out.ips == prev.ips


# --- through the dispatcher (no namespace needed: these fail before touching one) ---------------------------


def _dispatch(verb, config, **env):
    environ = {"CNI_COMMAND": verb, "CNI_CONTAINERID": "c1", "CNI_NETNS": "/nonexistent/netns",
               "CNI_IFNAME": "eth0", "CNI_PATH": "/bin", **env}
    out = io.StringIO()
    rc = skel.dispatch(entry.PLUGINS["tuning"], environ, io.BytesIO(json.dumps(config).encode()), out, io.StringIO())
    return rc, json.loads(out.getvalue()) if out.getvalue().strip() else None


def test_add_without_prev_result_is_code_7():
    rc, out = _dispatch("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "tuning", "mtu": 1400})
    assert rc == 1 and out["code"] == 7 and "prevResult" in out["msg"]


def test_forbidden_sysctl_is_code_7_before_anything():
    rc, out = _dispatch("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "tuning",
                                "sysctl": {"kernel.hostname": "x"}, "prevResult": {"cniVersion": "1.0.0"}})
    assert rc == 1 and out["code"] == 7 and "kernel.hostname" in out["details"]


def test_unknown_cni_args_key_is_code_4():
    rc, out = _dispatch("ADD", {"cniVersion": "1.0.0", "name": "n", "type": "tuning"}, CNI_ARGS="FOO=1")
    assert rc == 1 and out["code"] == 4


def test_del_without_state_succeeds(tmp_path):
    rc, out = _dispatch("DEL", {"cniVersion": "1.0.0", "name": "n", "type": "tuning", "dataDir": str(tmp_path)})
    assert (rc, out) == (0, None)
