"""A prediction job: what every task needs (small, picklable), and the two tasks themselves.

Only this spec, coordinates, the blocks' weighted sums and (for frames of several blocks) their
input chunks travel through the scheduler. A block task (:func:`predict_block`) opens the input store
itself and reads, or with ``policy.shared_reads`` takes from the read tasks (:func:`read_input_chunk`:
each input chunk of a frame read once, whichever blocks need it), the patches its model-grid block
owns (z-scored with the whole frame's statistics, resampled onto the model grid), runs the ensemble
on them and returns the weighted sums, cut into the pieces each output chunk needs. A chunk task
(:func:`write_chunk`) adds its pieces, divides by the grid's weight sum, interpolates onto the
input grid if asked, and writes its own chunk of every channel: no two tasks write the same zarr
chunk. See :mod:`chunked_fnet.predict.schedule` for why the work is split this way.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import zarr

from chunked_fnet.memory import allocator_set_by_user, bound_heap_growth, trim_heap
from chunked_fnet.device import autocast_dtype, device_memory, resolve_device, stack_line
from chunked_fnet.errors import DeviceMemoryError, one_line
from chunked_fnet.io.reader import ChunkIndex, chunks_reader, chunks_under, open_level_array, read_chunk
from chunked_fnet.io.writer import level_for_writing, write_region
from chunked_fnet.predict.background import sums_with_background
from chunked_fnet.predict.ensemble import cached_ensemble
from chunked_fnet.predict.policy import Hardware, ModelConstraints, RunPolicy, patch_that_fits, resolve_policy
from chunked_fnet.predict.shipping import JobRef, resolve_run
from chunked_fnet.predict.ledger import Ledger, chunk_key
from chunked_fnet.predict.options import RUNTIME_OPTIONS, PredictOptions
from chunked_fnet.predict.schedule import BlockTask, ChunkTask, Schedule, schedule
from chunked_fnet.predict.frame_stats import read_frame, record_frame_stats, stats_of_chunks
from chunked_fnet.preprocess.normalize import FrameStats
from chunked_fnet.preprocess.frame import ModelGridFrame, input_region
from chunked_fnet.preprocess.resample import ModelGrid, interpolate_axis
from chunked_fnet.profiling import clocked, stage
from chunked_fnet.sliding_window import Box, PatchRunner, SlidingWindow, WeightedSum
from chunked_fnet.sliding_window.padding import read_extent
from chunked_fnet.sliding_window.runner import default_channels_last


@dataclass(frozen=True)
class PredictJob:
    """The picklable description of one run, shared by all its tasks."""

    input_path: str
    series: str | None
    input_dims: tuple[str, ...]
    channel_index: int
    times: tuple[int | None, ...]  # time indices into the input level's array
    stats: tuple[FrameStats | None, ...]  # per entry of ``times``; None: computed by the tasks that read the frame (predict/frame_stats.py)
    grid: ModelGrid  # the selected (z, y, x) extent of the input and the models' grid over it
    models: tuple[str, ...]
    hashes: tuple[str, ...]
    output_path: str
    options: PredictOptions
    constraints: ModelConstraints = ModelConstraints()  # what every model accepts (patch multiple, minimum, halo)
    structures: tuple[str, ...] = ()  # output channel names, from the model cards
    colors: tuple[str, ...] = ()
    origin: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # t, z, y, x of the first output voxel
    time_scale: float = 1.0
    time_unit: str = "second"
    input_info: dict[str, Any] = field(default_factory=dict, hash=False)  # shape, dtype, scale, ... for the run record
    input_level: int = 0  # pyramid level read
    input_offset: tuple[int, int, int] = (0, 0, 0)  # z, y, x of the selection's first voxel in that level's array
    time_offset: int = 0  # the output's t index of ``times[0]``: a followed time-lapse predicts its frames in steps
    eps: tuple[tuple[str, float], ...] = ()  # (package, z-scoring eps) of the members that have one: how flat a frame may be

    def record(self, policy: RunPolicy) -> dict[str, Any]:
        """Everything that determines the output's values and layout (JSON), kept in the output for ``--resume``."""
        return {
            "input": {"path": self.input_path, "series": self.series, "dims": list(self.input_dims),
                      "channel": self.channel_index, "level": self.input_level, "offset": list(self.input_offset),
                      "selected_shape": list(self.grid.source_shape), **self.input_info},
            "time_points": [t for t in self.times],
            "frame_stats": [{"mean": s.mean, "std": s.std} if s is not None else None for s in self.stats],
            "models": {"checkpoints": list(self.models), "sha256": list(self.hashes), "structures": list(self.structures)},
            "options": {k: v for k, v in self.options.model_dump(mode="json").items() if k not in RUNTIME_OPTIONS},
            **policy.record(),
            "output": {"shape": list(self.output_shape), "scale": list(self.output_scale), "origin": list(self.origin),
                       "shards": list(self.shards) if self.shards else None},
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
        return (self.time_offset + len(self.times), len(self.models), *self.spatial_shape)

    @cached_property
    def shards(self) -> tuple[int, int, int] | None:
        """The output's zarr shard z, y, x (None: unsharded), resolved once from ``options.shards`` (:func:`resolve_shards`)."""
        return resolve_shards(self.options, self.spatial_shape)

    @property
    def write_shape(self) -> tuple[int, int, int]:
        """The output region one chunk task finishes and writes: a shard when sharded (so no two tasks ever
        write one stored object), else a chunk."""
        return self.shards or self.options.chunks

    @property
    def n_chunks(self) -> int:
        """Output regions (one chunk task each: :attr:`write_shape`), over all time points."""
        return len(self.times) * math.prod(math.ceil(n / min(c, n)) for n, c in zip(self.spatial_shape, self.write_shape, strict=True))

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """Model-grid blocks, one block task each: an output chunk's extent on the model grid."""
        if self.options.output_grid == "model":
            return self.options.chunks
        return tuple(max(1, math.ceil(c * f)) for c, f in zip(self.options.chunks, self.grid.factor, strict=True))  # type: ignore[return-value]

    @cached_property
    def input_array(self) -> Any:
        """The input level's read-only zarr array, opened once per process for the run: the job that the
        workers hold for a run's duration keeps it (left out when pickled), and :func:`plan` hands over its own."""
        return open_level_array(self.input_path, level=self.input_level, series=self.series)[0]

    def output_level(self, time_stop: int) -> zarr.Array:
        """The output's full-resolution array, to write chunks into up to output time ``time_stop``: opened
        once per process for the run, as :attr:`input_array` is (each chunk task opening it read and parsed
        the group's and the array's metadata again, ~3 ms, most of it in zarr's one I/O loop thread, which
        a GPU's frame rate keeps busy); opened again when a followed time-lapse has grown past it."""
        arr = self.__dict__.get("_output_level")
        if arr is None or arr.shape[0] < time_stop:
            arr = self.__dict__["_output_level"] = level_for_writing(self.output_path)
        return arr

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for opened in ("input_array", "_output_level"):  # open stores: each process opens its own
            state.pop(opened, None)
        return state

    def resolve_policy(self, hardware: Hardware, recorded: dict[str, Any] | None = None) -> RunPolicy:
        """This job's run policy on ``hardware`` (:func:`~chunked_fnet.predict.policy.resolve_policy`)."""
        return resolve_policy(self.options, self.grid.shape, self.constraints, hardware, frames=len(self.times),
                              block_shape=self.block_shape, recorded=recorded)

    def schedule(self, window: SlidingWindow, skip: Sequence[str] | set[str] = ()) -> Schedule:
        """The block and chunk tasks of this job with ``window`` (chunks whose ledger key is in ``skip`` left out)."""
        return schedule(
            window.grid,
            output_shape=self.spatial_shape,
            output_chunks=self.write_shape,
            block_shape=self.block_shape,
            time_points=len(self.times),
            first_time=self.time_offset,
            factor=self.grid.factor if self.options.output_grid == "input" else None,
            skip=skip,
        )


#: The stored object an auto shard makes, per structure (uncompressed): ``benchmarks/shards.py`` measured
#: (BENCHMARKS.md, 2-core CPU, local disk and S3) 256 KiB chunks sharded into 8 MiB objects writing 2.7x
#: (disk) and 5.0x (S3) as fast in 31x fewer files (reading 25-38 % slower), while 8 MiB chunks sharded 4 to
#: an object wrote at most 1.13x as fast and read 5-9 % slower, and 64 MiB objects read 3-11x slower from S3.
SHARD_OBJECT_BYTES = 8 * 2**20


def resolve_shards(options: PredictOptions, spatial_shape: Sequence[int]) -> tuple[int, int, int] | None:
    """The output's shard z, y, x: the one place the shard choice is made (None: one object per chunk).

    An explicit ``options.shards`` is kept, clipped to the image in whole chunks. ``auto`` (the default):
    chunks are gathered into objects of about :data:`SHARD_OBJECT_BYTES` (y and x doubled together, then
    z, while the shard fits the image and the size); so the default 32x256x256 float32 chunks (8 MiB) stay
    unsharded and small chunks are sharded. NGFF 0.4 (zarr v2) has no shards.
    """
    chunks = tuple(min(c, n) for c, n in zip(options.chunks, spatial_shape, strict=True))
    whole = tuple(math.ceil(n / c) * c for n, c in zip(spatial_shape, chunks, strict=True))  # the image in whole chunks
    if options.shards is None or (options.shards == "auto" and options.version == "0.4"):
        return None
    if options.shards != "auto":
        return tuple(min(s, w) for s, w in zip(options.shards, whole, strict=True))  # type: ignore[return-value]
    itemsize = np.dtype(options.dtype).itemsize
    shard = list(chunks)
    for axes in ((1, 2), (0,)):
        while True:
            grown = [min(2 * n, w) if a in axes else n for a, (n, w) in enumerate(zip(shard, whole, strict=True))]
            if grown == shard or itemsize * math.prod(grown) > SHARD_OBJECT_BYTES:
                break
            shard = grown
    return None if tuple(shard) == chunks else tuple(shard)  # type: ignore[return-value]


def model_grid_frame(job: PredictJob, time_index: int, chunks: Sequence[np.ndarray] = (), window: SlidingWindow | None = None,
                     block: BlockTask | None = None, stats: FrameStats | None = None) -> ModelGridFrame:
    """The frame of ``job``'s input selection written at output time index ``time_index``, read from its store,
    or, given ``chunks`` (:func:`read_input_chunk` of each of :func:`block_input_chunks` of ``block``), cut from them.

    Its statistics: ``stats``, else the job's; where the job leaves them to the tasks, the whole frame is read
    here, chunk by chunk, and they are computed from it (``predict/frame_stats.py``), the frame then cut from
    those chunks: read once, for the statistics and the patches."""
    i = time_index - job.time_offset
    held: dict[Any, np.ndarray] | None = None
    if chunks:
        assert window is not None and block is not None
        held = dict(zip(block_input_chunks(job, window, block), chunks, strict=True))
    stats = stats if stats is not None else job.stats[i]
    if stats is None:
        with stage("read"):
            held = read_frame(job, time_index)
        with stage("statistics"):
            stats = stats_of_chunks(job, time_index, held)
    reader = chunks_reader(job.input_array, job.input_dims, held, job.input_offset) if held is not None else None
    return ModelGridFrame(
        job.input_array, job.input_dims, job.times[i], job.channel_index, stats, job.grid,
        job.options.nonfinite, job.input_offset, reader=reader,
    )


def block_input_chunks(job: PredictJob, window: SlidingWindow, block: BlockTask) -> list[ChunkIndex]:
    """The (z, y, x) indices of the input's stored chunks that ``block``'s patches read (their bounding box,
    mirrored padding folded in, on the input grid): what its read tasks hand it with ``policy.shared_reads``."""
    corners, _ = window.owned(block.block)
    box = read_extent(window.grid.bounding_box(corners).slices, window.grid.shape, window.pad_mode)
    return chunks_under(job.input_array, job.input_dims, input_region(job.grid, box), job.input_offset)


def read_input_chunk(run: JobRef | tuple[PredictJob, RunPolicy], time_index: int, chunk: ChunkIndex) -> np.ndarray:
    """One stored chunk of the input channel at output time index ``time_index`` (the array's dtype): read
    once, for every block task of its frame that needs it (``policy.shared_reads``)."""
    job, _ = resolve_run(run)
    return read_chunk(job.input_array, job.input_dims, job.times[time_index - job.time_offset], job.channel_index, chunk)


def back_to_input_grid(model_values: np.ndarray, source: Box, grid: ModelGrid, region: Box) -> np.ndarray:
    """Linear interpolation of the model-grid prediction ``model_values`` (over ``source``, as given by
    :func:`~chunked_fnet.predict.schedule.interpolation_region`) at the input voxels of ``region``.

    The model-grid values come from the global blended grid, so any region of them is exact and the
    result does not depend on how the input grid is chunked. Input voxels past the last model voxel
    (at most one model voxel's width) take the nearest model value.
    """
    coords = [np.arange(a, b) * f for a, b, f in zip(region.start, region.stop, grid.factor, strict=True)]  # model units
    values = model_values
    for axis, (c, w0) in enumerate(zip(coords, source.start, strict=True)):
        values = interpolate_axis(values, axis + 1, c - w0)
    return values.astype(np.float32, copy=False)


_WORKER_READY = False
#: Whether this process's tasks hand their freed pages back after each task: yes where the worker's first task
#: bounded the heap (and outside a worker), no where the worker's environment set the allocator itself.
_TRIM_AFTER_TASK = True
_STACK_LOGGED: set[str] = set()


def _trim_after_task() -> None:
    """The next task starts from the worker's baseline, not from this task's high-water mark, unless the
    worker's environment chose the allocator: a heap set up to keep freed memory for reuse (so that every
    frame does not fault fresh pages in) would be emptied by a trim after every task."""
    if _TRIM_AFTER_TASK:
        trim_heap()


def log_stack_once(device: torch.device) -> None:
    """Log what this process computes with on ``device`` (:func:`~chunked_fnet.device.stack_line`), once
    per process and device: in a worker's log (``distributed.worker``'s handlers and level)."""
    if str(device) in _STACK_LOGGED:
        return
    _STACK_LOGGED.add(str(device))
    logging.getLogger("distributed.worker.chunked_fnet").info(stack_line(device))


def _prepare_worker_process(threads: int | None = None, device: str | None = None) -> None:
    """In a worker process: ``threads`` torch intra-op threads (default: one per dask worker thread), and
    once, a heap that returns large freed arrays to the system, however the worker was started (unless the
    worker's environment sets the allocator itself: :func:`~chunked_fnet.memory.allocator_set_by_user`, whose
    choice is kept), and a log line naming torch, CUDA, cuDNN and the ``device`` computed on.

    torch otherwise starts a thread per core in every worker process (N workers on N cores would run
    N*N threads), and glibc would keep each task's freed buffers, raising every later peak.
    """
    global _WORKER_READY, _TRIM_AFTER_TASK
    try:
        from distributed import get_worker

        threads = threads or get_worker().state.nthreads
    except ValueError:  # not inside a dask worker: leave the caller's process alone
        return
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if not _WORKER_READY:
        chosen = allocator_set_by_user()
        if chosen is None:
            bound_heap_growth()
        _TRIM_AFTER_TASK = chosen is None
        logging.getLogger("distributed.worker.chunked_fnet").info(
            "chunked_fnet worker heap: " + (f"as the environment sets it ({chosen})" if chosen else "large freed arrays returned to the system"))
        _WORKER_READY = True
    if device is not None:
        log_stack_once(resolve_device(device))


def ensemble_runner(job: PredictJob, policy: RunPolicy) -> PatchRunner:
    """The ensemble on this worker's device, each model loaded once per process, computing as the policy says."""
    return models_runner(job.models, job.hashes, job.options.device, job.options.tta_flips, policy)


def models_runner(models: Sequence[str], hashes: Sequence[str], device: str, tta_flips: bool, policy: RunPolicy) -> PatchRunner:
    """The runner of ``models`` (their content ``hashes``) on ``device`` as ``policy`` says: the process's
    one cached ensemble (a chunked run's workers, :class:`~chunked_fnet.predict.predictor.Predictor`)."""
    dev = resolve_device(device)
    amp = autocast_dtype(policy.precision, dev)
    channels_last = default_channels_last(dev, amp)
    ensemble = cached_ensemble(list(models), list(hashes), str(dev), channels_last)
    lane = lane_threads(policy, dev)
    return PatchRunner(ensemble, dev, tta_flips, amp, channels_last=channels_last, batch_size=policy.batch_size,
                       **({"device_thread": True, "threads": lane} if lane else {}))


def lane_threads(policy: RunPolicy, device: torch.device) -> int | None:
    """The torch threads of this worker's compute lane when ``policy`` runs one (a CPU worker of a dask
    cluster: its task threads), else None: forward passes in the calling task's thread."""
    if not policy.compute_lane or device.type != "cpu":
        return None
    try:
        from distributed import get_worker

        return int(get_worker().state.nthreads)
    except ValueError:  # not inside a dask worker (a run in one process): the caller's thread computes
        return None


def _torch_threads(job: PredictJob, policy: RunPolicy) -> int | None:
    """The run's torch threads per task on a CPU worker; None on an accelerator."""
    return policy.block_threads if resolve_device(job.options.device).type == "cpu" else None


def _with_patch_that_fits(exc: DeviceMemoryError, job: PredictJob) -> DeviceMemoryError:
    """``exc`` naming a patch that would fit this worker's device (the policy's sizing), in one line."""
    device = torch.device(exc.device or job.options.device)
    hint = patch_that_fits(job.options, job.grid.shape, job.constraints, device_memory(device)[1], exc.patch, exc.batch)
    error = DeviceMemoryError(one_line(f"{exc}: {hint}"))
    error.patch, error.batch, error.device = exc.patch, exc.batch, exc.device
    return error


def predict_block(
    run: JobRef | tuple[PredictJob, RunPolicy], task: BlockTask, *chunks: np.ndarray, stats: FrameStats | None = None,
) -> tuple[WeightedSum, ...]:
    """Evaluate the patches ``task.block`` owns, once each (background ones not at all with ``skip_empty``:
    :mod:`~chunked_fnet.predict.background`); return their weighted sums over ``task.pieces``. The input is
    read from the store, or cut from ``chunks`` (read tasks' results, in :func:`block_input_chunks`' order);
    z-scored with ``stats`` (its frame's statistics task's), the job's, or those of the whole frame read here
    (:func:`model_grid_frame`), then recorded in the ledger.

    Each piece is its own array (copied out), so the block's full sums are freed when the task ends
    and every consumer receives only its own voxels; a frame's only block has one piece, its sums, handed
    out as they are (see :func:`block_result`).
    """
    job, policy = resolve_run(run)
    _prepare_worker_process(_torch_threads(job, policy), job.options.device)
    window = policy.window
    corners, extent = window.owned(task.block)
    if extent is None:  # the schedule only plans blocks that own patches
        raise RuntimeError(f"block {task.block} of the model grid owns no patch")
    with clocked(job.options.profile) as clock:
        frame = model_grid_frame(job, task.time_index, chunks, window, task, stats)
        if stats is None and job.stats[task.time_index - job.time_offset] is None:  # this task computed them
            frame.stats = record_frame_stats(job, task.time_index, frame.stats)
        try:
            sums, background = sums_with_background(ensemble_runner(job, policy), job.hashes, window, frame, corners, extent, policy.skip_empty)
        except DeviceMemoryError as exc:
            raise _with_patch_that_fits(exc, job) from exc
        with stage("blend"):
            pieces = tuple(sums.crop(piece) for piece in task.pieces)
        del sums, frame, chunks
        with stage("heap trim"):
            _trim_after_task()
    record: dict[str, Any] = {"stages": clock.record()} if clock is not None else {}
    if policy.skip_empty is not None:  # what the summary counts (a recomputed block writes the same again)
        record.update(patches=len(corners), background=background)
    if record:
        Ledger(job.output_path).mark_block(chunk_key(task.time_index, task.block), record)
    return block_result(pieces)


def block_result(pieces: tuple[WeightedSum, ...]) -> WeightedSum | tuple[WeightedSum, ...]:
    """What a block task returns: a lone piece as itself, so its chunk tasks take it whole, without a dask
    task per chunk to pick it out of a tuple (:func:`piece_of`); several pieces as a tuple, one per chunk."""
    return pieces[0] if len(pieces) == 1 else pieces


def piece_of(result: WeightedSum | tuple[WeightedSum, ...], piece: int) -> WeightedSum:
    """Piece ``piece`` of a block task's result (:func:`block_result`)."""
    return result if isinstance(result, WeightedSum) else result[piece]


def write_chunk(run: JobRef | tuple[PredictJob, RunPolicy], task: ChunkTask, *pieces: WeightedSum) -> dict[str, float]:
    """Finish one output chunk (all structures) of one time point from its pieces, write it, record it."""
    start = time.perf_counter()
    job, policy = resolve_run(run)
    _prepare_worker_process(_torch_threads(job, policy))
    if len(pieces) != len(task.sources):
        raise RuntimeError(f"chunk {task.region} expected {len(task.sources)} pieces, got {len(pieces)}")
    with clocked(job.options.profile) as clock:
        with stage("finish"):
            # a piece may be more than this chunk's (a frame's only block hands every chunk its whole sums)
            parts = [p.view(inner) if (inner := p.box.intersect(task.model_box)) is not None else p for p in pieces]
            blended = policy.window.blend_pieces(task.model_box, parts)
            del parts
            if job.options.output_grid == "input":
                blended = back_to_input_grid(blended, task.model_box, job.grid, task.region)
        with stage("write"):
            out = job.output_level(task.time_index + 1)
            write_region(out, (slice(task.time_index, task.time_index + 1), slice(None), *task.region.slices), blended[None])
        del blended
        with stage("heap trim"):
            _trim_after_task()
    timings: dict[str, Any] = {"seconds": time.perf_counter() - start, "voxels": float(task.region.size)}
    if clock is not None:
        timings["stages"] = clock.record()
    Ledger(job.output_path).mark_done(chunk_key(task.time_index, task.region), timings)  # only now is the chunk done
    return timings


def run_in_process(job: PredictJob, policy: RunPolicy, skip: Sequence[str] | set[str] = ()) -> int:
    """Run every task of ``job`` in this process, one after the other, without dask (benchmarks,
    debugging); returns the number of chunks written. Blocks are computed first, then the chunks."""
    plan = job.schedule(policy.window, skip)
    pieces = [predict_block((job, policy), block) for block in plan.blocks]
    for chunk in plan.chunks:
        write_chunk((job, policy), chunk, *(piece_of(pieces[ref.block], ref.piece) for ref in chunk.sources))
    return len(plan.chunks)
