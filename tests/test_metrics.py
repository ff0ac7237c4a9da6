"""Metrics: z-scoring, normalised error (blank = 1, perfect = 0), Pearson r; numpy and dask agree; SSIM, PSNR
and NRMSE (scikit-image) and the Fourier shell correlation resolution against known values."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from chunked_fnet.evaluate import (
    METRICS,
    fourier_shell_correlation,
    image_metrics,
    normalized_error,
    normalized_root_mse,
    peak_signal_noise_ratio,
    pearson_r,
    structural_similarity,
    zscore,
)


def _pair(shape=(9, 31, 40), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    target = (rng.gamma(2.0, 50.0, size=shape) + 300.0).astype(np.float32)  # camera-like, offset
    pred = zscore(target) + 0.5 * rng.standard_normal(shape)
    return target, pred.astype(np.float32)


def test_zscore_mean_zero_std_one() -> None:
    target, _ = _pair()
    z = zscore(target)
    assert z.dtype == np.float64 and z.shape == target.shape
    assert abs(z.mean()) < 1e-12
    assert z.std() == pytest.approx(1.0, abs=1e-12)
    assert np.sum(z * z) == pytest.approx(z.size, rel=1e-12)


def test_zscore_refuses_constant_and_nan() -> None:
    with pytest.raises(ValueError, match="constant"):
        zscore(np.full((4, 5), 7.0))
    with pytest.raises(ValueError, match="constant"):
        zscore(da.full((4, 5), 7.0, chunks=2))
    bad = np.arange(10.0)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        zscore(bad)


def test_zscore_dask_is_lazy_and_matches_numpy() -> None:
    target, _ = _pair()
    lazy = zscore(da.from_array(target, chunks=(4, 16, 16)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), zscore(target), rtol=0, atol=1e-12)


def test_normalized_error_blank_is_exactly_one_and_perfect_is_zero() -> None:
    target, _ = _pair()
    assert normalized_error(target, np.zeros_like(target)) == 1.0
    assert normalized_error(target, zscore(target)) == 0.0
    # dask, either argument: the blank identity is exact in the one-pass path too
    dt = da.from_array(target, chunks=(3, 10, 13))
    assert normalized_error(dt, np.zeros(target.shape)) == 1.0
    assert normalized_error(target, da.zeros(target.shape, chunks=(5, 7, 40))) == 1.0
    assert normalized_error(dt, zscore(dt)) == pytest.approx(0.0, abs=1e-12)


def test_normalized_error_value_and_convention() -> None:
    target, pred = _pair()
    t = (target.astype(np.float64) - target.mean(dtype=np.float64)) / target.std(dtype=np.float64)
    expected = np.sum((t - pred.astype(np.float64)) ** 2) / np.sum(t**2)
    got = normalized_error(target, pred)
    assert got == pytest.approx(expected, rel=1e-12)
    assert 0.2 < got < 0.3  # noise of std 0.5 in z-units => ~0.25
    # the prediction is used in z-scored units as given ...
    assert normalized_error(target, pred * 3.0 + 10.0) > 10
    # ... unless asked to standardise it
    assert normalized_error(target, pred * 3.0 + 10.0, standardize_prediction=True) == pytest.approx(
        normalized_error(target, zscore(pred)), rel=1e-6  # float32 rounding of pred * 3 + 10
    )
    # the target's own units never matter
    assert normalized_error(target * 4.0 - 7.0, pred) == pytest.approx(got, rel=1e-9)


@pytest.mark.parametrize("chunks", [(9, 31, 40), (4, 16, 16), (1, 7, 40), (2, 31, 3)])
def test_dask_matches_numpy(chunks) -> None:
    target, pred = _pair(seed=1)
    dt = da.from_array(target, chunks=chunks)
    dp = da.from_array(pred, chunks=(3, 31, 20))  # different chunking: aligned internally
    ne = normalized_error(target, pred)
    r = pearson_r(target, pred)
    assert normalized_error(dt, dp) == pytest.approx(ne, rel=1e-10)
    assert normalized_error(dt, pred) == pytest.approx(ne, rel=1e-10)
    assert pearson_r(dt, dp) == pytest.approx(r, rel=1e-10)
    assert pearson_r(target, dp) == pytest.approx(r, rel=1e-10)


def test_pearson_r_matches_numpy_and_bounds() -> None:
    target, pred = _pair(seed=2)
    expected = np.corrcoef(target.ravel().astype(np.float64), pred.ravel().astype(np.float64))[0, 1]
    assert pearson_r(target, pred) == pytest.approx(expected, rel=1e-12)
    assert pearson_r(target, target) == 1.0
    assert pearson_r(target, -2.0 * target + 1) == pytest.approx(-1.0, abs=1e-12)
    # float64 accumulation: a large offset does not ruin a float32 input
    x = np.random.default_rng(3).standard_normal(100_000).astype(np.float32)
    assert pearson_r(x + 1e4, x) == pytest.approx(1.0, abs=1e-6)


def test_pearson_r_refuses_constant_nan_and_shape_mismatch() -> None:
    a = np.arange(24.0).reshape(2, 3, 4)
    with pytest.raises(ValueError, match="constant"):
        pearson_r(a, np.full_like(a, 3.0))
    with pytest.raises(ValueError, match="constant"):
        pearson_r(np.zeros_like(a), a)
    with pytest.raises(ValueError, match="constant"):
        pearson_r(da.from_array(a, chunks=1), da.ones(a.shape, chunks=2))
    b = a.copy()
    b[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        pearson_r(a, b)
    with pytest.raises(ValueError, match="NaN"):
        pearson_r(da.from_array(b, chunks=2), a)
    with pytest.raises(ValueError, match="shape"):
        pearson_r(a, a[:1])
    with pytest.raises(ValueError, match="shape"):
        normalized_error(a, a[..., :2])
    with pytest.raises(ValueError, match="constant"):
        normalized_error(np.ones_like(a), a)
    with pytest.raises(ValueError, match="NaN"):
        normalized_error(a, b)


# ---------------------------------------------------------------- SSIM, PSNR, NRMSE, FSC


def _blurred_pair(shape, voxel, sigma_um: float, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two noisy views ``s + n1``, ``s + n2`` of a white field ``s`` blurred by a Gaussian of ``sigma_um`` (applied
    in Fourier space with its exact transfer ``H(k) = exp(-2 pi^2 sigma^2 k^2)``, k in cycles/µm)."""
    rng = np.random.default_rng(seed)
    freqs = np.meshgrid(*[np.fft.fftfreq(n, d=d) for n, d in zip(shape, voxel)], indexing="ij", sparse=True)
    transfer = np.exp(-2 * np.pi**2 * sigma_um**2 * sum(f * f for f in freqs))
    signal = np.fft.ifftn(np.fft.fftn(rng.standard_normal(shape)) * transfer).real
    return signal + noise * rng.standard_normal(shape), signal + noise * rng.standard_normal(shape)


def _analytic_resolution(sigma_um: float, noise: float) -> float:
    """FSC(k) = H^2 / (H^2 + noise^2) for the pair above; it is 1/7 where H^2 = noise^2 / 6."""
    return 2 * np.pi * sigma_um / np.sqrt(np.log(6 / noise**2))


@pytest.mark.parametrize(
    "shape, voxel, tolerance",
    [((32, 96, 96), (0.6, 0.2, 0.2), 0.05), ((48, 48, 48), (0.4, 0.4, 0.4), 0.05), ((256, 192), (0.15, 0.2), 0.1)],
    ids=["3d-anisotropic", "3d-isotropic", "2d-frc"],
)
def test_fsc_resolution_of_a_blurred_noisy_pair_is_the_analytic_cutoff(shape, voxel, tolerance) -> None:
    a, b = _blurred_pair(shape, voxel, sigma_um=0.8, noise=0.1)
    fsc = fourier_shell_correlation(a, b, voxel)
    expected = _analytic_resolution(0.8, 0.1)  # 1.99 µm, whatever the voxel grid
    assert fsc.resolution_um == pytest.approx(expected, rel=tolerance)
    assert fsc.correlation[0] > 0.95 and fsc.correlation[-1] < 0.1  # H^2 / (H^2 + 0.01): 0.99 down to ~0
    # shells in physical units up to the coarsest axis's Nyquist frequency, one coarsest spacing wide
    assert fsc.frequencies[-1] <= 1 / (2 * max(voxel)) + 1e-12
    assert np.diff(fsc.frequencies) == pytest.approx(1 / min(n * d for n, d in zip(shape, voxel)))


def test_fsc_identical_is_the_sampling_limit_blank_is_unresolved_and_bad_input_refused() -> None:
    a, _ = _blurred_pair((16, 32, 32), (0.5, 0.25, 0.25), sigma_um=0.3, noise=0.1)
    same = fourier_shell_correlation(a, a, (0.5, 0.25, 0.25))
    assert np.allclose(same.correlation, 1.0) and same.resolution_um == same.sampling_limit_um == 1.0
    blank = fourier_shell_correlation(a, np.zeros_like(a), (0.5, 0.25, 0.25))
    assert np.all(blank.correlation == 0) and blank.resolution_um == np.inf
    with pytest.raises(ValueError, match=r"voxel_size \(0.5, 0.25\) must be 3 positive"):
        fourier_shell_correlation(a, a, (0.5, 0.25))
    with pytest.raises(ValueError, match="differ in shape"):
        fourier_shell_correlation(a, a[:8], (0.5, 0.25, 0.25))


def test_ssim_psnr_nrmse_identical_and_blank() -> None:
    target, _ = _pair()
    t = zscore(target)
    assert structural_similarity(target, t) == pytest.approx(1.0, abs=1e-12)
    assert peak_signal_noise_ratio(target, t) == np.inf  # MSE 0: documented as inf
    assert normalized_root_mse(target, t) == 0.0
    blank = np.zeros(target.shape)
    assert normalized_root_mse(target, blank) == pytest.approx(1.0, abs=1e-12)  # the paper's blank = 1, as sqrt
    assert structural_similarity(target, blank) < 0.1


def test_psnr_of_a_constant_offset_and_nrmse_is_the_root_of_the_normalised_error() -> None:
    target, pred = _pair(seed=4)
    t = zscore(target)
    data_range = t.max() - t.min()  # the z-scored target's range, for both images
    assert peak_signal_noise_ratio(target, t + 0.25) == pytest.approx(20 * np.log10(data_range / 0.25), rel=1e-12)
    # scikit-image's NRMSE (euclidean) and the package's normalised error agree: nrmse^2 == error
    assert normalized_root_mse(target, pred) ** 2 == pytest.approx(normalized_error(target, pred), rel=1e-10)


def test_ssim_of_a_single_window_is_the_closed_form() -> None:
    """A 7x7x7 image is one SSIM window: SSIM = (2 mx my + C1)(2 sxy + C2) / ((mx^2 + my^2 + C1)(sx^2 + sy^2 + C2)),
    C1 = (0.01 L)^2, C2 = (0.03 L)^2, L the z-scored target's range, sample (ddof=1) covariances."""
    rng = np.random.default_rng(5)
    target = rng.normal(size=(7, 7, 7))
    pred = 0.6 * zscore(target) + 0.3 + 0.4 * rng.normal(size=target.shape)
    x, y = zscore(target), pred
    big_l = x.max() - x.min()
    c1, c2 = (0.01 * big_l) ** 2, (0.03 * big_l) ** 2
    cov = np.cov(x.ravel(), y.ravel(), ddof=1)
    expected = ((2 * x.mean() * y.mean() + c1) * (2 * cov[0, 1] + c2)) / ((x.mean() ** 2 + y.mean() ** 2 + c1) * (cov[0, 0] + cov[1, 1] + c2))
    assert structural_similarity(target, pred) == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="at least 3 samples along every axis"):
        structural_similarity(target[:2], pred[:2])


def test_image_metrics_of_a_blank_prediction() -> None:
    target, _ = _pair()
    m = image_metrics(target, np.zeros(target.shape), (0.4, 0.3, 0.3))
    assert tuple(m) == METRICS
    assert m["normalized_error"] == 1.0 and m["nrmse"] == pytest.approx(1.0, abs=1e-12)
    assert np.isnan(m["pearson_r"]) and m["fsc_resolution_um"] == np.inf
