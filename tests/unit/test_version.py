"""cni_plugin.spec.version: parsing, ordering and the per-verb minimum versions."""

from __future__ import annotations

import pytest

from cni_plugin.spec import version
from cni_plugin.spec.errors import IncompatibleVersion


def test_supported_versions_are_the_seven_spec_versions_in_order() -> None:
    assert version.ALL_VERSIONS == ("0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
    assert sorted(version.ALL_VERSIONS, key=version.parse) == list(version.ALL_VERSIONS)
    assert version.LATEST == version.ALL_VERSIONS[-1]
    assert version.IMPLICIT_VERSION == "0.1.0"


@pytest.mark.parametrize(("text", "parsed"), [("0.3.1", (0, 3, 1)), ("1.10.0", (1, 10, 0))])
def test_parse(text: str, parsed: tuple[int, int, int]) -> None:
    assert version.parse(text) == parsed


@pytest.mark.parametrize("text", ["", "1", "1.0", "1.0.0.0", "v1.0.0", "1.0.x", "1..0", " 1.0.0", "1.-1.0"])
def test_parse_rejects_malformed_versions_with_code_1(text: str) -> None:
    with pytest.raises(IncompatibleVersion) as info:
        version.parse(text)
    assert info.value.code == 1


@pytest.mark.parametrize(
    ("candidate", "minimum", "expected"),
    [
        ("0.4.0", "0.4.0", True),
        ("1.0.0", "0.4.0", True),
        ("0.3.1", "0.4.0", False),
        # Numeric, not lexical: 0.10.0 is later than 0.4.0.
        ("0.10.0", "0.4.0", True),
    ],
)
def test_at_least(candidate: str, minimum: str, expected: bool) -> None:
    assert version.at_least(candidate, minimum) is expected


@pytest.mark.parametrize("candidate", version.ALL_VERSIONS)
def test_require_supported_accepts_every_supported_version(candidate: str) -> None:
    version.require_supported(candidate)


@pytest.mark.parametrize(
    ("candidate", "supported"),
    [("0.5.0", version.ALL_VERSIONS), ("2.0.0", version.ALL_VERSIONS), ("0.2.0", ("0.3.0", "1.0.0"))],
)
def test_require_supported_refuses_others_naming_the_supported_ones(
    candidate: str, supported: tuple[str, ...]
) -> None:
    with pytest.raises(IncompatibleVersion) as info:
        version.require_supported(candidate, supported)
    assert candidate in info.value.msg
    assert ", ".join(supported) in info.value.details


# (verb, the first version that allows it) per SPEC §2 / spec-upgrades.md.
VERB_MINIMUMS = [("CHECK", "0.4.0"), ("STATUS", "1.1.0"), ("GC", "1.1.0")]


@pytest.mark.parametrize(("verb", "minimum"), VERB_MINIMUMS)
@pytest.mark.parametrize("candidate", version.ALL_VERSIONS)
def test_require_verb_allowed_follows_the_minimum(verb: str, minimum: str, candidate: str) -> None:
    allowed = version.ALL_VERSIONS.index(candidate) >= version.ALL_VERSIONS.index(minimum)
    if allowed:
        version.require_verb_allowed(verb, candidate)
        return
    with pytest.raises(IncompatibleVersion) as info:
        version.require_verb_allowed(verb, candidate)
    assert verb in info.value.msg and minimum in info.value.details and candidate in info.value.details


@pytest.mark.parametrize("verb", ["ADD", "DEL", "VERSION"])
def test_verbs_without_a_minimum_are_allowed_at_every_version(verb: str) -> None:
    for candidate in version.ALL_VERSIONS:
        version.require_verb_allowed(verb, candidate)
