"""The agent's wire format and its pure helpers (no sockets, no root).

The framing is checked against an independent decoder written with `struct` (the module itself
uses only int.to_bytes/from_bytes, so the shim need not import struct).
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from cni_plugin.agent import mode, protocol, shim
from cni_plugin.agent.locks import KeyedLocks
from cni_plugin.agent.streams import StderrRouter
from cni_plugin.spec.errors import InvalidConfig

REPO = Path(__file__).resolve().parents[2]


def independent_decode_request(frame: bytes) -> tuple[bytes, list[bytes], bytes]:
    magic, version, header_len, stdin_len = struct.unpack(">4sBII", frame[:13])
    assert (magic, version) == (b"PCNI", 1)
    header = frame[13 : 13 + header_len]
    stdin = frame[13 + header_len :]
    assert len(stdin) == stdin_len
    plugin, *env = header.split(b"\0")
    return plugin, env, stdin


def test_request_round_trip_matches_an_independent_decoder() -> None:
    env = [b"CNI_COMMAND=ADD", b"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAME=a=b", b"PATH=/usr/bin"]
    stdin = json.dumps({"cniVersion": "1.1.0", "name": "n"}).encode() + b"\0\xff binary too"
    frame = protocol.encode_request(b"bridge", env, stdin)

    assert independent_decode_request(frame) == (b"bridge", env, stdin)
    header_len, stdin_len = protocol.decode_prefix(frame[: protocol.PREFIX_LEN])
    assert stdin_len == len(stdin)
    plugin, environ = protocol.decode_header(frame[protocol.PREFIX_LEN : protocol.PREFIX_LEN + header_len])
    assert plugin == "bridge"
    # Only the first '=' separates: CNI_ARGS values hold '=' themselves.
    assert environ == {
        "CNI_COMMAND": "ADD",
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=a=b",
        "PATH": "/usr/bin",
    }


def test_environment_decodes_as_os_environ_does() -> None:
    # Bytes that are not UTF-8 survive the trip exactly as os.environ would hold them.
    raw = b"CNI_ARGS=\xff\xfe"
    frame = protocol.encode_request(b"loopback", [raw], b"")
    header_len, _ = protocol.decode_prefix(frame[: protocol.PREFIX_LEN])
    _, environ = protocol.decode_header(frame[protocol.PREFIX_LEN : protocol.PREFIX_LEN + header_len])
    assert os.fsencode(environ["CNI_ARGS"]) == b"\xff\xfe"


def test_empty_environment_and_stdin() -> None:
    frame = protocol.encode_request(b"loopback", [], b"")
    header_len, stdin_len = protocol.decode_prefix(frame[: protocol.PREFIX_LEN])
    assert stdin_len == 0
    assert protocol.decode_header(frame[protocol.PREFIX_LEN :]) == ("loopback", {})


@pytest.mark.parametrize(
    ("plugin", "env"),
    [(b"", []), (b"br\0idge", []), (b"bridge", [b"CNI_X=a\0b"]), (b"bridge", [b"NOEQUALS"])],
)
def test_encode_refuses_what_the_frame_cannot_carry(plugin: bytes, env: list[bytes]) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.encode_request(plugin, env, b"")


@pytest.mark.parametrize(
    ("prefix", "problem"),
    [
        (b"XXXX\x01" + bytes(8), "magic"),
        (b"PCNI\x02" + (5).to_bytes(4, "big") + bytes(4), "version"),
        (b"PCNI\x01" + bytes(8), "empty request header"),
        (b"PCNI\x01", "prefix must be"),
    ],
)
def test_decode_prefix_rejects_foreign_bytes(prefix: bytes, problem: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=problem):
        protocol.decode_prefix(prefix)


@pytest.mark.parametrize("header", [b"", b"bridge\0=novalue", b"bridge\0NOSEP"])
def test_decode_header_rejects_malformed_entries(header: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_header(header)


def test_reply_is_complete_only_at_its_last_byte() -> None:
    out, err = b'{\n    "cniVersion": "1.1.0"\n}\n', b"pycni-bridge: a warning\n"
    stream = protocol.STARTED + protocol.encode_reply(1, out, err)
    code, out_len, err_len = struct.unpack(">III", stream[2:14])  # independent reading of the head
    assert (code, out_len, err_len) == (1, len(out), len(err))
    for cut in range(len(stream)):
        started, reply = protocol.decode_replies(stream[:cut])
        assert reply is None
        assert started == (cut >= 1)
    assert protocol.decode_replies(stream) == (True, (1, out, err))


def test_an_answer_without_started_is_a_refusal() -> None:
    started, reply = protocol.decode_replies(protocol.encode_reply(1, b"{}", b""))
    assert (started, reply) == (False, (1, b"{}", b""))


@pytest.mark.parametrize("stream", [b"X", protocol.STARTED + b"Q", protocol.encode_reply(0, b"", b"") + b"extra"])
def test_decode_replies_rejects_garbage(stream: bytes) -> None:
    with pytest.raises(protocol.ProtocolError):
        protocol.decode_replies(stream)


def test_shim_forwards_only_cni_pycni_and_path() -> None:
    environ = {
        b"CNI_COMMAND": b"ADD",
        b"PYCNI_LOG_FILE": b"/tmp/x",
        b"PATH": b"/usr/bin",
        b"HOME": b"/root",
        b"PYTHONPATH": b"/evil",
        b"XCNI_FOO": b"1",
    }
    assert sorted(shim.env_entries(environ)) == [b"CNI_COMMAND=ADD", b"PATH=/usr/bin", b"PYCNI_LOG_FILE=/tmp/x"]


def test_shim_import_stays_light() -> None:
    """The shim's whole import cost: no os, json, struct, socket (python layer) or typing."""
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]; before = set(sys.modules)\n"
        "import cni_plugin.agent.shim\n"
        "print(' '.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(REPO)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert set(out) <= {"cni_plugin", "cni_plugin.agent", "cni_plugin.agent.shim", "cni_plugin.agent.protocol",
                        "_socket"}, out


# --- the "agent" config key -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (None, "preferred"),
        ({}, "preferred"),
        ({"agent": "preferred"}, "preferred"),
        ({"agent": "required"}, "required"),
    ],
)
def test_agent_mode(config: dict | None, expected: str) -> None:
    assert mode.mode_of(config) == expected


@pytest.mark.parametrize("value", ["Required", "", None, True, ["required"]])
def test_agent_mode_rejects_other_values(value: object) -> None:
    with pytest.raises(InvalidConfig) as info:
        mode.mode_of({"agent": value})
    assert "agent" in info.value.details


def test_parse_config_and_reply_version() -> None:
    assert mode.parse_config(b"[1]") is None
    assert mode.parse_config(b"{not json") is None
    assert mode.reply_version({"cniVersion": "0.4.0"}) == "0.4.0"
    assert mode.reply_version({"cniVersion": "9.9.9"}) == "1.1.0"
    assert mode.reply_version({}) == "0.1.0"  # as the dispatcher reads a config without cniVersion
    assert mode.reply_version(None) == "0.1.0"


def test_error_bytes_are_the_dispatchers() -> None:
    import io

    from cni_plugin.spec import skel

    out = io.StringIO()
    skel._print_json(out, InvalidConfig("m", "d").to_wire("0.4.0"))
    assert mode.error_bytes(InvalidConfig("m", "d"), "0.4.0") == out.getvalue().encode()


# --- per-container locks and per-thread stderr ------------------------------------------------------


def test_keyed_locks_serialise_one_key_and_not_others() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def first() -> None:
        with locks.hold("ctr-a", timeout=10) as held:
            assert held
            order.append("a1-in")
            inside.set()
            release.wait(10)
            order.append("a1-out")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(10)
    with locks.hold("ctr-b", timeout=10) as held:  # another container: not blocked
        assert held
        order.append("b")
    with locks.hold("ctr-a", timeout=0.05) as held:  # the same container: times out
        assert not held
    release.set()
    with locks.hold("ctr-a", timeout=10) as held:
        assert held
        order.append("a2")
    t.join()
    assert order == ["a1-in", "b", "a1-out", "a2"]
    assert len(locks) == 0  # nothing kept for containers nobody is using


def test_keyed_locks_none_key_never_blocks() -> None:
    locks = KeyedLocks()
    with locks.hold(None, timeout=0) as a, locks.hold(None, timeout=0) as b:
        assert a and b


def test_stderr_router_sends_each_threads_writes_to_its_own_buffer() -> None:
    import io

    default, mine, theirs = io.StringIO(), io.StringIO(), io.StringIO()
    router = StderrRouter(default)

    def other() -> None:
        with router.redirect(theirs):
            time.sleep(0.01)
            router.write("theirs\n")

    t = threading.Thread(target=other)
    with router.redirect(mine):
        t.start()
        router.write("mine\n")
        t.join()
    router.write("agent\n")
    assert (mine.getvalue(), theirs.getvalue(), default.getvalue()) == ("mine\n", "theirs\n", "agent\n")
