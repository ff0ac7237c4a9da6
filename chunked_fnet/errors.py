"""Exceptions with messages meant for the person at the keyboard: what was wrong, where, what was expected."""

from __future__ import annotations


class ChunkedFnetError(Exception):
    """Base class of every error this package raises on purpose (the CLI prints these without a traceback)."""


class OmeZarrError(ChunkedFnetError, ValueError):
    """An OME-Zarr store is missing, malformed, or does not hold what was asked for."""


class InputError(ChunkedFnetError, ValueError):
    """A user-supplied argument or file is unusable."""


class OutputExistsError(ChunkedFnetError, FileExistsError):
    """Refusing to overwrite an existing output without an explicit ``overwrite``."""


def one_line(text: object) -> str:
    """``text`` with every run of whitespace (newlines included) made one space: error messages are one line."""
    return " ".join(str(text).split())
