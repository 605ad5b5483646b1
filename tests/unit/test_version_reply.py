"""VERSION's answer without the json package: the same bytes json would read and write."""

from __future__ import annotations

import json

import pytest

from cni_plugin.entry import PLUGINS
from cni_plugin.spec.plugin import parse_json_document, version_reply

DOCUMENTS = [
    b'{"cniVersion": "0.3.1"}',
    b' \n\t{"cniVersion":"1.0.0","name":"x","nested":{"a":[1,2.5,-3e2,true,false,null]}}\r\n',
    b'{"cniVersion": "1.0.0", "s": "\\u00e9\\"\\\\"}',
    '{"cniVersion": "é"}'.encode(),
    b"[1, 2]",
    b'"just a string"',
    b"NaN",
    b"42",
]
NOT_JSON = [b"garbage", b'{"cniVersion": "1.0.0"} {}', b'{"a": 1,}', b"{", b"\xff\xfe", b"[" * 100000, b"'single'"]


@pytest.mark.parametrize("data", DOCUMENTS)
def test_a_document_reads_as_json_loads_reads_it(data: bytes) -> None:
    got, want = parse_json_document(data), json.loads(data)
    assert json.dumps(got) == json.dumps(want)


@pytest.mark.parametrize("data", NOT_JSON)
def test_what_json_loads_refuses_is_refused(data: bytes) -> None:
    with pytest.raises((ValueError, RecursionError)):
        json.loads(data)
    with pytest.raises(ValueError):
        parse_json_document(data)


@pytest.mark.parametrize("plugin", sorted(PLUGINS))
@pytest.mark.parametrize(
    ("stdin", "echoed"),
    [
        (b'{"cniVersion": "0.3.1"}', "0.3.1"),
        (b"", "1.1.0"),
        (b"garbage", "1.1.0"),
        (b'{"cniVersion": 5}', "1.1.0"),
        (b"[]", "1.1.0"),
        ('{"cniVersion": "9.9.9\\"é"}'.encode(), '9.9.9"é'),
    ],
)
def test_the_reply_is_what_json_dumps_indent_4_writes(plugin: str, stdin: bytes, echoed: str) -> None:
    p = PLUGINS[plugin]
    want = json.dumps({"cniVersion": echoed, "supportedVersions": list(p.versions)}, indent=4) + "\n"
    assert version_reply(p, stdin) == want
