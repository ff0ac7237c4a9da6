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


def frame_stats(frame: xr.DataArray | np.ndarray | da.Array, what: str = "image", nonfinite: str = "fail") -> FrameStats:
    """Mean/std of a (z, y, x) frame in float64, in one dask pass.

    A constant frame raises. NaN/Inf voxels raise with ``nonfinite="fail"`` (the default: a
    microscope never records NaN, so they mean a broken conversion); with ``"fill"`` the statistics
    use the finite voxels only and :meth:`FrameStats.apply` callers fill the rest with the mean.
    """
    data = frame.data if isinstance(frame, xr.DataArray) else frame
    data = da.asarray(data).astype(np.float64)
    ok = da.isfinite(data)
    finite = da.where(ok, data, 0.0)
    total, total_sq, count = da.compute(finite.sum(), (finite * finite).sum(), ok.sum())
    count = int(count)
    if count < data.size and nonfinite != "fill":
        raise InputError(
            f"{what}: {data.size - count} of {data.size} voxels are NaN or infinite; z-scoring needs finite values "
            "(fix the input, or pass nonfinite: fill / --nonfinite fill to predict them as the frame mean)"
        )
    if count == 0:
        raise InputError(f"{what}: has no finite voxel at all")
    mean = float(total) / count
    var = max(float(total_sq) / count - mean * mean, 0.0)
    std = math.sqrt(var)
    if not std > 1e-12 * max(1.0, abs(mean)):
        raise InputError(f"{what}: is constant (every voxel = {mean:g}); z-scoring needs a non-zero standard deviation")
    return FrameStats(mean=mean, std=std)
