"""Open OME-Zarr images (NGFF 0.4 and 0.5, local or any fsspec URL) as lazy, labelled xarray arrays.

Nothing is read but metadata until the caller computes; the store is opened read-only, so reading can
never modify the input.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize

from chunked_fnet.errors import PERMANENT_ERRNOS, ChunkedFnetError, OmeZarrError, UnreadableChunkError, one_line
from chunked_fnet.io.completeness import chunk_ranges
from chunked_fnet.io.ngff import ImageMetadata, ngff_metadata, parse_image_attrs
from chunked_fnet.io.store import describe, is_url, open_store, redact, refuse_url_credentials

BF2RAW = "bioformats2raw.layout"
_METADATA_FILES = ("zarr.json", ".zgroup", ".zattrs", ".zarray")
# what zarr raises on a metadata document that is not JSON (JSONDecodeError, UnicodeDecodeError), or is
# JSON of the wrong shape (MetadataValidationError is a ValueError; a list where an object belongs
# gives AttributeError/TypeError)
_BAD_METADATA = (ValueError, TypeError, AttributeError)


def _stored_bytes(store: Any, key: str) -> bytes | None:
    """The bytes of one key of a zarr store, or None when it is missing or cannot be read."""
    try:
        from zarr.core.buffer import default_buffer_prototype
        from zarr.core.sync import sync

        buffer = sync(store.get(key, prototype=default_buffer_prototype()))
    except Exception:  # noqa: BLE001 - only used to word a message about an error already caught
        return None
    return None if buffer is None else buffer.to_bytes()


def _damaged_metadata(store: Any, node: str, where: str, exc: BaseException) -> OmeZarrError:
    """One line naming the metadata document of ``node`` (a path inside ``store``) that zarr could not read."""
    damaged = "the store is damaged: restore this file from a copy, or write the image again"
    for name in _METADATA_FILES:
        key = f"{node.strip('/')}/{name}".lstrip("/")
        raw = _stored_bytes(store, key)
        if raw is None:
            continue
        try:
            doc = json.loads(raw)
        except ValueError as bad:  # JSONDecodeError, UnicodeDecodeError
            return OmeZarrError(one_line(f"{where}/{key} is not valid JSON ({type(bad).__name__}: {bad}); {damaged}"))
        if not isinstance(doc, dict):
            return OmeZarrError(f"{where}/{key} holds a JSON {type(doc).__name__}, not an object; {damaged}")
    return OmeZarrError(
        one_line(f"{where}/{node.strip('/')}".rstrip("/") + f": zarr cannot read its metadata ({type(exc).__name__}: "
                 f"{redact(str(exc))}); the store is damaged or not zarr: restore it from a copy, or write the image again")
    )


def open_zarr_group(path: Any, storage_options: Mapping[str, Any] | None) -> zarr.Group:
    """The zarr group at ``path``, read-only; any failure is one line naming the path (images and plates alike)."""
    where = describe(path)
    if not is_url(path) and not isinstance(path, zarr.abc.store.Store):
        local = Path(str(path).removeprefix("file://"))
        if not local.exists():
            raise OmeZarrError(f"{where}: no such file or directory (expected an OME-Zarr image)")
        if not local.is_dir():
            raise OmeZarrError(f"{where} is a file, not an OME-Zarr directory")
    elif is_url(path):
        refuse_url_credentials(path)  # here, not only in open_store: the except clauses below would reword it
    store = None
    try:
        store = open_store(path, read_only=True, storage_options=storage_options)
        node = zarr.open(store, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, KeyError) as exc:
        raise OmeZarrError(
            f"{where} is not a zarr store: no zarr.json (zarr v3) or .zgroup/.zattrs (zarr v2) found; "
            "expected an OME-Zarr image"
        ) from exc
    except (OSError, TimeoutError) as exc:  # network stores: refused, unreachable, denied (aiohttp errors are OSErrors)
        raise OmeZarrError(one_line(f"{where}: cannot be read ({type(exc).__name__}: {redact(str(exc))}); expected a reachable OME-Zarr image")) from None
    except _BAD_METADATA as exc:
        if store is None:  # the path or URL itself was refused (e.g. an unknown protocol)
            raise OmeZarrError(one_line(f"{where}: cannot be opened ({type(exc).__name__}: {redact(str(exc))}); expected an OME-Zarr image")) from None
        raise _damaged_metadata(store, "", where.rstrip("/"), exc) from exc
    if not isinstance(node, zarr.Group):
        raise OmeZarrError(f"{where} is a bare zarr array, not an OME-Zarr image (a group with 'multiscales')")
    return node


def _resolve_series(group: zarr.Group, series: str | int | None, where: str) -> tuple[zarr.Group, str]:
    """Follow a bioformats2raw collection (series "0", "1", ...) down to one image group."""
    _, ome = ngff_metadata(group.attrs.asdict())
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
    group, where = _resolve_series(open_zarr_group(path, storage_options), series, describe(path))
    return parse_image_attrs(group.attrs.asdict(), where)


def image_attributes(path: Any, *, series: str | int | None = None, storage_options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The image group's attributes as stored now (read again at each call: a writer may have changed them)."""
    group, _ = _resolve_series(open_zarr_group(path, storage_options), series, describe(path))
    return group.attrs.asdict()


def open_level_array(
    path: Any,
    *,
    level: int = 0,
    series: str | int | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> tuple[zarr.Array, ImageMetadata, str]:
    """The read-only zarr array of one pyramid level, its image's metadata, and a printable name.

    For code that reads many small regions (training patches, chunk tasks), where going through
    dask for each read would cost more than the read.
    """
    group, where = _resolve_series(open_zarr_group(path, storage_options), series, describe(path))
    meta = parse_image_attrs(group.attrs.asdict(), where)
    if not 0 <= level < meta.n_levels:
        raise OmeZarrError(
            f"{where}: no pyramid level {level}; the image has {meta.n_levels} level(s), 0..{meta.n_levels - 1}"
        )
    try:
        arr = group[meta.paths[level]]
    except KeyError as exc:
        raise OmeZarrError(f"{where}: level {level} names dataset {meta.paths[level]!r}, which is missing") from exc
    except (OSError, TimeoutError) as exc:
        raise OmeZarrError(one_line(f"{where}: dataset {meta.paths[level]!r} cannot be read ({type(exc).__name__}: {redact(str(exc))})")) from None
    except _BAD_METADATA as exc:
        node = f"{group.path}/{meta.paths[level]}".strip("/")
        raise _damaged_metadata(group.store, node, describe(group.store).rstrip("/"), exc) from exc
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
    return as_image(arr, meta, where, level)


def as_image(arr: zarr.Array, meta: ImageMetadata, where: str, level: int = 0) -> xr.DataArray:
    """The DataArray of an array :func:`open_level_array` opened (no I/O: code that needs both opens once)."""
    # what da.from_zarr(arr) makes (same name, so locate() recognises the layer), reading through
    # read_array so that a damaged chunk ends in one line naming it rather than a codec's error
    data = da.from_array(
        CheckedArray(arr), chunks=arr.chunks, name="from-zarr-" + tokenize(arr, None, {}, arr.chunks),
        meta=np.empty((0,) * arr.ndim, dtype=arr.dtype),
    )
    coords: dict[str, Any] = {}
    for axis, dim in enumerate(meta.dims):
        n = arr.shape[axis]
        if dim == "c":
            names = meta.channel_names
            coords["c"] = ("c", np.asarray(names, dtype=object) if names is not None and len(names) == n else np.arange(n))
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
    where = image.attrs.get("source", image.name)
    if "c" not in image.dims:
        raise OmeZarrError(f"{where}: image has no channel axis (dims {list(image.dims)})")
    single = isinstance(channels, (str, int, np.integer))
    names = [str(v) for v in image["c"].values]
    index = []
    for ch in [channels] if single else list(channels):
        if isinstance(ch, (int, np.integer)) and not isinstance(ch, bool):
            if not -len(names) <= ch < len(names):
                raise OmeZarrError(f"{where}: channel index {ch} is out of range; the image has {len(names)} channels {names}")
            index.append(int(ch) % len(names))
        elif str(ch) in names:
            index.append(names.index(str(ch)))
        else:
            raise OmeZarrError(f"{where}: no channel named {ch!r}; available channels are {names}")
    return image.isel(c=index[0] if single else index)


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
    frame = image.isel({d: i for d, i in (("t", t or 0), ("c", c)) if d in image.dims})
    if "z" not in frame.dims:
        raise OmeZarrError(f"{image.attrs['source']}: a 3D model needs a z axis; the image has dims {list(image.dims)}")
    return frame.transpose("z", "y", "x")


def region_reader(
    array: zarr.Array, dims: Sequence[str], t: int | None, channel: int, offset: Sequence[int] = (0, 0, 0)
) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """Read (z, y, x) regions of one time point and channel straight from a level's zarr array; region
    coordinates are relative to ``offset`` (the first voxel of a selection of the array)."""
    dims = tuple(dims)

    def read(region: tuple[slice, ...]) -> np.ndarray:
        index: list[Any] = []
        for d in dims:
            if d == "t":
                index.append(t or 0)
            elif d == "c":
                index.append(channel)
            else:
                axis = ("z", "y", "x").index(d)
                sl = region[axis]
                index.append(slice(sl.start + offset[axis], sl.stop + offset[axis]))
        return np.asarray(read_array(array, tuple(index)), dtype=np.float32)

    return read


ChunkIndex = tuple[int, int, int]


def _spatial_chunks(array: zarr.Array, dims: Sequence[str]) -> tuple[int, int, int]:
    """The stored chunk's z, y, x (a shard's inner chunk: what one read decodes)."""
    dims = tuple(dims)
    return tuple(int(array.chunks[dims.index(d)]) for d in ("z", "y", "x"))  # type: ignore[return-value]


def chunks_under(array: zarr.Array, dims: Sequence[str], region: Sequence[slice], offset: Sequence[int] = (0, 0, 0)) -> list[ChunkIndex]:
    """The (z, y, x) indices of the stored chunks that hold ``region`` (z, y, x slices of a selection starting at ``offset``)."""
    import itertools

    grid = _spatial_chunks(array, dims)
    axes = [range((s.start + o) // c, -(-(s.stop + o) // c)) for s, o, c in zip(region, offset, grid, strict=True)]
    return list(itertools.product(*axes))  # type: ignore[arg-type]


def chunk_box(array: zarr.Array, dims: Sequence[str], chunk: ChunkIndex) -> tuple[slice, slice, slice]:
    """The (z, y, x) voxels of the array that its stored chunk ``chunk`` holds (the last ones cut at the edge)."""
    grid = _spatial_chunks(array, dims)
    size = {d: int(n) for d, n in zip(dims, array.shape, strict=True)}
    return tuple(slice(i * c, min((i + 1) * c, size[d])) for d, i, c in zip(("z", "y", "x"), chunk, grid, strict=True))  # type: ignore[return-value]


def read_chunk(array: zarr.Array, dims: Sequence[str], t: int | None, channel: int, chunk: ChunkIndex) -> np.ndarray:
    """The stored values (the array's dtype) of one stored chunk's (z, y, x) extent at time ``t`` and ``channel``."""
    box = dict(zip(("z", "y", "x"), chunk_box(array, dims, chunk), strict=True))
    index = tuple((t or 0) if d == "t" else channel if d == "c" else box[d] for d in dims)
    return np.asarray(read_array(array, index))


def chunks_reader(
    array: zarr.Array, dims: Sequence[str], chunks: Mapping[ChunkIndex, np.ndarray], offset: Sequence[int] = (0, 0, 0)
) -> Callable[[tuple[slice, ...]], np.ndarray]:
    """What :func:`region_reader` reads, cut from ``chunks`` (:func:`read_chunk` of every chunk a region
    touches) instead of read from the store: the same float32 values."""
    grid = _spatial_chunks(array, dims)

    def read(region: tuple[slice, ...]) -> np.ndarray:
        lo = [s.start + o for s, o in zip(region, offset, strict=True)]
        hi = [s.stop + o for s, o in zip(region, offset, strict=True)]
        out = np.empty([b - a for a, b in zip(lo, hi, strict=True)], dtype=np.float32)
        for key in chunks_under(array, dims, region, offset):
            values = chunks[key]
            start = [i * c for i, c in zip(key, grid, strict=True)]
            src = tuple(slice(max(a, s) - s, min(b, s + n) - s) for a, b, s, n in zip(lo, hi, start, values.shape, strict=True))
            dst = tuple(slice(max(a, s) - a, min(b, s + n) - a) for a, b, s, n in zip(lo, hi, start, values.shape, strict=True))
            out[dst] = values[src]
        return out

    return read


def read_array(array: zarr.Array, index: tuple[Any, ...]) -> Any:
    """``array[index]``, where a chunk that cannot be read or decoded raises one :class:`OmeZarrError`
    naming the store, the array and the chunk's key (picklable, so dask can ship it from a worker)."""
    try:
        return array[index]
    except (ChunkedFnetError, MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - codecs raise anything (RuntimeError, ValueError, ...)
        raise _read_error(array, index, exc) from exc


class CheckedArray:
    """A read-only view of a zarr array whose reads go through :func:`read_array` (what dask reads from)."""

    def __init__(self, array: zarr.Array) -> None:
        self.array = array
        self.shape = tuple(array.shape)
        self.dtype = array.dtype
        self.ndim = array.ndim
        self.chunks = array.chunks

    def __getitem__(self, index: Any) -> Any:
        return read_array(self.array, index if isinstance(index, tuple) else (index,))


def _bad_chunks(array: zarr.Array, index: tuple[Any, ...], limit: int = 256) -> list[str] | None:
    """Keys of the chunks under ``index`` that fail when read alone (None when that cannot be told)."""
    ranges = chunk_ranges(array, index)
    if ranges is None or np.prod([len(r) for r in ranges]) > limit:
        return None
    grid = getattr(array, "shards", None) or array.chunks
    bad = []
    for coords in np.ndindex(*[len(r) for r in ranges]):
        chunk = tuple(r[i] for r, i in zip(ranges, coords, strict=True))
        region = tuple(slice(k * c, min((k + 1) * c, n)) for k, c, n in zip(chunk, grid, array.shape, strict=True))
        try:
            array[region]
        except Exception:  # noqa: BLE001
            bad.append(array.metadata.encode_chunk_key(chunk))
    return bad


def _read_error(array: zarr.Array, index: tuple[Any, ...], exc: BaseException) -> OmeZarrError:
    """The one-line error of a failed read; an :class:`UnreadableChunkError` where no retry can help."""
    name = f"{describe(array.store).rstrip('/')}/{array.path.strip('/')}".rstrip("/")
    cause = f"{type(exc).__name__}: {redact(str(exc))}"
    if isinstance(exc, (OSError, TimeoutError)):  # a transient fault (retried) unless the system refuses for good
        kind = UnreadableChunkError if getattr(exc, "errno", None) in PERMANENT_ERRNOS else OmeZarrError
        return kind(one_line(f"{name}: cannot be read ({cause}); check that the store is reachable and readable, then rerun"))
    try:
        bad = _bad_chunks(array, index)
    except Exception:  # noqa: BLE001 - naming the chunk is a courtesy; the error stays the one below
        bad = None
    advice = "the store is damaged: restore this file from a copy, or write the image again, then rerun"
    if getattr(array, "shards", None) and name.startswith(("http://", "https://")):
        advice = (  # fsspec takes a server's whole file, sent in answer to a byte-range request, for the range
            "this array is sharded, so its chunks are read as byte ranges of its shards: the web server may ignore HTTP "
            "Range requests (Python's http.server does); serve it with one that honours them (nginx, a bucket, "
            "chunked-fnet view), or write the output with --shards none"
        )
    if bad:
        more = f" (and {len(bad) - 1} more damaged chunks: {', '.join(bad[1:4])}{', ...' if len(bad) > 4 else ''})" if len(bad) > 1 else ""
        return UnreadableChunkError(one_line(f"{name}/{bad[0]}: chunk cannot be decoded ({cause}){more}; {advice}"))
    return UnreadableChunkError(one_line(f"{name}: reading {_show_index(index)} failed ({cause}); {advice}"))


def _show_index(index: tuple[Any, ...]) -> str:
    parts = []
    for item in index:
        if isinstance(item, slice):
            parts.append(f"{'' if item.start is None else item.start}:{'' if item.stop is None else item.stop}")
        else:
            parts.append(str(item) if np.ndim(item) == 0 else "[...]")
    return "[" + ", ".join(parts) + "]"


@dataclass(frozen=True)
class Selection:
    """Where a DataArray opened by :func:`open_image` (and maybe subset with ``isel``/``sel``) lies in its store.

    ``start``/``size``: the first index and the length of the selection along each axis of the
    level's array (a dimension dropped by a scalar selection has size 1 and is in ``dropped``);
    ``channels``: the store's channel index of each channel of the DataArray.
    """

    source: str
    level: int
    start: dict[str, int]
    size: dict[str, int]
    channels: tuple[int, ...]
    dropped: frozenset[str]
    array: zarr.Array = field(compare=False, repr=False)  # the level's array, opened once for all who read it
    meta: ImageMetadata = field(compare=False, repr=False)


def _indices(image: xr.DataArray, full: xr.DataArray, dim: str, where: str) -> np.ndarray:
    """The store indices along ``dim`` of the values ``image`` holds, from its (physical) coordinates."""
    values = np.atleast_1d(np.asarray(image[dim].values))
    reference = np.asarray(full[dim].values)
    if dim == "c":
        names = [str(v) for v in reference]
        missing = [str(v) for v in values if str(v) not in names]
        if missing:
            raise OmeZarrError(f"{where}: the selection holds channels {missing} that the store does not have ({names})")
        return np.array([names.index(str(v)) for v in values])
    scale = full.attrs["scale"][dim]
    index = np.rint((values - reference[0]) / scale).astype(np.int64)
    exact = np.allclose(reference[0] + scale * index, values, rtol=0, atol=1e-6 * abs(scale))
    if not exact or index.min() < 0 or index.max() >= reference.size:
        raise OmeZarrError(f"{where}: the {dim} coordinates of the selection are not voxels of level {full.attrs['level']} (were they changed?)")
    return index


# dask layers that only select voxels of the store (what isel/sel/transpose make)
_SELECTING_LAYERS = ("original-from-zarr-", "from-zarr-", "getitem-", "transpose-")


def _refuse_changed_values(image: xr.DataArray, full: xr.DataArray, where: str) -> None:
    """Work that reads the store itself must not silently drop what was done to the DataArray's values."""
    data = image.data
    if not isinstance(data, da.Array):
        raise OmeZarrError(
            f"{where}: the DataArray holds its values in memory (loaded or computed), so they may differ from the store; "
            "pass the lazy DataArray from open_image (selections with isel/sel are fine), or write the values to OME-Zarr first"
        )
    layers = list(data.dask.layers)
    changed = sorted({name.rsplit("-", 1)[0] for name in layers if not name.startswith(_SELECTING_LAYERS)})
    if changed:
        raise OmeZarrError(
            f"{where}: the DataArray's values were changed after opening ({', '.join(changed)}); predict reads the store itself, "
            "so write the changed values to OME-Zarr first"
        )
    if full.data.name not in layers:
        raise OmeZarrError(f"{where}: the DataArray's values do not come from this store's level {full.attrs['level']}")


def locate(image: xr.DataArray, opened: tuple[zarr.Array, ImageMetadata] | None = None) -> Selection:
    """Find what part of which store ``image`` holds, so that work on it can read the store itself.

    Refuses, in one line naming the axis and what was selected, what cannot be honoured: a
    DataArray that was not opened with :func:`open_image`, a strided or non-contiguous selection
    along t, z, y or x, or a scalar z/y/x plane. ``opened``: the level's (array, metadata) if just opened.
    """
    source, level = image.attrs.get("source"), image.attrs.get("level")
    if source is None or level is None:
        raise OmeZarrError(
            f"the DataArray {image.name!r} does not say which OME-Zarr it came from (no 'source'/'level' attrs); "
            "open it with chunked_fnet.open_image, or write it to OME-Zarr first"
        )
    if "***" in str(source):
        raise OmeZarrError(f"{source}: the store's URL holds credentials that were hidden; pass the URL itself instead of the DataArray")
    array, meta = opened or open_level_array(source, level=int(level))[:2]
    full = as_image(array, meta, str(source), int(level))
    where = f"{source} (level {level})"
    _refuse_changed_values(image, full, where)
    start, size, dropped = {}, {}, set()
    channels: tuple[int, ...] = (0,)
    for dim in full.dims:
        if dim not in image.coords:
            raise OmeZarrError(f"{where}: the DataArray has no {dim!r} coordinate; select with isel/sel so that xarray keeps it")
        index = _indices(image, full, dim, where)
        if dim not in image.dims:
            dropped.add(dim)
            if dim in ("z", "y", "x"):
                raise OmeZarrError(f"{where}: a single {dim} plane was selected ({dim}={image[dim].item()}); the models are 3D: keep a range, e.g. isel({dim}=slice(i, i + 1))")
        if dim == "c":
            channels = tuple(int(i) for i in index)
            continue
        steps = np.diff(index)
        if steps.size and not np.all(steps == 1):
            shown = index.tolist() if index.size <= 8 else index[:8].tolist() + ["..."]
            raise OmeZarrError(
                f"{where}: the selection along {dim} is not a contiguous range of voxels (indices {shown}); "
                f"select a contiguous range, e.g. isel({dim}=slice(start, stop))"
            )
        start[dim], size[dim] = int(index[0]), int(index.size)
    return Selection(str(source), int(level), start, size, channels, frozenset(dropped), array, meta)
