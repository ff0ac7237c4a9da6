"""Plan and run chunked ensemble prediction on a dask.distributed cluster.

The client side computes per-frame statistics (by dask, over whole frames), creates the output
OME-Zarr (one channel per structure, named and coloured from the model cards, physical scale of the
model grid and the input's translation), submits one task per output chunk, shows progress, builds
the pyramid, and returns the written output as a lazy DataArray.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import xarray as xr
from distributed import Client, as_completed
from tqdm.auto import tqdm

from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.errors import InputError
from chunked_fnet.io.reader import channel_index, open_image, spatial_frame
from chunked_fnet.io.writer import build_pyramid, create_image
from chunked_fnet.predict.ensemble import check_ensemble
from chunked_fnet.predict.job import PredictJob, PredictOptions, run_block
from chunked_fnet.preprocess.normalize import frame_stats
from chunked_fnet.preprocess.resample import ModelGrid


@dataclass(frozen=True)
class RunSummary:
    output: str
    chunks: int
    workers: int
    seconds: float
    voxels: int

    def __str__(self) -> str:
        rate = self.voxels / self.seconds if self.seconds else float("nan")
        return (
            f"wrote {self.output}: {self.chunks} chunk tasks on {self.workers} worker(s) in {self.seconds:.1f} s, "
            f"{self.voxels / 1e6:.2f} M output voxels x structures, {rate / 1e6:.3f} M voxels/s"
        )


def plan(
    image_path: str,
    models: Sequence[str | Path],
    out: str | Path,
    options: PredictOptions,
    *,
    series: str | None = None,
) -> PredictJob:
    """Check inputs and models, compute per-frame statistics, and describe the job."""
    image = open_image(image_path, series=series)
    scale = image.attrs["scale"]
    if "z" not in image.dims:
        raise InputError(f"{image.attrs['source']}: the models are 3D; the image has no z axis (dims {list(image.dims)})")
    channel = channel_index(image, options.input_channel, "input (transmitted-light)")
    paths = [str(p) for p in models]
    cards, hashes = check_ensemble(paths)
    n_t = image.sizes.get("t", 1)
    if options.time is None:
        times: list[int | None] = list(range(n_t)) if "t" in image.dims else [None]
    else:
        lo, hi = options.time
        if not 0 <= lo < hi <= n_t:
            raise InputError(f"{image.attrs['source']}: time range [{lo}, {hi}) is outside the image's 0..{n_t} time points")
        times = list(range(lo, hi))
    stats = tuple(frame_stats(spatial_frame(image, t, channel), f"{image.attrs['source']} t={t} channel {options.input_channel!r}") for t in times)
    zyx = tuple(image.sizes[d] for d in ("z", "y", "x"))
    grid = ModelGrid(zyx, (scale["z"], scale["y"], scale["x"]), tuple(cards[0].voxel_size))  # type: ignore[arg-type]
    translation = image.attrs["translation"]
    tscale = scale.get("t", 1.0)
    return PredictJob(
        input_path=str(image_path),
        series=series,
        input_dims=tuple(image.dims),
        channel_index=channel,
        times=tuple(times),
        stats=stats,
        grid=grid,
        models=tuple(paths),
        hashes=tuple(hashes),
        output_path=str(out),
        options=options,
        structures=tuple(c.structure for c in cards),
        colors=tuple(c.color for c in cards),
        origin=(translation.get("t", 0.0) + (times[0] or 0) * tscale, *(translation[d] for d in ("z", "y", "x"))),  # type: ignore[arg-type]
        time_scale=tscale,
        time_unit=image.attrs["units"].get("t") or "second",
    )


def create_output(job: PredictJob, overwrite: bool) -> None:
    """The empty output image: a named, coloured channel per structure, overlaying the input."""
    create_image(
        job.output_path,
        shape=job.output_shape,
        dims=("t", "c", "z", "y", "x"),
        chunks=(1, 1, *job.options.chunks),
        dtype=job.options.dtype,
        scale={"t": job.time_scale, **dict(zip(("z", "y", "x"), job.output_scale, strict=True))},
        translation=dict(zip(("t", "z", "y", "x"), job.origin, strict=True)),
        units={"t": job.time_unit},
        channel_names=list(job.structures),
        channel_colors=list(job.colors),
        channel_windows=[{"min": -10.0, "max": 10.0, "start": -1.0, "end": 4.0} for _ in job.structures],
        levels=job.options.levels,
        version=job.options.version,
        name=f"chunked_fnet prediction of {Path(job.input_path).name}",
        overwrite=overwrite,
    )


def predict(
    image: str | Path | xr.DataArray,
    models: Sequence[str | Path],
    out: str | Path,
    *,
    options: PredictOptions | None = None,
    client: Client | None = None,
    series: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[xr.DataArray, RunSummary]:
    """Predict every structure of ``models`` for ``image`` (an OME-Zarr path, or a DataArray opened
    with :func:`chunked_fnet.open_image`) into the OME-Zarr ``out``; returns the output, lazily."""
    options = options or PredictOptions()
    image_path = image.attrs["source"] if isinstance(image, xr.DataArray) else str(image)
    job = plan(image_path, models, out, options, series=series)
    create_output(job, overwrite)
    start = time.perf_counter()
    tasks = job.regions()
    context = local_client(ClusterSpec()) if client is None else nullcontext(client)
    with context as c:
        futures = [c.submit(run_block, job, ti, region, pure=False, key=f"chunk-{ti}-{_corner(region)}") for ti, region in tasks]
        voxels = 0
        with tqdm(total=len(futures), desc="predict", unit="chunk", disable=not progress) as bar:
            for future in as_completed(futures):
                result = future.result()
                voxels += int(result["voxels"]) * len(job.models)
                bar.update(1)
        workers = len(c.scheduler_info().get("workers", {}))
        if options.levels > 1:
            build_pyramid(job.output_path, progress=progress)
    summary = RunSummary(str(out), len(tasks), workers, time.perf_counter() - start, voxels)
    return open_image(out), summary


def _corner(region: tuple[slice, ...]) -> str:
    return "-".join(str(s.start) for s in region)

