"""Convert TIFF, OME-TIFF and ImageJ-hyperstack TIFF stacks into OME-Zarr images, block by block.

The stack is never loaded whole: the first image series is opened through tifffile's zarr view
(``TiffPageSeries.aszarr``), wrapped in dask with blocks that are whole multiples of the output
chunks (and of the TIFF's own strips/tiles where that costs little memory), and each block is read,
reordered to ``(t, c, z, y, x)`` and stored into the level-0 array by a local thread pool. Peak
memory is a few blocks (each capped at :data:`BLOCK_BYTES`, or one output chunk row if larger),
whatever the size of the stack.

Physical sizes come from, in order of precedence: the caller's arguments, the OME-XML ``Pixels``
element, ImageJ calibration (``spacing``/``unit``/``finterval`` plus the X/YResolution tags). A
stack whose pixel size is nowhere to be found is refused rather than written with a made-up scale.
The input file is opened read-only and never modified. The argument checks, output geometry and
block-wise filling are public because the vendor converter (:mod:`chunked_fnet.io.vendor`) shares them.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import struct
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import tifffile
import zarr

from chunked_fnet.errors import InputError
from chunked_fnet.io.ngff import CANONICAL_AXES, ngff_attrs, ngff_metadata
from chunked_fnet.io.store import is_url
from chunked_fnet.io.units import SECONDS_PER_UNIT, UM_PER_UNIT, length_to_um, time_to_seconds, unit_factor
from chunked_fnet.io.writer import build_pyramid, create_image, finish_pending_writes
from chunked_fnet.progress import local_progress

__all__ = ["BLOCK_BYTES", "convert_tiff", "default_chunks", "read_tiff_metadata"]

#: Upper bound (bytes) of one block read from the TIFF, unless a single row of output chunks is larger.
BLOCK_BYTES = 64 * 2**20
#: Threads reading/writing blocks concurrently (each holds about one block).
MAX_WORKERS = 8

#: tifffile axis code -> NGFF dim. 'S' (samples, e.g. RGB) is a channel axis.
_AXIS_MAP = {"T": "t", "C": "c", "S": "c", "Z": "z", "Y": "y", "X": "x"}
#: tifffile codes for "unknown"/"image sequence": taken as z only when that is unambiguous.
_SEQUENCE_AXES = ("Q", "I")


@dataclass
class TiffMetadata:
    """What the file itself says: physical sizes (µm, seconds; None when unknown) and channel names."""

    sizes: dict[str, float | None] = field(default_factory=lambda: {"z": None, "y": None, "x": None})
    time_interval: float | None = None
    channel_names: list[str | None] | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def _value(self, dim: str) -> float | None:
        return self.time_interval if dim == "t" else self.sizes[dim]

    def _record(self, dim: str, value: float | None, source: str) -> None:
        """Keep a z/y/x size or (``dim`` "t") the time step found in ``source``; None is not found."""
        if value is None:
            return
        if dim == "t":
            self.time_interval = value
        else:
            self.sizes[dim] = value
        self.sources[dim] = source


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(elem: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in elem if _local(c.tag) == name]


def parse_ome_xml(xml: str, series_name: str | None = None) -> TiffMetadata:
    """Physical sizes, time increment and channel names of the first (or the named) OME Image."""
    meta = TiffMetadata()
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return meta
    images = [e for e in root.iter() if _local(e.tag) == "Image"]
    if not images:
        return meta
    image = images[0]
    if series_name:
        named = [e for e in images if e.get("Name") == series_name]
        if len(named) == 1:
            image = named[0]
    pixels = next(iter(_children(image, "Pixels")), None)
    if pixels is None:
        return meta
    for dim in ("z", "y", "x"):
        key = f"PhysicalSize{dim.upper()}"
        meta._record(dim, length_to_um(pixels.get(key), pixels.get(f"{key}Unit", "µm")), "OME-XML")
    interval = time_to_seconds(pixels.get("TimeIncrement"), pixels.get("TimeIncrementUnit", "s"))
    meta._record("t", interval if interval is not None else _interval_from_planes(pixels), "OME-XML")
    channels = _children(pixels, "Channel")
    if channels:
        names: list[str | None] = []
        for ch in channels:
            try:
                spp = int(ch.get("SamplesPerPixel") or 1)
            except ValueError:
                spp = 1
            name = ch.get("Name") or None
            # An RGB channel (SamplesPerPixel=3) is three channels of the output.
            names.extend([name] if spp <= 1 else [f"{name}-{i}" if name else None for i in range(spp)])
        meta.channel_names = names if any(n is not None for n in names) else None
    return meta


def _interval_from_planes(pixels: ET.Element) -> float | None:
    """Time step from the DeltaT of the first two time points (z=0, c=0) when TimeIncrement is absent."""
    stamps: dict[int, float] = {}
    for plane in _children(pixels, "Plane"):
        if plane.get("TheZ", "0") != "0" or plane.get("TheC", "0") != "0" or plane.get("DeltaT") is None:
            continue
        try:
            factor = unit_factor(SECONDS_PER_UNIT, plane.get("DeltaTUnit", "s"))
            if factor is None:
                return None
            stamps[int(plane.get("TheT", "0"))] = float(plane.get("DeltaT", "")) * factor
        except ValueError:
            return None
    if 0 in stamps and 1 in stamps and stamps[1] > stamps[0]:
        return stamps[1] - stamps[0]
    return None


def _pixel_size_from_resolution(page: Any, tag: str, unit: Any) -> float | None:
    """ImageJ pixel size: the inverse of X/YResolution (pixels per ``unit``)."""
    res = page.tags.get(tag)
    if res is None:
        return None
    value = res.value
    try:
        num, den = (value if isinstance(value, tuple) else (value, 1))[:2]
        per_unit = float(num) / float(den)
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return length_to_um(1.0 / per_unit, unit) if per_unit > 0 else None


def parse_imagej(imagej: Mapping[str, Any], page: Any) -> TiffMetadata:
    """Physical sizes, frame interval and channel labels from ImageJ metadata and resolution tags."""
    meta = TiffMetadata()
    unit = imagej.get("unit")
    if unit is not None and unit_factor(UM_PER_UNIT, unit) is not None:
        for dim, tag in (("x", "XResolution"), ("y", "YResolution")):
            meta._record(dim, _pixel_size_from_resolution(page, tag, imagej.get(f"{dim}unit", unit) if dim == "y" else unit), "ImageJ")
        if imagej.get("spacing") is not None:
            meta._record("z", length_to_um(imagej.get("spacing"), imagej.get("zunit", unit)), "ImageJ")
    interval = time_to_seconds(imagej.get("finterval"), imagej.get("tunit", "sec"))
    if interval is None and imagej.get("fps"):
        try:
            interval = time_to_seconds(1.0 / float(imagej["fps"]), "s")
        except (TypeError, ValueError, ZeroDivisionError):
            interval = None
    meta._record("t", interval, "ImageJ")
    labels = imagej.get("Labels")
    if isinstance(labels, (list, tuple)) and any(labels):
        # ImageJ labels are per plane; they name channels only when there is one per channel (checked later).
        meta.channel_names = [str(v) if v else None for v in labels]
    return meta


def read_tiff_metadata(tif: tifffile.TiffFile) -> TiffMetadata:
    """Merge OME-XML (preferred) and ImageJ metadata, field by field."""
    ome = parse_ome_xml(tif.ome_metadata, tif.series[0].name) if tif.is_ome and tif.ome_metadata else TiffMetadata()
    ij = parse_imagej(tif.imagej_metadata, tif.pages.first) if tif.is_imagej and tif.imagej_metadata else TiffMetadata()
    merged = TiffMetadata(channel_names=ome.channel_names or ij.channel_names)
    for dim in ("z", "y", "x", "t"):
        src = ome if ome._value(dim) is not None else ij
        merged._record(dim, src._value(dim), src.sources.get(dim, ""))
    return merged


def default_chunks(shape_tczyx: Sequence[int]) -> tuple[int, int, int, int, int]:
    """One time point, one channel, up to 32 planes, 256 x 256 pixels (clipped to the image)."""
    t, c, z, y, x = shape_tczyx
    return (1, 1, min(z, 32), min(y, 256), min(x, 256))


def _axes_hint(shape: Sequence[int]) -> str:
    examples = {2: "YX", 3: "ZYX", 4: "CZYX", 5: "TCZYX", 6: "TCZYXS"}
    example = f", e.g. axes={examples[len(shape)]!r}" if len(shape) in examples else ""
    return (
        f"pass axes= (--axes on the command line) with one letter per dimension of the stored shape "
        f"{tuple(shape)}, from T (time), C (channel), Z, Y, X, S (samples){example}"
    )


def map_axes(source: str, axes: str, shape: Sequence[int], overridden: bool = False) -> list[str | None]:
    """NGFF dim for each source axis (None: a size-1 axis to squeeze); raise InputError when ambiguous."""
    axes = axes.upper()
    where = f"{source}: axes {axes!r} {'(given)' if overridden else '(as read by tifffile)'} of shape {tuple(shape)}"
    if len(axes) != len(shape):
        raise InputError(f"{where}: {len(axes)} axis letters for {len(shape)} dimensions; {_axes_hint(shape)}")
    if overridden:
        bad = sorted({a for a in axes if a not in _AXIS_MAP})
        if bad:
            raise InputError(f"{where}: unknown axis letter(s) {bad}; use T, C, Z, Y, X or S (samples)")
        dupes = sorted({a for a in axes if axes.count(a) > 1})
        if dupes:
            raise InputError(f"{where}: axis letter(s) {dupes} given more than once")
    # "?": an unknown axis longer than 1, resolved below
    dims: list[str | None] = [_AXIS_MAP[a] if a in _AXIS_MAP else None if n == 1 else "?" for a, n in zip(axes, shape)]
    unknown_big = [i for i, d in enumerate(dims) if d == "?"]
    if unknown_big:
        has_z_or_t = any(d in ("z", "t") and n > 1 for d, n in zip(dims, shape))
        if len(unknown_big) == 1 and axes[unknown_big[0]] in _SEQUENCE_AXES and not has_z_or_t:
            dims[unknown_big[0]] = "z"  # an image sequence: its planes are z (a size-1 Z axis is dropped below)
        else:
            letters = [f"{axes[i]}={shape[i]}" for i in unknown_big]
            raise InputError(
                f"{where}: cannot tell what the dimension(s) {letters} are (time, channels or z); "
                f"{_axes_hint(shape)}"
            )
    # A dim named by several axes (e.g. C and S, or Z and an unknown): keep the one that is > 1.
    for dim in set(d for d in dims if d is not None):
        idx = [i for i, d in enumerate(dims) if d == dim]
        if len(idx) <= 1:
            continue
        big = [i for i in idx if shape[i] > 1]
        if len(big) > 1:
            letters = [f"{axes[i]}={shape[i]}" for i in big]
            raise InputError(
                f"{where}: dimensions {letters} would all become the {dim!r} axis; "
                f"{_axes_hint(shape)}"
            )
        keep = big[0] if big else idx[0]
        for i in idx:
            if i != keep:
                dims[i] = None
    if "y" not in dims or "x" not in dims:
        raise InputError(f"{where}: no Y and X axes; {_axes_hint(shape)}")
    return dims


def check_voxel_size(voxel_size: Sequence[float]) -> tuple[float, float, float]:
    """A caller's ``voxel_size`` as three positive finite µm (z, y, x)."""
    try:
        values = tuple(float(v) for v in voxel_size)
    except (TypeError, ValueError) as exc:
        raise InputError(f"voxel_size must be three numbers (z, y, x) in µm, got {voxel_size!r}") from exc
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"voxel_size must be three positive numbers (z, y, x) in µm, got {tuple(voxel_size)!r}")
    return values  # type: ignore[return-value]


def check_time_interval(time_interval: Any) -> None:
    """A caller's ``time_interval``: None, or a positive finite number of seconds."""
    if time_interval is None:
        return
    try:
        ok = math.isfinite(float(time_interval)) and float(time_interval) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError(f"time_interval must be a positive number of seconds, got {time_interval!r}")


def check_chunks(chunks: Sequence[int] | None) -> list[int] | None:
    """A caller's ``(t, c, z, y, x)`` output chunks as integers (None: the default)."""
    if chunks is None:
        return None
    try:
        values = [int(c) for c in chunks]
    except (TypeError, ValueError) as exc:
        raise InputError(f"chunks must be five integers (t, c, z, y, x), got {chunks!r}") from exc
    if len(values) != 5 or any(c < 1 for c in values):
        raise InputError(f"chunks must be five positive integers (t, c, z, y, x), got {tuple(chunks)}")
    return values


def physical_scale(
    where: str, sizes: Mapping[str, float | None], size_z: int, time_interval: float | None, file_interval: float | None, why: str = ""
) -> dict[str, float]:
    """The output's t/z/y/x scale: the caller's time step, else the file's, else 1 s; the pixel sizes,
    refusing a y/x size (or a z size of a stack) the file does not record (``why`` says where we looked)."""
    missing = [d for d in ("z", "y", "x") if sizes[d] is None and (d != "z" or size_z > 1)]
    if missing:
        raise InputError(
            f"{where}: the file does not record the {'/'.join(missing)} pixel size{why}; "
            f"pass voxel_size=(z, y, x) in µm (--voxel-size Z Y X on the command line)"
        )
    scale = {"t": float(time_interval) if time_interval is not None else (file_interval or 1.0)}
    scale.update({d: float(sizes[d]) if sizes[d] is not None else 1.0 for d in ("z", "y", "x")})  # type: ignore[arg-type]
    return scale


def output_channel_names(
    source: Path, where: str, given: Sequence[str] | None, from_file: Sequence[str | None] | None, n: int, detail: str = ""
) -> list[str]:
    """The caller's channel names (checked against the ``n`` channels), else the file's, else c0, c1, ..."""
    if given is not None:
        names = [str(c) for c in given]
        if len(names) != n:
            raise InputError(f"{where}: {len(names)} channel names {names} given for {n} channel(s){detail}")
        if len(set(names)) != len(names) or any(not c.strip() for c in names):
            raise InputError(f"{source}: channel names must be unique and non-empty, got {names}")
        return names
    if from_file is not None and len(from_file) == n:
        return _unique_names(from_file)
    return [f"c{i}" for i in range(n)]


def block_shape(
    shape: Sequence[int], out_chunks: Sequence[int], native: Sequence[int], itemsize: int, budget: int
) -> list[int]:
    """Dask block per dim (t, c, z, y, x): whole multiples of the output chunk, grown to the TIFF's own
    chunk (strip/tile/page) where that fits in ``budget`` bytes, so no native chunk is decoded twice."""

    def up(n: int, c: int, s: int) -> int:
        return min(s, max(c, math.ceil(n / c) * c))

    block = [up(max(n, c), c, s) for n, c, s in zip(native, out_chunks, shape)]
    for axis in (3, 4, 1):  # shrink y, then x, then c back towards the output chunk while over budget
        while math.prod(block) * itemsize > budget and block[axis] > out_chunks[axis]:
            n_chunks = math.ceil(block[axis] / out_chunks[axis])
            block[axis] = max(out_chunks[axis], (n_chunks // 2) * out_chunks[axis])
    return block


def _unique_names(names: Sequence[str | None]) -> list[str]:
    out: list[str] = []
    for i, name in enumerate(names):
        label = str(name).strip() if name is not None and str(name).strip() else f"c{i}"
        base, k = label, 2
        while label in out:
            label, k = f"{base}-{k}", k + 1
        out.append(label)
    return out


def image_name(source: Path, suffixes: Sequence[str] = (".ome.tiff", ".ome.tif", ".tiff", ".tif", ".btf", ".tf8", ".tf2")) -> str:
    """The output image's name: the file's name without its format suffix (the longest that matches)."""
    name = source.name
    for suffix in sorted(suffixes, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)] or name
    return source.stem or name


def _open_tiff(source: Path) -> tifffile.TiffFile:
    if not source.exists():
        raise InputError(f"{source}: no such file (expected a TIFF / OME-TIFF stack)")
    if not source.is_file():
        raise InputError(f"{source} is a directory, not a TIFF file")
    try:
        tif = tifffile.TiffFile(source, mode="rb")
    except (tifffile.TiffFileError, ValueError, OSError, struct.error) as exc:
        raise InputError(f"{source} is not a readable TIFF file ({type(exc).__name__}: {exc})") from exc
    if not tif.series:
        tif.close()
        raise InputError(f"{source}: the TIFF file holds no image series")
    return tif


def _display_ranges(dtype: np.dtype, lo: np.ndarray, hi: np.ndarray) -> list[dict[str, float]]:
    """omero display ranges: the dtype range (or data range for floats), with start/end at the data range."""
    out = []
    for a, b in zip(np.atleast_1d(lo).tolist(), np.atleast_1d(hi).tolist()):
        a, b = float(a), float(b)
        if not (math.isfinite(a) and math.isfinite(b)):
            a, b = 0.0, 1.0
        vmin, vmax = (float(np.iinfo(dtype).min), float(np.iinfo(dtype).max)) if np.issubdtype(dtype, np.integer) else (a, b)
        out.append({"min": vmin, "max": vmax, "start": a, "end": b})
    return out


def _set_display_ranges(group: zarr.Group, ranges: list[dict[str, float]]) -> None:
    version, meta = ngff_metadata(group.attrs.asdict())
    omero = meta.get("omero")
    if not isinstance(omero, dict) or len(omero.get("channels", [])) != len(ranges):
        return
    for ch, shown in zip(omero["channels"], ranges):
        ch["window"] = shown
    group.attrs.update(ngff_attrs(version, **meta))


def convert_tiff(
    source: str | Path,
    out: str | Path,
    *,
    voxel_size: Sequence[float] | None = None,
    time_interval: float | None = None,
    channel_names: Sequence[str] | None = None,
    axes: str | None = None,
    chunks: Sequence[int] | None = None,
    version: str = "0.5",
    levels: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert the first image series of a TIFF / OME-TIFF / ImageJ hyperstack into an OME-Zarr image.

    The output always has dims ``(t, c, z, y, x)`` (absent axes become size 1). ``voxel_size`` is
    ``(z, y, x)`` in µm and ``time_interval`` seconds per frame; both, like ``channel_names``, override
    what the file records. ``axes`` relabels the series' dimensions (one tifffile letter each: T, C,
    Z, Y, X, S) when tifffile's guess is wrong or ambiguous. ``chunks`` is the ``(t, c, z, y, x)``
    chunk shape of the output (default :func:`default_chunks`). ``levels > 1`` adds a block-mean
    pyramid. Raises :class:`InputError` for an unusable input or argument and the writer's
    :class:`~chunked_fnet.errors.OutputExistsError` when ``out`` exists and ``overwrite`` is False.
    Returns the output path.
    """
    source = Path(source)
    check_time_interval(time_interval)
    user_voxel = check_voxel_size(voxel_size) if voxel_size is not None else None

    with _open_tiff(source) as tif:
        series = tif.series[0]
        if len(tif.series) > 1:
            warnings.warn(
                f"{source} holds {len(tif.series)} image series; converting only the first "
                f"(axes {series.axes}, shape {tuple(series.shape)})",
                stacklevel=2,
            )
        try:
            src = zarr.open_array(series.aszarr(level=0, read_only=True), mode="r", zarr_format=2)
        except Exception as exc:  # tifffile cannot map some exotic layouts onto zarr
            raise InputError(f"{source}: cannot read series 0 ({series.axes} {tuple(series.shape)}) as chunks: {exc}") from exc
        src_shape = tuple(src.shape)
        src_axes = (axes if axes is not None else series.axes).upper()
        dims = map_axes(str(source), src_axes, src_shape, overridden=axes is not None)

        # Output geometry (t, c, z, y, x).
        out_shape = [1] * 5
        native = [1] * 5
        for d, n, ch in zip(dims, src_shape, src.chunks):
            if d is not None:
                out_shape[CANONICAL_AXES.index(d)] = n
                native[CANONICAL_AXES.index(d)] = ch
        T, C, Z, Y, X = out_shape

        meta = read_tiff_metadata(tif)
        sizes = dict(zip(("z", "y", "x"), user_voxel)) if user_voxel is not None else dict(meta.sizes)
        known = {d: v for d, v in sizes.items() if v is not None}
        why = f" (no OME-XML PhysicalSize or ImageJ calibration{'; found ' + str(known) + ' µm' if known else ''})"
        scale = physical_scale(str(source), sizes, Z, time_interval, meta.time_interval, why)
        names = output_channel_names(source, str(source), channel_names, meta.channel_names, C, f" (axes {src_axes}, shape {src_shape})")
        out_chunks = [min(c, n) for c, n in zip(check_chunks(chunks) or default_chunks(out_shape), out_shape)]

        dtype = np.dtype(series.dtype)
        out_dtype = dtype.newbyteorder("=") if dtype.byteorder not in ("=", "|") else dtype
        block = block_shape(out_shape, out_chunks, native, dtype.itemsize, BLOCK_BYTES)

        # Lazy source in tifffile's axis order, read in blocks aligned to the output chunks.
        src_block = [block[CANONICAL_AXES.index(d)] if d is not None else 1 for d in dims]
        stat = source.stat()
        token = dask.base.tokenize(str(source.resolve()), stat.st_size, stat.st_mtime_ns, src_axes, src_block)
        lazy = da.from_array(src, chunks=tuple(src_block), name=f"tiff-{token}", lock=False, asarray=True)
        lazy = lazy[tuple(0 if d is None else slice(None) for d in dims)]
        kept = [d for d in dims if d is not None]
        lazy = lazy.transpose([kept.index(d) for d in CANONICAL_AXES if d in kept])
        lazy = lazy[tuple(slice(None) if d in kept else None for d in CANONICAL_AXES)]
        if lazy.dtype != out_dtype:
            lazy = lazy.astype(out_dtype)
        lazy = lazy.rechunk(tuple(block))  # a no-op regrouping: blocks already are these

        write_converted(
            out, out, lazy, chunks=out_chunks, scale=scale, channel_names=names, levels=levels, version=version,
            name=image_name(source), overwrite=overwrite, progress=progress, label=f"converting {source.name}",
        )
    return Path(out)


def fill_image(group: zarr.Group, lazy: da.Array, *, levels: int, progress: bool, label: str) -> None:
    """Store the lazy ``(t, c, z, y, x)`` array into level 0 of the image ``group`` (from create_image).

    Every dask block of ``lazy`` must cover whole chunks of the output (see :func:`block_shape`):
    blocks are stored by a local thread pool without locks. Display ranges are set from the data
    range, and ``levels > 1`` builds the block-mean pyramid. Removing a half-written output is the
    caller's job.
    """
    out_dtype = lazy.dtype
    stored = da.store(lazy, group["0"], lock=False, compute=False)
    want_range = np.issubdtype(out_dtype, np.integer) or np.issubdtype(out_dtype, np.floating)
    reductions = (da.nanmin(lazy, axis=(0, 2, 3, 4)), da.nanmax(lazy, axis=(0, 2, 3, 4))) if want_range else ()
    workers = max(1, min(os.cpu_count() or 1, MAX_WORKERS))
    with warnings.catch_warnings(), local_progress(label) if progress else contextlib.nullcontext():
        warnings.filterwarnings("ignore", "All-NaN slice encountered", RuntimeWarning)
        pool = ThreadPoolExecutor(workers)
        try:
            results = dask.compute(stored, *reductions, scheduler="threads", pool=pool)
        finally:  # stopped (an error, a signal): no thread is left writing into the output the caller removes
            pool.shutdown(wait=True, cancel_futures=True)
    if want_range:
        _set_display_ranges(group, _display_ranges(out_dtype, results[1], results[2]))
    if levels > 1:
        build_pyramid(group, progress=progress)


def write_converted(out: str | Path, path: str | Path, lazy: da.Array, *, levels: int, progress: bool, label: str, **image: Any) -> None:
    """Create the image ``path`` (``out`` itself, or a series of the collection ``out``) for the lazy ``(t, c, z, y, x)``
    array (``image``: the other arguments of :func:`create_image`) and fill it; a failure while filling removes ``out``."""
    group = create_image(path, shape=lazy.shape, dtype=lazy.dtype, levels=levels, **image)
    try:
        fill_image(group, lazy, levels=levels, progress=progress, label=label)
    except BaseException:
        remove_partial_output(out)
        raise


def remove_partial_output(out: str | Path) -> None:
    """Delete a half-written output this call created (only a local zarr directory).

    Writes still in flight (a signal stopped the main thread) are awaited first (:func:`finish_pending_writes`)."""
    if isinstance(out, str) and is_url(out):
        return
    path = Path(str(out).removeprefix("file://"))
    finish_pending_writes()
    if path.is_dir() and any((path / m).exists() for m in ("zarr.json", ".zgroup", ".zattrs")):
        shutil.rmtree(path, ignore_errors=True)

