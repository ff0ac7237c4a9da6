"""A prediction job: what every task needs (small, picklable), and the two tasks themselves.

Only this spec, coordinates and the blocks' weighted sums travel through the scheduler. A block
task (:func:`predict_block`) opens the input store itself, reads the patches its model-grid block
owns (z-scored with the whole frame's statistics, resampled onto the model grid), runs the ensemble
on them and returns the weighted sums, cut into the pieces each output chunk needs. A chunk task
(:func:`write_chunk`) adds its pieces, divides by the grid's weight sum, interpolates onto the
input grid if asked, and writes its own chunk of every channel: no two tasks write the same zarr
chunk. See :mod:`chunked_fnet.predict.schedule` for why the work is split this way.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from chunked_fnet._memory import bound_heap_growth, trim_heap
from chunked_fnet.inference.sliding_window import make_grid, padded_reader, predict_owned
from chunked_fnet.inference.tiling import PatchGrid, Region, blend_weights, finish_region
from chunked_fnet.io.reader import open_level_array, window_reader
from chunked_fnet.io.writer import open_for_writing, write_region
from chunked_fnet.predict.ensemble import StackedEnsemble, cached_model
from chunked_fnet.predict.ledger import Ledger, chunk_key
from chunked_fnet.predict.schedule import BlockTask, ChunkTask, Schedule, schedule
from chunked_fnet.preprocess.normalize import FrameStats
from chunked_fnet.preprocess.resample import ModelGrid, interpolate_axis, resample_window


class PredictOptions(BaseModel):
    """How to tile, blend and store; the defaults suit a CPU laptop and a GPU alike."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input_channel: str | int = "brightfield"
    time: tuple[int, int] | None = Field(None, description="[start, stop) time points; default all")
    patch_shape: tuple[int, int, int] = (32, 64, 64)
    overlap: float = Field(0.25, ge=0, lt=1)
    blend: Literal["gaussian", "cosine", "linear", "constant"] = "gaussian"
    batch_size: int = Field(4, ge=1)
    tta_flips: bool = False
    chunks: tuple[int, int, int] = (32, 256, 256)  # output z, y, x (on the output grid)
    dtype: Literal["float32", "float16"] = "float32"
    version: Literal["0.4", "0.5"] = "0.5"
    levels: int = Field(1, ge=1)
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    pad_mode: Literal["reflect", "symmetric", "edge"] = "reflect"
    output_grid: Literal["model", "input"] = Field(
        "model", description="write on the models' voxel grid, or interpolated back onto the input's grid"
    )
    nonfinite: Literal["fail", "fill"] = Field(
        "fail", description="NaN/Inf input voxels: refuse the frame, or predict them as the frame's mean"
    )
    retries: int = Field(2, ge=0, description="extra tries of a failing chunk task before the run reports it")


# Options that change how a run is carried out but not a single output value: a resumed run may differ in them.
RUNTIME_OPTIONS = frozenset({"retries"})


@dataclass(frozen=True)
class PredictJob:
    """The picklable description of one run, shared by all its tasks."""

    input_path: str
    series: str | None
    input_dims: tuple[str, ...]
    channel_index: int
    times: tuple[int | None, ...]
    stats: tuple[FrameStats, ...]  # per entry of ``times``
    grid: ModelGrid
    models: tuple[str, ...]
    hashes: tuple[str, ...]
    output_path: str
    options: PredictOptions
    structures: tuple[str, ...] = ()  # output channel names, from the model cards
    colors: tuple[str, ...] = ()
    origin: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # t, z, y, x of the first output voxel
    time_scale: float = 1.0
    time_unit: str = "second"
    input_info: dict[str, Any] = field(default_factory=dict, hash=False)  # shape, dtype, scale, ... for the run record
    multiple: int = 16  # the ensemble's largest down-sampling factor: patches are fitted to it

    def record(self) -> dict[str, Any]:
        """Everything that determines the output's values and layout (JSON), kept in the output for ``--resume``."""
        return {
            "input": {"path": self.input_path, "series": self.series, "dims": list(self.input_dims),
                      "channel": self.channel_index, **self.input_info},
            "time_points": [t for t in self.times],
            "frame_stats": [{"mean": s.mean, "std": s.std} for s in self.stats],
            "models": {"checkpoints": list(self.models), "sha256": list(self.hashes), "structures": list(self.structures)},
            "options": {k: v for k, v in self.options.model_dump(mode="json").items() if k not in RUNTIME_OPTIONS},
            "output": {"shape": list(self.output_shape), "scale": list(self.output_scale), "origin": list(self.origin)},
        }

    @property
    def spatial_shape(self) -> tuple[int, int, int]:
        """Output z, y, x: the model grid, or the input's own grid."""
        return self.grid.source_shape if self.options.output_grid == "input" else self.grid.shape  # type: ignore[return-value]

    @property
    def output_scale(self) -> tuple[float, float, float]:
        return self.grid.source_scale if self.options.output_grid == "input" else self.grid.model_scale

    @property
    def output_shape(self) -> tuple[int, ...]:
        return (len(self.times), len(self.models), *self.spatial_shape)

    @property
    def n_chunks(self) -> int:
        """Output chunks (one chunk task each), over all time points."""
        return len(self.times) * math.prod(math.ceil(n / min(c, n)) for n, c in zip(self.spatial_shape, self.options.chunks, strict=True))

    @property
    def patch_grid(self) -> PatchGrid:
        """The global sliding-window grid on the model grid (one per frame; every task rebuilds the same one)."""
        return make_grid(self.grid.shape, self.options.patch_shape, self.options.overlap, self.multiple)

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """Model-grid blocks, one block task each: an output chunk's extent on the model grid."""
        if self.options.output_grid == "model":
            return self.options.chunks
        return tuple(max(1, math.ceil(c * f)) for c, f in zip(self.options.chunks, self.grid.factor, strict=True))  # type: ignore[return-value]

    def schedule(self, skip: Sequence[str] | set[str] = ()) -> Schedule:
        """The block and chunk tasks of this job (chunks whose ledger key is in ``skip`` left out)."""
        return schedule(
            self.patch_grid,
            output_shape=self.spatial_shape,
            output_chunks=self.options.chunks,
            block_shape=self.block_shape,
            time_points=len(self.times),
            factor=self.grid.factor if self.options.output_grid == "input" else None,
            skip=skip,
        )


class ModelGridFrame:
    """One time point's transmitted-light channel, z-scored and resampled, read lazily by window.

    Array-like ``(1, Z, Y, X)`` on the model grid for :func:`padded_reader`.
    """

    def __init__(
        self, array: Any, dims: Sequence[str], t: int | None, channel: int, stats: FrameStats, grid: ModelGrid,
        nonfinite: str = "fail",
    ) -> None:
        self.array, self.dims, self.t, self.channel, self.stats, self.grid = array, tuple(dims), t, channel, stats, grid
        self.nonfinite = nonfinite
        self.shape = (1, *grid.shape)
        self._read = window_reader(array, dims, t, channel)

    def _read_source(self, window: tuple[slice, ...]) -> np.ndarray:
        values = self._read(window)
        finite = np.isfinite(values)
        if not finite.all():
            if self.nonfinite != "fill":
                bad = tuple((s.start, s.stop) for s in window)
                raise ValueError(f"input has NaN/Inf voxels in the (z, y, x) window {bad} at t={self.t}")
            values = np.where(finite, values, self.stats.mean)  # z-scores to 0: the frame's mean
        return values

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        region = key[1:]
        return self.stats.apply(resample_window(self._read_source, self.grid, region))[None]


def _device(options: PredictOptions) -> str:
    if options.device != "auto":
        return options.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _amp(options: PredictOptions, device: str) -> torch.dtype | None:
    if not device.startswith("cuda") or options.precision == "fp32":
        return None
    return torch.float16 if options.precision == "fp16" else torch.bfloat16


def _back_to_input_grid(model_values: np.ndarray, window: Region, grid: ModelGrid, region: Region) -> np.ndarray:
    """Linear interpolation of the model-grid prediction ``model_values`` (over ``window``, as given by
    :func:`~chunked_fnet.predict.schedule.interpolation_window`) at the input voxels of ``region``.

    The model-grid values come from the global blended grid, so any window of them is exact and the
    result does not depend on how the input grid is chunked. Input voxels past the last model voxel
    (at most one model voxel's width) take the nearest model value.
    """
    coords = [np.arange(sl.start, sl.stop) * f for sl, f in zip(region, grid.factor, strict=True)]  # model units
    values = model_values
    for axis, (c, w) in enumerate(zip(coords, window, strict=True)):
        values = interpolate_axis(values, axis + 1, c - w.start)
    return values.astype(np.float32, copy=False)


_WORKER_READY = False


def _prepare_worker_process() -> None:
    """Per worker process, once: one torch intra-op thread per dask worker thread, and a heap that
    returns large freed arrays to the system, however the worker was started.

    torch otherwise starts a thread per core in every worker process (N workers on N cores would run
    N*N threads), and glibc would keep each task's freed window buffers, raising every later peak.
    """
    global _WORKER_READY
    try:
        from distributed import get_worker

        threads = get_worker().state.nthreads
    except ValueError:  # not inside a dask worker: leave the caller's process alone
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if not _WORKER_READY:
        bound_heap_growth()
        _WORKER_READY = True


def _ensemble(job: PredictJob) -> tuple[StackedEnsemble, str]:
    device = _device(job.options)
    return StackedEnsemble([cached_model(p, h, device) for p, h in zip(job.models, job.hashes, strict=True)]), device


def predict_block(job: PredictJob, task: BlockTask) -> tuple[np.ndarray, ...]:
    """Evaluate the patches ``task.block`` owns, once each; return the weighted sums over ``task.pieces``.

    Each piece is its own array (copied out), so the block's full sums are freed when the task ends
    and every consumer receives only its own voxels.
    """
    _prepare_worker_process()
    ensemble, device = _ensemble(job)
    array, _, _ = open_level_array(job.input_path, series=job.series)
    frame = ModelGridFrame(
        array, job.input_dims, job.times[task.time_index], job.channel_index, job.stats[task.time_index], job.grid,
        job.options.nonfinite,
    )
    owned = predict_owned(
        ensemble,
        padded_reader(frame, job.options.pad_mode),
        job.grid.shape,
        task.block,
        patch=job.options.patch_shape,
        overlap=job.options.overlap,
        blend=job.options.blend,
        batch_size=job.options.batch_size,
        device=device,
        multiple=job.multiple,
        pad_mode=job.options.pad_mode,
        tta_flips=job.options.tta_flips,
        amp_dtype=_amp(job.options, device),
    )
    if owned is None:  # the schedule only plans blocks that own patches
        raise RuntimeError(f"block {task.block} of the model grid owns no patch")
    extent, sums = owned
    out = []
    for piece in task.pieces:
        local = tuple(slice(p.start - e.start, p.stop - e.start) for p, e in zip(piece, extent, strict=True))
        if any(sl.start < 0 or sl.stop > e.stop - e.start for sl, e in zip(local, extent, strict=True)):
            raise RuntimeError(f"piece {piece} is outside the block's extent {extent}")
        out.append(sums[(slice(None), *local)].copy())
    del sums, frame
    trim_heap()
    return tuple(out)


def write_chunk(job: PredictJob, task: ChunkTask, *pieces: np.ndarray) -> dict[str, float]:
    """Finish one output chunk (all structures) of one time point from its pieces, write it, record it."""
    start = time.perf_counter()
    _prepare_worker_process()
    if len(pieces) != len(task.sources):
        raise RuntimeError(f"chunk {task.region} expected {len(task.sources)} pieces, got {len(pieces)}")
    patch_grid = job.patch_grid
    weights = blend_weights(patch_grid.patch, job.options.blend)
    blended = finish_region(task.window, patch_grid, weights, zip(task.parts, pieces, strict=True))
    if job.options.output_grid == "input":
        blended = _back_to_input_grid(blended, task.window, job.grid, task.region)
    out = open_for_writing(job.output_path)
    write_region(out, (slice(task.time_index, task.time_index + 1), slice(None), *task.region), blended[None])
    voxels = math.prod(s.stop - s.start for s in task.region)
    timings = {"seconds": time.perf_counter() - start, "voxels": float(voxels)}
    Ledger(job.output_path).mark_done(chunk_key(task.time_index, task.region), timings)  # only now is the chunk done
    del blended
    trim_heap()  # the next task starts from the worker's baseline, not from this task's high-water mark
    return timings


def run_in_process(job: PredictJob, skip: Sequence[str] | set[str] = ()) -> int:
    """Run every task of ``job`` in this process, one after the other, without dask (benchmarks,
    debugging); returns the number of chunks written. Blocks are computed first, then the chunks."""
    plan = job.schedule(skip)
    pieces = [predict_block(job, block) for block in plan.blocks]
    for chunk in plan.chunks:
        write_chunk(job, chunk, *(pieces[b][p] for b, p in chunk.sources))
    return len(plan.chunks)
