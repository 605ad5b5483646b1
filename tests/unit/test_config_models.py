"""cni_plugin.config: the plain-code validator of the plugin config models."""

from __future__ import annotations

from typing import Any, Literal

import pytest

from cni_plugin.config import GoCaseModel, PassThroughModel, describe, field, parse_config
from cni_plugin.spec.errors import InvalidConfig


class Leaf(PassThroughModel):
    subnet: str
    gateway: str | None = None


def _positive_even(value: int) -> int:
    if value % 2:
        raise ValueError("must be even")
    return value


def _null_is_default(value: Any) -> Any:
    return "auto" if value is None else value


class Everything(PassThroughModel):
    name: str
    flag: bool = False
    count: int = field(0, ge=0, le=10)
    ratio: float = field(1.0, gt=0, lt=2)
    even: int = field(2, check=_positive_even)
    mode: Literal["a", "b", ""] = "a"
    maybe: int | None = None
    tags: list[str] = field(default_factory=list)
    sets: list[list[Leaf]] = field(default_factory=list)
    free: dict[str, Any] = field(default_factory=dict)
    sysctl: dict[str, str | int | float] | None = None
    leaf: Leaf | None = None
    renamed: bool = field(False, alias="isRenamed")
    how: str = field("auto", before=_null_is_default)

    def _check(self) -> None:
        if self.flag and self.maybe is None:
            raise ValueError("flag needs maybe")
        if self.renamed:
            self.flag = True  # one key implying another, as isDefaultGateway implies isGateway


def _problems(data: Any, model: type[PassThroughModel] = Everything, where: str = "") -> list[str]:
    with pytest.raises(InvalidConfig) as info:
        parse_config(model, data, where)
    assert info.value.code == 7
    return info.value.details.split("; ")


def test_defaults_and_types():
    conf = parse_config(Everything, {"name": "n"})
    assert (conf.name, conf.flag, conf.count, conf.ratio, conf.mode, conf.maybe) == ("n", False, 0, 1.0, "a", None)
    assert conf.tags == [] and conf.sets == [] and conf.free == {} and conf.leaf is None and conf.how == "auto"


def test_every_type_parses():
    conf = parse_config(Everything, {
        "name": "n", "flag": True, "count": 3, "ratio": 1, "mode": "", "maybe": 7, "tags": ["x"],
        "sets": [[{"subnet": "10.0.0.0/24"}], []], "free": {"a": [1]}, "sysctl": {"s": "1", "i": 2, "f": 2.5},
        "leaf": {"subnet": "s", "gateway": None}, "isRenamed": False, "how": None,
    })
    assert conf.ratio == 1.0 and isinstance(conf.ratio, float)
    assert conf.sets[0][0].subnet == "10.0.0.0/24" and conf.sets[1] == []
    assert conf.sysctl == {"s": "1", "i": 2, "f": 2.5} and conf.leaf is not None and conf.leaf.gateway is None
    assert conf.how == "auto"  # the before hook read null as unset


@pytest.mark.parametrize(("data", "expected"), [
    ({"flag": "yes"}, "flag: must be a boolean, got string 'yes'"),
    ({"flag": 1}, "flag: must be a boolean, got number 1"),
    ({"count": True}, "count: must be an integer, got boolean true"),
    ({"count": "5"}, "count: must be an integer, got string '5'"),
    ({"count": 5.5}, "count: must be an integer, got number 5.5"),
    ({"count": -1}, "count: must be >= 0, got -1"),
    ({"count": 11}, "count: must be <= 10, got 11"),
    ({"ratio": 0}, "ratio: must be > 0, got 0.0"),
    ({"ratio": 2}, "ratio: must be < 2, got 2.0"),
    ({"ratio": False}, "ratio: must be a number, got boolean false"),
    ({"ratio": float("nan")}, "ratio: must be a finite number, got number nan"),
    ({"even": 3}, "even: must be even"),
    ({"mode": "c"}, "mode: must be one of 'a', 'b', '', got string 'c'"),
    ({"maybe": "x"}, "maybe: must be an integer, got string 'x'"),
    ({"tags": "x"}, "tags: must be an array, got string 'x'"),
    ({"tags": ["x", 1]}, "tags.1: must be a string, got number 1"),
    ({"free": []}, "free: must be an object, got an array"),
    ({"sysctl": {"k": True}}, "sysctl.k: must be a string, an integer or a number, got boolean true"),
    ({"leaf": "x"}, "leaf: must be an object, got string 'x'"),
    ({"leaf": {}}, "leaf.subnet: required"),
    ({"isRenamed": "no"}, "isRenamed: must be a boolean, got string 'no'"),
    ({"name": None}, "name: must be a string, got null"),
])
def test_bad_values_name_the_key(data, expected):
    assert _problems({"name": "n", **data}) == [expected]


def test_integral_floats_are_integers_and_fractions_are_not():
    assert parse_config(Everything, {"name": "n", "count": 5.0}).count == 5
    assert isinstance(parse_config(Everything, {"name": "n", "count": 5.0}).count, int)


def test_union_keeps_the_exact_json_type():
    conf = parse_config(Everything, {"name": "n", "sysctl": {"a": 5.0, "b": 5, "c": "5"}})
    assert conf.sysctl == {"a": 5.0, "b": 5, "c": "5"}
    assert [type(v) for v in conf.sysctl.values()] == [float, int, str]


def test_literal_matches_type_and_value():
    class Flags(PassThroughModel):
        level: Literal[1, 2] = 1

    assert _problems({"level": True}, Flags) == ["level: must be one of 1, 2, got boolean true"]
    assert parse_config(Flags, {"level": 2}).level == 2


def test_every_problem_is_reported_with_its_nested_path():
    problems = _problems({
        "flag": "x", "sets": [[{"subnet": "a"}, {"gateway": 1}]], "leaf": {"subnet": 2},
    }, where="ipam")
    assert problems == [
        "ipam.name: required",
        "ipam.flag: must be a boolean, got string 'x'",
        "ipam.sets.0.1.subnet: required",
        "ipam.sets.0.1.gateway: must be a string, got number 1",
        "ipam.leaf.subnet: must be a string, got number 2",
    ]


def test_not_an_object():
    assert _problems([1]) == ["(config): must be an object, got an array"]
    assert _problems("x", where="runtimeConfig.bandwidth") == [
        "runtimeConfig.bandwidth: must be an object, got string 'x'"
    ]


def test_model_check_runs_after_the_keys_and_may_normalize():
    assert _problems({"name": "n", "flag": True}) == ["(config): flag needs maybe"]
    assert _problems({"leaf": {"subnet": "s"}, "flag": True, "maybe": 1, "sets": [[{"subnet": 1}]]}) == [
        "name: required", "sets.0.0.subnet: must be a string, got number 1",  # no check on invalid keys
    ]
    conf = parse_config(Everything, {"name": "n", "isRenamed": True, "maybe": 1})
    assert conf.flag and conf.renamed


def test_alias_is_the_json_key_not_the_attribute_name():
    conf = parse_config(Everything, {"name": "n", "renamed": True})
    assert conf.renamed is False and conf.unknown_keys == {"renamed": True}


def test_unknown_keys_pass_through():
    conf = parse_config(Everything, {"name": "n", "cniVersion": "1.0.0", "type": "x", "leaf": {"subnet": "s", "z": 1}})
    assert conf.unknown_keys == {"cniVersion": "1.0.0", "type": "x"}
    assert conf.leaf is not None and conf.leaf.unknown_keys == {"z": 1}


def test_instances_are_frozen():
    conf = parse_config(Everything, {"name": "n"})
    with pytest.raises(AttributeError):
        conf.name = "other"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del conf.name
    with pytest.raises(AttributeError):
        conf.anything_new = 1
    conf.unknown_keys["x"] = 1  # a copy
    assert "x" not in conf.unknown_keys


def test_defaults_are_not_shared_between_instances():
    a, b = parse_config(Everything, {"name": "a"}), parse_config(Everything, {"name": "b"})
    a.tags.append("x")
    a.free["k"] = 1
    assert b.tags == [] and b.free == {}
    with pytest.raises(TypeError, match="default_factory"):
        field([])


def test_input_is_not_aliased():
    data: dict[str, Any] = {"name": "n", "tags": ["x"], "free": {"a": 1}}
    conf = parse_config(Everything, data)
    data["tags"].append("y")
    data["free"]["b"] = 2
    assert conf.tags == ["x"] and conf.free == {"a": 1}


def test_keyword_construction_uses_attribute_names_and_validates():
    conf = Everything(name="n", renamed=True, maybe=1)
    assert conf.flag and conf == parse_config(Everything, {"name": "n", "isRenamed": True, "maybe": 1})
    with pytest.raises(InvalidConfig, match="invalid"):
        Everything(name="n", count=-1)
    with pytest.raises(TypeError, match="isRenamed"):
        Everything(name="n", isRenamed=True)
    assert "name='n'" in repr(conf)


class Mapping(GoCaseModel):
    host_port: int = field(alias="hostPort", ge=1, le=65535)
    protocol: str = "tcp"


def test_go_case_keys_match_case_insensitively():
    conf = parse_config(Mapping, {"HostPort": 80, "PROTOCOL": "udp"})
    assert (conf.host_port, conf.protocol) == (80, "udp") and conf.unknown_keys == {}


def test_go_case_exact_match_wins():
    conf = parse_config(Mapping, {"HostPort": 80, "hostPort": 81})
    assert conf.host_port == 81 and conf.unknown_keys == {"HostPort": 80}


def test_go_case_errors_name_the_declared_key():
    assert _problems({"HostPort": 0}, Mapping) == ["hostPort: must be >= 1, got 0"]
    assert _problems({}, Mapping) == ["hostPort: required"]


def test_forward_references_resolve_on_first_use():
    class Outer(PassThroughModel):
        inner: list[LaterModel] = field(default_factory=list)

    assert parse_config(Outer, {"inner": [{"x": 1}]}).inner[0].x == 1


class LaterModel(PassThroughModel):
    x: int


def test_an_unsupported_annotation_is_a_programming_error():
    class Odd(PassThroughModel):
        pair: tuple[int, int] = (0, 0)

    with pytest.raises(TypeError, match="not supported"):
        parse_config(Odd, {})


@pytest.mark.parametrize(("value", "shown"), [
    (None, "null"), (True, "boolean true"), (1.5, "number 1.5"), ("x" * 50, "string '" + "x" * 37 + "...'"),
    ([], "an array"), ({}, "an object"),
])
def test_describe(value, shown):
    assert describe(value) == shown
