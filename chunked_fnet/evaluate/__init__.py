"""Metrics for comparing predicted and measured fluorescence (numpy or dask arrays)."""

from chunked_fnet.evaluate.fsc import FourierShellCorrelation, fourier_shell_correlation
from chunked_fnet.evaluate.metrics import (
    METRICS,
    image_metrics,
    normalized_error,
    normalized_root_mse,
    peak_signal_noise_ratio,
    pearson_r,
    structural_similarity,
    zscore,
)

__all__ = [
    "METRICS", "FourierShellCorrelation", "fourier_shell_correlation", "image_metrics", "normalized_error", "normalized_root_mse",
    "peak_signal_noise_ratio", "pearson_r", "structural_similarity", "zscore",
]
