"""Fourier shell correlation (3D; Fourier ring correlation in 2D) of a prediction against its target,
and the resolution where it falls below 1/7, in µm.

No maintained library computes it on arrays with a physical, anisotropic voxel size, so it is here:

* **Shells in physical frequency units, no resampling.** Each axis's DFT frequencies are taken in
  cycles/µm (``numpy.fft.fftfreq(n, d=voxel_um)``), and a voxel of the spectrum belongs to the shell
  of its physical radius ``|k| = sqrt(kz² + ky² + kx²)``. Anisotropic voxels therefore give spherical
  shells in physical space (ellipsoids in index space), and the images are never interpolated.
* **Shell width** ``w`` is the coarsest frequency spacing of the axes, ``1 / min(n_i * voxel_i)`` (the
  shortest field extent), so every shell holds samples along every axis; shell ``i`` (``i >= 1``) is
  centred on ``i w`` and holds the radii in ``[(i - 1/2) w, (i + 1/2) w)``.
* **Shells stop at the coarsest axis's Nyquist frequency** ``1 / (2 max(voxel))``: beyond it a shell
  would miss the directions of that axis and the correlation would be the finer axes' alone.
* The DC term (the images' means, shell 0) is left out: z-scored images have none to speak of.

``FSC(k) = Re Σ F₁ F₂* / sqrt(Σ |F₁|² Σ |F₂|²)`` over each shell (0 where either sum is 0). The
resolution is ``1 / k`` at the first crossing of 1/7, interpolated linearly between shell centres;
``inf`` when the first shell is already below 1/7 (nothing resolved, e.g. a blank prediction); and
the sampling limit ``2 max(voxel)`` when the curve never falls below 1/7 (e.g. identical images).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["FSC_THRESHOLD", "FourierShellCorrelation", "fourier_shell_correlation"]

FSC_THRESHOLD = 1.0 / 7.0


@dataclass(frozen=True)
class FourierShellCorrelation:
    """The curve (shell centres in cycles/µm, correlations) and the resolution at 1/7 in µm."""

    frequencies: np.ndarray
    correlation: np.ndarray
    resolution_um: float
    sampling_limit_um: float


def _radii(shape: Sequence[int], voxel_size: Sequence[float]) -> np.ndarray:
    """Physical radius (cycles/µm) of every voxel of the (unshifted) spectrum."""
    freqs = [np.fft.fftfreq(n, d=float(d)) for n, d in zip(shape, voxel_size, strict=True)]
    grids = np.meshgrid(*freqs, indexing="ij", sparse=True)
    return np.sqrt(sum(g * g for g in grids))


def _check(a: np.ndarray, b: np.ndarray, voxel_size: Sequence[float]) -> None:
    if a.shape != b.shape:
        raise ValueError(f"fourier_shell_correlation: arrays differ in shape: {a.shape} vs {b.shape}")
    if a.ndim not in (2, 3):
        raise ValueError(f"fourier_shell_correlation: expected a 2D (y, x) or 3D (z, y, x) array, got {a.ndim}D {a.shape}")
    if len(voxel_size) != a.ndim or any(not float(d) > 0 for d in voxel_size):
        raise ValueError(f"fourier_shell_correlation: voxel_size {tuple(voxel_size)} must be {a.ndim} positive sizes (µm), one per axis")
    if min(a.shape) < 4:
        raise ValueError(f"fourier_shell_correlation: every axis needs at least 4 samples, the arrays are {a.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise ValueError("fourier_shell_correlation: the inputs contain NaN or infinite values")


def fourier_shell_correlation(target: np.ndarray, prediction: np.ndarray, voxel_size: Sequence[float]) -> FourierShellCorrelation:
    """FSC (3D) or FRC (2D) of two same-shape arrays whose axes have ``voxel_size`` µm (z, y, x or y, x)."""
    a, b = np.asarray(target, dtype=np.float64), np.asarray(prediction, dtype=np.float64)
    _check(a, b, voxel_size)
    fa, fb = np.fft.fftn(a), np.fft.fftn(b)
    radius = _radii(a.shape, voxel_size)
    width = 1.0 / min(n * float(d) for n, d in zip(a.shape, voxel_size, strict=True))
    nyquist = 1.0 / (2.0 * max(float(d) for d in voxel_size))
    n_shells = max(1, int(np.floor(nyquist / width + 1e-9)))
    index = np.rint(radius / width).astype(np.int64)  # shell i: radii in [(i - 1/2) w, (i + 1/2) w); 0 is the DC term
    keep = (index >= 1) & (index <= n_shells)
    index = index[keep] - 1
    cross = np.bincount(index, (fa * np.conj(fb)).real[keep], n_shells)
    power_a = np.bincount(index, (np.abs(fa) ** 2)[keep], n_shells)
    power_b = np.bincount(index, (np.abs(fb) ** 2)[keep], n_shells)
    denominator = np.sqrt(power_a * power_b)
    correlation = np.divide(cross, denominator, out=np.zeros(n_shells), where=denominator > 0)
    centres = np.arange(1, n_shells + 1) * width
    return FourierShellCorrelation(centres, correlation, _resolution(centres, correlation, 1.0 / nyquist), 1.0 / nyquist)


def _resolution(centres: np.ndarray, correlation: np.ndarray, sampling_limit_um: float) -> float:
    """``1 / k`` where the curve first falls below 1/7 (linear between shell centres); see the module."""
    below = np.flatnonzero(correlation < FSC_THRESHOLD)
    if below.size == 0:
        return float(sampling_limit_um)
    i = int(below[0])
    if i == 0:
        return float("inf")
    c0, c1 = correlation[i - 1], correlation[i]
    k = centres[i - 1] + (c0 - FSC_THRESHOLD) / (c0 - c1) * (centres[i] - centres[i - 1])
    return float(1.0 / k)
