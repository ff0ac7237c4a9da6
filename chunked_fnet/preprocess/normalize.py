"""Z-scoring with statistics of the whole frame (the paper normalises every image on its own).

Statistics are computed by dask over the full frame, never per block: per-block statistics would
give every chunk a different offset and leave seams in chunked predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import dask.array as da
import numpy as np
import xarray as xr

from chunked_fnet.errors import InputError


@dataclass(frozen=True)
class FrameStats:
    """Mean and standard deviation of one channel of one time point."""

    mean: float
    std: float

    def apply(self, values: np.ndarray) -> np.ndarray:
        return ((np.asarray(values, dtype=np.float32) - np.float32(self.mean)) / np.float32(self.std)).astype(np.float32)


def frame_stats(frame: xr.DataArray | np.ndarray | da.Array, what: str = "image") -> FrameStats:
    """Mean/std of a (z, y, x) frame in float64, in one dask pass; constant or non-finite frames raise."""
    data = frame.data if isinstance(frame, xr.DataArray) else frame
    data = da.asarray(data).astype(np.float64)
    total, total_sq, count, finite = da.compute(data.sum(), (data * data).sum(), data.size, da.isfinite(data).all())
    if not finite:
        raise InputError(f"{what}: contains NaN or infinite voxels; z-scoring needs finite values")
    mean = float(total) / count
    var = max(float(total_sq) / count - mean * mean, 0.0)
    std = math.sqrt(var)
    if not std > 1e-12 * max(1.0, abs(mean)):
        raise InputError(f"{what}: is constant (every voxel = {mean:g}); z-scoring needs a non-zero standard deviation")
    return FrameStats(mean=mean, std=std)
