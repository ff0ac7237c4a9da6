"""Configs as validated data: YAML files read into pydantic models, with errors a person can act on."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from chunked_fnet.errors import InputError

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


def explain(model: type[BaseModel], exc: ValidationError, where: str) -> str:
    """One line per problem; an unknown key gets the closest known one suggested."""
    problems = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        name = ".".join(str(p) for p in loc) or "config"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _fields(model, loc), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(f"unknown key {name!r}{hint}")
        else:
            problems.append(f"{name}: {err['msg']}")
    return f"{where}: " + "; ".join(problems)


def build(model: type[M], data: Mapping[str, Any], where: str) -> M:
    try:
        return model(**data)
    except ValidationError as exc:
        raise InputError(explain(model, exc, where)) from None


def load_yaml_config(model: type[M], path: str | Path, overrides: Mapping[str, Any] | None = None) -> M:
    """Read ``path`` (YAML mapping) into ``model``, applying ``overrides`` (non-None values) on top."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise InputError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise InputError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build(model, data, f"config {path}")
