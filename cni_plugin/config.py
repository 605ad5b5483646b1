"""Plugin configuration models (pydantic) and the translation of their errors into code 7.

Unknown keys pass through (SPEC §1.4): models allow extra fields. A bad key or value is an
InvalidConfig naming the key path, e.g. `ipam.ranges.0.0.subnet: ...`.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from .spec.errors import InvalidConfig

M = TypeVar("M", bound=BaseModel)


class PassThroughModel(BaseModel):
    """Base for config models: unknown keys are kept, values are immutable once parsed."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


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
