"""Convert microscope vendor files (CZI, ND2, LIF, OME-TIFF, ...) into OME-Zarr through bioio.

bioio and its format plugins are an optional extra (``pip install 'chunked_fnet[vendor]'``): they
are imported only here, only when such a file is converted. Every scene of the file is converted:
one scene becomes an OME-Zarr image at the output path (as :func:`convert_tiff` writes), several
become a bioformats2raw-layout collection whose series ``0``, ``1``, ... are the scenes in file
order, each named after its scene.

Pixels are read lazily through bioio's dask arrays and stored block by block as the TIFF converter
stores them, so peak memory is a few blocks plus the source chunks being read. When the plugin's
own chunks are larger than the block budget (bioio-czi reads a whole Z stack per chunk by default),
the file is reopened with plane-sized chunks where the plugin allows it.

Physical sizes (µm), channel names and the time step (seconds) come from bioio, the time step also
from the OME metadata's ``TimeIncrement``; the caller's arguments override them. Like the TIFF
converter, a scene whose pixel size is nowhere recorded is refused rather than written with a
made-up scale, and the input is opened read-only.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from chunked_fnet.errors import InputError, one_line
from chunked_fnet.io.convert import (
    BLOCK_BYTES,
    block_shape,
    check_chunks,
    check_time_interval,
    check_voxel_size,
    default_chunks,
    image_name,
    output_channel_names,
    physical_scale,
    remove_partial_output,
    write_converted,
)
from chunked_fnet.io.units import time_to_seconds
from chunked_fnet.io.writer import create_collection

__all__ = ["INSTALL_HINT", "TIFF_SUFFIXES", "VENDOR_SUFFIXES", "convert_vendor", "is_tiff"]

INSTALL_HINT = "pip install 'chunked_fnet[vendor]'"
#: Read by tifffile (:func:`convert_tiff`) unless bioio is asked for.
TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
#: Formats of the plugins in the ``vendor`` extra (bioio reads more with other plugins installed).
VENDOR_SUFFIXES = (".czi", ".nd2", ".lif", ".ome.tif", ".ome.tiff")
#: bioio dims that the output keeps; any other dim must have size 1.
_KEPT = "TCZYXS"


def is_tiff(source: str | Path) -> bool:
    return Path(source).name.lower().endswith(TIFF_SUFFIXES)


def _import_bioio() -> Any:
    try:
        import bioio
    except ImportError as exc:
        raise InputError(f"reading microscope vendor files needs bioio and its format plugins: {INSTALL_HINT}") from exc
    return bioio


def _open(bioio: Any, source: Path, **kwargs: Any) -> Any:
    try:
        return bioio.BioImage(source, **kwargs)
    except Exception as exc:  # bioio and its plugins raise many kinds: name the file and say why
        why = one_line(exc)
        if len(why) > 600:
            why = why[:600] + " ..."
        hint = f" (the format plugins come with {INSTALL_HINT})" if "does not support" in why else ""
        raise InputError(f"{source} could not be read by bioio{hint}: {type(exc).__name__}: {why}") from exc


def _positive(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _um(value: Any) -> float | None:
    """A pixel size from bioio in µm, without the float noise of a metre -> µm conversion (0.10800000000000001)."""
    v = _positive(value)
    return float(f"{v:.12g}") if v is not None else None


def _time_interval(img: Any, scene_index: int) -> float | None:
    """Seconds between time points: bioio's interval, else the OME ``TimeIncrement`` of the scene."""
    try:
        value = img.time_interval
    except Exception:
        value = None
    if isinstance(value, timedelta):
        value = value.total_seconds()
    seconds = _positive(value)
    if seconds is not None:
        return seconds
    try:
        with warnings.catch_warnings():  # translating vendor XML to OME warns about every odd field
            warnings.simplefilter("ignore")
            pixels = img.ome_metadata.images[scene_index].pixels
        unit = getattr(pixels.time_increment_unit, "value", pixels.time_increment_unit) or "s"
        return _positive(time_to_seconds(pixels.time_increment, unit))
    except Exception:  # no OME metadata, or a plugin that cannot translate it
        return None


def _scene_array(img: Any, source: Path, scene: str) -> tuple[da.Array, list[str | None] | None]:
    """The current scene as a lazy (t, c, z, y, x) array, with per-channel names when bioio has them."""
    dims = img.dims
    order = dims.order
    extra = {d: n for d, n in zip(order, dims.shape) if d not in _KEPT and n > 1}
    if extra:
        raise InputError(
            f"{source}, scene {scene!r}: dims {order} {tuple(dims.shape)}: the dimension(s) {extra} have no "
            f"place in a (t, c, z, y, x) image (only T, C, Z, Y, X and samples S are converted)"
        )
    want = "TCZYX" + ("S" if "S" in order else "")
    arr = img.get_image_dask_data(want)
    try:
        raw_names = [str(n) if n is not None else None for n in img.channel_names]
    except Exception:
        raw_names = None
    if "S" in want:
        t, c, z, y, x, s = arr.shape
        arr = arr.transpose(0, 1, 5, 2, 3, 4)
        if s > 1:  # each sample (e.g. R, G, B) of each channel is a channel of the output
            arr = arr.rechunk({1: -1, 2: -1}).reshape(t, c * s, z, y, x)
            if raw_names is not None and len(raw_names) == c:
                raw_names = [f"{n}-{i}" if n else None for n in raw_names for i in range(s)]
        else:
            arr = arr[:, :, 0]
    if raw_names is not None and len(raw_names) != arr.shape[1]:
        raw_names = None
    return arr, raw_names


def _warn_hidden_czi_scenes(source: Path, n_scenes: int) -> None:
    """A CZI whose metadata lists fewer scenes than its pixel data holds: bioio-czi sees only the listed ones."""
    if source.suffix.lower() != ".czi":
        return
    try:
        from pylibCZIrw import czi as pyczi

        with pyczi.open_czi(str(source)) as doc:
            stored = len(doc.scenes_bounding_rectangle_no_pyramid)
    except Exception:
        return
    if stored > n_scenes:
        warnings.warn(
            f"{source}: the pixel data holds {stored} scenes but the metadata lists {n_scenes}; "
            f"bioio-czi reads (and this conversion writes) only {n_scenes}",
            stacklevel=3,
        )


def convert_vendor(
    source: str | Path,
    out: str | Path,
    *,
    voxel_size: Sequence[float] | None = None,
    time_interval: float | None = None,
    channel_names: Sequence[str] | None = None,
    chunks: Sequence[int] | None = None,
    version: str = "0.5",
    levels: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert every scene of a file bioio reads (CZI, ND2, LIF, OME-TIFF, ...) into OME-Zarr.

    One scene: an image at ``out``. Several: a bioformats2raw collection, series ``i`` being scene
    ``i``. The other arguments are :func:`~chunked_fnet.io.convert.convert_tiff`'s, applied to every
    scene. Raises :class:`InputError` when bioio is missing, the file cannot be read or a scene lacks
    a pixel size, and :class:`~chunked_fnet.errors.OutputExistsError` when ``out`` exists and
    ``overwrite`` is False. Returns the output path.
    """
    source = Path(source)
    check_time_interval(time_interval)
    user_voxel = check_voxel_size(voxel_size) if voxel_size is not None else None
    user_chunks = check_chunks(chunks)
    if not source.exists():
        raise InputError(f"{source}: no such file")
    if not source.is_file():
        raise InputError(f"{source} is a directory, not an image file")
    bioio = _import_bioio()
    img = _open(bioio, source)
    try:
        scenes = list(img.scenes)
    except Exception as exc:
        raise InputError(f"{source}: bioio cannot list its scenes: {type(exc).__name__}: {one_line(exc)}") from exc
    if not scenes:
        raise InputError(f"{source}: bioio finds no image (scene) in the file")
    _warn_hidden_czi_scenes(source, len(scenes))

    # Plan every scene before writing anything: a refused scene leaves no half-made collection.
    plans = []
    for index, scene in enumerate(scenes):
        try:
            img.set_scene(index)
            arr, file_names = _scene_array(img, source, scene)
            pps = img.physical_pixel_sizes
            file_sizes = {"z": _um(pps.Z), "y": _um(pps.Y), "x": _um(pps.X)}
            file_interval = _time_interval(img, index)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{source}, scene {scene!r}: bioio cannot read it: {type(exc).__name__}: {one_line(exc)}") from exc
        T, C, Z, Y, X = arr.shape
        sizes = dict(zip(("z", "y", "x"), user_voxel)) if user_voxel is not None else file_sizes
        where = f"{source}, scene {scene!r}"
        scale = physical_scale(where, sizes, Z, time_interval, file_interval)
        names = output_channel_names(source, where, channel_names, file_names, C)  # file_names: C of them or None
        out_chunks = [min(c, n) for c, n in zip(user_chunks or default_chunks(arr.shape), arr.shape)]
        source_chunk_bytes = math.prod(max(c) for c in arr.chunks) * arr.dtype.itemsize
        plans.append((index, scene, scale, names, out_chunks, arr.shape, arr.dtype, source_chunk_bytes))

    # Plane-sized source chunks where the plugin's own are over the block budget (and it takes chunk_dims).
    if any(p[-1] > BLOCK_BYTES for p in plans):
        try:
            img = bioio.BioImage(source, chunk_dims=["Y", "X", "S"] if "S" in img.dims.order else ["Y", "X"])
        except Exception:
            img = _open(bioio, source)

    collection = len(plans) > 1
    if collection:
        create_collection(out, version, overwrite)
    try:
        for index, scene, scale, names, out_chunks, shape, dtype, _ in plans:
            img.set_scene(index)
            arr, _names = _scene_array(img, source, scene)
            if tuple(arr.shape) != tuple(shape):
                raise InputError(f"{source}, scene {scene!r}: bioio gave shape {arr.shape}, first {shape}")
            out_dtype = np.dtype(dtype)
            out_dtype = out_dtype.newbyteorder("=") if out_dtype.byteorder not in ("=", "|") else out_dtype
            if arr.dtype != out_dtype:
                arr = arr.astype(out_dtype)
            block = block_shape(shape, out_chunks, [max(c) for c in arr.chunks], out_dtype.itemsize, BLOCK_BYTES)  # native chunks
            arr = arr.rechunk(tuple(block))  # blocks cover whole output chunks: lock-free stores
            where = f"scene {index + 1}/{len(plans)} " if collection else ""
            write_converted(
                out, f"{out}/{index}" if collection else out, arr, chunks=out_chunks, scale=scale, channel_names=names, levels=levels,
                version=version, name=scene if collection else image_name(source, (*VENDOR_SUFFIXES, *TIFF_SUFFIXES)),
                overwrite=overwrite or collection, progress=progress, label=f"converting {source.name} {where}".rstrip(),
            )
    except BaseException:
        if collection:  # a single image: write_converted removed it if filling failed; an output create_image refused is not ours
            remove_partial_output(out)
        raise
    return Path(out)
