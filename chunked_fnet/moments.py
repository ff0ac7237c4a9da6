"""Means, variances and the covariance of arrays in float64: the one implementation behind z-scoring
(:func:`~chunked_fnet.preprocess.normalize.frame_stats`, for training and prediction) and the metrics
of :mod:`chunked_fnet.evaluate.metrics`, so a frame is normalised the same way wherever it is.

Population statistics (``ddof=0``), as pytorch_fnet. Each block's centred moments are computed in
float64 and the blocks merged exactly (Chan et al.'s pairwise formulas): one pass over a dask array,
and no ``E[x^2] - E[x]^2`` cancellation when the mean is large against the spread. An integer array
(a camera's) is summed in integers instead (:class:`IntegerSums`): its statistics are the correctly
rounded ones of its voxels, the same whatever its chunking, the order of its blocks or the threads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
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


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """``sum(a * b)`` by numpy's own loop, not BLAS. OpenBLAS splits a long dot product over its threads, so
    its last bits depend on ``OPENBLAS_NUM_THREADS`` (a 2M-voxel chunk's centred sum of squares differs
    between 1 and 2 threads); a dask worker runs with 1, a client with every core, and a resumed run
    compares each frame's statistics with those recorded."""
    return np.einsum("i,i->", a, b)


@dataclass(frozen=True)
class IntegerSums:
    """Count, sum and sum of squares of integer voxels (a camera's frame), as Python integers: exact, so any
    chunking, order or thread count merges to the same moments, the correctly rounded mean and centred sum of
    squares of every voxel (``(n * s2 - s1**2) / n``, no cancellation). Cheaper than the float64 deviations
    too: two integer passes over the uint16 values, no float64 copy."""

    n: int
    s1: int
    s2: int

    def __add__(self, other: IntegerSums) -> IntegerSums:
        return IntegerSums(self.n + other.n, self.s1 + other.s1, self.s2 + other.s2)

    def moments(self) -> Moments:
        if not self.n:
            return Moments(0.0, *[math.nan] * 5)
        mean = float(Fraction(self.s1, self.n))
        m2 = float(Fraction(self.n * self.s2 - self.s1 * self.s1, self.n))
        return Moments(float(self.n), mean, mean, m2, m2, m2)

    def row(self) -> np.ndarray:
        """As a :func:`block_moments` row (to merge with float blocks')."""
        m = self.moments()
        return np.array([m.n, m.mean_a, m.mean_b, m.m2_a, m.m2_b, m.c_ab])


def integer_sums(a: Any) -> IntegerSums | None:
    """:class:`IntegerSums` of an integer block whose sums int64 holds (``size x max|value|**2 < 2**63``:
    any 8- or 16-bit block of fewer than 2**31 voxels); None for any other block (the float64 path)."""
    a = np.asarray(a)
    if not np.issubdtype(a.dtype, np.integer) or a.dtype.itemsize > 4:
        return None
    info = np.iinfo(a.dtype)
    if a.size * max(-int(info.min), int(info.max)) ** 2 >= 2**63:
        return None
    flat = a.ravel()
    return IntegerSums(flat.size, int(flat.sum(dtype=np.int64)), int(np.einsum("i,i->", flat, flat, dtype=np.int64)))


def block_summary(a: Any, b: Any = None, finite_only: bool = False) -> IntegerSums | np.ndarray:
    """What one block contributes to :func:`merge_summaries`: an integer block's exact sums, else its
    :func:`block_moments` row."""
    exact = integer_sums(a) if b is None else None
    return exact if exact is not None else block_moments(a, b, finite_only)


def block_moments(a: Any, b: Any = None, finite_only: bool = False) -> np.ndarray:
    """``[n, mean_a, mean_b, m2_a, m2_b, c_ab]`` of one block in float64; ``finite_only`` (one array only)
    leaves NaN/Inf values out, so ``n`` counts the finite ones."""
    x = np.asarray(a, dtype=np.float64).ravel()
    if b is None and finite_only:
        ok = np.isfinite(x)
        if not ok.all():
            x = x[ok]
    if x.size == 0:
        return np.zeros(6)
    mx = x.mean()
    dx = x - mx
    m2x = _dot(dx, dx)
    if b is None:
        return np.array([x.size, mx, mx, m2x, m2x, m2x])
    y = np.asarray(b, dtype=np.float64).ravel()
    my = y.mean()
    dy = y - my
    return np.array([x.size, mx, my, m2x, _dot(dy, dy), _dot(dx, dy)])


def merge_summaries(parts: Sequence[IntegerSums | np.ndarray]) -> Moments:
    """The moments of the union of blocks (:func:`block_summary` of each): exact sums when every block is
    integer, else their rows merged (:func:`merge`)."""
    if parts and all(isinstance(p, IntegerSums) for p in parts):
        return sum(parts[1:], parts[0]).moments()
    return merge(np.stack([p.row() if isinstance(p, IntegerSums) else p for p in parts]))


def merge(blocks: np.ndarray) -> Moments:
    """The moments of the union of blocks (rows of :func:`block_moments`), exactly."""
    blocks = blocks[blocks[:, 0] > 0]
    if len(blocks) <= 1:  # nothing to merge: the block's own values, bit for bit
        return Moments(*(float(v) for v in (blocks[0] if len(blocks) else [0.0, *[math.nan] * 5])))
    n_i, ma_i, mb_i, m2a_i, m2b_i, c_i = blocks.T
    n = n_i.sum()
    ma = float(_dot(n_i, ma_i) / n)
    mb = float(_dot(n_i, mb_i) / n)
    return Moments(
        n=float(n),
        mean_a=ma,
        mean_b=mb,
        m2_a=float(m2a_i.sum() + _dot(n_i, (ma_i - ma) ** 2)),
        m2_b=float(m2b_i.sum() + _dot(n_i, (mb_i - mb) ** 2)),
        c_ab=float(c_i.sum() + _dot(n_i, (ma_i - ma) * (mb_i - mb))),
    )


def moments(a: Any, b: Any = None, *, finite_only: bool = False) -> Moments:
    """Moments of ``a`` (and ``b``, same shape): computed directly for numpy, in one pass of per-block
    tasks for dask (``b`` rechunked to ``a``'s blocks)."""
    if not (is_dask(a) or is_dask(b)):
        return merge_summaries([block_summary(a, b, finite_only)])
    a = as_dask(a)
    blocks = a.to_delayed().ravel()
    if b is None:
        tasks = [dask.delayed(block_summary)(x, None, finite_only) for x in blocks]
    else:
        others = as_dask(b).rechunk(a.chunks).to_delayed().ravel()
        tasks = [dask.delayed(block_moments)(x, y) for x, y in zip(blocks, others, strict=True)]
    return merge_summaries(dask.compute(*tasks))
