"""OME-Zarr high-content-screening plates (NGFF 0.4 / zarr v2 and 0.5 / zarr v3): find a plate's fields
and write an output plate with the same layout.

A plate is a group with ``plate`` metadata (rows, columns, wells ``[{path: "A/1", rowIndex, columnIndex}]``);
each well ``PLATE.zarr/A/1`` is a group with ``well`` metadata listing its fields (``images: [{path: "0"}]``),
and each field ``PLATE.zarr/A/1/0`` is an ordinary OME-Zarr image, predicted like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import zarr

from chunked_fnet.errors import InputError, OmeZarrError
from chunked_fnet.io.ngff import ngff_attrs, ngff_metadata
from chunked_fnet.io.reader import open_zarr_group
from chunked_fnet.io.store import describe, is_url, open_store


@dataclass(frozen=True)
class Plate:
    """A plate's metadata and its fields, each ``(well path, field path)``, in the plate's order."""

    path: str
    version: str
    plate: dict[str, Any]  # the ``plate`` metadata, without ``version``
    wells: dict[str, dict[str, Any]]  # well path -> its ``well`` metadata, without ``version``
    fields: tuple[tuple[str, str], ...]

    def select(self, wells: Sequence[str] | None) -> list[tuple[str, str]]:
        """The fields of the chosen wells (all when None), in the plate's order; an unknown well is refused."""
        if not wells:
            return list(self.fields)
        wanted = [w.strip("/") for w in wells]
        unknown = [w for w in wanted if w not in self.wells]
        if unknown:
            raise InputError(f"{self.path}: no well {', '.join(unknown)}; the plate's wells are {sorted(self.wells)}")
        return [f for f in self.fields if f[0] in wanted]


def is_plate(path: Any) -> bool:
    """Whether ``path`` is a plate (a group with ``plate`` metadata); False for an image or a non-zarr path."""
    try:
        group = open_zarr_group(path, None)
    except OmeZarrError:
        return False
    return "plate" in ngff_metadata(group.attrs.asdict())[1]


def read_plate(path: str) -> Plate:
    """The plate at ``path``: its metadata and every field listed by its wells."""
    where = describe(path)
    group = open_zarr_group(path, None)
    version, attrs = ngff_metadata(group.attrs.asdict())
    if "plate" not in attrs:
        raise OmeZarrError(f"{where} is not an OME-Zarr plate (no 'plate' metadata)")
    plate = dict(attrs["plate"])
    version = version or ("0.5" if group.metadata.zarr_format == 3 else "0.4")
    plate.pop("version", None)
    wells: dict[str, dict[str, Any]] = {}
    fields: list[tuple[str, str]] = []
    for entry in plate.get("wells", []):
        well_path = str(entry["path"]).strip("/")
        try:
            node = group[well_path]
        except KeyError:
            raise OmeZarrError(f"{where}: the plate lists well {well_path}, but {where}/{well_path} does not exist") from None
        meta = dict(ngff_metadata(node.attrs.asdict())[1].get("well") or {})
        if "images" not in meta:
            raise OmeZarrError(f"{where}/{well_path} has no 'well' metadata listing its fields (images)")
        meta.pop("version", None)
        wells[well_path] = meta
        fields += [(well_path, str(image["path"]).strip("/")) for image in meta["images"]]
    return Plate(where, version, plate, wells, tuple(fields))


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a local path or a URL (keeping a URL's query, if any)."""
    base, _, query = root.partition("?") if is_url(root) else (root, "", "")
    joined = "/".join([base.rstrip("/"), *parts])
    return f"{joined}?{query}" if query else joined


def plate_metadata(plate: Plate, fields: Sequence[tuple[str, str]], version: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The output plate's attributes and each of its wells' attributes: the input's rows, columns and
    acquisitions, the wells that hold at least one of ``fields``, and those fields in each well."""
    def attrs(key: str, value: dict[str, Any]) -> dict[str, Any]:  # NGFF 0.4 keeps the version inside each object
        return ngff_attrs(version, **{key: value if version == "0.5" else {**value, "version": "0.4"}})

    kept: dict[str, list[str]] = {}
    for well, field in fields:
        kept.setdefault(well, []).append(field)
    meta = dict(plate.plate)
    meta["wells"] = [w for w in plate.plate.get("wells", []) if str(w["path"]).strip("/") in kept]
    meta["field_count"] = max((len(v) for v in kept.values()), default=0)
    wells = {}
    for well, names in kept.items():
        images = [im for im in plate.wells[well]["images"] if str(im["path"]).strip("/") in names]
        wells[well] = attrs("well", {**plate.wells[well], "images": images})
    return attrs("plate", meta), wells


def create_plate(out: str, plate: Plate, fields: Sequence[tuple[str, str]], version: str) -> None:
    """Write (or, on a resume, write again) the output plate's metadata, root and well groups, for the
    predicted ``fields``; the field images themselves are created by the prediction."""
    root_attrs, wells = plate_metadata(plate, fields, version)
    root = zarr.open_group(open_store(out, read_only=False), mode="a", zarr_format=3 if version == "0.5" else 2)
    for well, attrs in wells.items():
        root.require_group(well.split("/")[0])  # the row group, then the well inside it
        root.require_group(well).update_attributes(attrs)
    root.update_attributes(root_attrs)  # last: a reader sees a plate only once its wells exist
