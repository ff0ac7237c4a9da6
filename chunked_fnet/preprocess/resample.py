"""Resample images onto a model's voxel grid, region by region, with identical results however cut.

The model grid shares the image's origin (voxel 0 centre on voxel 0 centre) and spans the same
physical extent; model voxel ``k`` sits at source coordinate ``k / factor`` with
``factor = source_voxel / model_voxel``. Down-sampling first low-passes the source with a Gaussian
(sigma = (1/factor - 1) / 2 source voxels, as scikit-image's ``rescale(anti_aliasing=True)``), then
interpolates linearly. Every output voxel depends only on source voxels within a fixed margin, and the
image border is extended as 'nearest' both for whole images and for regions that touch it, so a
region of the model grid equals the same region cut from the whole resampled image. (Hand-written
because scipy.ndimage.zoom and skimage.rescale work on whole arrays and align grids differently.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

_TRUNCATE = 4.0


@dataclass(frozen=True)
class ModelGrid:
    """How a source image of ``source_shape`` voxels (z, y, x) maps onto the model's voxel grid."""

    source_shape: tuple[int, int, int]
    source_scale: tuple[float, float, float]
    model_scale: tuple[float, float, float]

    @property
    def factor(self) -> tuple[float, ...]:
        return tuple(s / m for s, m in zip(self.source_scale, self.model_scale, strict=True))

    @property
    def identity(self) -> bool:
        return all(abs(f - 1.0) < 1e-9 for f in self.factor)

    @property
    def shape(self) -> tuple[int, ...]:
        """Model voxels per axis: every one lies inside the source's extent (centre to centre)."""
        return tuple(int(math.floor((n - 1) * f + 1e-6)) + 1 for n, f in zip(self.source_shape, self.factor, strict=True))

    def sigma(self) -> tuple[float, ...]:
        """Anti-aliasing Gaussian per axis, in source voxels (0 where not down-sampling)."""
        return tuple(max(0.0, (1.0 / f - 1.0) / 2.0) for f in self.factor)

    def source_region(self, region: Sequence[slice]) -> tuple[slice, ...]:
        """The source voxels needed to compute ``region`` of the model grid (clipped to the image)."""
        out = []
        for sl, f, s, n in zip(region, self.factor, self.sigma(), self.source_shape, strict=True):
            lo, hi = sl.start / f, (sl.stop - 1) / f
            margin = int(math.ceil(_TRUNCATE * s)) + 1 if s > 0 else 1
            out.append(slice(max(0, int(math.floor(lo)) - margin), min(n, int(math.ceil(hi)) + margin + 1)))
        return tuple(out)


def interpolate_axis(values: np.ndarray, axis: int, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``values`` along ``axis`` at fractional ``coords`` ('nearest' outside)."""
    n = values.shape[axis]
    coords = np.clip(coords, 0, n - 1)
    i0 = np.minimum(np.floor(coords).astype(np.intp), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    w = (coords - i0).astype(np.float32)
    shape = [1] * values.ndim
    shape[axis] = len(coords)
    w = w.reshape(shape)
    return np.take(values, i0, axis=axis) * (1 - w) + np.take(values, i1, axis=axis) * w


def resample_region(
    read_source: Callable[[tuple[slice, ...]], np.ndarray], grid: ModelGrid, region: Sequence[slice]
) -> np.ndarray:
    """``region`` (slices of the model grid, z/y/x last) resampled from the source read via ``read_source``.

    ``read_source(source_region)`` returns the source voxels of a (z, y, x) region as an array whose last
    three axes are z, y, x (leading axes, e.g. channels, are carried along).
    """
    region = tuple(slice(*sl.indices(n)[:2]) for sl, n in zip(region, grid.shape, strict=True))
    if grid.identity:
        return np.asarray(read_source(region), dtype=np.float32)
    source = grid.source_region(region)
    values = np.asarray(read_source(source), dtype=np.float32)
    lead = values.ndim - 3
    sigma = grid.sigma()
    if any(s > 0 for s in sigma):
        values = gaussian_filter(values, sigma=(0,) * lead + sigma, mode="nearest", truncate=_TRUNCATE)
    for axis, (sl, src, f) in enumerate(zip(region, source, grid.factor, strict=True)):
        coords = np.arange(sl.start, sl.stop) / f - src.start
        values = interpolate_axis(values, lead + axis, coords)
    return values.astype(np.float32, copy=False)
