"""The prediction's task graph: every global patch evaluated once per frame, each output chunk fed by
exactly the blocks owning the patches that touch it, resumed runs planning only what is missing."""

from __future__ import annotations

import numpy as np
import pytest

from chunked_fnet.sliding_window import SlidingWindow, partition
from chunked_fnet.predict.ledger import chunk_key
from chunked_fnet.predict.schedule import interpolation_region, schedule

GEOMETRIES = [
    # model shape, output shape, chunks, block shape, patch, factor
    ((48, 381, 381), (48, 381, 381), (32, 256, 256), (32, 256, 256), (32, 64, 64), None),  # the defaults on a full-field frame
    ((13, 35, 31), (13, 35, 31), (5, 35, 9), (5, 35, 9), (8, 16, 16), None),
    ((20, 40, 45), (20, 40, 45), (3, 7, 50), (3, 7, 50), (8, 16, 16), None),  # blocks thinner than the step: some own nothing
    ((13, 35, 31), (13, 70, 62), (5, 32, 20), (5, 16, 10), (8, 16, 16), (1.0, 0.5, 0.5)),  # output on the input grid
    ((13, 35, 31), (13, 35, 31), (5, 16, 16), (13, 35, 31), (8, 16, 16), None),  # a frame is one block (a whole-frame patch's)
    ((13, 35, 31), (13, 70, 62), (5, 32, 20), (16, 40, 40), (8, 16, 16), (1.0, 0.5, 0.5)),  # likewise, on the input grid
    ((13, 35, 31), (13, 35, 31), (5, 16, 16), (5, 16, 16), (16, 40, 32), None),  # one patch: one block owns it, the rest nothing
]


def _grid(model, patch):
    return SlidingWindow(model, patch, 0.25, 8, "gaussian").grid


def _plan(geometry, time_points=2, skip=()):
    model, output, chunks, blocks, patch, factor = geometry
    return schedule(
        _grid(model, patch), output_shape=output, output_chunks=chunks, block_shape=blocks,
        time_points=time_points, factor=factor, skip=skip,
    )


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_each_patch_runs_once_and_each_chunk_gets_exactly_its_patches(geometry) -> None:
    model, output, chunks, _, patch, factor = geometry
    plan = _plan(geometry)
    grid = _grid(model, patch)
    assert plan.patch_grid == grid
    assert plan.patch_evaluations == 2 * grid.n_patches  # no halo recompute
    assert len(plan.chunks) == 2 * len(partition(output, chunks))
    owner_of = {c: (b.block) for b in plan.blocks[: len(plan.blocks) // 2] for c in grid.patches_owned(b.block)}
    for task in plan.chunks:
        assert task.model_box == (task.region if factor is None else interpolation_region(task.region, factor, model))
        fed_by = {plan.blocks[ref.block].block for ref in task.sources}
        assert all(plan.blocks[ref.block].time_index == task.time_index for ref in task.sources)
        # exactly the owners of the patches touching the window, once each
        assert fed_by == {owner_of[c] for c in grid.patches_touching(task.model_box)}
        assert len(fed_by) == len(task.sources)
        # a frame's only block hands out its whole extent: a chunk takes the part inside its window
        parts = [plan.blocks[ref.block].pieces[ref.piece].intersect(task.model_box) for ref in task.sources]
        for ref, part in zip(task.sources, parts):
            extent = grid.owned_extent(plan.blocks[ref.block].block)
            assert part is not None and extent.contains(part)
            if len({b.block for b in plan.blocks}) == 1:  # one block owns every patch of a frame
                assert plan.blocks[ref.block].pieces == (extent,) and ref.piece == 0
        # the parts cover the window: its patches' weighted sums all arrive
        covered = np.zeros(task.model_box.shape, dtype=bool)
        for part in parts:
            covered[part.within(task.model_box)] = True
        assert covered.all()


def test_a_resumed_run_plans_only_the_missing_chunks_and_their_blocks() -> None:
    geometry = GEOMETRIES[1]
    full = _plan(geometry)
    done = [chunk_key(c.time_index, c.region) for c in full.chunks if c is not full.chunks[7]]
    rest = _plan(geometry, skip=set(done))
    assert [(c.time_index, c.region) for c in rest.chunks] == [(full.chunks[7].time_index, full.chunks[7].region)]
    assert {b.block for b in rest.blocks} == {full.blocks[ref.block].block for ref in full.chunks[7].sources}
    assert all(len(b.pieces) == 1 for b in rest.blocks)
    assert _plan(geometry, skip=set(done) | {chunk_key(full.chunks[7].time_index, full.chunks[7].region)}).blocks == ()
