"""Configs as validated data: YAML files read into pydantic models, with errors a person can act on."""

from __future__ import annotations

import difflib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from chunked_fnet.errors import InputError
from chunked_fnet.io.store import redact

M = TypeVar("M", bound=BaseModel)


def _fields(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names of the (possibly nested) model that ``loc`` points into."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return []
        current = field.annotation
    return list(getattr(current, "model_fields", {}))


def _got(err: Mapping[str, Any]) -> str:
    """What was given, when pydantic's message does not say it (our own validators do)."""
    value = err.get("input")
    if isinstance(value, Mapping) or "input" not in err or err["type"] == "value_error":
        return ""
    text = repr(value)
    return f" (got {text if len(text) <= 60 else text[:57] + '...'})"


def explain(model: type[BaseModel] | None, exc: ValidationError, where: str, limit: int = 5) -> str:
    """The one way validation errors reach a person: one line, each problem naming its field; an unknown
    field gets the closest known one of ``model`` suggested, a bad value what was given."""
    problems = []
    for err in exc.errors()[:limit]:
        loc = tuple(err["loc"])
        name = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields(model, loc), n=1) if model else []
            problems.append(f"unknown field {name!r}" + (f"; did you mean {close[0]!r}?" if close else ""))
        elif err["type"] == "missing":
            problems.append(f"missing required field {name!r}")
        else:
            problems.append(f"field {name!r}: {err['msg']}{_got(err)}")
    if exc.error_count() > limit:
        problems.append(f"and {exc.error_count() - limit} more problem(s)")
    return f"{where}: {'; '.join(problems)}".replace("\n", " ")


def build(model: type[M], data: Mapping[str, Any], where: str) -> M:
    """``model(**data)``, or an :class:`InputError` saying in one line what is wrong and where."""
    try:
        return model(**data)
    except ValidationError as exc:
        raise InputError(explain(model, exc, where)) from None


def load_yaml_config(model: type[M], path: str | Path, overrides: Mapping[str, Any] | None = None) -> M:
    """Read ``path`` (YAML mapping) into ``model``, applying ``overrides`` (non-None values) on top."""
    data = read_yaml_mapping(path)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build(model, data, f"config {path}")


def read_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """The settings mapping of a YAML config file, or an :class:`InputError` saying why it is not one."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"config file {path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


# Run records (a prediction's ``run.json``, a training run's ``config.yaml``) are compared field by field
# before a resume, so that a run is finished only with the settings it was started with.
def differences(recorded: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """What differs between two run records, one readable line per field (floats within 1e-9)."""
    out = []
    for key in sorted(set(recorded) | set(current)):
        a, b = recorded.get(key), current.get(key)
        name = f"{prefix}{key}"
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{name}.")
        elif not _same(a, b):
            out.append(f"{name}: interrupted run {redact(json.dumps(a))}, now {redact(json.dumps(b))}")
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b
