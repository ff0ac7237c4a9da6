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
al.'s pairwise formulas; :mod:`chunked_fnet.moments`, which z-scoring for training and prediction
uses too); the blank prediction still scores exactly 1.0, other values agree with the numpy path to
~1e-12. Inputs containing NaN/inf, of different shapes, or constant where a standard
deviation is needed are refused with ``ValueError`` rather than answered with NaN.

:func:`image_metrics` gathers every metric ``chunked-fnet evaluate`` reports for one image (numpy,
in memory): the two above, scikit-image's SSIM, PSNR and NRMSE against the z-scored target, and the
Fourier shell correlation resolution (:mod:`chunked_fnet.evaluate.fsc`).

**data_range of SSIM and PSNR**: the range ``max - min`` of the *z-scored target*, for both images.
The target is the reference: its range fixes SSIM's stabilising constants and PSNR's peak, so a
prediction cannot change its own score by its outliers, and since the target is z-scored the value
does not depend on the camera's units. (Floating-point images have no natural range, and scikit-image
asks for one.) SSIM uses scikit-image's default uniform window of 7 voxels per axis (smaller, odd,
for an axis shorter than 7), on the model's voxel grid (isotropic in the paper's settings).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import skimage.metrics

from chunked_fnet.evaluate.fsc import fourier_shell_correlation
from chunked_fnet.moments import Moments, as_dask, is_constant, is_dask, moments

__all__ = [
    "METRICS", "image_metrics", "normalized_error", "normalized_root_mse", "peak_signal_noise_ratio", "pearson_r",
    "structural_similarity", "zscore",
]

#: Every metric of :func:`image_metrics`, in the order the report's table and figure show them.
METRICS = ("normalized_error", "pearson_r", "ssim", "psnr_db", "nrmse", "fsc_resolution_um")


def _as_f64(a: Any) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def _check_pair(a: Any, b: Any) -> None:
    if tuple(np.shape(a)) != tuple(np.shape(b)):
        raise ValueError(f"arrays to compare differ in shape: {tuple(np.shape(a))} vs {tuple(np.shape(b))}")
    if int(np.prod(np.shape(a))) == 0:
        raise ValueError("cannot compute a metric of empty arrays")


def _check_finite(m: Moments, what: str) -> None:
    if not m.finite():
        raise ValueError(f"{what}: the inputs contain NaN or infinite values")


def _mean_std(a: Any) -> tuple[float, float]:
    m = moments(a)
    if m.n == 0:
        raise ValueError("cannot z-score an empty array")
    if not m.finite():
        raise ValueError("cannot z-score an array containing NaN or infinite values")
    if is_constant(m.mean_a, m.std_a):
        raise ValueError(f"cannot z-score a constant array (every value is {m.mean_a!r}): its standard deviation is 0")
    return m.mean_a, m.std_a


def zscore(a: Any) -> Any:
    """``(a - mean(a)) / std(a)`` over all elements (population std, ``ddof=0``), float64.

    numpy in, numpy out. A dask array's mean and std are computed now (one pass; needed to refuse a
    constant array) and the z-scored array is returned lazily. Raises ``ValueError`` for a constant
    array or one containing NaN/inf.
    """
    mean, std = _mean_std(a)
    if is_dask(a):
        return (as_dask(a).astype(np.float64) - mean) / std
    return (_as_f64(a) - mean) / std


def pearson_r(a: Any, b: Any) -> float:
    """Pearson correlation coefficient of two same-shape arrays over all elements, float64 sums.

    Raises ``ValueError`` (instead of returning NaN) when either input is constant, contains NaN or
    infinite values, or the shapes differ. Clipped to ``[-1, 1]``.
    """
    _check_pair(a, b)
    m = moments(a, b)
    _check_finite(m, "pearson_r")
    for name, std, mean in (("first", m.std_a, m.mean_a), ("second", m.std_b, m.mean_b)):
        if is_constant(mean, std):
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
    if is_dask(target) or is_dask(prediction):
        m = moments(target, prediction)
        _check_finite(m, "normalized_error")
        s = m.std_a
        if is_constant(m.mean_a, s):
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


def _reference(target: Any, prediction: Any) -> tuple[np.ndarray, np.ndarray]:
    """The z-scored target and the prediction as float64 numpy arrays, checked for shape and finiteness."""
    _check_pair(target, prediction)
    t = np.asarray(zscore(target))
    p = _as_f64(prediction)
    if not np.all(np.isfinite(p)):
        raise ValueError("the prediction contains NaN or infinite values")
    return t, p


def _data_range(t: np.ndarray) -> float:
    """SSIM's and PSNR's ``data_range``: the z-scored target's range (see the module docstring)."""
    return float(t.max() - t.min())


def structural_similarity(target: Any, prediction: Any) -> float:
    """scikit-image's SSIM (2D or 3D) of the prediction against the z-scored target; 1 for a perfect one."""
    t, p = _reference(target, prediction)
    win = min(7, min(t.shape) - (1 - min(t.shape) % 2))  # odd, at most the shortest axis
    if win < 3:
        raise ValueError(f"structural_similarity needs at least 3 samples along every axis, the arrays are {t.shape}")
    return float(skimage.metrics.structural_similarity(t, p, win_size=win, data_range=_data_range(t)))


def peak_signal_noise_ratio(target: Any, prediction: Any) -> float:
    """scikit-image's PSNR in dB against the z-scored target; ``inf`` for a perfect prediction (MSE 0)."""
    t, p = _reference(target, prediction)
    with np.errstate(divide="ignore"):
        return float(skimage.metrics.peak_signal_noise_ratio(t, p, data_range=_data_range(t)))


def normalized_root_mse(target: Any, prediction: Any) -> float:
    """scikit-image's NRMSE, ``||t - p|| / ||t||`` (its default 'euclidean' normalisation), against the
    z-scored target ``t``: 0 perfect, 1 blank; the square root of :func:`normalized_error`, computed by
    the library (a check on each other)."""
    t, p = _reference(target, prediction)
    return float(skimage.metrics.normalized_root_mse(t, p, normalization="euclidean"))


def image_metrics(target: Any, prediction: Any, voxel_size: Any) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one image; ``voxel_size`` (µm per axis) is the arrays' grid,
    which the Fourier shell correlation resolution needs. Pearson r of a constant (e.g. blank) prediction
    is undefined and recorded as NaN here, so that one image does not stop a whole evaluation."""
    t, p = _reference(target, prediction)
    return {
        "normalized_error": normalized_error(t, p),
        "pearson_r": float("nan") if np.ptp(p) == 0 else pearson_r(t, p),
        "ssim": structural_similarity(t, p),
        "psnr_db": peak_signal_noise_ratio(t, p),
        "nrmse": normalized_root_mse(t, p),
        "fsc_resolution_um": fourier_shell_correlation(t, p, voxel_size).resolution_um,
    }
