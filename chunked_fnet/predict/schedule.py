"""The task graph of a prediction: which block of the model grid evaluates which patches, and which
pieces of its weighted sums each output chunk gathers.

Why two kinds of task: if every output chunk evaluated all patches touching it (its halo), the
patches straddling chunk borders would run once per chunk they touch (1.90x the model evaluations
of the global sliding window for 32x256x256 chunks of a 48x381x381 frame with 32x64x64 patches).
Instead the model grid is cut into *blocks*; each patch is evaluated only by the block holding its
centre (:meth:`~chunked_fnet.sliding_window.grid.PatchGrid.patches_owned`), and each output chunk
adds up the pieces of its neighbours' weighted sums that land in it and divides by the grid's weight
sum (:meth:`~chunked_fnet.sliding_window.window.SlidingWindow.blend_pieces`). Every global patch
runs exactly once, whatever the chunking, and the result is the global sliding window's.

The pieces cross between tasks (and workers) as dask dependencies: dask orders, moves, retries and
recomputes them after a lost worker. This module only computes the geometry; it is pure and cheap.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from chunked_fnet.predict.ledger import chunk_key
from chunked_fnet.sliding_window import Box, PatchGrid, partition

__all__ = ["BlockTask", "ChunkTask", "PieceRef", "Schedule", "interpolation_region", "schedule"]


@dataclass(frozen=True)
class BlockTask:
    """Evaluate the patches owned by ``block`` (model grid) of one time point; hand out ``pieces``."""

    time_index: int
    block: Box
    pieces: tuple[Box, ...]  # model-grid boxes inside the block's owned extent, one per consumer (a frame's only block: one, the extent)


@dataclass(frozen=True)
class PieceRef:
    """Piece ``piece`` of the weighted sums of block task ``block`` (an index into ``Schedule.blocks``)."""

    block: int
    piece: int


@dataclass(frozen=True)
class ChunkTask:
    """Finish and write one output chunk from pieces of the blocks' sums."""

    time_index: int
    region: Box  # on the output grid
    model_box: Box  # the model-grid values it needs (``region`` itself when the output is on the model grid)
    sources: tuple[PieceRef, ...]


@dataclass(frozen=True)
class Schedule:
    blocks: tuple[BlockTask, ...]
    chunks: tuple[ChunkTask, ...]
    patch_grid: PatchGrid

    @property
    def patch_evaluations(self) -> int:
        """Patches this schedule evaluates (equals the global grid's count per time point for a full run)."""
        return sum(len(self.patch_grid.patches_owned(b.block)) for b in self.blocks)


def interpolation_region(region: Box, factor: Sequence[float], model_shape: Sequence[int]) -> Box:
    """The model-grid voxels that linear interpolation at the input voxels of ``region`` reads.

    Input voxel ``i`` sits at model coordinate ``i * factor``; voxels past the last model voxel take
    the last one (see ``job.back_to_input_grid``, which uses this region).
    """
    lo = tuple(min(int(math.floor(a * f)), n - 1) for a, f, n in zip(region.start, factor, model_shape, strict=True))
    hi = tuple(min(int(math.floor((b - 1) * f)) + 2, n) for b, f, n in zip(region.stop, factor, model_shape, strict=True))
    return Box(lo, hi)


def _axis_blocks(size: int, block: int) -> list[tuple[int, int]]:
    return [(s, min(s + block, size)) for s in range(0, size, block)]


def schedule(
    grid: PatchGrid,
    *,
    output_shape: Sequence[int],
    output_chunks: Sequence[int],
    block_shape: Sequence[int],
    time_points: int,
    first_time: int = 0,
    factor: Sequence[float] | None = None,
    skip: Collection[str] = (),
) -> Schedule:
    """Blocks and chunk tasks for ``time_points`` frames of the model grid whose global patch grid is
    ``grid`` (one frame's; every frame has the same); chunks whose ledger key is in ``skip`` (already
    written) are left out, and so are blocks that no remaining chunk needs. Tasks' ``time_index`` is
    the output's: ``first_time`` up (a followed time-lapse schedules each new step of frames after the last).

    ``factor`` (model voxels per output voxel, per axis) is given when the output is on the input
    grid; then each chunk needs the model region its interpolation reads. Geometry is worked out per
    axis (blocks, owned extents and regions are products of per-axis intervals), so planning a
    frame of thousands of chunks stays fast.
    """
    block_axes = [_axis_blocks(n, min(b, n)) for n, b in zip(grid.shape, block_shape, strict=True)]
    # per axis, the owned extent (lo, hi) of each block index (None: owns no patch along that axis)
    owned: list[list[tuple[int, int] | None]] = []
    for a, blocks in enumerate(block_axes):
        row = []
        for lo, hi in blocks:
            start, stop = list(grid.frame.start), list(grid.frame.stop)
            start[a], stop[a] = lo, hi
            extent = grid.owned_extent(Box(tuple(start), tuple(stop)))
            row.append(None if extent is None else (extent.start[a], extent.stop[a]))
        owned.append(row)
    chunk_list = partition(tuple(output_shape), tuple(min(c, n) for c, n in zip(output_chunks, output_shape, strict=True)))

    def model_box_of(region: Box) -> Box:
        return region if factor is None else interpolation_region(region, factor, grid.shape)

    def sources_1d(a: int, lo: int, hi: int) -> list[tuple[int, int, int]]:
        """Block indices along axis ``a`` whose owned extent meets [lo, hi), with the common interval."""
        out = []
        for i, ext in enumerate(owned[a]):
            if ext is not None and max(ext[0], lo) < min(ext[1], hi):
                out.append((i, max(ext[0], lo), min(ext[1], hi)))
        return out

    # A frame that is one block hands its chunks one piece, its whole sums: each chunk takes its own part as a
    # view (job.write_chunk), so the block copies nothing out and dask needs no task picking a piece per chunk.
    # (One block owns every patch: the others, if any, own none and are never planned.)
    owning = [[ext for ext in row if ext is not None] for row in owned]
    whole = Box(tuple(o[0][0] for o in owning), tuple(o[0][1] for o in owning)) if all(len(o) == 1 for o in owning) else None
    blocks: list[BlockTask] = []
    chunks: list[ChunkTask] = []
    for ti in range(first_time, first_time + time_points):
        todo = [r for r in chunk_list if chunk_key(ti, r) not in skip]
        pieces: dict[tuple[int, int, int], list[Box]] = {}  # block index triple -> its pieces
        wanted: list[tuple[Box, Box, list[tuple[tuple[int, int, int], int]]]] = []
        for region in todo:
            model_box = model_box_of(region)
            per_axis = [sources_1d(a, model_box.start[a], model_box.stop[a]) for a in range(3)]
            refs = []
            for z, y, x in ((z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]):
                key = (z[0], y[0], x[0])
                if whole is not None:
                    pieces[key] = [whole]
                    refs.append((key, 0))
                    continue
                pieces.setdefault(key, []).append(Box((z[1], y[1], x[1]), (z[2], y[2], x[2])))
                refs.append((key, len(pieces[key]) - 1))
            wanted.append((region, model_box, refs))
        index: dict[tuple[int, int, int], int] = {}
        for key in sorted(pieces):  # blocks in C order: dask runs them in this order
            index[key] = len(blocks)
            bounds = [block_axes[a][key[a]] for a in range(3)]
            block = Box(tuple(b[0] for b in bounds), tuple(b[1] for b in bounds))
            blocks.append(BlockTask(ti, block, tuple(pieces[key])))
        for region, model_box, refs in wanted:
            chunks.append(ChunkTask(ti, region, model_box, tuple(PieceRef(index[k], p) for k, p in refs)))
    return Schedule(tuple(blocks), tuple(chunks), grid)
