"""Plan and run chunked ensemble prediction on a dask.distributed cluster.

The client side locates the input selection in its store, checks everything that can be checked
before the first byte is written (models, options, missing input chunks), computes per-frame
statistics (by dask, over whole frames), creates the output OME-Zarr (one channel per structure,
named and coloured from the model cards, at the selection's origin), submits the block tasks and
chunk tasks of :mod:`chunked_fnet.predict.schedule` as one dask graph, shows progress, builds the
pyramid, and returns the written output as a lazy DataArray.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import uuid
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr
from distributed import Client, as_completed
from tqdm.auto import tqdm

from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.errors import ChunkedFnetError, InputError, OutputExistsError
from chunked_fnet.device import parse_device
from chunked_fnet.io.completeness import completeness
from chunked_fnet.io.reader import Selection, channel_index, locate, open_image, open_level_array, spatial_frame
from chunked_fnet.io.store import is_url, redact
from chunked_fnet.io.writer import build_pyramid, create_image
from chunked_fnet.predict.ensemble import Member, check_ensemble, window_constraints
from chunked_fnet.predict.job import PredictJob, predict_block, write_chunk
from chunked_fnet.predict.shipping import JobRef, shipped
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.ledger import Ledger, chunk_key, describe_chunk, differences
from chunked_fnet.preprocess.normalize import FrameStats, frame_stats
from chunked_fnet.preprocess.resample import ModelGrid
from chunked_fnet.sliding_window import SlidingWindow
from chunked_fnet.predict.precision import choose_precision
from chunked_fnet.sliding_window.auto import AUTO_OVERLAP, auto_patch
from chunked_fnet.sliding_window.window import min_band_overlap


class ChunksFailedError(ChunkedFnetError, RuntimeError):
    """Some chunk tasks failed after their retries; every other chunk was written and recorded."""


@dataclass(frozen=True)
class RunSummary:
    output: str
    chunks: int  # computed by this run
    workers: int
    seconds: float
    voxels: int
    total_chunks: int = 0  # of the whole output; more than ``chunks`` when a resumed run skipped finished ones
    patch_evaluations: int = 0  # model patches evaluated (each global sliding-window patch of a frame once)
    precision: str = ""  # what the model computed in, with the measurement behind an auto choice
    patch: tuple[int, ...] = ()

    def __str__(self) -> str:
        rate = self.voxels / self.seconds if self.seconds else float("nan")
        skipped = self.total_chunks - self.chunks
        resumed = f" ({skipped} of {self.total_chunks} were already done)" if skipped > 0 else ""
        return (
            f"wrote {self.output}: {self.chunks} chunk tasks on {self.workers} worker(s) in {self.seconds:.1f} s{resumed}, "
            f"{self.voxels / 1e6:.2f} M output voxels x structures, {rate / 1e6:.3f} M voxels/s, {self.patch_evaluations} patches evaluated"
            + (f" of {'x'.join(map(str, self.patch))}" if self.patch else "")
            + (f"; {self.precision}" if self.precision else "")
        )


def plan(
    image: str | Path | xr.DataArray,
    models: Sequence[str | Path],
    out: str | Path,
    options: PredictOptions,
    *,
    series: str | None = None,
) -> PredictJob:
    """Check inputs and models, compute per-frame statistics, and describe the job.

    ``image`` is an OME-Zarr path or a DataArray from :func:`chunked_fnet.open_image`, at any pyramid
    level, maybe subset with ``isel``/``sel``: exactly its time points and its z/y/x extent are
    predicted, and the output's origin is the subset's physical origin.
    """
    if not isinstance(image, xr.DataArray):
        image = open_image(str(image), series=series)
    selection = locate(image)
    source = selection.source
    _refuse_output_inside_input(source, str(out))
    if "z" not in selection.start:
        raise InputError(f"{source}: the models are 3D; the image has no z axis (dims {list(image.dims)})")
    channel = _input_channel(image, selection, options)
    store_channel = selection.channels[channel] if "c" in image.dims else selection.channels[0]
    parse_device(options.device)  # a misspelt device fails here, not in every task
    paths = [str(p) for p in models]
    members, hashes = check_ensemble(paths)
    multiple, min_patch, halo, width = window_constraints(members)
    frames = _selected_times(image, selection, options)
    level_array, level_meta, _ = open_level_array(source, level=selection.level)
    missing = _check_complete(level_array, level_meta.dims, selection, frames, store_channel, options)
    name = options.input_channel if "c" in image.dims else image["c"].item() if "c" in image.coords else 0
    stats = tuple(
        frame_stats(spatial_frame(image, i, channel), f"{source} t={t} channel {name!r}", options.nonfinite)
        for i, t in frames
    )
    _check_eps(members, stats, frames, source)
    times = tuple(t for _, t in frames)
    scale = image.attrs["scale"]
    zyx = tuple(selection.size[d] for d in ("z", "y", "x"))
    grid = ModelGrid(zyx, (scale["z"], scale["y"], scale["x"]), tuple(members[0].voxel_size))  # type: ignore[arg-type]
    tscale = scale.get("t", 1.0)
    first = {d: float(np.atleast_1d(image[d].values)[0]) for d in ("z", "y", "x")}
    t0 = float(np.atleast_1d(image["t"].values)[frames[0][0]]) if "t" in image.coords else 0.0
    return PredictJob(
        input_path=source,
        series=None,
        input_dims=tuple(level_meta.dims),
        channel_index=store_channel,
        times=times,
        stats=stats,
        grid=grid,
        window=choose_window(options, grid.shape, multiple, width, min_patch=min_patch, halo=halo),
        model_width=width,
        models=tuple(paths),
        hashes=tuple(hashes),
        output_path=str(out),
        options=options,
        structures=tuple(m.structure for m in members),
        colors=tuple(m.color for m in members),
        origin=(t0, first["z"], first["y"], first["x"]),
        time_scale=tscale,
        time_unit=image.attrs["units"].get("t") or "second",
        input_info={
            "shape": list(level_array.shape), "dtype": str(image.dtype), "scale": dict(scale),
            "translation": dict(image.attrs["translation"]), "missing_chunks_filled": missing,
        },
        input_level=selection.level,
        input_offset=tuple(selection.start[d] for d in ("z", "y", "x")),  # type: ignore[arg-type]
    )


#: How much a package's z-scoring epsilon may change the z-scores, relative, before a run is refused:
#: the pipeline divides by the frame's std, a package by std + eps.
EPS_TOLERANCE = 1e-6


def _check_eps(members: Sequence[Member], stats: Sequence[FrameStats], frames: Sequence[tuple[int, int | None]], source: str) -> None:
    """Refuse frames so flat that a package's ``eps`` would change its z-scores measurably."""
    for m in members:
        for s, (_, t) in zip(stats, frames, strict=True):
            if m.eps and m.eps / (s.std + m.eps) > EPS_TOLERANCE:
                raise InputError(
                    f"{source} t={t}: its standard deviation {s.std:g} is so small that {m.path}'s z-scoring (x - mean) / (std + {m.eps:g}) "
                    "differs from the whole-frame z-scores chunked prediction uses by more than 1e-6; rescale the image"
                )


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


def create_output(job: PredictJob, overwrite: bool) -> None:
    """The empty output image: a named, coloured channel per structure, overlaying the input, and its run record."""
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
        display_ranges=[{"min": -10.0, "max": 10.0, "start": -1.0, "end": 4.0} for _ in job.structures],
        levels=job.options.levels,
        version=job.options.version,
        name=f"chunked_fnet prediction of {Path(job.input_path).name}",
        overwrite=overwrite,
    )
    Ledger(job.output_path).write_record(job.record())


#: The memory one patch may use while planning, before the workers' own memory is known.
PLANNING_BUDGET = 2 * 2**30

#: The share of a worker thread's memory that one patch's forward pass may take (estimated at 32 bytes
#: per voxel and channel, above the 25 measured): dask's own memory target (0.6, where a worker starts
#: spilling), so that with the rest (the interpreter and the model, ~0.7 GB; the input box, the sums
#: and the pieces: tens of MB) a worker stays under dask's spill and pause thresholds (0.7, 0.8).
#: It was 0.5, which cut a 48x384x384 frame (7.1 M voxels: 5.4 GiB measured in fp32, one thread) in
#: two on a 2-worker LocalCluster of a 24 GiB machine even in a time-lapse (one frame per worker),
#: evaluating 25 % of it twice (benchmarks/throughput.py --frames).
PATCH_MEMORY_FRACTION = 0.6


def choose_window(
    options: PredictOptions, frame: Sequence[int], multiple: int, width: int, budget: float = PLANNING_BUDGET, min_patches: int = 1,
    recorded: dict[str, Any] | None = None, min_patch: Sequence[int] = (1, 1, 1), halo: Sequence[int] = (0, 0, 0),
) -> SlidingWindow:
    """The sliding window of a run: explicit options as given; ``auto`` patch and overlap from
    :func:`~chunked_fnet.sliding_window.auto.auto_patch` (or, on resume, from the run record).

    ``min_patch`` and ``halo`` come from the models (bioimage.io packages declare both): an auto patch
    is at least ``min_patch``, an auto overlap wide enough that the band blend gives the halo no weight.
    """
    low = tuple(int(v) for v in min_patch)
    auto_overlap = max(AUTO_OVERLAP, *(min_band_overlap(h, multiple) for h in halo))
    if recorded is not None and options.patch_shape == "auto":
        patch, overlap = tuple(recorded["patch"]), tuple(recorded["overlap"])
    elif options.patch_shape == "auto":
        patch, overlap = auto_patch(frame, multiple, width, budget, min_patches, overlap=auto_overlap)
        patch = tuple(max(p, lo) for p, lo in zip(patch, low))
        overlap = tuple(0 if p >= n else o for p, o, n in zip(patch, overlap, frame))
    else:
        patch = options.patch_shape
        overlap = tuple(0 if p >= n else min(auto_overlap, p - multiple) for p, n in zip(patch, frame))
    if options.overlap != "auto":
        overlap = options.overlap
    voxels = options.overlap == "auto" or options.overlap >= 1
    blend = options.blend if options.blend != "auto" else ("band" if voxels else "gaussian")
    return SlidingWindow(
        tuple(frame), tuple(patch), overlap, multiple, blend, pad_mode=options.pad_mode, align=blend == "band",
        min_patch=low, halo=tuple(int(h) for h in halo),  # type: ignore[arg-type]
    )


def _rewindow(job: PredictJob, **choice: Any) -> PredictJob:
    """``job`` with its window chosen again (:func:`choose_window` keywords: budget, min_patches, recorded)."""
    w = job.window
    window = choose_window(job.options, job.grid.shape, w.multiple, job.model_width, min_patch=w.min_patch, halo=w.halo, **choice)
    return dataclasses.replace(job, window=window)


def _fit_to_cluster(job: PredictJob, client: Client) -> PredictJob:
    """With ``patch_shape: auto``, size the patch for the smallest worker (its memory per thread, or its
    GPU's free memory: one block at a time runs on a GPU, in its own thread, see ``runner._DEVICE_THREADS``)
    and for enough patches to keep every GPU, or every CPU host, busy; a batch of several patches shares the budget.

    CPU threads are not counted: a frame is not cut to give each thread a patch, since the cut evaluates
    the overlap twice (one 48x384x384 frame in two: 1.25x), while a block given a host's idle threads
    (:func:`block_threads`) runs its convolutions on all of them at the bare forward's own speed."""
    if job.options.patch_shape != "auto":
        return job
    budget = PLANNING_BUDGET
    workers = client.scheduler_info().get("workers", {})
    shares = [w["memory_limit"] / max(1, w["nthreads"]) for w in workers.values() if w.get("memory_limit")]
    busy = len(_threads_per_host(workers)) or 1  # CPU: a block per host at least
    if shares:
        budget = PATCH_MEMORY_FRACTION * min(shares)
    if not job.options.device.startswith("cpu"):  # "auto" or an accelerator: the workers' GPUs, if any
        free = {a: f for a, f in client.run(_free_gpu_memory).items() if f}
        if free:  # one block at a time runs on a GPU: every GPU busy needs a patch each
            budget, busy = 0.6 * min(free.values()), len(free)
    budget /= job.options.patches_per_pass
    return _rewindow(job, budget=budget, min_patches=math.ceil(busy / len(job.times)))


def block_threads(client: Client, blocks: int) -> int:
    """torch threads for each block task on a CPU worker of a run of ``blocks`` block tasks: the
    cluster's task threads shared among the blocks, at most one host's.

    With fewer blocks than threads (one frame on a 2-worker LocalCluster: one block), the threads
    left idle by dask are given to the blocks' convolutions; with more, one each, so that workers with
    several task threads do not run threads x threads of them. GPU workers ignore it."""
    per_host = _threads_per_host(client.scheduler_info().get("workers", {}))
    if not per_host or blocks < 1:
        return 1
    return max(1, min(sum(per_host.values()) // blocks, min(per_host.values())))


def _threads_per_host(workers: dict[str, dict[str, Any]]) -> dict[Any, int]:
    """Task threads per host of the scheduler's ``workers`` (worker processes on one machine share its cores)."""
    per_host: dict[Any, int] = {}
    for w in workers.values():
        per_host[w.get("host")] = per_host.get(w.get("host"), 0) + int(w["nthreads"])
    return per_host


def _free_gpu_memory() -> int | None:
    import torch

    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else None


def _create_or_leave_nothing(job: PredictJob, overwrite: bool) -> None:
    """Create the output; if that fails part way (disk full, permissions), remove what was made, so the
    rerun with the cause fixed does not meet a half-made store that "already exists"."""
    try:
        create_output(job, overwrite)
    except BaseException as exc:
        ledger = Ledger(job.output_path)
        if ledger.output_exists():
            ledger.fs.rm(ledger.output, recursive=True)
        if isinstance(exc, OSError):
            raise ChunkedFnetError(
                f"could not create the output {redact(job.output_path)}: {exc.strerror or exc}; nothing was left behind, "
                "rerun once the cause is fixed"
            ) from None
        raise


#: Chunk tasks handed to the scheduler at a time: a run of any length is submitted a window of whole
#: frames at a time, topped up as chunks finish. One graph of every chunk cost time superlinear in
#: its size before the first chunk ran (benchmarks/many_chunks.py, 2-core CPU: 10^3 chunks submitted
#: in 1.6 s, 10^4 in 36 s, the first chunk finished after 65 s), and held every task in the scheduler.
WINDOW_CHUNKS = 1024


class _FrameWindows:
    """Hands a job's tasks to the scheduler a window of frames at a time (frames are independent:
    a chunk only needs the blocks of its own frame), in storage order."""

    def __init__(self, job: PredictJob, graph: Any, client: Client, ref: JobRef, window: int | None = None) -> None:
        self.job, self.graph, self.client, self.window = job, graph, client, window or WINDOW_CHUNKS
        self.ref = ref  # what the tasks carry instead of the job (see predict/shipping.py)
        self.low_water = max(1, self.window // 2)
        self.token = uuid.uuid4().hex[:8]  # two runs on one cluster must never share a task key
        self.chunks_of: dict[int, list[int]] = {}
        self.blocks_of: dict[int, list[int]] = {}
        for i, c in enumerate(graph.chunks):
            self.chunks_of.setdefault(c.time_index, []).append(i)
        for i, b in enumerate(graph.blocks):
            self.blocks_of.setdefault(b.time_index, []).append(i)
        self.frames = sorted(self.chunks_of)
        self.next = 0

    @property
    def done(self) -> bool:
        return self.next >= len(self.frames)

    def more(self) -> dict[Any, Any]:
        """Futures (-> their ChunkTask) of the next frames: at least one frame, up to ``window`` chunks."""
        frames: list[int] = []
        count = 0
        while not self.done and (not frames or count + len(self.chunks_of[self.frames[self.next]]) <= self.window):
            frames.append(self.frames[self.next])
            count += len(self.chunks_of[self.frames[self.next]])
            self.next += 1
        graph, token, job = self.graph, self.token, self.ref
        blocks = {
            i: dask.delayed(predict_block, pure=False, nout=len(graph.blocks[i].pieces))(
                job, graph.blocks[i], dask_key_name=f"cfnet-block-{token}-{chunk_key(graph.blocks[i].time_index, graph.blocks[i].block)}"
            )
            for t in frames for i in self.blocks_of.get(t, [])
        }
        tasks = [graph.chunks[i] for t in frames for i in self.chunks_of[t]]
        chunks = [
            dask.delayed(write_chunk, pure=False)(
                job, c, *(blocks[ref.block][ref.piece] for ref in c.sources),
                dask_key_name=f"cfnet-chunk-{token}-{chunk_key(c.time_index, c.region)}",
            )
            for c in tasks
        ]
        return dict(zip(self.client.compute(chunks, retries=self.job.options.retries), tasks, strict=True))


class RunInterruptedError(ChunkedFnetError, RuntimeError):
    """The cluster went away mid-run (scheduler lost, run cancelled); finished chunks are recorded."""


def _interrupted(job: PredictJob | Sequence[PredictJob], client: Client, what: str, lost: bool = True, output: str | None = None) -> RunInterruptedError:
    jobs = [job] if isinstance(job, PredictJob) else list(job)
    address = getattr(client.scheduler, "address", None) or "the dask scheduler"
    done = sum(len(Ledger(j.output_path).done()) for j in jobs)
    total = sum(j.n_chunks for j in jobs)
    happened = f"lost its dask scheduler {address}" if lost else f"stopped on the dask scheduler {address}"
    return RunInterruptedError(
        f"the run into {redact(output or jobs[0].output_path)} {happened} ({redact(what)}); {done} of {total} chunks are written "
        f"and recorded: rerun the same command with --resume (against a running scheduler) to compute only the rest"
    )


def _refuse_existing(output: str) -> None:
    if Ledger(output).output_exists():
        raise OutputExistsError(f"{redact(output)} already exists; pass --overwrite to replace it, or --resume to finish an interrupted run")


def _resume_state(job: PredictJob) -> set[str] | None:
    """Chunks already done by an interrupted run into ``job.output_path``; None when there is no output yet.

    Refuses when the output is not a chunked_fnet prediction or was started with other input, models
    or parameters: finishing it with different settings would give an output no single run produces.
    """
    ledger = Ledger(job.output_path)
    recorded = ledger.read_record()
    if recorded is None:
        if not ledger.output_exists():
            return None  # nothing was started: a resume is a first run
        raise InputError(
            f"cannot resume {redact(job.output_path)}: it holds no run record (.chunked_fnet/run.json), so it was not "
            "started by chunked-fnet predict; choose another --out"
        )
    diff = differences(recorded, job.record())
    if diff:
        raise InputError(
            f"cannot resume {redact(job.output_path)}: it was started with other settings; "
            + "; ".join(diff)
            + " (run again with the same input, models and parameters, or pass --overwrite to start over)"
        )
    return ledger.done()


def predict(
    image: str | Path | xr.DataArray,
    models: Sequence[str | Path],
    out: str | Path,
    *,
    options: PredictOptions | None = None,
    client: Client | ClusterSpec | None = None,
    series: str | None = None,
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
) -> tuple[xr.DataArray, RunSummary]:
    """Predict every structure of ``models`` for ``image`` (an OME-Zarr path, or a DataArray opened
    with :func:`chunked_fnet.open_image`) into the OME-Zarr ``out``; returns the output, lazily.

    ``client`` is a connected dask client, or a :class:`ClusterSpec` (default: local worker
    processes) to start once the inputs have been checked, so bad input fails before any worker starts.
    ``resume=True`` continues an interrupted run into ``out``: only chunks without a completion
    record are computed, after checking that input, models and parameters are the interrupted run's.
    """
    options = options or PredictOptions()
    if resume and overwrite:
        raise InputError("resume and overwrite exclude each other: resume keeps the finished chunks, overwrite deletes them")
    job = plan(image, models, out, options, series=series)
    record = (Ledger(job.output_path).read_record() or {}) if resume else {}
    if record.get("window") is not None and options.patch_shape == "auto":  # the interrupted run's choice, whatever this cluster would choose
        job = _rewindow(job, recorded=record["window"])
    if record.get("precision") is not None and options.precision == "auto":  # likewise: the interrupted run's measurement
        job = dataclasses.replace(job, precision_choice=record["precision"])
    done = _resume_state(job) if resume else None
    if done is None and not overwrite:
        _refuse_existing(job.output_path)
    context = nullcontext(client) if isinstance(client, Client) else local_client(client or ClusterSpec())
    with context as c:  # connected before the output is created: an unreachable scheduler leaves nothing behind
        if done is None:
            job = _fit_to_cluster(job, c)
            job = dataclasses.replace(job, precision_choice=choose_precision(job, c))
            _create_or_leave_nothing(job, overwrite)
        summary = execute(job, c, skip=done or set(), progress=progress)
    return open_image(out), summary


def execute(job: PredictJob, client: Client, *, skip: Collection[str] = (), progress: bool = True) -> RunSummary:
    """Run the tasks of a planned job whose output exists (see :func:`create_output`).

    Chunks named in ``skip`` (their ledger keys) are not computed. A chunk that still fails after
    ``options.retries`` retries does not stop the others: once every task has ended, the failures are
    raised together, naming each chunk, while everything else stays written and recorded.

    The graph (:meth:`PredictJob.schedule`) goes to dask a window of whole frames at a time
    (:class:`_FrameWindows`): ``dask.order`` runs each chunk as soon as its blocks are done, so blocks'
    sums are held only along a moving front and memory stays bounded however many frames and chunks there are.
    """
    return execute_many([job], client, skips=[skip], progress=progress)[0]


def execute_many(
    jobs: Sequence[PredictJob],
    client: Client,
    *,
    skips: Sequence[Collection[str]] | None = None,
    progress: bool = True,
    labels: Sequence[str] | None = None,
    output: str | None = None,
) -> list[RunSummary]:
    """Run several planned jobs (e.g. the fields of a plate) as one run: one progress bar, their tasks
    handed to the scheduler job after job, a window of whole frames at a time, and one error at the end
    naming every chunk that failed (prefixed with its job's label). Returns one summary per job."""
    start = time.perf_counter()
    skips = list(skips) if skips is not None else [()] * len(jobs)
    labels = [f"{label} " for label in labels] if labels is not None else [""] * len(jobs)
    graphs = [job.schedule(set(skip)) for job, skip in zip(jobs, skips, strict=True)]
    threads = block_threads(client, sum(len(g.blocks) for g in graphs))
    jobs = [dataclasses.replace(job, block_threads=threads) for job in jobs]
    with shipped(client, jobs) as refs:  # the jobs stay on the workers only while their tasks run
        workers, voxels = _run_tasks(jobs, graphs, refs, client, progress, labels, output)
    for job in jobs:
        if job.options.levels > 1:
            build_pyramid(job.output_path, progress=progress)
    seconds = time.perf_counter() - start
    return [
        RunSummary(
            job.output_path, len(graph.chunks), workers, seconds, voxels[j], total_chunks=job.n_chunks,
            patch_evaluations=graph.patch_evaluations, precision=_describe_precision(job.precision_choice), patch=job.window.patch_shape,
        )
        for j, (job, graph) in enumerate(zip(jobs, graphs, strict=True))
    ]


def _run_tasks(
    jobs: Sequence[PredictJob], graphs: Sequence[Any], refs: Sequence[JobRef], client: Client, progress: bool, labels: Sequence[str],
    output: str | None,
) -> tuple[int, list[int]]:
    """Submit the jobs' tasks a window at a time and wait for them; returns the workers at the end and
    the output voxels written per job. Failures and a lost cluster are raised as :func:`execute_many` says."""
    submitters = [_FrameWindows(job, graph, client, ref) for job, graph, ref in zip(jobs, graphs, refs, strict=True)]
    low_water = submitters[0].low_water if submitters else 1
    current = 0
    futures: dict[Any, tuple[int, Any]] = {}

    def top_up() -> dict[Any, tuple[int, Any]]:
        nonlocal current
        new: dict[Any, tuple[int, Any]] = {}
        while current < len(submitters) and (not new or len(futures) + len(new) < low_water):
            if submitters[current].done:
                current += 1
                continue
            new.update({f: (current, task) for f, task in submitters[current].more().items()})
        return new

    def all_submitted() -> bool:
        return all(s.done for s in submitters)

    futures.update(top_up())
    voxels = [0] * len(jobs)
    failures: list[tuple[tuple[Any, ...], str]] = []
    cancelled = 0
    computed = sum(len(g.chunks) for g in graphs)
    stall = min(job.options.stall_timeout for job in jobs)
    where = output or jobs[0].output_path
    try:
        with tqdm(total=computed, desc="predict", unit="chunk", disable=not progress) as bar:
            # Finished chunks are never gathered, and their futures are released at once: a chunk's
            # result (a few timings) would otherwise live on its worker, and a worker lost later would
            # make dask recompute a finished chunk whose block inputs it had already forgotten, which
            # could wait forever ("Couldn't gather 1 keys, rescheduling"). The chunk's ledger marker
            # is its result. Polling (not a blocking iterator) bounds the wait for the next chunk.
            pending = as_completed(futures)
            last = time.monotonic()
            while not (pending.is_empty() and all_submitted()):
                if len(futures) < low_water and not all_submitted():
                    new = top_up()
                    futures.update(new)
                    pending.update(new)
                finished = pending.next_batch(block=False)
                if not finished:
                    if time.monotonic() - last > stall:
                        raise _interrupted(jobs, client, f"no chunk finished in {stall:g} s (stall_timeout)", lost=False, output=where)
                    time.sleep(0.05)
                    continue
                last = time.monotonic()
                for future in finished:
                    j, task = futures.pop(future)
                    job = jobs[j]
                    if future.status == "error":
                        ti, region = task.time_index, task.region
                        exc = future.exception()
                        failures.append(((j, ti, *region.start), f"{labels[j]}{describe_chunk(ti, region, job.times[ti])}: {type(exc).__name__}: {redact(str(exc))}"))
                    elif future.status == "cancelled":  # the scheduler was lost, or someone cancelled the run
                        cancelled += 1
                    else:
                        voxels[j] += task.region.size * len(job.models)
                    future.release()
                    bar.update(1)
        workers = len(client.scheduler_info().get("workers", {}))
    except (OSError, TimeoutError, asyncio.CancelledError) as exc:  # the connection itself went away
        raise _interrupted(jobs, client, f"{type(exc).__name__}: {exc}", output=where) from None
    if cancelled:
        raise _interrupted(jobs, client, f"{cancelled} chunk tasks were cancelled", output=where)
    if failures:
        failures.sort()  # in storage order, whatever order they failed in
        retries = jobs[0].options.retries
        raise ChunksFailedError(
            f"{len(failures)} of {computed} chunks of {redact(where)} failed after {retries + 1} tries "
            f"(the other {computed - len(failures)} are written; --resume computes only what is missing once the cause is fixed): "
            + "; ".join(text for _, text in failures[:5]) + (f"; ... {len(failures) - 5} more" if len(failures) > 5 else "")
        )
    return workers, voxels


def _describe_precision(choice: dict[str, Any] | None) -> str:
    """``bf16 (auto: forward pass 5.1x as fast as fp32 on tcp://...)``, or just the precision."""
    if not choice:
        return ""
    seconds = (choice.get("measured") or {}).get("seconds")
    if not seconds:
        return choice["chosen"] + (f" ({choice['why']})" if "why" in choice else "")
    return f"{choice['chosen']} (auto: bf16's forward pass {seconds['fp32'] / seconds['bf16']:.2f}x as fast as fp32's here)"
