"""Means, variances and the covariance of arrays in float64: the one implementation behind z-scoring
(:func:`~chunked_fnet.preprocess.normalize.frame_stats`, for training and prediction) and the metrics
of :mod:`chunked_fnet.evaluate.metrics`, so a frame is normalised the same way wherever it is.

Population statistics (``ddof=0``), as pytorch_fnet. Each block's centred moments are computed in
float64 and the blocks merged exactly (Chan et al.'s pairwise formulas): one pass over a dask array,
and no ``E[x^2] - E[x]^2`` cancellation when the mean is large against the spread.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

#: A standard deviation at or below this fraction of ``max(1, |mean|)`` is float64 rounding: the array is constant.
CONSTANT_TOLERANCE = 1e-12


@dataclass(frozen=True)
class Moments:
    """Count, means and centred second (co-)moments of a pair of arrays (``b`` is ``a`` for one array)."""

    n: float
    mean_a: float
    mean_b: float
    m2_a: float  # sum((a - mean_a)**2)
    m2_b: float
    c_ab: float  # sum((a - mean_a) * (b - mean_b))

    @property
    def std_a(self) -> float:
        """Population standard deviation of ``a`` (NaN for no values)."""
        return math.sqrt(self.m2_a / self.n) if self.n else math.nan

    @property
    def std_b(self) -> float:
        return math.sqrt(self.m2_b / self.n) if self.n else math.nan

    def finite(self) -> bool:
        return all(math.isfinite(v) for v in (self.mean_a, self.mean_b, self.m2_a, self.m2_b, self.c_ab))


def is_dask(a: Any) -> bool:
    """A dask array, or an xarray backed by one."""
    return isinstance(a, da.Array) or isinstance(getattr(a, "data", None), da.Array)


def as_dask(a: Any) -> da.Array:
    if isinstance(a, da.Array):
        return a
    data = getattr(a, "data", None)  # xarray backed by dask
    if isinstance(data, da.Array):
        return data
    return da.asarray(np.asarray(a))


def is_constant(mean: float, std: float) -> bool:
    """Whether ``std`` is indistinguishable from 0 at this ``mean`` (z-scoring would amplify rounding)."""
    return not std > CONSTANT_TOLERANCE * max(1.0, abs(mean))


def _integer_block_moments(a: Any) -> np.ndarray | None:
    """:func:`block_moments` of one integer block (a camera's frame), the same numbers bit for bit, without
    its float64 copy or a search for NaN (an integer holds none): while ``size x max |value|`` stays below
    2**53 every partial sum is an integer float64 holds exactly, so the integer sum is the float64 sum in
    any order, and the deviations are the same float64 subtractions. None for other blocks. (The
    statistics pass reads every frame before a run starts; this halves its CPU time per frame.)"""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer) or a.size == 0:
        return None
    info = np.iinfo(a.dtype)
    if a.size * max(-int(info.min), int(info.max)) >= 2**53:
        return None
    flat = a.ravel()
    mean = np.float64(int(flat.sum(dtype=np.int64))) / np.float64(flat.size)
    dx = np.subtract(flat, mean, dtype=np.float64)
    m2 = np.dot(dx, dx)
    return np.array([flat.size, mean, mean, m2, m2, m2])


def block_moments(a: Any, b: Any = None, finite_only: bool = False) -> np.ndarray:
    """``[n, mean_a, mean_b, m2_a, m2_b, c_ab]`` of one block; ``finite_only`` (one array only) leaves
    NaN/Inf values out, so ``n`` counts the finite ones."""
    if b is None:
        exact = _integer_block_moments(a)
        if exact is not None:
            return exact
    x = np.asarray(a, dtype=np.float64).ravel()
    if b is None and finite_only:
        ok = np.isfinite(x)
        if not ok.all():
            x = x[ok]
    if x.size == 0:
        return np.zeros(6)
    mx = x.mean()
    dx = x - mx
    m2x = np.dot(dx, dx)
    if b is None:
        return np.array([x.size, mx, mx, m2x, m2x, m2x])
    y = np.asarray(b, dtype=np.float64).ravel()
    my = y.mean()
    dy = y - my
    return np.array([x.size, mx, my, m2x, np.dot(dy, dy), np.dot(dx, dy)])


def merge(blocks: np.ndarray) -> Moments:
    """The moments of the union of blocks (rows of :func:`block_moments`), exactly."""
    blocks = blocks[blocks[:, 0] > 0]
    if len(blocks) <= 1:  # nothing to merge: the block's own values, bit for bit
        return Moments(*(float(v) for v in (blocks[0] if len(blocks) else [0.0, *[math.nan] * 5])))
    n_i, ma_i, mb_i, m2a_i, m2b_i, c_i = blocks.T
    n = n_i.sum()
    ma = float(np.dot(n_i, ma_i) / n)
    mb = float(np.dot(n_i, mb_i) / n)
    return Moments(
        n=float(n),
        mean_a=ma,
        mean_b=mb,
        m2_a=float(m2a_i.sum() + np.dot(n_i, (ma_i - ma) ** 2)),
        m2_b=float(m2b_i.sum() + np.dot(n_i, (mb_i - mb) ** 2)),
        c_ab=float(c_i.sum() + np.dot(n_i, (ma_i - ma) * (mb_i - mb))),
    )


def moments(a: Any, b: Any = None, *, finite_only: bool = False) -> Moments:
    """Moments of ``a`` (and ``b``, same shape): computed directly for numpy, in one pass of per-block
    tasks for dask (``b`` rechunked to ``a``'s blocks)."""
    if not (is_dask(a) or is_dask(b)):
        return merge(block_moments(a, b, finite_only)[None])
    a = as_dask(a)
    blocks = a.to_delayed().ravel()
    if b is None:
        tasks = [dask.delayed(block_moments)(x, None, finite_only) for x in blocks]
    else:
        others = as_dask(b).rechunk(a.chunks).to_delayed().ravel()
        tasks = [dask.delayed(block_moments)(x, y) for x, y in zip(blocks, others, strict=True)]
    return merge(np.stack(dask.compute(*tasks)))
