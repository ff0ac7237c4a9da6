"""Length and time units: one table, read by the TIFF converter (OME-XML and ImageJ spellings) and by
the neuroglancer view (the OME-NGFF axis units), so both agree on what every unit means."""

from __future__ import annotations

import math
from typing import Any

#: SI prefixes: (name, symbols, power of ten).
_PREFIXES = (
    ("yotta", ("Y",), 24), ("zetta", ("Z",), 21), ("exa", ("E",), 18), ("peta", ("P",), 15),
    ("tera", ("T",), 12), ("giga", ("G",), 9), ("mega", ("M",), 6), ("kilo", ("k",), 3),
    ("hecto", ("h",), 2), ("deca", ("da",), 1), ("", ("",), 0), ("deci", ("d",), -1),
    ("centi", ("c",), -2), ("milli", ("m",), -3), ("micro", ("µ", "μ", "u"), -6), ("nano", ("n",), -9),
    ("pico", ("p",), -12), ("femto", ("f",), -15), ("atto", ("a",), -18), ("zepto", ("z",), -21),
    ("yocto", ("y",), -24),
)


def _si(symbol: str, names: tuple[str, ...], power_of_base: int) -> dict[str, float]:
    """Every prefixed symbol and name of a unit, as a factor to the unit ``10**power_of_base``."""
    table = {}
    for prefix, symbols, power in _PREFIXES:
        factor = 10.0 ** (power - power_of_base)
        table.update({s + symbol: factor for s in symbols})
        table.update({prefix + name: factor for name in names})
    return table


#: µm per unit. Symbols are matched case-sensitively first ("Mm" megametre vs "mm"), then lower-cased.
UM_PER_UNIT = {
    **_si("m", ("meter", "metre", "meters", "metres"), -6),
    "å": 1e-4, "angstrom": 1e-4, "micron": 1.0, "microns": 1.0,
    "in": 25400.0, "inch": 25400.0, "inches": 25400.0, "ft": 304800.0, "foot": 304800.0, "feet": 304800.0,
    "yd": 914400.0, "yard": 914400.0, "mile": 1609344e3, "parsec": 3.0856775814913673e22,
    "thou": 25.4, "mil": 25.4, "li": 25400.0 / 12, "pt": 25400.0 / 72,
}
#: Seconds per unit, matched like :data:`UM_PER_UNIT`.
SECONDS_PER_UNIT = {
    **_si("s", ("second", "seconds"), 0),
    "msec": 1e-3, "sec": 1.0, "secs": 1.0,
    "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
    "h": 3600.0, "hr": 3600.0, "hour": 3600.0, "hours": 3600.0,
    "d": 86400.0, "day": 86400.0, "days": 86400.0,
}


def unit_factor(table: dict[str, float], unit: Any) -> float | None:
    """The factor of ``unit`` in ``table`` (exact symbol first, then case-insensitive), None if unknown."""
    text = str(unit).strip()
    # ImageJ stores non-ASCII units escaped in its ASCII description, e.g. "\\u00B5m".
    for escaped in ("\\u00B5", "\\u00b5", "\\u03BC", "\\u03bc"):
        text = text.replace(escaped, "µ")
    return table.get(text, table.get(text.lower()))


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def length_to_um(value: Any, unit: Any = "µm") -> float | None:
    """A length in µm, or None when the value is missing/zero or the unit is not a length (e.g. 'pixel')."""
    v = _positive(value)
    factor = unit_factor(UM_PER_UNIT, unit if unit is not None else "µm")
    if factor is None or v is None or v == 0:
        return None
    return abs(v) * factor


def time_to_seconds(value: Any, unit: Any = "s") -> float | None:
    """A duration in seconds, or None when missing, non-positive or in an unknown unit."""
    v = _positive(value)
    factor = unit_factor(SECONDS_PER_UNIT, unit if unit is not None else "s")
    if factor is None or v is None or v <= 0:
        return None
    return v * factor


def metres(unit: str | None) -> float:
    """Metres per unit of an OME-NGFF space axis; the µm the package writes when absent or unknown."""
    factor = unit_factor(UM_PER_UNIT, unit) if unit else None
    return (1.0 if factor is None else factor) * 1e-6


def seconds(unit: str | None) -> float:
    """Seconds per unit of an OME-NGFF time axis; seconds when absent or unknown."""
    factor = unit_factor(SECONDS_PER_UNIT, unit) if unit else None
    return 1.0 if factor is None else factor
