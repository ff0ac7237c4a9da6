"""OME-NGFF metadata for images: build it for writing, parse and check it for reading.

Hand-written rather than delegated to ome-zarr-py because we need both NGFF 0.4 (zarr v2) and 0.5
(zarr v3) *without* materialising the image, per-level translations that keep pyramid levels
overlaid on the full resolution, and error messages that name the file; the tests validate every
document built here against the official JSON schemas (bundled with ngff-zarr) and ome-zarr-models.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from chunked_fnet.errors import OmeZarrError

SUPPORTED_VERSIONS = ("0.4", "0.5")
DEFAULT_VERSION = "0.5"
#: The axis names this package understands, in the order NGFF requires them.
CANONICAL_AXES = ("t", "c", "z", "y", "x")
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
DEFAULT_UNITS = {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
#: Fallback channel colours (hex RGB) when a caller gives names but no colours.
DEFAULT_COLORS = ("FFFFFF", "00FFFF", "FF00FF", "FFFF00", "00FF00", "FF0000", "0000FF", "FF8000")
#: The multiscale "type" and "metadata" NGFF recommends (the strict schemas require them, with "name"):
#: how the lower levels are made, i.e. ``writer.build_pyramid``'s block mean.
PYRAMID_TYPE = "local_mean"
PYRAMID_METADATA = {
    "method": "chunked_fnet.io.writer.downsample_mean",
    "description": "block mean by the per-level factor; a partial block at the edge averages what is there",
}


@dataclass(frozen=True)
class ImageMetadata:
    """What an OME-Zarr image says about itself: axes, per-level transforms and channels.

    ``scales[level][dim]`` and ``translations[level][dim]`` map array indices to physical
    coordinates (already combined with any multiscale-wide transform).
    """

    version: str
    dims: tuple[str, ...]
    units: dict[str, str | None]
    paths: tuple[str, ...]
    scales: tuple[dict[str, float], ...]
    translations: tuple[dict[str, float], ...]
    name: str | None = None
    channel_names: tuple[str, ...] | None = None
    channel_colors: tuple[str, ...] | None = None
    display_ranges: tuple[dict[str, float], ...] | None = None  # omero 'window' of each channel
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_levels(self) -> int:
        return len(self.paths)


def check_dims(dims: Sequence[str], where: str) -> tuple[str, ...]:
    """Validate axis names: only t/c/z/y/x, no duplicates, y and x present."""
    dims = tuple(dims)
    unknown = [d for d in dims if d not in CANONICAL_AXES]
    if unknown:
        raise OmeZarrError(
            f"{where}: unsupported axis name(s) {unknown}; expected a subset of "
            f"{list(CANONICAL_AXES)} (t, c, z, y, x)"
        )
    dupes = sorted({d for d in dims if dims.count(d) > 1})
    if dupes:
        raise OmeZarrError(f"{where}: duplicate axis name(s) {dupes} in axes {list(dims)}")
    if "y" not in dims or "x" not in dims:
        raise OmeZarrError(f"{where}: axes {list(dims)} lack 'y' and/or 'x'; an image needs both")
    return dims


def canonical_order(dims: Sequence[str]) -> tuple[str, ...]:
    """Dims sorted into NGFF order (t, c, z, y, x)."""
    return tuple(d for d in CANONICAL_AXES if d in dims)


def _transforms(scale: Sequence[float], translation: Sequence[float]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"type": "scale", "scale": [float(s) for s in scale]}]
    if any(t != 0 for t in translation):
        out.append({"type": "translation", "translation": [float(t) for t in translation]})
    return out


def build_image_attrs(
    *,
    version: str,
    dims: Sequence[str],
    scales: Sequence[Mapping[str, float]],
    translations: Sequence[Mapping[str, float]],
    units: Mapping[str, str | None],
    name: str | None = None,
    channel_names: Sequence[str] | None = None,
    channel_colors: Sequence[str] | None = None,
    display_ranges: Sequence[Mapping[str, float]] | None = None,
    size_z: int = 1,
) -> dict[str, Any]:
    """The group attributes of an NGFF image with one dataset per pyramid level ("0", "1", ...).

    ``size_z`` (the full-resolution z extent; 1 without a z axis) sets the omero plane a viewer opens on.
    """
    if version not in SUPPORTED_VERSIONS:
        raise OmeZarrError(f"NGFF version {version!r} is not supported; choose one of {SUPPORTED_VERSIONS}")
    axes = [{"name": d, "type": AXIS_TYPES[d], **({"unit": units[d]} if units.get(d) else {})} for d in dims]
    datasets = [
        {
            "path": str(level),
            "coordinateTransformations": _transforms(
                [scale.get(d, 1.0) for d in dims], [trans.get(d, 0.0) for d in dims]
            ),
        }
        for level, (scale, trans) in enumerate(zip(scales, translations, strict=True))
    ]
    multiscale: dict[str, Any] = {
        "axes": axes,
        "datasets": datasets,
        "type": PYRAMID_TYPE,
        "metadata": dict(PYRAMID_METADATA),
    }
    if name:
        multiscale["name"] = name
    if version == "0.4":
        multiscale["version"] = "0.4"
    attrs: dict[str, Any] = {"multiscales": [multiscale]}
    if channel_names is not None:
        attrs["omero"] = _omero(channel_names, channel_colors, display_ranges, size_z)
    return ngff_attrs(version, **attrs)


def ngff_attrs(version: str, **metadata: Any) -> dict[str, Any]:
    """Group attributes holding NGFF ``metadata`` the way ``version`` stores them: 0.5 under ``ome``
    (with the version), 0.4 at the top level (its version lives inside multiscales, plate or well)."""
    return {"ome": {"version": "0.5", **metadata}} if version == "0.5" else dict(metadata)


def ngff_metadata(attrs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The NGFF version ("" when unstated) and metadata (without the version) of a group's attributes,
    whichever of 0.4 and 0.5 wrote them: the inverse of :func:`ngff_attrs`."""
    if isinstance(attrs.get("ome"), Mapping):
        meta = dict(attrs["ome"])
        return str(meta.pop("version", "")), meta
    for key in ("multiscales", "plate", "well"):
        obj = attrs.get(key)
        obj = obj[0] if isinstance(obj, list) and obj else obj
        if isinstance(obj, Mapping) and "version" in obj:
            return str(obj["version"]), dict(attrs)
    return "", dict(attrs)


def _omero(
    names: Sequence[str],
    colors: Sequence[str] | None,
    ranges: Sequence[Mapping[str, float]] | None,
    size_z: int = 1,
) -> dict[str, Any]:
    """The ``omero`` block: one channel per name, and ``rdefs`` naming the plane a viewer opens on.

    ``rdefs.defaultT``/``defaultZ`` (the first frame, the middle z plane, as OMERO picks) are optional in
    NGFF but required by iohub 0.2 (VisCy/Cytoland's reader), which otherwise refuses the whole image.
    """
    if size_z < 1:
        raise OmeZarrError(f"size_z must be >= 1 (the image's z extent), got {size_z}")
    if len(set(names)) != len(names):
        raise OmeZarrError(f"channel names must be unique, got {list(names)}")
    if colors is not None and len(colors) != len(names):
        raise OmeZarrError(f"{len(colors)} channel colours given for {len(names)} channels {list(names)}")
    if ranges is not None and len(ranges) != len(names):
        raise OmeZarrError(f"{len(ranges)} display ranges given for {len(names)} channels {list(names)}")
    channels = []
    for i, label in enumerate(names):
        color = (colors[i] if colors is not None else DEFAULT_COLORS[i % len(DEFAULT_COLORS)]).lstrip("#").upper()
        if len(color) != 6 or any(ch not in "0123456789ABCDEF" for ch in color):
            raise OmeZarrError(f"channel {label!r}: colour {color!r} is not a 6-digit hex RGB string")
        shown = dict(ranges[i]) if ranges is not None else {"min": 0.0, "max": 1.0, "start": 0.0, "end": 1.0}
        channels.append(
            {
                "label": str(label),
                "color": color,
                "active": True,
                "coefficient": 1.0,
                "family": "linear",
                "inverted": False,
                "window": {k: float(shown[k]) for k in ("min", "max", "start", "end")},
            }
        )
    return {"channels": channels, "rdefs": {"defaultT": 0, "defaultZ": int(size_z) // 2, "model": "color"}}


def _not_an_image(ome: Mapping[str, Any], attrs: Mapping[str, Any], where: str) -> OmeZarrError:
    """Why a group without 'multiscales' is not an image: an HCS plate or well (with the path of one of
    its fields to open instead), or not OME-Zarr at all."""
    if isinstance(ome.get("plate"), Mapping):
        wells = [str(w.get("path")) for w in ome["plate"].get("wells", []) if isinstance(w, Mapping)]
        shown = ", ".join(wells[:4]) + (", ..." if len(wells) > 4 else "")
        example = f"; open one field of it, e.g. {where}/{wells[0]}/0" if wells else ""
        return OmeZarrError(f"{where} is an HCS plate ({len(wells)} wells: {shown}), not one image{example} (predict takes whole plates)")
    if isinstance(ome.get("well"), Mapping):
        fields = [str(f.get("path")) for f in ome["well"].get("images", []) if isinstance(f, Mapping)]
        example = f", e.g. {where}/{fields[0]}" if fields else ""
        return OmeZarrError(f"{where} is a well of an HCS plate (fields {', '.join(fields)}), not one image; open one field{example}")
    return OmeZarrError(
        f"{where} is a zarr group but not an OME-Zarr image: its attributes have no 'multiscales' "
        f"(found keys {sorted(attrs)}); expected NGFF 0.4 (.zattrs 'multiscales') or 0.5 (zarr.json 'ome')"
    )


def parse_image_attrs(attrs: Mapping[str, Any], where: str, multiscale_index: int = 0) -> ImageMetadata:
    """Read NGFF 0.4 or 0.5 image attributes; raise :class:`OmeZarrError` naming ``where`` if unusable."""
    version, ome = ngff_metadata(attrs)
    if "multiscales" not in ome:
        raise _not_an_image(ome, attrs, where)
    if version not in SUPPORTED_VERSIONS:
        raise OmeZarrError(
            f"{where}: OME-NGFF version {version or '(missing)'!r} is not supported; "
            f"expected one of {SUPPORTED_VERSIONS}"
        )
    multiscales = ome["multiscales"]
    if not isinstance(multiscales, list) or not multiscales:
        raise OmeZarrError(f"{where}: 'multiscales' must be a non-empty list")
    if not 0 <= multiscale_index < len(multiscales):
        raise OmeZarrError(f"{where}: no multiscale #{multiscale_index}; it has {len(multiscales)}")
    ms = multiscales[multiscale_index]
    try:
        axes = ms["axes"]
        names = [a["name"] if isinstance(a, Mapping) else a for a in axes]
    except (KeyError, TypeError) as exc:
        raise OmeZarrError(f"{where}: multiscales[{multiscale_index}] has no valid 'axes' list") from exc
    dims = check_dims(names, where)
    units = {a["name"]: a.get("unit") for a in axes if isinstance(a, Mapping)}
    global_scale, global_trans = _read_transforms(ms.get("coordinateTransformations", []), dims, where, "multiscale")
    paths, scales, translations = [], [], []
    datasets = ms.get("datasets") or []
    if not datasets:
        raise OmeZarrError(f"{where}: multiscales[{multiscale_index}] lists no datasets")
    for ds in datasets:
        transforms = ds.get("coordinateTransformations") or []
        if not any(isinstance(tr, Mapping) and tr.get("type") == "scale" for tr in transforms):
            raise OmeZarrError(
                f"{where}: dataset {ds.get('path')!r} has no 'scale' coordinate transformation, so its voxel size is "
                "unknown; NGFF requires one (re-convert with chunked-fnet convert --voxel-size Z Y X, or add it to the metadata)"
            )
        scale, trans = _read_transforms(transforms, dims, where, f"dataset {ds.get('path')!r}")
        # NGFF applies the dataset transform first, then the multiscale-wide one.
        paths.append(str(ds["path"]))
        scales.append({d: scale[d] * global_scale[d] for d in dims})
        translations.append({d: trans[d] * global_scale[d] + global_trans[d] for d in dims})
    names_, colors, ranges = None, None, None
    omero = ome.get("omero")
    if isinstance(omero, Mapping) and isinstance(omero.get("channels"), list):
        chans = omero["channels"]
        labels = [str(ch.get("label", i)) for i, ch in enumerate(chans)]
        if len(set(labels)) == len(labels):
            names_ = tuple(labels)
        colors = tuple(str(ch.get("color", "FFFFFF")) for ch in chans)
        ranges = tuple(dict(ch.get("window", {})) for ch in chans)
    return ImageMetadata(
        version=version,
        dims=dims,
        units={d: units.get(d) for d in dims},
        paths=tuple(paths),
        scales=tuple(scales),
        translations=tuple(translations),
        name=ms.get("name"),
        channel_names=names_,
        channel_colors=colors,
        display_ranges=ranges,
    )


def _read_transforms(
    transforms: Sequence[Mapping[str, Any]], dims: tuple[str, ...], where: str, what: str
) -> tuple[dict[str, float], dict[str, float]]:
    scale = {d: 1.0 for d in dims}
    trans = {d: 0.0 for d in dims}
    for tr in transforms or []:
        kind = tr.get("type")
        if kind == "identity":
            continue
        key = {"scale": "scale", "translation": "translation"}.get(kind)
        if key is None:
            raise OmeZarrError(f"{where}: {what} has an unsupported coordinate transformation {kind!r}")
        values = tr.get(key)
        if values is None:
            raise OmeZarrError(f"{where}: {what} {kind} transform stores its values in a 'path'; only inline values are supported")
        if len(values) != len(dims):
            raise OmeZarrError(f"{where}: {what} {kind} has {len(values)} values for {len(dims)} axes {list(dims)}")
        target = scale if kind == "scale" else trans
        for d, v in zip(dims, values, strict=True):
            v = float(v)
            if not math.isfinite(v) or (kind == "scale" and d != "c" and not v > 0):
                expected = "a finite voxel size > 0" if kind == "scale" else "a finite offset"
                raise OmeZarrError(f"{where}: {what} {kind} for axis {d!r} is {v:g}; expected {expected}")
            target[d] = v
    return scale, trans
