"""Chunked, distributed, seam-free ensemble prediction on OME-Zarr."""

from chunked_fnet.predict.job import PredictJob
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.run import ChunksFailedError, RunSummary, create_output, execute, plan, predict

__all__ = ["ChunksFailedError", "PredictJob", "PredictOptions", "RunSummary", "create_output", "execute", "plan", "predict"]
