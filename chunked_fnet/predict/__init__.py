"""Chunked, distributed, seam-free ensemble prediction on OME-Zarr."""

from chunked_fnet.predict.job import PredictJob
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.run import ChunksFailedError, RunSummary, create_output, execute, execute_many, plan, predict
from chunked_fnet.predict.plate import PlateSummary, predict_plate

__all__ = ["ChunksFailedError", "PredictJob", "PredictOptions", "RunSummary", "PlateSummary", "create_output", "execute", "execute_many", "plan", "predict", "predict_plate"]
