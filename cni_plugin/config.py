"""Plugin configuration models (pydantic) and the translation of their errors into code 7.

Unknown keys pass through (SPEC §1.4): models allow extra fields. A bad key or value is an
InvalidConfig naming the key path, e.g. `ipam.ranges.0.0.subnet: ...`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from .spec.errors import InvalidConfig

M = TypeVar("M", bound=BaseModel)


class PassThroughModel(BaseModel):
    """Base for config models: unknown keys are kept, values are immutable once parsed."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class GoCaseModel(PassThroughModel):
    """A config model whose keys match case-insensitively, as Go's encoding/json matches fields.

    containerd (go-cni) marshals runtimeConfig structs without JSON tags: portMappings arrive as
    HostPort/ContainerPort/Protocol/HostIP and bandwidth as IngressRate/...; the reference plugins
    read them because encoding/json ignores case. An exact match wins over a case-folded one.
    """

    @model_validator(mode="before")
    @classmethod
    def _match_go_case(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        canonical = {(field.alias or name).lower(): field.alias or name for name, field in cls.model_fields.items()}
        matched = dict(value)
        for key in value:
            name = canonical.get(str(key).lower())
            if name and name != key and name not in value:
                matched[name] = matched.pop(key)
        return matched


def _location(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(config)"


def parse_config(model: type[M], data: Any, where: str = "") -> M:
    """Validate `data` against `model`; any failure is code 7 naming every bad key."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        prefix = f"{where}." if where else ""
        problems = [f"{prefix}{_location(e['loc'])}: {e['msg']}" for e in exc.errors()]
        raise InvalidConfig("invalid network configuration", "; ".join(problems)) from exc
