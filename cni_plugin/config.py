"""Plugin configuration models, validated by plain code, and their errors as code 7.

Every plugin exec pays for its imports; pydantic alone costs ~45 ms to import and more to build
models, several times the whole budget of a bridge ADD. The models here are declared the same way
(a class body of annotated keys) and checked by this module, which imports nothing but the
standard library modules the interpreter has loaded anyway (typing, types, math).

Declaring a model::

    class RangeModel(PassThroughModel):
        subnet: str                                     # required
        gateway: str | None = None                      # optional, default None
        mtu: int = field(0, ge=0, le=65535)             # bounds
        ip_masq: bool = field(False, alias="ipMasq")    # the JSON key, when it is not the attribute's
        routes: list[RouteModel] = field(default_factory=list)   # a fresh list for each instance

`field()` also takes `before=` (a function of the raw JSON value, run before the type check, e.g.
to read null as "unset") and `check=` (a function of the typed value returning the value to keep,
e.g. normalized); both refuse a value by raising ValueError with a message. A model's `_check()`
method runs after every key is valid, for rules that span keys; it may still assign attributes
(e.g. one key implying another). Its classmethod `_prepare(data)` may rewrite the raw object
first (GoCaseModel matches key case there).

Types: str, bool, int, float, None, Any, `X | Y` (incl. `X | None`), `Literal[...]`, `list[T]`,
`dict[str, T]` and nested models, in any combination. Annotations are resolved on first use (so a
model may name one defined below it) in the module that declares it.

Coercion, as Go's encoding/json decodes into the reference plugins' structs:
* no conversion between JSON types: "true" is not a boolean, "5" is not a number, 5 is not a
  string, and a boolean is never a number;
* an integer key takes a JSON number without a fraction: 5 and 5.0 (and 1e6, which Python's json
  reads as a float) are 5; 5.5 is refused (Go refuses 5.0 and 1e6 too: pycni is lenient there);
* a number key (float) takes any finite JSON number;
* in a union, a value whose JSON type is exactly one of the members is that member (5.0 in
  `str | int | float` stays 5.0); otherwise the members are tried in order;
* `Literal` choices match by type and value.

A key with an alias is read from the JSON object by its alias only (the attribute name is an
unknown key there); `Model(attr=...)` takes attribute names. Unknown keys pass through (SPEC
§1.4): they are kept in `unknown_keys`. Instances are frozen once parsed (attributes cannot be
rebound; the lists and dicts of declared keys are built anew, shared with neither the input nor
another instance; values typed Any are kept as given).

A bad key or value is an InvalidConfig whose details name every bad key path, joined with "; ",
e.g. `ipam.ranges.0.0.subnet: required`.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from .spec.errors import InvalidConfig

M = TypeVar("M", bound="PassThroughModel")



class _Marker:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


_REQUIRED: Any = _Marker("REQUIRED")  # field() without a default
_INVALID: Any = _Marker("INVALID")  # a converter's result after it recorded a message

# A converter takes (raw value, key path for messages, list collecting messages) and returns the
# typed value, or _INVALID after appending at least one message.
Converter = Callable[[Any, str, "list[str]"], Any]


class FieldSpec:
    """One declared key of a model: what `field()` returns (a plain default is wrapped in one).

    alias: the JSON key, when it differs from the attribute name. default / default_factory: the
    value when the key is absent (a factory for lists and dicts, so no instance shares one).
    ge/gt/le/lt: bounds of a number. before(raw) and check(typed) hooks: see the module docstring.
    """

    __slots__ = ("alias", "default", "default_factory", "ge", "gt", "le", "lt", "before", "check")

    def __init__(
        self,
        default: Any = _REQUIRED,
        *,
        alias: str | None = None,
        default_factory: Callable[[], Any] | None = None,
        ge: float | None = None,
        gt: float | None = None,
        le: float | None = None,
        lt: float | None = None,
        before: Callable[[Any], Any] | None = None,
        check: Callable[[Any], Any] | None = None,
    ) -> None:
        if default is not _REQUIRED and default_factory is not None:
            raise TypeError("field(): give a default or a default_factory, not both")
        if isinstance(default, list | dict | set):
            raise TypeError("field(): a mutable default would be shared by every instance; use default_factory")
        self.alias = alias
        self.default = default
        self.default_factory = default_factory
        self.ge, self.gt, self.le, self.lt = ge, gt, le, lt
        self.before = before
        self.check = check


# Declare a model key: `x: int = field(0, ge=0)`. FieldSpec itself, typed as returning Any (like
# pydantic's Field) so that the annotation, not FieldSpec, is what mypy sees for the attribute. No
# default and no default_factory: the key is required. Bounds apply to numbers (not to None).
field: Callable[..., Any] = FieldSpec


# --- messages ------------------------------------------------------------------------------------------


def describe(value: Any) -> str:
    """A JSON value as an operator wrote it: `string 'yes'`, `number 5.5`, `boolean true`, `null`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {'true' if value else 'false'}"
    if isinstance(value, int | float):
        return f"number {value!r}"
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return f"string {text!r}"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _bad(errors: list[str], path: str, message: str) -> Any:
    errors.append(f"{path or '(config)'}: {message}")
    return _INVALID


# --- converters, one per annotation ----------------------------------------------------------------------


def _any(value: Any, path: str, errors: list[str]) -> Any:
    return value


def _str(value: Any, path: str, errors: list[str]) -> Any:
    return value if isinstance(value, str) else _bad(errors, path, f"must be a string, got {describe(value)}")


def _bool(value: Any, path: str, errors: list[str]) -> Any:
    return value if isinstance(value, bool) else _bad(errors, path, f"must be a boolean, got {describe(value)}")


def _int(value: Any, path: str, errors: list[str]) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return _bad(errors, path, f"must be an integer, got {describe(value)}")


def _float(value: Any, path: str, errors: list[str]) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        if math.isfinite(value):
            return float(value)
        return _bad(errors, path, f"must be a finite number, got {describe(value)}")
    return _bad(errors, path, f"must be a number, got {describe(value)}")


def _none(value: Any, path: str, errors: list[str]) -> Any:
    return None if value is None else _bad(errors, path, f"must be null, got {describe(value)}")


_SCALARS: dict[Any, tuple[Converter, str, tuple[type, ...]]] = {
    # annotation: (converter, what it expects, the JSON-decoded types that are exactly it)
    str: (_str, "a string", (str,)),
    bool: (_bool, "a boolean", (bool,)),
    int: (_int, "an integer", (int,)),
    float: (_float, "a number", (float,)),
    type(None): (_none, "null", (type(None),)),
}


def _literal(choices: tuple[Any, ...]) -> Converter:
    shown = ", ".join(repr(c) for c in choices)

    def convert(value: Any, path: str, errors: list[str]) -> Any:
        for choice in choices:
            if type(value) is type(choice) and value == choice:
                return choice
        return _bad(errors, path, f"must be one of {shown}, got {describe(value)}")

    return convert


def _optional(inner: Converter) -> Converter:
    def convert(value: Any, path: str, errors: list[str]) -> Any:
        return None if value is None else inner(value, path, errors)

    return convert


def _union(members: tuple[Any, ...], owner: type) -> Converter:
    converters = [_converter(m, owner) for m in members]
    exact = [(_SCALARS[m][2], c) for m, c in zip(members, converters, strict=True) if m in _SCALARS]
    names = [_expects(m) for m in members]
    wanted = ", ".join(names[:-1]) + " or " + names[-1]

    def convert(value: Any, path: str, errors: list[str]) -> Any:
        for kinds, conv in exact:  # the member that is exactly the value's JSON type wins
            if type(value) in kinds:
                return conv(value, path, errors)
        for conv in converters:
            attempt: list[str] = []
            result = conv(value, path, attempt)
            if result is not _INVALID:
                return result
        return _bad(errors, path, f"must be {wanted}, got {describe(value)}")

    return convert


def _list(item: Converter) -> Converter:
    def convert(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, list):
            return _bad(errors, path, f"must be an array, got {describe(value)}")
        before = len(errors)
        out = [item(v, f"{path}.{i}", errors) for i, v in enumerate(value)]
        return out if len(errors) == before else _INVALID

    return convert


def _dict(item: Converter) -> Converter:
    def convert(value: Any, path: str, errors: list[str]) -> Any:
        if not isinstance(value, dict):
            return _bad(errors, path, f"must be an object, got {describe(value)}")
        before = len(errors)
        out = {k: item(v, f"{path}.{k}", errors) for k, v in value.items()}
        return out if len(errors) == before else _INVALID

    return convert


def _model(model: type[PassThroughModel]) -> Converter:
    def convert(value: Any, path: str, errors: list[str]) -> Any:
        if isinstance(value, model):
            return value
        return model._validate(value, path, errors)

    return convert


def _expects(annotation: Any) -> str:
    if annotation in _SCALARS:
        return _SCALARS[annotation][1]
    origin = get_origin(annotation)
    if origin is list:
        return "an array"
    if origin is dict or (isinstance(annotation, type) and issubclass(annotation, PassThroughModel)):
        return "an object"
    if origin is Literal:
        return "one of " + ", ".join(repr(c) for c in get_args(annotation))
    return str(annotation)


def _converter(annotation: Any, owner: type) -> Converter:
    """The converter for one (resolved) annotation; TypeError for a type this module cannot check."""
    if annotation is Any:
        return _any
    if annotation in _SCALARS:
        return _SCALARS[annotation][0]
    if isinstance(annotation, type) and issubclass(annotation, PassThroughModel):
        return _model(annotation)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return _literal(args)
    if origin is Union or origin is types.UnionType:
        others = tuple(a for a in args if a is not type(None))
        inner = _converter(others[0], owner) if len(others) == 1 else _union(others, owner)
        return _optional(inner) if len(others) < len(args) else inner
    if origin is list and len(args) == 1:
        return _list(_converter(args[0], owner))
    if origin is dict and len(args) == 2 and args[0] is str:
        return _dict(_converter(args[1], owner))
    raise TypeError(f"{owner.__qualname__}: annotation {annotation!r} is not supported by cni_plugin.config")


# --- models ----------------------------------------------------------------------------------------------


class _Field:
    """A compiled key: attribute name, JSON key, converter and the FieldSpec's rules."""

    __slots__ = ("name", "json_key", "convert", "spec")

    def __init__(self, name: str, json_key: str, convert: Converter, spec: FieldSpec) -> None:
        self.name, self.json_key, self.convert, self.spec = name, json_key, convert, spec

    def value(self, raw: Any, path: str, errors: list[str]) -> Any:
        spec = self.spec
        if spec.before is not None:
            try:
                raw = spec.before(raw)
            except ValueError as exc:
                return _bad(errors, path, str(exc))
        value = self.convert(raw, path, errors)
        if value is _INVALID or value is None:
            return value
        if spec.ge is not None and value < spec.ge:
            return _bad(errors, path, f"must be >= {spec.ge}, got {value}")
        if spec.gt is not None and value <= spec.gt:
            return _bad(errors, path, f"must be > {spec.gt}, got {value}")
        if spec.le is not None and value > spec.le:
            return _bad(errors, path, f"must be <= {spec.le}, got {value}")
        if spec.lt is not None and value >= spec.lt:
            return _bad(errors, path, f"must be < {spec.lt}, got {value}")
        if spec.check is not None:
            try:
                value = spec.check(value)
            except ValueError as exc:
                return _bad(errors, path, str(exc))
        return value

    def default(self) -> Any:
        factory = self.spec.default_factory
        return factory() if factory is not None else self.spec.default


class _Schema:
    __slots__ = ("fields", "by_json_key", "by_name")

    def __init__(self, fields: list[_Field]) -> None:
        self.fields = fields
        self.by_json_key = {f.json_key: f for f in fields}
        self.by_name = {f.name: f for f in fields}


def _declared(cls: type) -> dict[str, Any]:
    """Annotated public class attributes of `cls` and its bases, base keys first."""
    out: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        for name, annotation in klass.__dict__.get("__annotations__", {}).items():
            if name.startswith("_") or (isinstance(annotation, str) and annotation.startswith("ClassVar")):
                continue
            out[name] = annotation
    return out


def _resolve(cls: type, name: str, annotation: Any) -> Any:
    if not isinstance(annotation, str):
        return annotation
    for klass in cls.__mro__:  # evaluate where the key was declared
        if name in klass.__dict__.get("__annotations__", {}):
            module = sys.modules[klass.__module__].__dict__
            return eval(annotation, module, dict(vars(klass)))  # our own class bodies, as typing does
    raise AssertionError(name)


class PassThroughModel:
    """Base for config models: unknown keys are kept, values are immutable once parsed.

    Construct from JSON with `parse_config(Model, data)`; `Model(attr=value, ...)` takes attribute
    names (for code and tests) and validates the same way.
    """

    def __init__(self, **values: Any) -> None:
        schema = type(self)._schema()
        unknown = sorted(set(values) - set(schema.by_name))
        if unknown:
            raise TypeError(f"{type(self).__name__}() got unknown keys {unknown}")
        data = {schema.by_name[n].json_key: v for n, v in values.items()}
        errors: list[str] = []
        built = type(self)._validate(data, "", errors)
        if errors:
            raise InvalidConfig("invalid network configuration", "; ".join(errors))
        self.__dict__.update(built.__dict__)

    @classmethod
    def _schema(cls) -> _Schema:
        schema = cls.__dict__.get("_pycni_schema")
        if schema is None:
            fields = []
            for name, annotation in _declared(cls).items():
                declared = getattr(cls, name, _REQUIRED)
                spec = declared if isinstance(declared, FieldSpec) else FieldSpec(declared)
                convert = _converter(_resolve(cls, name, annotation), cls)
                fields.append(_Field(name, spec.alias or name, convert, spec))
            schema = _Schema(fields)
            type.__setattr__(cls, "_pycni_schema", schema)
        return schema

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook: rewrite the raw JSON object before its keys are read (override; default: as is)."""
        return data

    def _check(self) -> None:
        """Hook: rules across keys, run once every key is valid; raise ValueError to refuse."""

    @classmethod
    def _validate(cls: type[M], data: Any, path: str, errors: list[str]) -> M:
        if not isinstance(data, dict):
            return _bad(errors, path, f"must be an object, got {describe(data)}")  # type: ignore[no-any-return]
        schema = cls._schema()
        data = cls._prepare(data)
        before = len(errors)
        values: dict[str, Any] = {}
        for f in schema.fields:
            where = f"{path}.{f.json_key}" if path else f.json_key
            if f.json_key in data:
                values[f.name] = f.value(data[f.json_key], where, errors)
            elif f.spec.default is _REQUIRED and f.spec.default_factory is None:
                _bad(errors, where, "required")
            else:
                values[f.name] = f.default()
        if len(errors) > before:
            return _INVALID  # type: ignore[no-any-return]
        self = object.__new__(cls)
        state = self.__dict__
        state.update(values)
        state["_unknown"] = {k: v for k, v in data.items() if k not in schema.by_json_key}
        state["_thawed"] = True  # _check may still assign
        try:
            self._check()
        except ValueError as exc:
            return _bad(errors, path, str(exc))  # type: ignore[no-any-return]
        finally:
            del state["_thawed"]
        return self

    @property
    def unknown_keys(self) -> dict[str, Any]:
        """The keys of the JSON object that no declared key took (passed through, SPEC §1.4)."""
        return dict(self.__dict__["_unknown"])

    def __setattr__(self, name: str, value: Any) -> None:
        if "_thawed" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__} is frozen: cannot assign {name}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen: cannot delete {name}")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = None  # type: ignore[assignment]  # lists and dicts inside: not hashable

    def __repr__(self) -> str:
        shown = ", ".join(f"{f.name}={self.__dict__[f.name]!r}" for f in type(self)._schema().fields)
        return f"{type(self).__name__}({shown})"


class GoCaseModel(PassThroughModel):
    """A config model whose keys match case-insensitively, as Go's encoding/json matches fields.

    containerd (go-cni) marshals runtimeConfig structs without JSON tags: portMappings arrive as
    HostPort/ContainerPort/Protocol/HostIP and bandwidth as IngressRate/...; the reference plugins
    read them because encoding/json ignores case. An exact match wins over a case-folded one.
    """

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        canonical = {f.json_key.lower(): f.json_key for f in cls._schema().fields}
        matched = dict(data)
        for name in data:
            json_key = canonical.get(str(name).lower())
            if json_key and json_key != name and json_key not in data:
                matched[json_key] = matched.pop(name)
        return matched


def parse_config(model: type[M], data: Any, where: str = "") -> M:
    """Validate `data` against `model`; any failure is code 7 naming every bad key.

    `where` prefixes every key path (the part of the config `data` came from)."""
    errors: list[str] = []
    parsed = model._validate(data, where, errors)
    if errors:
        raise InvalidConfig("invalid network configuration", "; ".join(errors))
    return parsed
