"""One channel of one time point as the models see it: read from its store, z-scored with the whole
frame's statistics and resampled onto the model grid, region by region. Prediction, training and
evaluation all read through it, so a model sees at inference exactly what it saw in training."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zarr

from chunked_fnet.errors import InputError
from chunked_fnet.io.reader import region_reader
from chunked_fnet.preprocess.normalize import FrameStats
from chunked_fnet.preprocess.resample import ModelGrid, resample_region
from chunked_fnet.profiling import stage

__all__ = ["ModelGridFrame", "input_region"]


def input_region(grid: ModelGrid, region: Sequence[slice]) -> tuple[slice, ...]:
    """The input voxels (z, y, x of the selection) that the model-grid ``region`` is computed from."""
    return tuple(region) if grid.identity else grid.source_region(region)


class ModelGridFrame:
    """Array-like ``(1, Z, Y, X)`` on the model grid (for :func:`~chunked_fnet.sliding_window.padded_reader`);
    :meth:`read` gives a ``(z, y, x)`` region. NaN/Inf voxels are refused, or with ``nonfinite="fill"``
    read as the frame's mean. ``reader`` (``(z, y, x)`` slices of the selection -> float32 values, a new array
    each call, which :meth:`read` z-scores in place) reads instead of the store: a block task's input chunks
    already read by the run's read tasks."""

    def __init__(
        self, array: Any, dims: Sequence[str], t: int | None, channel: int, stats: FrameStats, grid: ModelGrid,
        nonfinite: str = "fail", offset: Sequence[int] = (0, 0, 0), reader: Callable[[tuple[slice, ...]], np.ndarray] | None = None,
    ) -> None:
        self.t, self.stats, self.grid, self.nonfinite = t, stats, grid, nonfinite
        self.shape = (1, *grid.shape)
        self._read = reader or region_reader(array, dims, t, channel, offset)
        # what a read returns may be z-scored in place when it is the read's own: a given reader's (a new array
        # each call, by contract) or a zarr array's; never a view of an array in memory (a Predictor's input)
        self._reads_are_new = reader is not None or isinstance(array, zarr.Array)
        # integer input (a camera's) holds no NaN/Inf: its frames are not searched for them
        self._always_finite = np.issubdtype(np.dtype(getattr(array, "dtype", np.float32)), np.integer)

    def _read_source(self, region: tuple[slice, ...]) -> np.ndarray:
        with stage("read"):
            values = self._read(region)
        if self._always_finite:
            return values
        finite = np.isfinite(values)
        if not finite.all():
            if self.nonfinite != "fill":
                bad = tuple((s.start, s.stop) for s in region)
                raise InputError(
                    f"input has NaN/Inf voxels in the (z, y, x) region {bad} at t={self.t}; "
                    "fix the input, or pass --nonfinite fill to predict them as the frame's mean"
                )
            values = np.where(finite, values, self.stats.mean)  # z-scores to 0: the frame's mean
        return values

    def input_region(self, region: Sequence[slice]) -> tuple[slice, ...]:
        """The input voxels (z, y, x of the selection) that the model-grid ``region`` is computed from."""
        return input_region(self.grid, region)

    def read_input(self, region: Sequence[slice]) -> np.ndarray:
        """The input's own values (not z-scored, not resampled) of the input-grid ``region`` (z, y, x)."""
        return self._read_source(tuple(region))

    def read(self, region: Sequence[slice]) -> np.ndarray:
        """The z-scored model-grid voxels of ``region`` (z, y, x)."""
        with stage("normalize"):  # the reads inside are their own stage
            values = resample_region(self._read_source, self.grid, tuple(region))
            return self.stats.apply(values, overwrite=self._reads_are_new)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        return self.read(key[1:])[None]
