"""Skipping empty background (``--skip-empty``): a patch whose input is background is not evaluated; it
contributes the models' response to background instead, computed once per worker process.

*The rule.* A patch is background when its input, in the input's own voxels (before z-scoring and
resampling: the voxels its model-grid values are computed from, its mirrored padding included), is
indistinguishable from white noise: along each of z, y and x, the lag-1 autocorrelation of its
mean-removed values lies within ``level`` standard errors of 0 (:func:`white_noise_score`; the
standard error of that autocorrelation for independent noise is ``1/sqrt(pairs)``). Camera noise (shot
and read noise) is independent from voxel to voxel; whatever the optics image (cells, debris, the
ripples around them, an illumination gradient) is smooth over neighbouring voxels and correlates them.
The test needs no noise level: it is scale free, so it recognises an empty field, whose z-scoring
blows its noise up to a standard deviation of 1, as well as the medium between cells. Measured on the
synthetic phantom (``benchmarks/run.py throughput skip-empty --scores``, 16x32x32 to 32x128x128 patches): empty medium
scores at most 3.97 (5,131 patches), patches holding any part of a cell 58.8 and up, the medium beside
cells anything between (the cells' bright-field fringes reach past their fluorescence); the default
level is :data:`~chunked_fnet.predict.policy.SKIP_EMPTY_LEVEL`. Input whose noise is correlated (a
camera that bins or smooths, data resampled before it was stored) scores high: it is never skipped, so
skipping then saves nothing and changes nothing.

*The response.* A skipped patch adds ``w_p * R`` to the weighted sums, where ``R`` is the ensemble's
output for a patch at z-score 0 everywhere (the frame's mean: a flat field of medium, which the mean of
a mostly transparent sample's bright field is close to). So the blend's weight sums are unchanged, and
every voxel where no skipped patch has weight is computed from the same evaluated patches as without
skipping; a voxel inside a skipped patch gets the background response, the models' output for flat
medium rather than for its noise.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from chunked_fnet.preprocess.frame import ModelGridFrame
from chunked_fnet.sliding_window import Box, PatchRunner, SlidingWindow, WeightedSum, padded_reader
from chunked_fnet.sliding_window.grid import Corner
from chunked_fnet.sliding_window.padding import read_extent
from chunked_fnet.sliding_window.window import overlap_slices

__all__ = ["background_patches", "background_response", "forget_background_responses", "sums_with_background", "white_noise_score"]


def white_noise_score(values: np.ndarray) -> float:
    """How far ``values`` (z, y, x) are from white noise: the largest, over the axes, of ``|r| * sqrt(pairs)``,
    ``r`` the lag-1 autocorrelation of the mean-removed values along that axis (about ``|N(0, 1)|`` for
    independent noise). A constant array scores 0."""
    x = np.asarray(values, dtype=np.float64)
    x = x - x.mean()
    energy = float(np.vdot(x, x))
    if energy == 0.0:
        return 0.0
    score = 0.0
    for axis in range(x.ndim):
        if x.shape[axis] < 2:
            continue
        lo = x[(slice(None),) * axis + (slice(None, -1),)]
        hi = x[(slice(None),) * axis + (slice(1, None),)]
        score = max(score, abs(float(np.sum(lo * hi))) / energy * math.sqrt(lo.size))
    return score


def background_patches(frame: ModelGridFrame, window: SlidingWindow, corners: Sequence[Corner], level: float) -> list[bool]:
    """Whether each patch of ``corners`` is background (:func:`white_noise_score` of its input <= ``level``);
    the input under all of them is read once."""
    shape = window.grid.shape
    extent = lambda box: frame.input_region(read_extent(box.slices, shape, window.pad_mode))  # noqa: E731
    whole = extent(window.grid.bounding_box(corners))
    values = frame.read_input(whole)
    out = []
    for corner in corners:
        region = extent(window.grid.patch_box(corner))
        local = tuple(slice(r.start - w.start, r.stop - w.start) for r, w in zip(region, whole, strict=True))
        out.append(white_noise_score(values[local]) <= level)
    return out


#: (model hashes, device, precision, flips, patch) -> the response; a few runs' worth per process
_RESPONSES: dict[tuple, np.ndarray] = {}
_KEEP = 4
_LOCK = threading.Lock()


def forget_background_responses() -> int:
    """Drop this process's cached background responses (returns how many): a long-lived worker's memory back,
    or a measurement of a run as a fresh cluster meets it (``benchmarks/run.py throughput skip-empty``)."""
    with _LOCK:
        n = len(_RESPONSES)
        _RESPONSES.clear()
    return n


def background_response(runner: PatchRunner, hashes: Sequence[str], patch: Sequence[int]) -> np.ndarray:
    """The models' ``(C, *patch)`` output for a patch at z-score 0, computed once per process for these
    models (``hashes``), device, precision, flips and patch (under a lock: the block threads that want it
    first wait for the one forward pass)."""
    key = (tuple(hashes), str(runner.device), str(runner.amp_dtype), tuple(runner.flips), tuple(int(p) for p in patch))
    with _LOCK:
        response = _RESPONSES.get(key)
        if response is None:
            response = runner.outputs(np.zeros((1, 1, *key[-1]), dtype=np.float32))[0]
            response.setflags(write=False)
            while len(_RESPONSES) >= _KEEP:
                _RESPONSES.pop(next(iter(_RESPONSES)))
            _RESPONSES[key] = response
    return response


def sums_with_background(
    runner: PatchRunner, hashes: Sequence[str], window: SlidingWindow, frame: ModelGridFrame, corners: Sequence[Corner], target: Box,
    level: float | None,
) -> tuple[WeightedSum, int]:
    """The weighted sums of the patches ``corners`` over ``target`` and how many of them were background:
    with ``level`` None every patch is evaluated; else the background ones add their weight times the
    background response, and the models run on the others only (not at all when none is left)."""
    background = background_patches(frame, window, corners, level) if level is not None else [False] * len(corners)
    evaluated = [c for c, b in zip(corners, background, strict=True) if not b]
    skipped = [c for c, b in zip(corners, background, strict=True) if b]
    sums = runner.weighted_sums(window, padded_reader(frame, window.pad_mode), evaluated, target) if evaluated else None
    if skipped:
        response = background_response(runner, hashes, window.patch_shape)
        values = sums.values if sums is not None else np.zeros((response.shape[0], *target.shape), dtype=np.float32)
        for corner in skipped:  # after the evaluated ones: where a skipped patch has no weight it adds exactly 0
            dst, src = overlap_slices(window.grid.patch_box(corner), target)
            values[(slice(None), *dst)] += window.weights_for(corner)[src] * response[(slice(None), *src)]
        sums = WeightedSum(target, values)
    assert sums is not None
    return sums, len(skipped)
