"""Command-line flags generated from a pydantic model's fields: a setting's type, choices and help are
written once, in the model, so a YAML key and its flag cannot drift apart or go missing."""

from __future__ import annotations

import argparse
import types
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo


def str_or_int(text: str) -> str | int:
    """A ``str | int`` value as YAML would read it: digits are an index, anything else a name."""
    return int(text) if text.lstrip("-").isdigit() else text


def _without_none(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        rest = [a for a in get_args(annotation) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return annotation


def _scalar(annotation: Any) -> Any:
    if annotation in (int, float, str):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType) and set(get_args(annotation)) == {str, int}:
        return str_or_int
    return None


def _argument(name: str, field: FieldInfo, metavar: Sequence[str] | None) -> dict[str, Any]:
    """argparse keywords for one field: choices from a Literal, ``nargs`` from a fixed-length tuple,
    ``--x/--no-x`` for a bool."""
    annotation = _without_none(field.annotation)
    if get_origin(annotation) in (Union, types.UnionType):  # a value or a keyword: (Z, Y, X) | "auto", float | "auto"
        words = [w for a in get_args(annotation) if get_origin(a) is Literal for w in get_args(a)]
        rest = [a for a in get_args(annotation) if get_origin(a) is not Literal and a is not type(None)]  # None: a keyword's value
        if words and len(rest) == 1:
            inner = _argument(name, FieldInfo(annotation=rest[0]), metavar)
            convert = inner.get("type", str)
            inner["type"] = lambda text, convert=convert: text if text in words else convert(text)
            if "nargs" in inner:  # the keyword alone, or the full tuple
                inner["nargs"] = "+"
                inner["metavar"] = "N|" + "|".join(words)
            inner["metavar"] = inner.get("metavar") or f"{convert.__name__.upper()}|{'|'.join(words)}"
            return inner
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if get_origin(annotation) is Literal:
        choices = get_args(annotation)
        return {"choices": choices, "type": type(choices[0])}
    if get_origin(annotation) is tuple:
        items = get_args(annotation)
        if len(set(items)) == 1 and Ellipsis not in items and _scalar(items[0]) is not None:
            return {"nargs": len(items), "type": _scalar(items[0]), "metavar": tuple(metavar or [name.upper()] * len(items))}
    if _scalar(annotation) is not None:
        return {"type": _scalar(annotation)}
    raise TypeError(f"no command-line flag for field {name!r} of type {annotation}: teach chunked_fnet.flags this type")


def _help(field: FieldInfo) -> str:
    text = (field.description or "").replace("%", "%%")
    if field.default is not None and not isinstance(field.default, bool):
        shown = " ".join(map(str, field.default)) if isinstance(field.default, tuple) else field.default
        text += f" (default: {shown})"
    return text


def add_model_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    model: type[BaseModel],
    spellings: Mapping[str, Sequence[str]] | None = None,
    metavars: Mapping[str, Sequence[str]] | None = None,
) -> None:
    """One flag per field of ``model``: ``--field-name``, or the spellings given for it (the first is the
    one help shows first). A flag not given parses to None, so it never overrides a config file."""
    for name, field in model.model_fields.items():
        flags = (spellings or {}).get(name) or (f"--{name.replace('_', '-')}",)
        parser.add_argument(*flags, dest=name, default=None, help=_help(field), **_argument(name, field, (metavars or {}).get(name)))


def model_overrides(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The fields whose flags were given, as values for ``model`` (tuples where the field is one)."""
    given = {name: getattr(args, name, None) for name in model.model_fields}
    # a list of one keyword ("--patch-shape auto") is that keyword; any other list a tuple
    return {
        name: (v[0] if len(v) == 1 and isinstance(v[0], str) else tuple(v)) if isinstance(v, list) else v
        for name, v in given.items() if v is not None
    }
