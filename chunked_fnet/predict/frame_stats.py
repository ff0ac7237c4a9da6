"""A frame's statistics (its whole mean and std, for z-scoring) computed where its input chunks are read.

``plan`` used to read every frame once in the client for them before any task ran: twice the input's
bytes in all, and that pass's host work in one process. :func:`~chunked_fnet.predict.predict` leaves
them to the tasks instead (the job's ``stats`` entries are None): a frame that is one block is read
whole by its block task, which computes them from the chunks it read; a frame of several blocks has
each chunk read once by a read task (``policy.shared_reads``), and one statistics task of the frame
(:func:`frame_stats_task`) reduces those chunks before its block tasks start. Either way the moments
are those of the stored chunks in storage order, merged as :func:`chunked_fnet.moments.moments` merges
a dask array's blocks: the same values, bit for bit, as the client's pass over the same store.

Each frame's statistics go into the run's ledger (``frames/t<i>``, written by the one task that
computed them); a resumed run whose recomputed statistics differ refuses in one line, naming the frame:
its input changed since the interrupted run, so the output would mix two inputs. A frame that cannot
be z-scored (constant, NaN/Inf without ``nonfinite: fill``, flatter than a package's ``eps`` allows)
fails its tasks in one line naming it, the run's other frames finished and kept.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from chunked_fnet.errors import InputError
from chunked_fnet.io.reader import ChunkIndex, chunk_box, chunks_under, read_chunk
from chunked_fnet.moments import block_summary, merge_summaries
from chunked_fnet.preprocess.normalize import FrameStats, stats_from_moments

if TYPE_CHECKING:
    from chunked_fnet.predict.job import PredictJob

__all__ = [
    "EPS_TOLERANCE", "RECORDED_STD_TOLERANCE", "frame_chunks", "frame_stats_task", "read_frame", "record_frame_stats", "refuse_flat_frame", "same_input", "stats_of_chunks",
    "zscore_eps",
]

#: How far (relative) a frame's std may be from the one recorded by an earlier run of its output, its mean
#: equal, and still be the same input's: what an earlier version's float64 arithmetic left in the last bits
#: (its centred squares summed by BLAS, whose bits varied with the thread count: up to 2e-13 measured on
#: 64x512x512 uint16 frames). An input changed in its sum changes the mean and is always refused; one whose
#: sum is kept and whose std moved less than this (two voxels moved one count apart) is not.
RECORDED_STD_TOLERANCE = 1e-11

#: How much a package's z-scoring epsilon may change the z-scores, relative, before a run is refused:
#: the pipeline divides by the frame's std, a package by std + eps.
EPS_TOLERANCE = 1e-6


def zscore_eps(members: Sequence[Any]) -> tuple[tuple[str, float], ...]:
    """``(package, eps)`` of the ensemble's members whose z-scoring has an epsilon: what :func:`refuse_flat_frame` checks."""
    return tuple((m.path, float(m.eps)) for m in members if m.eps)


def refuse_flat_frame(eps: Sequence[tuple[str, float]], stats: FrameStats, where: str) -> None:
    """Refuse a frame so flat that a package's ``eps`` (``(package, eps)`` pairs) would change its z-scores measurably."""
    for path, e in eps:
        if e and e / (stats.std + e) > EPS_TOLERANCE:
            raise InputError(
                f"{where}: its standard deviation {stats.std:g} is so small that {path}'s z-scoring (x - mean) / (std + {e:g}) "
                "differs from the whole-frame z-scores chunked prediction uses by more than 1e-6; rescale the image"
            )


def frame_chunks(job: PredictJob) -> list[ChunkIndex]:
    """The (z, y, x) indices of the stored chunks under the job's selection, in storage (C) order."""
    whole = tuple(slice(0, n) for n in job.grid.source_shape)
    return chunks_under(job.input_array, job.input_dims, whole, job.input_offset)


def read_frame(job: PredictJob, time_index: int) -> dict[ChunkIndex, np.ndarray]:
    """Every stored chunk under the selection of the frame written at output time ``time_index`` (the array's dtype)."""
    t = job.times[time_index - job.time_offset]
    return {c: read_chunk(job.input_array, job.input_dims, t, job.channel_index, c) for c in frame_chunks(job)}


def stats_of_chunks(job: PredictJob, time_index: int, held: Mapping[ChunkIndex, np.ndarray]) -> FrameStats:
    """The frame's statistics from its stored chunks ``held`` (:func:`read_frame`), each cut to the selection."""
    lo, shape = job.input_offset, job.grid.source_shape
    blocks = []
    for chunk in frame_chunks(job):
        box = chunk_box(job.input_array, job.input_dims, chunk)
        inside = tuple(slice(max(b.start, o) - b.start, min(b.stop, o + n) - b.start) for b, o, n in zip(box, lo, shape, strict=True))
        blocks.append(block_summary(held[chunk][inside], finite_only=True))
    where = f"{job.input_path} t={job.times[time_index - job.time_offset]}"
    stats = stats_from_moments(merge_summaries(blocks), int(np.prod(shape)), where, job.options.nonfinite)
    refuse_flat_frame(job.eps, stats, where)
    return stats


def same_input(before: Mapping[str, float], now: FrameStats) -> bool:
    """Whether a frame's recorded statistics ``before`` are those of the input that gave ``now``: the same
    mean, bit for bit, and a std within :data:`RECORDED_STD_TOLERANCE`."""
    return before["mean"] == now.mean and abs(before["std"] - now.std) <= RECORDED_STD_TOLERANCE * now.std


def record_frame_stats(job: PredictJob, time_index: int, stats: FrameStats) -> FrameStats:
    """Keep a frame's statistics in the run's ledger; refuse when an earlier run of this output recorded
    others. Returns the statistics to z-score with: the recorded ones where there are (an earlier version's
    last bits, :func:`same_input`), so every chunk of the output is computed from the same numbers."""
    from chunked_fnet.predict.ledger import Ledger

    ledger = Ledger(job.output_path)
    before = ledger.frame(time_index)
    new = before is None
    if new:  # an output begun by a run whose client computed the statistics holds them in its run record instead
        recorded = (ledger.read_record() or {}).get("frame_stats") or []
        i = time_index - job.time_offset
        before = recorded[i] if i < len(recorded) else None
    if before is not None and not same_input(before, stats):
        raise InputError(
            f"{job.input_path} t={job.times[time_index - job.time_offset]} changed since this output's run began "
            f"(its mean/std were {before['mean']:.9g}/{before['std']:.9g}, now {stats.mean:.9g}/{stats.std:.9g}): "
            "finishing the output would mix two inputs; pass --overwrite to start over"
        )
    kept = stats if before is None else FrameStats(mean=before["mean"], std=before["std"])
    if new:
        ledger.mark_frame(time_index, {"mean": kept.mean, "std": kept.std})
    return kept


def frame_stats_task(run: Any, time_index: int, *chunks: np.ndarray) -> FrameStats:
    """A frame's statistics from its read tasks' chunks (in :func:`frame_chunks` order), recorded: the
    task a frame of several blocks waits for (``policy.shared_reads``)."""
    from chunked_fnet.predict.shipping import resolve_run

    job, _ = resolve_run(run)
    stats = stats_of_chunks(job, time_index, dict(zip(frame_chunks(job), chunks, strict=True)))
    return record_frame_stats(job, time_index, stats)
