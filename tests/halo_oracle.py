"""The halo-per-chunk way of chunked sliding-window inference, kept only as an oracle for tests.

Each region evaluates every global patch that touches it (its halo), numpy-blended one patch at a
time: slow and redundant (patches on a border run once per region), but obviously right, so the
package's owned-patch path and device-side sums are checked against it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from chunked_fnet.sliding_window import Box, PatchGrid, PatchRunner, SlidingWindow, padded_reader
from chunked_fnet.sliding_window.window import overlap_slices


def halo_for(grid: PatchGrid, region: Box) -> Box:
    """The smallest (padded-frame) box holding every patch that touches ``region``: what a halo task reads."""
    return grid.bounding_box(grid.patches_touching(region))


def patch_evaluations(grid: PatchGrid, regions: Iterable[Box]) -> int:
    """Patch evaluations that computing each region with its own halo costs (the price of chunking)."""
    return sum(len(grid.patches_touching(r)) for r in regions)


def unbatched(predict_patch: Callable[[tuple[int, int, int]], np.ndarray]) -> Callable[[list], np.ndarray]:
    """A one-patch function as the batched form :func:`blend_region` takes."""
    return lambda corners: np.stack([np.asarray(predict_patch(c)) for c in corners])


def blend_region(region: Box, window: SlidingWindow, predict_batch: Callable[[list], np.ndarray], batch_size: int = 4) -> np.ndarray:
    """Numpy blend of every patch touching ``region``: ``predict_batch(corners) -> (N, C, *patch)``."""
    grid, weights = window.grid, window.weights
    corners = grid.patches_touching(region)
    wsum = np.zeros(region.shape, dtype=np.float32)
    acc = None
    for i in range(0, len(corners), batch_size):
        batch = corners[i : i + batch_size]
        pred = np.asarray(predict_batch(batch))
        if pred.ndim != 5 or pred.shape[0] != len(batch) or pred.shape[2:] != grid.patch:
            raise ValueError(f"predict_batch returned shape {pred.shape} for {len(batch)} patches")
        if acc is None:
            acc = np.zeros((pred.shape[1], *region.shape), dtype=np.float32)
        for corner, out in zip(batch, pred):
            dst, src = overlap_slices(grid.patch_box(corner), region)
            acc[(slice(None), *dst)] += weights[src] * out[(slice(None), *src)]
            wsum[dst] += weights[src]
    return acc / wsum


def predict_chunk(runner: PatchRunner, volume: np.ndarray, window: SlidingWindow, region: Box) -> np.ndarray:
    """One region predicted from its halo with the package's runner: every touching patch, blended."""
    piece = runner.weighted_sums(window, padded_reader(volume, window.pad_mode), window.grid.patches_touching(region), region)
    return window.blend_pieces(region, [piece])


def stitch_halo_chunks(runner: PatchRunner, volume: np.ndarray, window: SlidingWindow, chunks) -> np.ndarray:
    """The whole volume as independent halo chunks stitched together."""
    from chunked_fnet.sliding_window import partition

    out = None
    for region in partition(volume.shape[1:], chunks):
        part = predict_chunk(runner, volume, window, region)
        if out is None:
            out = np.full((part.shape[0], *volume.shape[1:]), np.nan, dtype=np.float32)
        out[(slice(None), *region.slices)] = part
    return out
