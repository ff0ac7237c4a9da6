"""Create OME-Zarr images of any size and fill them chunk by chunk, never holding the image in memory.

The writer is split into three steps so that many processes can write one image: :func:`create_image`
lays out the metadata and empty arrays, :func:`write_region` writes one chunk-aligned block (two
writers never share a zarr chunk, so no locks are needed), and :func:`build_pyramid` derives the
lower-resolution levels from the written full resolution, block by block through dask.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import dask.array as da
import numpy as np
import zarr
from zarr.core.sync import sync as zarr_sync

from chunked_fnet.errors import InputError, OmeZarrError, OutputExistsError, one_line
from chunked_fnet.io.ngff import (
    DEFAULT_UNITS,
    DEFAULT_VERSION,
    build_image_attrs,
    canonical_order,
    check_dims,
    ngff_attrs,
    parse_image_attrs,
)
from chunked_fnet.io.store import RUN_FOLDER, describe, is_url, open_store, redact
from chunked_fnet.progress import compute_with_progress


#: How an image's chunks are compressed. ``lz4``: blosc lz4 with byte shuffle, the prediction's default: on a
#: continuous float32 prediction (numcodecs alone, a smoothed real nucleus image) it encoded 4.7x and decoded 6x as
#: fast as zstd and stored 9 % less (the whole write and read: ``benchmarks/run.py storage codecs``, BENCHMARKS.md),
#: and blosc is a codec every OME-Zarr reader has (zarr-python, neuroglancer, tensorstore, ome-zarr-py's own default).
#: ``zstd``: zarr's default, the better ratio on quantised data (an integer camera image); ``none``: raw bytes.
#: ``None``: zarr's default.
Compression = Literal["lz4", "zstd", "none"]


def compressors(compression: Compression | None, version: str) -> Any:
    """The ``compressors`` argument of ``zarr.create_array`` for ``compression`` in NGFF ``version``'s zarr format."""
    if compression is None:
        return "auto"
    if compression == "none":
        return None
    if version == "0.4":  # zarr v2 names numcodecs' codecs
        import numcodecs

        return numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE) if compression == "lz4" else numcodecs.Zstd(level=0)
    from zarr.codecs import BloscCodec, ZstdCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle") if compression == "lz4" else ZstdCodec(level=0)


def pyramid_factors(
    dims: Sequence[str], shape: Sequence[int], scale: Mapping[str, float], levels: int
) -> list[dict[str, int]]:
    """Cumulative down-sampling factor per level and dim.

    y and x halve at every level; z halves only once it is finer than y would become, so that an
    anisotropic stack (0.29 µm z, 0.108 µm y/x) moves towards isotropic voxels. t and c never change.
    """
    factors = [{d: 1 for d in dims}]
    for _ in range(1, levels):
        prev = factors[-1]
        nxt = dict(prev)
        for d in ("y", "x"):
            nxt[d] = prev[d] * 2
        if "z" in dims and scale.get("z", 1.0) * prev["z"] < scale.get("y", 1.0) * nxt["y"]:
            if math.ceil(shape[dims.index("z")] / prev["z"]) > 1:
                nxt["z"] = prev["z"] * 2
        factors.append(nxt)
    return factors


def create_image(
    store: str | Path,
    *,
    shape: Sequence[int],
    dims: Sequence[str] = ("t", "c", "z", "y", "x"),
    chunks: Sequence[int] | None = None,
    shards: Sequence[int] | None = None,
    dtype: Any = "float32",
    scale: Mapping[str, float] | None = None,
    translation: Mapping[str, float] | None = None,
    units: Mapping[str, str | None] | None = None,
    channel_names: Sequence[str] | None = None,
    channel_colors: Sequence[str] | None = None,
    display_ranges: Sequence[Mapping[str, float]] | None = None,
    levels: int = 1,
    version: str = DEFAULT_VERSION,
    name: str | None = None,
    overwrite: bool = False,
    fill_value: float = 0,
    storage_options: Mapping[str, Any] | None = None,
    compression: Compression | None = None,
) -> zarr.Group:
    """Create an empty OME-Zarr image (metadata plus one empty array per pyramid level).

    ``dims`` must be in NGFF order (a subset of t, c, z, y, x containing y and x); ``scale`` and
    ``translation`` are physical (µm for space, ``units['t']`` for time) for the full resolution;
    ``display_ranges`` are the channels' omero ``window`` entries. An existing ``store`` is refused
    unless ``overwrite=True``. ``shards`` (NGFF 0.5 only; multiples of ``chunks``) makes every level a
    zarr v3 sharded array: one stored object per shard, which :func:`write_region` then writes whole.
    ``compression`` (:data:`Compression`) is every level's codec; None: zarr's default.
    """
    where = describe(store)
    dims = check_dims(dims, where)
    if dims != canonical_order(dims):
        raise OmeZarrError(f"{where}: axes {list(dims)} must be in NGFF order {list(canonical_order(dims))}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != len(dims) or any(s < 1 for s in shape):
        raise OmeZarrError(f"{where}: shape {shape} does not give a positive size for each of the axes {list(dims)}")
    chunks = tuple(int(c) for c in (chunks or shape))
    if len(chunks) != len(dims) or any(c < 1 for c in chunks):
        raise OmeZarrError(f"{where}: chunks {chunks} do not give a positive size for each of the axes {list(dims)}")
    chunks = tuple(min(c, s) for c, s in zip(chunks, shape, strict=True))
    if shards is not None:
        shards = tuple(int(s) for s in shards)
        if version != "0.5":
            raise OmeZarrError(f"{where}: shards {list(shards)} need NGFF 0.5 (zarr v3); NGFF {version} (zarr v2) has no shards")
        if len(shards) != len(dims) or any(s < 1 or s % c for s, c in zip(shards, chunks, strict=True)):
            raise OmeZarrError(f"{where}: shards {list(shards)} must be positive multiples of the chunks {list(chunks)} for the axes {list(dims)}")
    if levels < 1:
        raise OmeZarrError(f"{where}: levels must be >= 1, got {levels}")
    if "c" in dims and channel_names is not None and len(channel_names) != shape[dims.index("c")]:
        raise OmeZarrError(
            f"{where}: {len(channel_names)} channel names {list(channel_names)} for a channel axis of size "
            f"{shape[dims.index('c')]}"
        )
    scale = {d: float((scale or {}).get(d, 1.0)) for d in dims if d != "c"}
    bad = {d: s for d, s in scale.items() if not s > 0 or not math.isfinite(s)}
    if bad:
        raise OmeZarrError(f"{where}: physical scale must be finite and > 0, got {bad}")
    translation = {d: float((translation or {}).get(d, 0.0)) for d in dims if d != "c"}
    unit_map = {d: (units or {}).get(d, DEFAULT_UNITS.get(d)) for d in dims if d != "c"}

    factors = pyramid_factors(dims, shape, scale, levels)
    level_scales = [{d: scale[d] * f[d] for d in scale} for f in factors]
    level_trans = [{d: translation[d] + (f[d] - 1) / 2 * scale[d] for d in translation} for f in factors]
    attrs = build_image_attrs(
        version=version,
        dims=dims,
        scales=level_scales,
        translations=level_trans,
        units=unit_map,
        # NGFF recommends a name (strict schemas require it); default to what the reader would call it.
        name=name or (Path(str(store).rstrip("/")).name if isinstance(store, (str, Path)) else None) or "image",
        channel_names=channel_names if "c" in dims else None,
        channel_colors=channel_colors,
        display_ranges=display_ranges if display_ranges is not None else _default_display_ranges(dtype, channel_names),
        size_z=shape[dims.index("z")] if "z" in dims else 1,
    )
    zarr_format = 3 if version == "0.5" else 2
    local = None if isinstance(store, zarr.abc.store.Store) or is_url(store) else Path(str(store).removeprefix("file://"))
    try:
        clear_existing_output(store, overwrite, where, storage_options)
        created = local is not None and not local.exists()  # anything there after a failure below is ours
        # The image header (multiscales) is written last, in one atomic put, once every array it names
        # exists: a reader polling the path sees no image, or a whole one, never a header without arrays.
        try:
            group = zarr.create_group(
                open_store(store, read_only=False, storage_options=storage_options),
                zarr_format=zarr_format,
                overwrite=overwrite,
            )
            kwargs: dict[str, Any] = {"dimension_names": dims} if zarr_format == 3 else {}
            for level, f in enumerate(factors):
                lshape = tuple(math.ceil(s / f[d]) for s, d in zip(shape, dims, strict=True))
                lchunks = tuple(min(c, s) for c, s in zip(chunks, lshape, strict=True))
                if shards is not None:  # each level's shards: whole chunks, no larger than the level needs
                    kwargs["shards"] = tuple(
                        min(s, math.ceil(n / c) * c) for s, c, n in zip(shards, lchunks, lshape, strict=True)
                    )
                group.create_array(
                    str(level),
                    shape=lshape,
                    chunks=lchunks,
                    dtype=dtype,
                    fill_value=fill_value,
                    compressors=compressors(compression, version),
                    **kwargs,
                )
            group.update_attributes(attrs)
        except BaseException:
            if created and local is not None:
                finish_pending_writes()
                shutil.rmtree(local, ignore_errors=True)  # a rerun then finds nothing in its way
            raise
    except OSError as exc:
        if isinstance(exc, OutputExistsError):
            raise
        raise unwritable_output(where, local, exc) from exc
    return group


def unwritable_output(where: str, local: Path | None, exc: OSError) -> InputError:
    """One line for an output that cannot be written: what the system said, and what to do."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    blocker = ""
    if local is not None:
        parent = local.absolute().parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if parent.exists() and not parent.is_dir():
            blocker = f": {parent} is a file, not a folder"
        elif isinstance(exc, PermissionError):
            blocker = f" in {parent}"
    filename = f" ({redact(str(exc.filename))})" if exc.filename and str(exc.filename) != str(local) else ""
    return InputError(
        one_line(f"cannot create the output {where}: {type(exc).__name__}: {reason}{blocker}{filename}; "
                 "choose an output path in a writable folder (or fix the folder's permissions) and rerun")
    )


def _default_display_ranges(dtype: Any, channel_names: Sequence[str] | None) -> list[dict[str, float]] | None:
    """Display ranges spanning an integer type's range (floats: 0..1), so viewers do not saturate."""
    if channel_names is None:
        return None
    dt = np.dtype(dtype)
    lo, hi = (float(np.iinfo(dt).min), float(np.iinfo(dt).max)) if np.issubdtype(dt, np.integer) else (0.0, 1.0)
    return [{"min": lo, "max": hi, "start": lo, "end": hi} for _ in channel_names]


def finish_pending_writes() -> None:
    """Await what is still in flight on zarr's I/O loop: a signal (Ctrl-C, SIGTERM) stops the main thread
    in the middle of a write, whose coroutine goes on; removing a half-made output must come after it, or
    the write recreates a file there (and the process reports a task destroyed while pending at exit)."""

    async def others() -> None:
        await asyncio.gather(*(t for t in asyncio.all_tasks() if t is not asyncio.current_task()), return_exceptions=True)

    zarr_sync(others())


def clear_existing_output(store: Any, overwrite: bool, where: str, storage_options: Mapping[str, Any] | None) -> None:
    """Refuse to replace an existing output unless asked; when asked, remove only what is a zarr store
    (the one rule for every output: image, collection, plate)."""
    # A file:// URL is a local path (open_store strips the prefix too); without this the checks below
    # looked at a relative "file:/..." path that never exists, so an existing output was replaced and
    # overwrite=True wiped a non-zarr directory.
    path = None if isinstance(store, zarr.abc.store.Store) or is_url(store) else Path(str(store).removeprefix("file://"))
    if not (_exists_remote(store, storage_options) if path is None else path.exists()):
        return
    if path is not None and path.is_dir() and {p.name for p in path.iterdir()} == {RUN_FOLDER}:
        return  # held by the run about to create it (its claim, chunked_fnet/predict/ownership.py): nothing else is there
    if not overwrite:
        raise OutputExistsError(f"{where} already exists; pass overwrite=True (--overwrite) to replace it")
    if path is None:
        return
    if path.is_file() or not any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zattrs", ".zarray")):
        raise OutputExistsError(f"{where} exists and is not a zarr store; refusing to delete it even with overwrite")
    shutil.rmtree(path)


def _exists_remote(store: Any, storage_options: Mapping[str, Any] | None) -> bool:
    try:
        zarr.open_group(open_store(store, read_only=True, storage_options=storage_options), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError, KeyError):
        return False
    return True


def create_collection(out: str | Path, version: str, overwrite: bool) -> None:
    """An empty bioformats2raw-layout group whose series 0, 1, ... the caller writes next (one image each)."""
    clear_existing_output(out, overwrite, describe(out), None)
    attrs = ngff_attrs(version, **{"bioformats2raw.layout": 3})
    zarr.create_group(open_store(out, read_only=False), zarr_format=3 if version == "0.5" else 2, attributes=attrs)


def open_for_writing(store: str | Path, storage_options: Mapping[str, Any] | None = None) -> zarr.Group:
    """Open an image created by :func:`create_image` to write its chunks."""
    return zarr.open_group(open_store(store, read_only=False, storage_options=storage_options), mode="r+")


def grow_time_axis(store: str | Path, length: int, storage_options: Mapping[str, Any] | None = None) -> None:
    """Lengthen every pyramid level's t axis to ``length`` (never shorten: what is written stays); the
    NGFF metadata depends on no array's length, so an image grown frame by frame stays valid throughout.
    zarr rewrites each array's metadata whole, so a viewer reading meanwhile sees the old or the new length."""
    group = open_for_writing(store, storage_options)
    meta = parse_image_attrs(group.attrs.asdict(), describe(group.store))
    if "t" not in meta.dims:
        raise OmeZarrError(f"{describe(group.store)}: has no t axis to grow")
    axis = meta.dims.index("t")
    for level in range(meta.n_levels):
        arr = _level_array(group, level)
        if arr.shape[axis] < length:
            arr.resize(tuple(length if a == axis else n for a, n in enumerate(arr.shape)))


def _level_array(group: zarr.Group, level: int) -> zarr.Array:
    try:
        arr = group[str(level)]
    except KeyError as exc:
        raise OmeZarrError(f"{describe(group.store)}: no pyramid level {level}") from exc
    assert isinstance(arr, zarr.Array)
    return arr


def write_grid(arr: zarr.Array) -> tuple[int, ...]:
    """The shape of ``arr``'s stored objects: its shards when sharded, else its chunks. A parallel writer
    owns whole ones: two writing parts of one shard would each rewrite the whole object (one loses)."""
    return tuple(getattr(arr, "shards", None) or arr.chunks)


def check_chunk_aligned(region: Sequence[slice], shape: Sequence[int], chunks: Sequence[int], where: str) -> None:
    """Raise unless every slice starts on a boundary of ``chunks`` (the array's :func:`write_grid`) and
    ends on one (or at the array's end)."""
    for axis, (sl, n, c) in enumerate(zip(region, shape, chunks, strict=True)):
        start, stop, step = sl.indices(n)
        if step != 1 or start % c or (stop % c and stop != n) or stop <= start:
            raise OmeZarrError(
                f"{where}: region {sl} on axis {axis} is not aligned to the zarr chunks of size {c} (the shards, when "
                f"sharded; array size {n}); parallel writers must each write whole chunks (shards)"
            )


def level_for_writing(store: str | Path, level: int = 0, storage_options: Mapping[str, Any] | None = None) -> zarr.Array:
    """One pyramid level of an image created by :func:`create_image`, opened to write its chunks."""
    return _level_array(open_for_writing(store, storage_options), level)


def write_region(target: zarr.Group | zarr.Array, region: Sequence[slice], data: np.ndarray, level: int = 0) -> None:
    """Write ``data`` into a chunk-aligned ``region`` (a slice per axis) of one pyramid level: ``target``'s
    ``level`` for an image's group, or ``target`` itself for a level already open (:func:`level_for_writing`)."""
    arr = target if isinstance(target, zarr.Array) else _level_array(target, level)
    region = tuple(region)
    check_chunk_aligned(region, arr.shape, write_grid(arr), describe(arr.store))
    expected = tuple(sl.indices(n)[1] - sl.indices(n)[0] for sl, n in zip(region, arr.shape, strict=True))
    if tuple(data.shape) != expected:
        raise OmeZarrError(f"{describe(arr.store)}: data of shape {data.shape} for a region of shape {expected}")
    # zarr's default (write_empty_chunks False) compares every chunk with the fill value before storing it,
    # to leave an all-fill chunk out: a full pass over the data in zarr's one I/O thread, 60 % of that thread's
    # CPU on a prediction, which is never all fill. Storing such a chunk anyway costs a few compressed bytes
    # and keeps "a chunk written is a chunk stored" true for every reader.
    arr.with_config({"write_empty_chunks": True})[region] = np.asarray(data, dtype=arr.dtype)


def downsample_mean(block: np.ndarray, factors: Sequence[int]) -> np.ndarray:
    """Block-mean by integer ``factors``; a partial block at the end averages what is there."""
    pad = [(0, (-n) % f) for n, f in zip(block.shape, factors, strict=True)]
    valid = np.pad(np.ones(block.shape, dtype=np.float32), pad) if any(p[1] for p in pad) else None
    data = np.pad(block.astype(np.float64), pad)
    shape = [m for n, f in zip(data.shape, factors, strict=True) for m in (n // f, f)]
    axes = tuple(range(1, 2 * block.ndim, 2))
    total = data.reshape(shape).sum(axis=axes)
    count = valid.reshape(shape).sum(axis=axes) if valid is not None else float(np.prod(factors))
    out = total / count
    if np.issubdtype(block.dtype, np.integer):
        info = np.iinfo(block.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(block.dtype)


def build_pyramid(
    store: str | Path | zarr.Group, progress: bool = True, storage_options: Mapping[str, Any] | None = None,
    times: tuple[int, int] | None = None,
) -> None:
    """Fill levels 1.. from level 0 by block means, one target chunk (shard, when sharded) per dask task
    (bounded memory; never two tasks writing one stored object);
    ``times``: only the time points [start, stop) (a followed time-lapse adds its new frames' levels)."""
    group = store if isinstance(store, zarr.Group) else open_for_writing(store, storage_options)
    meta = parse_image_attrs(group.attrs.asdict(), describe(group.store))
    for level in range(1, meta.n_levels):
        src = _level_array(group, level - 1)
        dst = _level_array(group, level)
        factors = tuple(
            int(round(meta.scales[level].get(d, 1.0) / meta.scales[level - 1].get(d, 1.0))) for d in meta.dims
        )
        source = da.from_zarr(src, chunks=tuple(c * f for c, f in zip(write_grid(dst), factors, strict=True)))
        region: tuple[slice, ...] = (slice(None),) * len(meta.dims)
        if times is not None and "t" in meta.dims:
            if factors[meta.dims.index("t")] != 1:
                raise OmeZarrError(f"{describe(group.store)}: its levels are down-sampled in t; a time range cannot be rebuilt alone")
            region = tuple(slice(*times) if d == "t" else slice(None) for d in meta.dims)
            source = source[region]
        chunks = tuple(tuple(math.ceil(c / f) for c in axis) for axis, f in zip(source.chunks, factors, strict=True))
        target = source.map_blocks(downsample_mean, factors, dtype=dst.dtype, chunks=chunks)
        compute_with_progress(
            da.store(target, dst, lock=False, compute=False, regions=region), desc=f"pyramid level {level}", enabled=progress
        )
