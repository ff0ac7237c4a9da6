"""The task graph of a prediction: which block of the model grid evaluates which patches, and which
pieces of its weighted sums each output chunk gathers.

Why two kinds of task: if every output chunk evaluated all patches touching it (its halo), the
patches straddling chunk borders would run once per chunk they touch: for the default 32x256x256
chunks and 32x64x64 patches on a 48x381x381 frame, 1.90x the model evaluations of the global
sliding window. Instead the model grid is cut into *blocks*, each patch is evaluated only by the
block holding its centre (:meth:`~chunked_fnet.inference.tiling.PatchGrid.patches_owned`), and each
output chunk adds up the pieces of its neighbours' weighted sums that land in it and divides by the
grid's weight sum (:func:`~chunked_fnet.inference.tiling.finish_region`). Every global patch runs
exactly once, whatever the chunking, and the result is the global sliding window's.

The pieces cross between tasks (and workers) as dask dependencies: dask orders, moves, retries and
recomputes them after a lost worker. This module only computes the geometry; it is pure and cheap.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from chunked_fnet.inference.tiling import PatchGrid, Region, chunk_regions
from chunked_fnet.predict.ledger import chunk_key

__all__ = ["BlockTask", "ChunkTask", "Schedule", "interpolation_window", "schedule"]


@dataclass(frozen=True)
class BlockTask:
    """Evaluate the patches owned by ``block`` (model grid) of one time point; hand out ``pieces``."""

    time_index: int
    block: Region
    pieces: tuple[Region, ...]  # model-grid regions inside the block's owned extent, one per consumer


@dataclass(frozen=True)
class ChunkTask:
    """Finish and write one output chunk from pieces of the blocks' sums."""

    time_index: int
    region: Region  # on the output grid
    window: Region  # the model-grid values it needs (``region`` itself when the output is on the model grid)
    sources: tuple[tuple[int, int], ...]  # (index into Schedule.blocks, index into that block's pieces)
    parts: tuple[Region, ...]  # the model-grid region of each of those pieces


@dataclass(frozen=True)
class Schedule:
    blocks: tuple[BlockTask, ...]
    chunks: tuple[ChunkTask, ...]
    patch_grid: PatchGrid

    @property
    def patch_evaluations(self) -> int:
        """Patches this schedule evaluates (equals the global grid's count per time point for a full run)."""
        return sum(len(self.patch_grid.patches_owned(b.block)) for b in self.blocks)


def interpolation_window(region: Sequence[slice], factor: Sequence[float], model_shape: Sequence[int]) -> Region:
    """The model-grid voxels that linear interpolation at the input voxels of ``region`` reads.

    Input voxel ``i`` sits at model coordinate ``i * factor``; voxels past the last model voxel take
    the last one (see ``job._back_to_input_grid``, which uses this window).
    """
    out = []
    for sl, f, n in zip(region, factor, model_shape, strict=True):
        lo, hi = sl.start * f, (sl.stop - 1) * f
        out.append(slice(min(int(math.floor(lo)), n - 1), min(int(math.floor(hi)) + 2, n)))
    return tuple(out)  # type: ignore[return-value]


def _axis_blocks(size: int, block: int) -> list[slice]:
    return [slice(s, min(s + block, size)) for s in range(0, size, block)]


def _intersect(a: slice, b: slice) -> slice | None:
    lo, hi = max(a.start, b.start), min(a.stop, b.stop)
    return slice(lo, hi) if lo < hi else None


def schedule(
    grid: PatchGrid,
    *,
    output_shape: Sequence[int],
    output_chunks: Sequence[int],
    block_shape: Sequence[int],
    time_points: int,
    factor: Sequence[float] | None = None,
    skip: Collection[str] = (),
) -> Schedule:
    """Blocks and chunk tasks for ``time_points`` frames of the model grid whose global patch grid is
    ``grid`` (one frame's; every frame has the same); chunks whose ledger key is in ``skip`` (already
    written) are left out, and so are blocks that no remaining chunk needs.

    ``factor`` (model voxels per output voxel, per axis) is given when the output is on the input
    grid; then each chunk needs the model window its interpolation reads. Geometry is worked out per
    axis (blocks, owned extents and windows are products of per-axis intervals), so planning a
    frame of thousands of chunks stays fast.
    """
    block_axes = [_axis_blocks(n, min(b, n)) for n, b in zip(grid.shape, block_shape, strict=True)]
    # per axis, the owned extent of each block index (None: owns no patch along that axis)
    owned: list[list[slice | None]] = []
    for a, blocks in enumerate(block_axes):
        full = [slice(0, n) for n in grid.shape]
        row = []
        for b in blocks:
            region = tuple(b if i == a else full[i] for i in range(3))
            extent = grid.owned_extent(region)
            row.append(None if extent is None else extent[a])
        owned.append(row)
    chunk_list = chunk_regions(tuple(output_shape), tuple(min(c, n) for c, n in zip(output_chunks, output_shape, strict=True)))

    def window_of(region: Region) -> Region:
        return region if factor is None else interpolation_window(region, factor, grid.shape)

    # per axis, for a window interval: the block indices whose owned extent meets it, with the overlap
    def sources_1d(a: int, sl: slice) -> list[tuple[int, slice]]:
        return [(i, inter) for i, ext in enumerate(owned[a]) if ext is not None and (inter := _intersect(ext, sl)) is not None]

    blocks: list[BlockTask] = []
    chunks: list[ChunkTask] = []
    for ti in range(time_points):
        todo = [r for r in chunk_list if chunk_key(ti, r) not in skip]
        # block index triple -> list of pieces; chunk -> [(block triple, piece number)]
        pieces: dict[tuple[int, int, int], list[Region]] = {}
        wanted: list[tuple[Region, Region, list[tuple[tuple[int, int, int], int]]]] = []
        for region in todo:
            window = window_of(region)
            per_axis = [sources_1d(a, window[a]) for a in range(3)]
            refs = []
            for (iz, sz), (iy, sy), (ix, sx) in ((z, y, x) for z in per_axis[0] for y in per_axis[1] for x in per_axis[2]):
                key = (iz, iy, ix)
                pieces.setdefault(key, []).append((sz, sy, sx))
                refs.append((key, len(pieces[key]) - 1))
            wanted.append((region, window, refs))
        index: dict[tuple[int, int, int], int] = {}
        for key in sorted(pieces):  # blocks in C order: dask runs them in this order
            index[key] = len(blocks)
            block = tuple(block_axes[a][key[a]] for a in range(3))
            blocks.append(BlockTask(ti, block, tuple(pieces[key])))  # type: ignore[arg-type]
        for region, window, refs in wanted:
            chunks.append(
                ChunkTask(ti, region, window, tuple((index[k], p) for k, p in refs), tuple(pieces[k][p] for k, p in refs))
            )
    return Schedule(tuple(blocks), tuple(chunks), grid)
