"""Chunked, distributed, seam-free ensemble prediction on OME-Zarr."""

from chunked_fnet.predict.submit import ChunksFailedError, RunSummary, execute, execute_many
from chunked_fnet.predict.job import PredictJob
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.plan import plan
from chunked_fnet.predict.plate import PlateSummary, predict_plate
from chunked_fnet.predict.policy import Hardware, ModelConstraints, RunPolicy, resolve_policy
from chunked_fnet.predict.predictor import Predictor
from chunked_fnet.predict.prepare import create_output
from chunked_fnet.predict.run import predict

__all__ = [
    "ChunksFailedError", "Hardware", "ModelConstraints", "PlateSummary", "PredictJob", "PredictOptions", "Predictor", "RunPolicy", "RunSummary",
    "create_output", "execute", "execute_many", "plan", "predict", "predict_plate", "resolve_policy",
]
