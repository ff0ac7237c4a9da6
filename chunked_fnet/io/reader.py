"""Open OME-Zarr images (NGFF 0.4 and 0.5, local or any fsspec URL) as lazy, labelled xarray arrays.

Nothing is read but metadata until the caller computes; the store is opened read-only, so reading can
never modify the input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr

from chunked_fnet.errors import OmeZarrError
from chunked_fnet.io.ngff import ImageMetadata, parse_image_attrs
from chunked_fnet.io.store import describe, is_url, open_store, redact

BF2RAW = "bioformats2raw.layout"


def _open_group(path: Any, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    where = describe(path)
    if not is_url(path) and not isinstance(path, zarr.abc.store.Store):
        local = Path(str(path).removeprefix("file://"))
        if not local.exists():
            raise OmeZarrError(f"{where}: no such file or directory (expected an OME-Zarr image)")
        if not local.is_dir():
            raise OmeZarrError(f"{where} is a file, not an OME-Zarr directory")
    try:
        node = zarr.open(open_store(path, read_only=True, storage_options=storage_options), mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, KeyError) as exc:
        raise OmeZarrError(
            f"{where} is not a zarr store: no zarr.json (zarr v3) or .zgroup/.zattrs (zarr v2) found; "
            "expected an OME-Zarr image"
        ) from exc
    except (OSError, TimeoutError) as exc:  # network stores: refused, unreachable, denied (aiohttp errors are OSErrors)
        raise OmeZarrError(f"{where}: cannot be read ({type(exc).__name__}: {redact(str(exc))}); expected a reachable OME-Zarr image") from None
    if not isinstance(node, zarr.Group):
        raise OmeZarrError(f"{where} is a bare zarr array, not an OME-Zarr image (a group with 'multiscales')")
    return node


def _resolve_series(group: zarr.Group, series: str | int | None, where: str) -> tuple[zarr.Group, str]:
    """Follow a bioformats2raw collection (series "0", "1", ...) down to one image group."""
    attrs = group.attrs.asdict()
    ome = attrs.get("ome", attrs)
    if BF2RAW not in ome or "multiscales" in ome:
        if series not in (None, 0, "0"):
            raise OmeZarrError(f"{where} is a single image; it has no series {series!r}")
        return group, where
    available = sorted((k for k, v in group.members() if isinstance(v, zarr.Group) and k.isdigit()), key=int)
    if series is None:
        if len(available) != 1:
            raise OmeZarrError(
                f"{where} is a collection of {len(available)} images (series {available}); choose one with series=..."
            )
        series = available[0]
    if str(series) not in available:
        raise OmeZarrError(f"{where}: no series {series!r}; available series are {available}")
    return group[str(series)], f"{where}/{series}"  # type: ignore[return-value]


def read_metadata(path: Any, *, series: str | int | None = None, storage_options: Mapping[str, Any] | None = None) -> ImageMetadata:
    """Parse the NGFF metadata of an image without touching its pixels."""
    group, where = _resolve_series(_open_group(path, storage_options), series, describe(path))
    return parse_image_attrs(group.attrs.asdict(), where)


def open_level_array(
    path: Any,
    *,
    level: int = 0,
    series: str | int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[zarr.Array, ImageMetadata, str]:
    """The read-only zarr array of one pyramid level, its image's metadata, and a printable name.

    For code that reads many small windows (training patches, chunk tasks), where going through
    dask for each read would cost more than the read.
    """
    group, where = _resolve_series(_open_group(path, storage_options), series, describe(path))
    meta = parse_image_attrs(group.attrs.asdict(), where)
    if not 0 <= level < meta.n_levels:
        raise OmeZarrError(
            f"{where}: no pyramid level {level}; the image has {meta.n_levels} level(s), 0..{meta.n_levels - 1}"
        )
    try:
        arr = group[meta.paths[level]]
    except KeyError as exc:
        raise OmeZarrError(f"{where}: level {level} names dataset {meta.paths[level]!r}, which is missing") from exc
    if not isinstance(arr, zarr.Array):
        raise OmeZarrError(f"{where}: dataset {meta.paths[level]!r} is a group, expected an array")
    if arr.ndim != len(meta.dims):
        raise OmeZarrError(
            f"{where}: dataset {meta.paths[level]!r} has {arr.ndim} dimensions but the axes are {list(meta.dims)}"
        )
    return arr, meta, where


def open_image(
    path: Any,
    *,
    level: int = 0,
    series: str | int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.DataArray:
    """Open one pyramid level of an OME-Zarr image as a dask-backed :class:`xarray.DataArray`.

    Dims follow the image's ``axes``; space/time coordinates are physical (scale and translation of
    that level); the channel coordinate holds ``omero`` channel names when present. ``attrs`` keep
    the NGFF version, units, channel colours and the source, so writers can carry them forward.
    """
    arr, meta, where = open_level_array(path, level=level, series=series, storage_options=storage_options)
    data = da.from_zarr(arr)
    coords: dict[str, Any] = {}
    for axis, dim in enumerate(meta.dims):
        n = arr.shape[axis]
        if dim == "c":
            names = meta.channel_names
            if names is not None and len(names) == n:
                coords["c"] = ("c", np.asarray(names, dtype=object))
            else:
                coords["c"] = ("c", np.arange(n))
        else:
            values = meta.translations[level][dim] + meta.scales[level][dim] * np.arange(n)
            coords[dim] = xr.Variable(dim, values, attrs={"units": meta.units.get(dim) or ""})
    attrs = {
        "source": where,
        "ngff_version": meta.version,
        "level": level,
        "n_levels": meta.n_levels,
        "scale": {d: meta.scales[level][d] for d in meta.dims if d != "c"},
        "translation": {d: meta.translations[level][d] for d in meta.dims if d != "c"},
        "units": {d: u for d, u in meta.units.items() if d != "c"},
    }
    if meta.channel_colors is not None and "c" in meta.dims:
        attrs["channel_colors"] = list(meta.channel_colors)
    return xr.DataArray(data, dims=meta.dims, coords=coords, name=meta.name or Path(str(where)).name, attrs=attrs)


def select_channels(image: xr.DataArray, channels: str | int | Sequence[str | int]) -> xr.DataArray:
    """Pick channels by name or index; an unknown one raises, naming the image and the channels it has."""
    if "c" not in image.dims:
        raise OmeZarrError(f"{image.attrs.get('source', image.name)}: image has no channel axis (dims {list(image.dims)})")
    single = isinstance(channels, (str, int, np.integer))
    wanted = [channels] if single else list(channels)
    names = [str(v) for v in image["c"].values]
    index = []
    for ch in wanted:
        if isinstance(ch, (int, np.integer)) and not isinstance(ch, bool):
            if not -len(names) <= ch < len(names):
                raise OmeZarrError(
                    f"{image.attrs.get('source', image.name)}: channel index {ch} is out of range; "
                    f"the image has {len(names)} channels {names}"
                )
            index.append(int(ch) % len(names))
        elif str(ch) in names:
            index.append(names.index(str(ch)))
        else:
            raise OmeZarrError(
                f"{image.attrs.get('source', image.name)}: no channel named {ch!r}; available channels are {names}"
            )
    out = image.isel(c=index[0] if single else index)
    return out


def channel_index(image: xr.DataArray, channel: str | int, what: str) -> int:
    """Index of a channel given by name or index; errors name the image and its channels."""
    names = [str(c) for c in image["c"].values] if "c" in image.dims else []
    if "c" not in image.dims:
        if channel in (0, "0"):
            return 0
        raise OmeZarrError(f"{image.attrs['source']}: has no channel axis, cannot select {what} channel {channel!r}")
    if isinstance(channel, int) or str(channel).lstrip("-").isdigit():
        i = int(channel)
        if not -len(names) <= i < len(names):
            raise OmeZarrError(f"{image.attrs['source']}: {what} channel index {i} out of range; channels are {names}")
        return i % len(names)
    if str(channel) not in names:
        raise OmeZarrError(f"{image.attrs['source']}: no {what} channel named {channel!r}; channels are {names}")
    return names.index(str(channel))


def spatial_frame(image: xr.DataArray, t: int | None, c: int) -> xr.DataArray:
    """One time point of one channel as a (z, y, x) array; 3D models need the z axis."""
    sel = {}
    if "t" in image.dims:
        sel["t"] = t or 0
    if "c" in image.dims:
        sel["c"] = c
    frame = image.isel(sel)
    if "z" not in frame.dims:
        raise OmeZarrError(f"{image.attrs['source']}: a 3D model needs a z axis; the image has dims {list(image.dims)}")
    return frame.transpose("z", "y", "x")


def window_reader(array: zarr.Array, dims: Sequence[str], t: int | None, channel: int) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """Read (z, y, x) windows of one time point and channel straight from a level's zarr array."""
    dims = tuple(dims)

    def read(window: tuple[slice, ...]) -> np.ndarray:
        index: list[Any] = []
        for d in dims:
            if d == "t":
                index.append(t or 0)
            elif d == "c":
                index.append(channel)
            else:
                index.append(window[("z", "y", "x").index(d)])
        return np.asarray(array[tuple(index)], dtype=np.float32)

    return read
