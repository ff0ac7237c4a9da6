"""Plan a prediction job: check the input selection and the models, compute every frame's statistics,
and describe the job (:class:`~chunked_fnet.predict.job.PredictJob`): its input, its models and its
output. Nothing here depends on the cluster; what a run chooses is the policy's (``policy.py``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from chunked_fnet.device import parse_device
from chunked_fnet.errors import InputError
from chunked_fnet.io.completeness import completeness
from chunked_fnet.io.reader import Selection, as_image, channel_index, locate, open_level_array, spatial_frame
from chunked_fnet.io.store import is_url, redact
from chunked_fnet.predict.ensemble import Member, check_ensemble
from chunked_fnet.predict.frame_stats import EPS_TOLERANCE, refuse_flat_frame, zscore_eps
from chunked_fnet.predict.job import PredictJob
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.policy import ModelConstraints
from chunked_fnet.preprocess.normalize import FrameStats, frame_stats
from chunked_fnet.preprocess.resample import ModelGrid

__all__ = ["EPS_TOLERANCE", "more_frames", "plan"]


def plan(
    image: str | Path | xr.DataArray,
    models: Sequence[str | Path],
    out: str | Path,
    options: PredictOptions,
    *,
    series: str | None = None,
    statistics: Literal["plan", "tasks"] = "plan",
) -> PredictJob:
    """Check inputs and models, compute per-frame statistics, and describe the job.

    ``statistics="tasks"`` leaves each frame's statistics to the tasks that read it (the job's ``stats``
    None: ``predict/frame_stats.py``), so that the input is read once, on the workers; ``predict`` and
    ``predict_plate`` plan so. ``"plan"`` computes them here (a followed time-lapse compares them).

    ``image`` is an OME-Zarr path or a DataArray from :func:`chunked_fnet.open_image`, at any pyramid
    level, maybe subset with ``isel``/``sel``: exactly its time points and its z/y/x extent are
    predicted, and the output's origin is the subset's physical origin.
    """
    opened = None if isinstance(image, xr.DataArray) else open_level_array(str(image), series=series)
    image = image if opened is None else as_image(*opened)  # the input is opened once in this process
    selection = locate(image, opened and opened[:2])
    source = selection.source
    _refuse_output_inside_input(source, str(out))
    if "z" not in selection.start:
        raise InputError(f"{source}: the models are 3D; the image has no z axis (dims {list(image.dims)})")
    channel = _input_channel(image, selection, options)
    store_channel = selection.channels[channel] if "c" in image.dims else selection.channels[0]
    parse_device(options.device)  # a misspelt device fails here, not in every task
    paths = [str(p) for p in models]
    members, hashes = check_ensemble(paths)
    frames = _selected_times(image, selection, options)
    missing = _check_complete(selection.array, selection.meta.dims, selection, frames, store_channel, options)
    name = options.input_channel if "c" in image.dims else image["c"].item() if "c" in image.coords else 0
    eps = zscore_eps(members)
    if statistics == "tasks":
        stats: tuple[FrameStats | None, ...] = (None,) * len(frames)
    else:
        stats = tuple(
            frame_stats(spatial_frame(image, i, channel), f"{source} t={t} channel {name!r}", options.nonfinite)
            for i, t in frames
        )
        check_eps(eps, stats, frames, source)
    times = tuple(t for _, t in frames)
    scale = image.attrs["scale"]
    zyx = tuple(selection.size[d] for d in ("z", "y", "x"))
    grid = ModelGrid(zyx, (scale["z"], scale["y"], scale["x"]), tuple(members[0].voxel_size))  # type: ignore[arg-type]
    tscale = scale.get("t", 1.0)
    first = {d: float(np.atleast_1d(image[d].values)[0]) for d in ("z", "y", "x")}
    t0 = float(np.atleast_1d(image["t"].values)[frames[0][0]]) if "t" in image.coords else 0.0
    job = PredictJob(
        input_path=source,
        series=None,
        input_dims=tuple(selection.meta.dims),
        channel_index=store_channel,
        times=times,
        stats=stats,
        grid=grid,
        models=tuple(paths),
        hashes=tuple(hashes),
        output_path=str(out),
        options=options,
        constraints=ModelConstraints.of(members),
        structures=tuple(m.structure for m in members),
        colors=tuple(m.color for m in members),
        origin=(t0, first["z"], first["y"], first["x"]),
        time_scale=tscale,
        time_unit=image.attrs["units"].get("t") or "second",
        input_info={
            "shape": list(selection.array.shape), "dtype": str(image.dtype), "scale": dict(scale),
            "translation": dict(image.attrs["translation"]), "missing_chunks_filled": missing,
        },
        input_level=selection.level,
        input_offset=tuple(selection.start[d] for d in ("z", "y", "x")),  # type: ignore[arg-type]
        eps=eps,
    )
    job.__dict__["input_array"] = selection.array  # the store this process just opened: the tasks run in process read it too
    return job


def more_frames(job: PredictJob, start: int, stop: int, members: Sequence[Member]) -> PredictJob:
    """``job`` for its input store's time points [start, stop), written at output time ``start`` up: the
    next step of a followed time-lapse. Only the new frames' statistics are computed (the store reopened,
    since it grew); the input, the models (``members``: :func:`check_ensemble` of them) and the options
    are ``job``'s, checked when it was planned."""
    array, meta = open_level_array(job.input_path, level=job.input_level, series=job.series)[:2]
    image = as_image(array, meta, job.input_path, job.input_level)
    if "t" not in image.dims or not 0 <= start < stop <= image.sizes["t"]:
        raise InputError(f"{job.input_path}: time points [{start}, {stop}) are outside its {image.sizes.get('t', 0)} time points")
    box = {d: slice(o, o + n) for d, o, n in zip("zyx", job.input_offset, job.grid.source_shape, strict=True)}
    image = image.isel(box)
    channel = job.channel_index if "c" in image.dims else 0
    stats = tuple(
        frame_stats(spatial_frame(image, t, channel), f"{job.input_path} t={t}", job.options.nonfinite) for t in range(start, stop)
    )
    check_eps(job.eps, stats, [(t, t) for t in range(start, stop)], job.input_path)
    step = replace(job, times=tuple(range(start, stop)), stats=stats, time_offset=start)
    step.__dict__["input_array"] = array
    return step


def check_eps(eps: Sequence[tuple[str, float]], stats: Sequence[FrameStats], frames: Sequence[tuple[int, int | None]], source: str) -> None:
    """Refuse frames so flat that a package's ``eps`` would change its z-scores measurably (:func:`refuse_flat_frame`)."""
    for s, (_, t) in zip(stats, frames, strict=True):
        refuse_flat_frame(eps, s, f"{source} t={t}")


def _check_complete(
    array: Any, dims: Sequence[str], selection: Selection, frames: list[tuple[int, int | None]], channel: int, options: PredictOptions
) -> int:
    """Refuse (or, with ``missing_chunks="fill"``, count) input chunks that the run reads but the store lacks."""
    region = []
    for d in dims:
        if d == "t":
            region.append(slice(frames[0][1], frames[-1][1] + 1))
        elif d == "c":
            region.append(slice(channel, channel + 1))
        else:
            region.append(slice(selection.start[d], selection.start[d] + selection.size[d]))
    report = completeness(array, region)
    if report.missing and options.missing_chunks == "fail":
        raise InputError(
            report.describe(f"{selection.source} level {selection.level}")
            + "; the store is incomplete (an interrupted copy?): complete it, or, if its writer leaves chunks equal to the fill value "
            f"unwritten on purpose, pass --missing-chunks fill (they are read as {array.fill_value})"
        )
    return len(report.missing)


def _input_channel(image: xr.DataArray, selection: Selection, options: PredictOptions) -> int:
    """The transmitted-light channel, as an index into ``image``'s channels (0 when there is no c axis)."""
    if "c" in image.dims:
        return channel_index(image, options.input_channel, "input (transmitted-light)")
    if "c" in selection.dropped and "input_channel" in options.model_fields_set:
        held, wanted = str(image["c"].item()), str(options.input_channel)
        if wanted not in (held, str(selection.channels[0])):
            raise InputError(f"{selection.source}: the DataArray holds only channel {held!r}, but input_channel is {wanted!r}")
    return 0


def _selected_times(image: xr.DataArray, selection: Selection, options: PredictOptions) -> list[tuple[int, int | None]]:
    """(index into ``image``'s t axis, index into the store's t axis) of each frame to predict."""
    if "t" not in selection.start:
        if options.time is not None and options.time != (0, 1):
            raise InputError(f"{selection.source}: time range {list(options.time)} given, but the image has no t axis")
        return [(0, None)]
    n_t = selection.size["t"]
    lo, hi = options.time if options.time is not None else (0, n_t)
    if not 0 <= lo < hi <= n_t:
        raise InputError(f"{selection.source}: time range [{lo}, {hi}) is outside the image's 0..{n_t} time points")
    return [(i, selection.start["t"] + i) for i in range(lo, hi)]


def _refuse_output_inside_input(image_path: str, out: str) -> None:
    """Writing the prediction into the input store (or over it) would modify the input."""
    if is_url(out) or is_url(image_path):
        root = image_path.split("?")[0].rstrip("/")
        inside = out.split("?")[0].rstrip("/") == root or out.startswith(root + "/")
    else:
        top = Path(image_path.removeprefix("file://")).resolve()
        # an image inside a collection (bioformats2raw, plate): the whole collection is the input store
        while any((top.parent / m).exists() for m in ("zarr.json", ".zgroup", ".zattrs")):
            top = top.parent
        target = Path(out.removeprefix("file://")).resolve()
        inside = target == top or top in target.parents
        root = str(top)
    if inside:
        raise InputError(f"output {redact(out)} is inside the input store {redact(root)}; write the prediction somewhere else")
