"""Preprocessing shared by training and prediction, so a model sees at inference what it saw in training."""

from chunked_fnet.preprocess.normalize import FrameStats, frame_stats, stats_from_moments
from chunked_fnet.preprocess.resample import ModelGrid, resample_region

__all__ = ["FrameStats", "frame_stats", "ModelGrid", "resample_region", "stats_from_moments"]
