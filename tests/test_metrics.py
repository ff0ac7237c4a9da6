"""Metrics: z-scoring, normalised error (blank = 1, perfect = 0), Pearson r; numpy and dask agree."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from chunked_fnet.evaluate import normalized_error, pearson_r, zscore


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
