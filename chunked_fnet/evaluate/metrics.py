"""Image-similarity metrics for label-free predictions, on numpy or dask arrays, in float64.

Conventions (the package's, after Ounkomol et al. 2018 / pytorch_fnet):

* Targets are compared in **z-scored units**: ``zscore(x) = (x - mean(x)) / std(x)`` over *all*
  voxels, population standard deviation (``ddof=0``), so ``sum(zscore(x)**2) == x.size``.
* A model trained on z-scored targets predicts in those same units, so a **prediction is used as
  is** (not re-normalised) unless ``standardize_prediction=True``.

On numpy inputs the metrics are computed directly in two passes (mean/std, then the sums), so the
exact identities hold: a blank (all-zero) prediction has normalised error exactly 1.0 and a
prediction equal to ``zscore(target)`` exactly 0.0. On dask inputs (either argument) they are
computed in **one pass** over the data from per-block centred moments merged in float64 (Chan et
al.'s pairwise formulas); the blank prediction still scores exactly 1.0, other values agree with the
numpy path to ~1e-12. Inputs containing NaN/inf, of different shapes, or constant where a standard
deviation is needed are refused with ``ValueError`` rather than answered with NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import dask
import dask.array as da
import numpy as np

__all__ = ["normalized_error", "pearson_r", "zscore"]


def _is_dask(a: Any) -> bool:
    return isinstance(a, da.Array) or isinstance(getattr(a, "data", None), da.Array)


def _as_dask(a: Any) -> da.Array:
    if isinstance(a, da.Array):
        return a
    data = getattr(a, "data", None)  # xarray backed by dask
    if isinstance(data, da.Array):
        return data
    return da.asarray(np.asarray(a))


def _as_f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


@dataclass(frozen=True)
class _Moments:
    """Count, means and centred second (co-)moments of a pair of arrays, float64."""

    n: float
    mean_a: float
    mean_b: float
    m2_a: float  # sum((a - mean_a)**2)
    m2_b: float
    c_ab: float  # sum((a - mean_a) * (b - mean_b))


def _block_moments(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = _as_f64(a).ravel()
    b = _as_f64(b).ravel()
    n = a.size
    if n == 0:
        return np.zeros(6)
    ma, mb = a.mean(), b.mean()
    da_, db_ = a - ma, b - mb
    return np.array([n, ma, mb, np.dot(da_, da_), np.dot(db_, db_), np.dot(da_, db_)])


def _merge(blocks: np.ndarray) -> _Moments:
    blocks = blocks[blocks[:, 0] > 0]
    n_i, ma_i, mb_i, m2a_i, m2b_i, c_i = blocks.T
    n = n_i.sum()
    ma = float(np.dot(n_i, ma_i) / n)
    mb = float(np.dot(n_i, mb_i) / n)
    return _Moments(
        n=float(n),
        mean_a=ma,
        mean_b=mb,
        m2_a=float(m2a_i.sum() + np.dot(n_i, (ma_i - ma) ** 2)),
        m2_b=float(m2b_i.sum() + np.dot(n_i, (mb_i - mb) ** 2)),
        c_ab=float(c_i.sum() + np.dot(n_i, (ma_i - ma) * (mb_i - mb))),
    )


def _check_pair(a: Any, b: Any) -> None:
    if tuple(np.shape(a)) != tuple(np.shape(b)):
        raise ValueError(f"arrays to compare differ in shape: {tuple(np.shape(a))} vs {tuple(np.shape(b))}")
    if int(np.prod(np.shape(a))) == 0:
        raise ValueError("cannot compute a metric of empty arrays")


def _dask_moments(a: Any, b: Any) -> _Moments:
    """One pass over two (dask or numpy) arrays of one shape: per-block moments, merged."""
    a, b = _as_dask(a), _as_dask(b)
    b = b.rechunk(a.chunks)
    tasks = [dask.delayed(_block_moments)(x, y) for x, y in zip(a.to_delayed().ravel(), b.to_delayed().ravel())]
    return _merge(np.stack(dask.compute(*tasks)))


def _check_finite(m: _Moments, what: str) -> None:
    if not all(np.isfinite(v) for v in (m.mean_a, m.mean_b, m.m2_a, m.m2_b, m.c_ab)):
        raise ValueError(f"{what}: the inputs contain NaN or infinite values")


def _mean_std(a: Any) -> tuple[float, float]:
    if _is_dask(a):
        x = _as_dask(a)
        tasks = [dask.delayed(_block_moments)(blk, blk) for blk in x.to_delayed().ravel()]
        m = _merge(np.stack(dask.compute(*tasks)))
        mean, var = m.mean_a, m.m2_a / m.n
    else:
        x = _as_f64(a)
        if x.size == 0:
            raise ValueError("cannot z-score an empty array")
        mean = float(x.mean())
        var = float(np.mean((x - mean) ** 2))
    if not (np.isfinite(mean) and np.isfinite(var)):
        raise ValueError("cannot z-score an array containing NaN or infinite values")
    std = float(np.sqrt(var))
    if std == 0.0 or std <= 1e-12 * max(abs(mean), 1e-300):
        raise ValueError(f"cannot z-score a constant array (every value is {mean!r}): its standard deviation is 0")
    return mean, std


def zscore(a: Any) -> Any:
    """``(a - mean(a)) / std(a)`` over all elements (population std, ``ddof=0``), float64.

    numpy in, numpy out. A dask array's mean and std are computed now (one pass; needed to refuse a
    constant array) and the z-scored array is returned lazily. Raises ``ValueError`` for a constant
    array or one containing NaN/inf.
    """
    mean, std = _mean_std(a)
    if _is_dask(a):
        return (_as_dask(a).astype(np.float64) - mean) / std
    return (_as_f64(a) - mean) / std


def pearson_r(a: Any, b: Any) -> float:
    """Pearson correlation coefficient of two same-shape arrays over all elements, float64 sums.

    Raises ``ValueError`` (instead of returning NaN) when either input is constant, contains NaN or
    infinite values, or the shapes differ. Clipped to ``[-1, 1]``.
    """
    _check_pair(a, b)
    if _is_dask(a) or _is_dask(b):
        m = _dask_moments(a, b)
    else:
        m = _Moments(*_block_moments(a, b))
    _check_finite(m, "pearson_r")
    for name, m2, mean in (("first", m.m2_a, m.mean_a), ("second", m.m2_b, m.mean_b)):
        if m2 <= (1e-12 * abs(mean)) ** 2 * m.n or m2 == 0.0:
            raise ValueError(
                f"pearson_r is undefined: the {name} array is constant (value {mean!r}), its variance is 0"
            )
    r = m.c_ab / np.sqrt(m.m2_a * m.m2_b)
    return float(np.clip(r, -1.0, 1.0))


def normalized_error(target: Any, prediction: Any, *, standardize_prediction: bool = False) -> float:
    """Squared L2 error in z-scored units, relative to that of a blank prediction.

    ``t = zscore(target)`` (the target's own mean and population std) and ``p = prediction`` as given,
    which is taken to be in the model's z-scored units already (``standardize_prediction=True``
    z-scores it by its own statistics instead, for predictions in arbitrary units)::

        normalized_error = sum((t - p)**2) / sum(t**2)        # sum(t**2) == t.size

    0 is a perfect prediction, exactly 1 an all-zero (blank, "predict the mean") one; above 1 is
    worse than predicting nothing. Raises ``ValueError`` for a constant target, NaN/inf, or
    mismatched shapes.
    """
    _check_pair(target, prediction)
    if standardize_prediction:
        prediction = zscore(prediction)
    if _is_dask(target) or _is_dask(prediction):
        m = _dask_moments(target, prediction)
        _check_finite(m, "normalized_error")
        var_t = m.m2_a / m.n
        s = float(np.sqrt(var_t))
        if s == 0.0 or s <= 1e-12 * abs(m.mean_a):
            raise ValueError(f"cannot z-score a constant target (every value is {m.mean_a!r})")
        # sum(t^2) = n; sum(t p) = c_tp / s; sum(p^2) = m2_p + n mean_p^2
        num = m.n - 2.0 * m.c_ab / s + (m.m2_b + m.n * m.mean_b**2)
        return float(max(num, 0.0) / m.n)
    t = zscore(target)
    p = _as_f64(prediction)
    if not np.all(np.isfinite(p)):
        raise ValueError("normalized_error: the prediction contains NaN or infinite values")
    diff = t - p
    return float(np.sum(diff * diff) / np.sum(t * t))
