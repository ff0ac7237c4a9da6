"""Chunked, distributed, seam-free ensemble prediction on OME-Zarr."""

from chunked_fnet.predict.job import PredictJob, PredictOptions
from chunked_fnet.predict.run import RunSummary, plan, predict

__all__ = ["PredictJob", "PredictOptions", "RunSummary", "plan", "predict"]
