"""The sliding window, where the model runs: a global patch grid per frame, smooth blending, and the
runner that evaluates patches on a model (see :mod:`chunked_fnet.predict` for the distributed job
that cuts frames into blocks and chunks)."""

from chunked_fnet.sliding_window.box import Box, partition
from chunked_fnet.sliding_window.grid import PatchGrid, patch_starts
from chunked_fnet.sliding_window.padding import Reader, padded_reader
from chunked_fnet.sliding_window.runner import PatchRunner, tta_flip_sets
from chunked_fnet.sliding_window.volume import predict_volume
from chunked_fnet.sliding_window.window import SlidingWindow, WeightedSum, blend_weights, fit_patch

__all__ = [
    "Box",
    "PatchGrid",
    "PatchRunner",
    "Reader",
    "SlidingWindow",
    "WeightedSum",
    "blend_weights",
    "fit_patch",
    "padded_reader",
    "partition",
    "patch_starts",
    "predict_volume",
    "tta_flip_sets",
]
