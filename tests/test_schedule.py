"""The prediction's task graph: every global patch evaluated once per frame, each output chunk fed by
exactly the blocks owning the patches that touch it, resumed runs planning only what is missing."""

from __future__ import annotations

import numpy as np
import pytest

from chunked_fnet.inference import chunk_regions, make_grid
from chunked_fnet.predict.ledger import chunk_key
from chunked_fnet.predict.schedule import interpolation_window, schedule

GEOMETRIES = [
    # model shape, output shape, chunks, block shape, patch, factor
    ((48, 381, 381), (48, 381, 381), (32, 256, 256), (32, 256, 256), (32, 64, 64), None),  # the defaults on a full-field frame
    ((13, 35, 31), (13, 35, 31), (5, 35, 9), (5, 35, 9), (8, 16, 16), None),
    ((20, 40, 45), (20, 40, 45), (3, 7, 50), (3, 7, 50), (8, 16, 16), None),  # blocks thinner than the step: some own nothing
    ((13, 35, 31), (13, 70, 62), (5, 32, 20), (5, 16, 10), (8, 16, 16), (1.0, 0.5, 0.5)),  # output on the input grid
]


def _key(region) -> tuple[tuple[int, int], ...]:
    """Slices are not hashable before Python 3.12."""
    return tuple((s.start, s.stop) for s in region)


def _plan(geometry, time_points=2, skip=()):
    model, output, chunks, blocks, patch, factor = geometry
    return schedule(
        make_grid(model, patch, 0.25, 8), output_shape=output, output_chunks=chunks, block_shape=blocks,
        time_points=time_points, factor=factor, skip=skip,
    )


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_each_patch_runs_once_and_each_chunk_gets_exactly_its_patches(geometry) -> None:
    model, output, chunks, _, patch, factor = geometry
    plan = _plan(geometry)
    grid = make_grid(model, patch, 0.25, 8)
    assert plan.patch_grid == grid
    assert plan.patch_evaluations == 2 * grid.n_patches  # no halo recompute
    assert len(plan.chunks) == 2 * len(chunk_regions(output, chunks))
    owner_of = {c: _key(b.block) for b in plan.blocks[: len(plan.blocks) // 2] for c in grid.patches_owned(b.block)}
    for task in plan.chunks:
        assert task.window == (task.region if factor is None else interpolation_window(task.region, factor, model))
        fed_by = {_key(plan.blocks[b].block) for b, _ in task.sources}
        assert all(plan.blocks[b].time_index == task.time_index for b, _ in task.sources)
        # exactly the owners of the patches touching the window, once each
        assert fed_by == {owner_of[c] for c in grid.patches_touching(task.window)}
        assert len(fed_by) == len(task.sources)
        for (b, p), part in zip(task.sources, task.parts):
            assert plan.blocks[b].pieces[p] == part
            extent = grid.owned_extent(plan.blocks[b].block)
            for a in range(3):
                assert task.window[a].start <= part[a].start < part[a].stop <= task.window[a].stop
                assert extent[a].start <= part[a].start and part[a].stop <= extent[a].stop
        # the parts cover the window: its patches' weighted sums all arrive
        covered = np.zeros([s.stop - s.start for s in task.window], dtype=bool)
        for part in task.parts:
            covered[tuple(slice(p.start - w.start, p.stop - w.start) for p, w in zip(part, task.window))] = True
        assert covered.all()


def test_a_resumed_run_plans_only_the_missing_chunks_and_their_blocks() -> None:
    geometry = GEOMETRIES[1]
    full = _plan(geometry)
    done = [chunk_key(c.time_index, c.region) for c in full.chunks if c is not full.chunks[7]]
    rest = _plan(geometry, skip=set(done))
    assert [(c.time_index, c.region) for c in rest.chunks] == [(full.chunks[7].time_index, full.chunks[7].region)]
    assert {_key(b.block) for b in rest.blocks} == {_key(full.blocks[b].block) for b, _ in full.chunks[7].sources}
    assert all(len(b.pieces) == 1 for b in rest.blocks)
    assert _plan(geometry, skip=set(done) | {chunk_key(full.chunks[7].time_index, full.chunks[7].region)}).blocks == ()
