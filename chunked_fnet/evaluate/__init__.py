"""Metrics for comparing predicted and measured fluorescence (numpy or dask arrays)."""

from chunked_fnet.evaluate.metrics import normalized_error, pearson_r, zscore

__all__ = ["normalized_error", "pearson_r", "zscore"]
