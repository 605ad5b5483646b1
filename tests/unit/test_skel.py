"""cni_plugin.spec.skel: every path of the dispatcher, driven in-process.

dispatch() takes environ and the three streams as parameters, so each test hands it a dict and
BytesIO/StringIO objects and a fake plugin whose handlers record their calls or raise. Every run
goes through `run()`, which also checks the invariant that matters most to a runtime: stdout is
empty or holds exactly one JSON document.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from ipaddress import ip_interface as cidr
from ipaddress import ip_network as net
from pathlib import Path
from typing import Any

import pytest

from cni_plugin.spec import errors, skel
from cni_plugin.spec.convert import result_to_wire
from cni_plugin.spec.types import DNS, Interface, IPConfig, Result, Route
from cni_plugin.spec.version import ALL_VERSIONS, LATEST

# --- the fake plugin and the runner ------------------------------------------------------------------

VERBS_WITH_HANDLERS = ("ADD", "DEL", "CHECK", "STATUS", "GC")

RESULT = Result(
    interfaces=(Interface(name="eth0", mac="0a:58:0a:01:02:05", sandbox="/var/run/netns/pod-1"),),
    ips=(
        IPConfig(address=cidr("10.1.2.5/24"), interface=0),
        IPConfig(address=cidr("fd00:1::5/64"), interface=0),
    ),
    routes=(Route(dst=net("0.0.0.0/0")),),
    dns=DNS(nameservers=("10.1.2.1",)),
)


@dataclass
class FakePlugin:
    """A plugin whose handlers record each call and return or raise `outcome[verb]`.

    A handler in `behaviour` runs instead (it gets the CmdArgs), for tests that need the handler
    to use CmdArgs itself.
    """

    versions: tuple[str, ...] = ALL_VERSIONS
    outcome: dict[str, Any] = field(default_factory=dict)
    behaviour: dict[str, Callable[[skel.CmdArgs], Any]] = field(default_factory=dict)
    calls: list[tuple[str, skel.CmdArgs]] = field(default_factory=list)
    loads: int = 0

    def _handler(self, verb: str) -> Callable[[skel.CmdArgs], Any]:
        def handle(args: skel.CmdArgs) -> Any:
            self.calls.append((verb, args))
            if verb in self.behaviour:
                return self.behaviour[verb](args)
            outcome = self.outcome.get(verb, RESULT if verb == "ADD" else None)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return handle

    def load(self) -> skel.Handlers:
        self.loads += 1
        add, delete, check, status, gc = (self._handler(v) for v in VERBS_WITH_HANDLERS)
        return skel.Handlers(add=add, delete=delete, check=check, status=status, gc=gc)

    @property
    def plugin(self) -> skel.Plugin:
        return skel.Plugin(name="fake", about="a test double", load_handlers=self.load, versions=self.versions)

    @property
    def args(self) -> skel.CmdArgs:
        """The CmdArgs of the one handler call this run made."""
        assert len(self.calls) == 1, self.calls
        return self.calls[0][1]


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def reply(self) -> dict[str, Any]:
        return json.loads(self.stdout)

    def error(self, code: int) -> dict[str, Any]:
        """The error reply, checked to carry `code` and the spec's keys."""
        assert self.code == 1, self
        assert self.reply["code"] == code, self.reply
        assert isinstance(self.reply["cniVersion"], str) and isinstance(self.reply["msg"], str)
        return self.reply


def assert_at_most_one_json_document(text: str) -> None:
    if not text.strip():
        return
    decoder = json.JSONDecoder()
    start = len(text) - len(text.lstrip())
    document, end = decoder.raw_decode(text, start)
    assert isinstance(document, dict)
    assert not text[end:].strip(), f"stdout holds more than one document: {text!r}"


ENV = {
    "CNI_CONTAINERID": "ctr-1",
    "CNI_NETNS": "/var/run/netns/pod-1",  # never opened by skel; only compared to its own netns
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin:/usr/lib/cni",
}


def config(version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "pod-net", "type": "fake", **extra}


def run(
    fake: FakePlugin,
    verb: str | None,
    conf: dict[str, Any] | bytes | None = None,
    stdin: io.BytesIO | None = None,
    drop: tuple[str, ...] = (),
    **env: str,
) -> Run:
    """Dispatch `verb` with the full valid ENV, minus `drop`, plus `env`, and `conf` on stdin."""
    environ = {k: v for k, v in ENV.items() if k not in drop}
    if verb is not None:
        environ["CNI_COMMAND"] = verb
    environ.update(env)
    if stdin is None:
        data = conf if isinstance(conf, bytes) else json.dumps(config() if conf is None else conf).encode()
        stdin = io.BytesIO(data)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = skel.dispatch(fake.plugin, environ, stdin, stdout, stderr)
    assert code in (0, 1)
    assert_at_most_one_json_document(stdout.getvalue())
    if code == 1:
        assert stdout.getvalue().strip(), "an error exit must print the error"
    return Run(code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def fake() -> FakePlugin:
    return FakePlugin()


# --- no command, unknown command -------------------------------------------------------------------


@pytest.mark.parametrize("verb", [None, ""])
def test_no_command_prints_about_on_stderr_and_exits_0(fake: FakePlugin, verb: str | None) -> None:
    result = run(fake, verb)
    assert (result.code, result.stdout) == (0, "")
    assert "fake" in result.stderr and "a test double" in result.stderr
    assert ", ".join(ALL_VERSIONS) in result.stderr
    assert fake.loads == 0


@pytest.mark.parametrize("verb", ["add", "FOO", "ADD ", "DELETE"])
def test_unknown_command_is_code_4(fake: FakePlugin, verb: str) -> None:
    reply = run(fake, verb).error(4)
    assert repr(verb) in reply["msg"]
    assert reply["cniVersion"] == LATEST
    assert fake.loads == 0


# --- environment per verb --------------------------------------------------------------------------

# SPEC §2 / pkg/skel: the variables each verb needs besides CNI_COMMAND (DEL: CNI_NETNS optional).
REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
}


def config_allowing(verb: str) -> dict[str, Any]:
    return config("1.1.0" if verb in ("GC", "STATUS") else "1.0.0")


@pytest.mark.parametrize("verb", REQUIRED)
def test_all_missing_variables_are_named_in_one_code_4_error(fake: FakePlugin, verb: str) -> None:
    reply = run(fake, verb, config_allowing(verb), drop=tuple(ENV)).error(4)
    for name in REQUIRED[verb]:
        assert f"{name} is missing" in reply["details"]
    for name in set(ENV) - set(REQUIRED[verb]):
        assert name not in reply["details"]
    assert fake.loads == 0


@pytest.mark.parametrize(("verb", "name"), [(v, n) for v, names in REQUIRED.items() for n in names])
@pytest.mark.parametrize("how", ["unset", "empty"])
def test_each_required_variable_is_checked(fake: FakePlugin, verb: str, name: str, how: str) -> None:
    result = run(fake, verb, config_allowing(verb), drop=(name,)) if how == "unset" else run(
        fake, verb, config_allowing(verb), **{name: ""}
    )
    assert result.error(4)["details"] == f"{name} is missing"


@pytest.mark.parametrize("verb", REQUIRED)
def test_a_verb_runs_with_only_its_required_variables(fake: FakePlugin, verb: str) -> None:
    result = run(fake, verb, config_allowing(verb), drop=tuple(set(ENV) - set(REQUIRED[verb])))
    assert result.code == 0, result
    assert fake.calls[0][0] == verb


def test_del_without_netns_reaches_the_handler_with_an_empty_netns(fake: FakePlugin) -> None:
    assert run(fake, "DEL", drop=("CNI_NETNS",)).code == 0
    assert fake.args.netns == ""


@pytest.mark.parametrize("verb", ["ADD", "CHECK", "DEL"])
@pytest.mark.parametrize("container_id", ["-ctr", ".ctr", "_ctr", "ctr/1", "ctr 1", "ctr:1", "ctr\n", "ctr\t1", "ctré"])
def test_invalid_container_id_is_code_4(fake: FakePlugin, verb: str, container_id: str) -> None:
    reply = run(fake, verb, CNI_CONTAINERID=container_id).error(4)
    assert "CNI_CONTAINERID" in reply["details"] and repr(container_id) in reply["details"]


@pytest.mark.parametrize("container_id", ["c", "0", "A-1_2.3", "9f86d081884c7d659a2feaa0c55ad015" * 2])
def test_valid_container_ids(fake: FakePlugin, container_id: str) -> None:
    assert run(fake, "ADD", CNI_CONTAINERID=container_id).code == 0
    assert fake.args.container_id == container_id


@pytest.mark.parametrize("verb", ["ADD", "CHECK", "DEL"])
@pytest.mark.parametrize(
    "ifname",
    [
        "a" * 16,
        "é" * 8,  # 8 characters but 16 bytes: IFNAMSIZ counts bytes
        ".",
        "..",
        "eth/0",
        "eth:0",
        "eth 0",
        "eth\t0",
        "eth0\n",
        "\u00a0eth0",  # no-break space
    ],
)
def test_invalid_ifname_is_code_4(fake: FakePlugin, verb: str, ifname: str) -> None:
    reply = run(fake, verb, CNI_IFNAME=ifname).error(4)
    assert "CNI_IFNAME" in reply["details"] and repr(ifname) in reply["details"]


@pytest.mark.parametrize("ifname", ["a" * 15, "é" * 7, "eth0", "net1.100", "...", "lo"])
def test_valid_ifnames(fake: FakePlugin, ifname: str) -> None:
    assert run(fake, "ADD", CNI_IFNAME=ifname).code == 0
    assert fake.args.ifname == ifname


def test_missing_and_invalid_variables_come_in_one_error(fake: FakePlugin) -> None:
    reply = run(fake, "ADD", drop=("CNI_PATH",), CNI_CONTAINERID="bad id", CNI_IFNAME="..").error(4)
    details = reply["details"]
    assert "CNI_PATH is missing" in details and "'bad id'" in details and "'..'" in details


@pytest.mark.parametrize(("verb", "version"), [("VERSION", "1.0.0"), ("GC", "1.1.0"), ("STATUS", "1.1.0")])
def test_verbs_that_do_not_use_container_id_or_ifname_ignore_their_values(
    fake: FakePlugin, verb: str, version: str
) -> None:
    # As pkg/skel: runtimes may pass whatever they hold; only the verbs that use them validate them.
    assert run(fake, verb, config(version), CNI_CONTAINERID="not valid", CNI_IFNAME="not/valid").code == 0


# --- the configuration on stdin ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"{", b"{'cniVersion': '1.0.0'}", b"\xff\xfe", b'{"name": "x"} trailing'])
def test_malformed_json_is_code_6(fake: FakePlugin, data: bytes) -> None:
    reply = run(fake, "ADD", data).error(6)
    assert reply["cniVersion"] == LATEST
    assert fake.loads == 0


@pytest.mark.parametrize("data", [b"[]", b'"conf"', b"1", b"null", b"true"])
def test_json_that_is_not_an_object_is_code_6(fake: FakePlugin, data: bytes) -> None:
    run(fake, "ADD", data).error(6)
    assert fake.loads == 0


class BrokenStdin(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise OSError(5, "Input/output error")


def test_unreadable_stdin_is_code_5(fake: FakePlugin) -> None:
    run(fake, "ADD", stdin=BrokenStdin()).error(5)


@pytest.mark.parametrize("version", ["0.5.0", "2.0.0", "1.0", "v1.0.0", "latest"])
def test_unknown_cni_version_is_code_1_and_the_reply_still_has_a_version(fake: FakePlugin, version: str) -> None:
    reply = run(fake, "ADD", config(version)).error(1)
    assert reply["cniVersion"] == LATEST
    assert fake.loads == 0


@pytest.mark.parametrize("version", [1.0, 1, ["1.0.0"], {"v": "1.0.0"}, None])
def test_non_string_cni_version_is_code_1(fake: FakePlugin, version: Any) -> None:
    reply = run(fake, "ADD", config(version)).error(1)
    assert reply["cniVersion"] == LATEST


def test_version_the_plugin_does_not_list_is_code_1_naming_what_it_supports(fake: FakePlugin) -> None:
    fake.versions = ("0.3.1", "1.0.0")
    reply = run(fake, "ADD", config("0.4.0")).error(1)
    assert "0.3.1, 1.0.0" in reply["details"]


def test_config_without_cni_version_is_0_1_0(fake: FakePlugin) -> None:
    conf = config()
    del conf["cniVersion"]
    result = run(fake, "ADD", conf)
    assert fake.args.cni_version == "0.1.0"
    assert result.reply == result_to_wire(RESULT, "0.1.0")


# (verb, the first version that allows it): CHECK since 0.4.0, STATUS and GC since 1.1.0.
VERB_MINIMUM = {"CHECK": "0.4.0", "STATUS": "1.1.0", "GC": "1.1.0", "ADD": "0.1.0", "DEL": "0.1.0"}


@pytest.mark.parametrize("verb", VERB_MINIMUM)
@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_verbs_need_their_minimum_version(fake: FakePlugin, verb: str, version: str) -> None:
    result = run(fake, verb, config(version))
    if ALL_VERSIONS.index(version) >= ALL_VERSIONS.index(VERB_MINIMUM[verb]):
        assert result.code == 0, result
        assert [v for v, _ in fake.calls] == [verb]
        return
    reply = result.error(1)
    assert reply["cniVersion"] == version
    assert verb in reply["msg"]
    assert fake.calls == []


@pytest.mark.parametrize("name", [None, "", 7, ["pod-net"], "pod net", "-pod", "pod/net", "pod-net\n", "pöd"])
def test_missing_or_invalid_network_name_is_code_7(fake: FakePlugin, name: Any) -> None:
    conf = config()
    if name is None:
        del conf["name"]
    else:
        conf["name"] = name
    reply = run(fake, "ADD", conf).error(7)
    assert "name" in reply["details"]
    assert reply["cniVersion"] == "1.0.0"
    assert fake.loads == 0


def test_unknown_config_keys_pass_through_to_the_handler(fake: FakePlugin) -> None:
    conf = config(bridge="cni0", ipam={"type": "host-local"}, **{"cni.dev/x": 1})
    run(fake, "ADD", conf)
    assert fake.args.config == conf
    assert fake.args.network_name == "pod-net"


# --- VERSION -----------------------------------------------------------------------------------------


class TerminalStdin(io.BytesIO):
    def isatty(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        raise AssertionError("VERSION must not read from a terminal")


def _refuse_to_load() -> skel.Handlers:
    raise AssertionError("VERSION must not load the handlers")


@pytest.mark.parametrize(
    ("stdin", "echoed"),
    [
        (io.BytesIO(b'{"cniVersion": "0.4.0"}'), "0.4.0"),
        (io.BytesIO(b'{"cniVersion": "0.4.0", "name": "bad name!", "type": "x"}'), "0.4.0"),
        (io.BytesIO(b""), LATEST),  # no terminal and nothing written: an empty pipe
        (io.BytesIO(b"not json"), LATEST),
        (io.BytesIO(b'{"cniVersion": 4}'), LATEST),
        (TerminalStdin(), LATEST),
        (BrokenStdin(), LATEST),
    ],
    ids=["config", "config-with-bad-name", "empty", "garbage", "non-string-version", "terminal", "unreadable"],
)
def test_version_answers_whatever_stdin_holds(stdin: io.BytesIO, echoed: str) -> None:
    fake = FakePlugin(versions=("0.3.1", "0.4.0", "1.0.0"))
    plugin = skel.Plugin(name="fake", about="", load_handlers=_refuse_to_load, versions=fake.versions)
    stdout, stderr = io.StringIO(), io.StringIO()
    code = skel.dispatch(plugin, {"CNI_COMMAND": "VERSION"}, stdin, stdout, stderr)
    assert code == 0
    assert json.loads(stdout.getvalue()) == {"cniVersion": echoed, "supportedVersions": ["0.3.1", "0.4.0", "1.0.0"]}
    assert stderr.getvalue() == ""


def test_version_never_loads_the_handlers(fake: FakePlugin) -> None:
    assert run(fake, "VERSION", config("0.3.1")).reply["supportedVersions"] == list(ALL_VERSIONS)
    assert fake.loads == 0


# --- handler outcomes --------------------------------------------------------------------------------

ERROR_CLASSES = sorted(
    (c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.CNIError)),
    key=lambda c: c.code,
)


def test_error_tree_codes_are_distinct() -> None:
    codes = [c.code for c in ERROR_CLASSES if c is not errors.CNIError]
    assert len(codes) == len(set(codes))
    assert {1, 2, 3, 4, 5, 6, 7, 8, 11, 50, 51, 999} <= set(codes)


@pytest.mark.parametrize("error_class", ERROR_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("verb", VERBS_WITH_HANDLERS)
def test_handler_cni_error_is_printed_with_the_config_version(
    fake: FakePlugin, error_class: type[errors.CNIError], verb: str
) -> None:
    fake.outcome[verb] = error_class("it went wrong", "because of x")
    result = run(fake, verb, config("1.1.0"))
    expected = {"cniVersion": "1.1.0", "code": error_class.code, "msg": "it went wrong", "details": "because of x"}
    assert result.reply == expected
    assert result.code == 1
    assert result.stderr == ""


def test_error_without_details_leaves_the_key_out(fake: FakePlugin) -> None:
    fake.outcome["DEL"] = errors.TryAgainLater("locked")
    assert run(fake, "DEL", config("0.4.0")).reply == {"cniVersion": "0.4.0", "code": 11, "msg": "locked"}


@pytest.mark.parametrize("verb", VERBS_WITH_HANDLERS)
def test_unexpected_exception_is_999_with_the_traceback_on_stderr(fake: FakePlugin, verb: str) -> None:
    fake.outcome[verb] = KeyError("the-missing-key")
    result = run(fake, verb, config("1.1.0"))
    reply = result.error(999)
    assert reply["cniVersion"] == "1.1.0"
    assert "KeyError" in reply["msg"] and "the-missing-key" in reply["details"]
    assert "Traceback (most recent call last)" in result.stderr and "KeyError" in result.stderr
    assert "Traceback" not in result.stdout


@pytest.mark.parametrize("verb", ["DEL", "CHECK", "STATUS", "GC"])
def test_success_without_a_result_prints_nothing(fake: FakePlugin, verb: str) -> None:
    result = run(fake, verb, config("1.1.0"))
    assert (result.code, result.stdout, result.stderr) == (0, "", "")


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_add_result_is_printed_in_the_requested_version(fake: FakePlugin, version: str) -> None:
    result = run(fake, "ADD", config(version))
    assert result.code == 0
    assert result.reply == result_to_wire(RESULT, version)
    assert result.reply["cniVersion"] == version


def test_add_result_that_cannot_be_said_in_the_version_is_code_1(fake: FakePlugin) -> None:
    fake.outcome["ADD"] = Result(ips=(IPConfig(address=cidr("10.1.2.5/24")), IPConfig(address=cidr("10.1.3.5/24"))))
    reply = run(fake, "ADD", config("0.2.0")).error(1)
    assert reply["cniVersion"] == "0.2.0"


def test_cmd_args_carry_the_invocation(fake: FakePlugin) -> None:
    conf = config("0.4.0")
    data = json.dumps(conf).encode()
    run(fake, "CHECK", data, CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAME=web")
    args = fake.args
    assert (args.command, args.container_id, args.netns, args.ifname) == ("CHECK", "ctr-1", ENV["CNI_NETNS"], "eth0")
    assert args.path == ("/opt/cni/bin", "/usr/lib/cni")
    assert (args.stdin_data, args.config, args.cni_version) == (data, conf, "0.4.0")
    assert args.args == "IgnoreUnknown=1;K8S_POD_NAME=web"
    assert args.environ["CNI_COMMAND"] == "CHECK"


# --- prevResult ----------------------------------------------------------------------------------------


def _read_prev_result(args: skel.CmdArgs) -> Result:
    prev = args.prev_result()
    return prev if prev is not None else RESULT.with_changes(ips=())


@pytest.mark.parametrize("version", ALL_VERSIONS)
def test_prev_result_is_parsed_and_passed_through(fake: FakePlugin, version: str) -> None:
    fake.behaviour["ADD"] = _read_prev_result
    prev = result_to_wire(RESULT, version)
    result = run(fake, "ADD", config(version, prevResult=prev))
    assert result.reply == prev


def test_prev_result_without_cni_version_is_read_in_the_config_version(fake: FakePlugin) -> None:
    fake.behaviour["ADD"] = _read_prev_result
    prev = result_to_wire(RESULT, "0.4.0")
    del prev["cniVersion"]
    assert run(fake, "ADD", config("0.4.0", prevResult=prev)).reply == {"cniVersion": "0.4.0", **prev}


def test_no_prev_result_is_none(fake: FakePlugin) -> None:
    fake.behaviour["ADD"] = _read_prev_result
    assert run(fake, "ADD").reply == result_to_wire(RESULT.with_changes(ips=()), "1.0.0")


@pytest.mark.parametrize("prev", [[], "result", {"cniVersion": "1.0.0", "ips": [{"address": "10.1.2.300/24"}]}])
def test_undecodable_prev_result_is_code_6(fake: FakePlugin, prev: Any) -> None:
    fake.behaviour["ADD"] = _read_prev_result
    run(fake, "ADD", config(prevResult=prev)).error(6)


# --- CNI_ARGS --------------------------------------------------------------------------------------------


def cmd_args(cni_args: str) -> skel.CmdArgs:
    return skel.CmdArgs(
        command="ADD", container_id="c", netns="", ifname="eth0", args=cni_args, path=(),
        stdin_data=b"", config={}, cni_version="1.0.0",
    )


@pytest.mark.parametrize(
    ("raw", "known", "expected"),
    [
        ("", {"IP"}, {}),
        ("IP=10.1.2.5", {"IP"}, {"IP": "10.1.2.5"}),
        ("IP=10.1.2.5;MAC=0a:58:0a:01:02:05", {"IP", "MAC"}, {"IP": "10.1.2.5", "MAC": "0a:58:0a:01:02:05"}),
        ("IP=10.1.2.5;", {"IP"}, {"IP": "10.1.2.5"}),
        ("IP=", {"IP"}, {"IP": ""}),
        ("IgnoreUnknown=1;K8S_POD_NAME=web;IP=10.1.2.5", {"IP"}, {"IP": "10.1.2.5"}),
        ("IgnoreUnknown=true;K8S_POD_NAME=web", {"IP"}, {}),
        ("IgnoreUnknown=TRUE;K8S_POD_NAME=web", set(), {}),
        # containerd's CNI_ARGS (toCNILabels), as a plugin that knows the K8S_ keys sees it.
        (
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=u1",
            {"K8S_POD_NAMESPACE", "K8S_POD_NAME"},
            {"K8S_POD_NAMESPACE": "default", "K8S_POD_NAME": "web"},
        ),
    ],
)
def test_cni_args(raw: str, known: set[str], expected: dict[str, str]) -> None:
    assert cmd_args(raw).cni_args(known) == expected


@pytest.mark.parametrize("raw", ["K8S_POD_NAME=web", "IgnoreUnknown=0;K8S_POD_NAME=web", "IgnoreUnknown=false;X=1"])
def test_unknown_cni_args_key_without_ignore_unknown_is_code_4(raw: str) -> None:
    with pytest.raises(errors.InvalidEnvironment) as info:
        cmd_args(raw).cni_args({"IP"})
    assert info.value.code == 4
    assert raw.rsplit(";", 1)[-1].split("=")[0] in info.value.details


@pytest.mark.parametrize("raw", ["IP", "IP=10.1.2.5;MAC", "=10.1.2.5", "IgnoreUnknown=1;garbage"])
def test_malformed_cni_args_is_code_4(fake: FakePlugin, raw: str) -> None:
    fake.behaviour["ADD"] = lambda args: args.cni_args({"IP", "MAC"}) and RESULT
    reply = run(fake, "ADD", CNI_ARGS=raw).error(4)
    assert "CNI_ARGS" in reply["msg"]


# --- the plugin's own network namespace --------------------------------------------------------------


@pytest.mark.parametrize("verb", ["ADD", "CHECK", "DEL"])
@pytest.mark.parametrize("own", ["/proc/self/ns/net", "/proc/thread-self/ns/net"])
def test_netns_that_is_the_plugins_own_is_code_8(fake: FakePlugin, verb: str, own: str) -> None:
    reply = run(fake, verb, config("1.1.0"), CNI_NETNS=own).error(8)
    assert own in reply["msg"] and "CNI_NETNS_OVERRIDE" in reply["details"]
    assert fake.loads == 0


@pytest.mark.parametrize("override", ["1", "true", "TRUE"])
def test_netns_override_allows_the_plugins_own_netns(fake: FakePlugin, override: str) -> None:
    assert run(fake, "ADD", CNI_NETNS="/proc/self/ns/net", CNI_NETNS_OVERRIDE=override).code == 0
    assert fake.args.netns == "/proc/self/ns/net"


@pytest.mark.parametrize("override", ["0", "false", "yes"])
def test_other_override_values_do_not_disable_the_check(fake: FakePlugin, override: str) -> None:
    run(fake, "ADD", CNI_NETNS="/proc/self/ns/net", CNI_NETNS_OVERRIDE=override).error(8)


# --- the JSON log ------------------------------------------------------------------------------------


def log_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_no_log_destination_writes_no_log(fake: FakePlugin) -> None:
    fake.outcome["DEL"] = errors.InvalidConfig("bad")
    assert run(fake, "DEL").stderr == ""


@pytest.mark.parametrize("where", ["config", "env"])
def test_log_line_goes_to_the_configured_file(fake: FakePlugin, tmp_path: Path, where: str) -> None:
    log_file = tmp_path / "pycni.log"
    if where == "config":
        result = run(fake, "ADD", config(logFile=str(log_file)))
    else:
        result = run(fake, "ADD", PYCNI_LOG_FILE=str(log_file))
    assert result.reply == result_to_wire(RESULT, "1.0.0")  # stdout still only the result
    assert result.stderr == ""
    [line] = log_lines(log_file.read_text())
    assert line["plugin"] == "fake" and line["verb"] == "ADD"
    assert (line["containerID"], line["ifname"], line["outcome"]) == ("ctr-1", "eth0", "ok")
    assert isinstance(line["durationMs"], float) and line["durationMs"] >= 0
    assert "code" not in line


def test_config_log_file_wins_over_the_environment(fake: FakePlugin, tmp_path: Path) -> None:
    by_config, by_env = tmp_path / "config.log", tmp_path / "env.log"
    run(fake, "DEL", config(logFile=str(by_config)), PYCNI_LOG_FILE=str(by_env))
    assert len(log_lines(by_config.read_text())) == 1
    assert not by_env.exists()


def test_log_lines_append(fake: FakePlugin, tmp_path: Path) -> None:
    log_file = tmp_path / "pycni.log"
    for verb in ("ADD", "DEL"):
        run(fake, verb, PYCNI_LOG_FILE=str(log_file))
    assert [line["verb"] for line in log_lines(log_file.read_text())] == ["ADD", "DEL"]


def test_log_to_stderr_never_touches_stdout(fake: FakePlugin) -> None:
    result = run(fake, "ADD", config(logFile="stderr"))
    assert result.reply == result_to_wire(RESULT, "1.0.0")
    [line] = log_lines(result.stderr)
    assert line["outcome"] == "ok"


def test_error_outcome_is_logged_with_its_code(fake: FakePlugin) -> None:
    fake.outcome["CHECK"] = errors.CheckFailed("lo is down", "state DOWN")
    [line] = log_lines(run(fake, "CHECK", PYCNI_LOG_FILE="stderr").stderr)
    assert (line["outcome"], line["code"]) == ("error", 108)
    assert "lo is down" in line["msg"]


def test_error_before_the_config_is_read_is_logged_from_the_environment(fake: FakePlugin) -> None:
    [line] = log_lines(run(fake, "ADD", b"{", PYCNI_LOG_FILE="stderr").stderr)
    assert (line["outcome"], line["code"]) == ("error", 6)


def test_internal_error_logs_the_traceback(fake: FakePlugin, tmp_path: Path) -> None:
    log_file = tmp_path / "pycni.log"
    fake.outcome["ADD"] = ZeroDivisionError("division by zero")
    run(fake, "ADD", PYCNI_LOG_FILE=str(log_file)).error(999)
    [line] = log_lines(log_file.read_text())
    assert line["code"] == 999
    assert "Traceback (most recent call last)" in line["traceback"] and "ZeroDivisionError" in line["traceback"]


@pytest.mark.parametrize("destination", ["{tmp}", "{tmp}/no/such/dir/log"])
def test_unusable_log_destination_never_fails_the_operation(fake: FakePlugin, tmp_path: Path, destination: str) -> None:
    result = run(fake, "ADD", PYCNI_LOG_FILE=destination.format(tmp=tmp_path))
    assert result.reply == result_to_wire(RESULT, "1.0.0")


class ClosedStream(io.StringIO):
    def write(self, text: str) -> int:
        raise ValueError("I/O operation on closed file")


def test_closed_stderr_log_never_fails_the_operation(fake: FakePlugin) -> None:
    stdout = io.StringIO()
    environ = {**ENV, "CNI_COMMAND": "ADD", "PYCNI_LOG_FILE": "stderr"}
    code = skel.dispatch(fake.plugin, environ, io.BytesIO(json.dumps(config()).encode()), stdout, ClosedStream())
    assert code == 0
    assert json.loads(stdout.getvalue()) == result_to_wire(RESULT, "1.0.0")


def _gc_args(**config):
    return skel.CmdArgs("GC", "", "", "", "", (), b"", {"name": "net", **config}, "1.1.0")


def test_valid_attachments_reads_both_keys():
    args = _gc_args(**{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
                       "cni.dev/attachments": [{"containerID": "b", "ifname": "eth1"}]})
    assert args.valid_attachments() == {("a", "eth0"), ("b", "eth1")}


def test_valid_attachments_none_without_a_list_and_empty_with_an_empty_one():
    assert _gc_args().valid_attachments() is None  # keep on doubt: GC removes nothing
    assert _gc_args(**{"cni.dev/valid-attachments": []}).valid_attachments() == set()


@pytest.mark.parametrize("bad", ["x", [{"ifname": "eth0"}], [{"containerID": "a", "ifname": 3}], ["a"]])
def test_valid_attachments_malformed_is_code_7(bad):
    with pytest.raises(errors.InvalidConfig) as info:
        _gc_args(**{"cni.dev/valid-attachments": bad}).valid_attachments()
    assert "cni.dev/valid-attachments" in info.value.details
