"""Whole-volume sliding-window inference in one call, in the spirit of MONAI's ``sliding_window_inference``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from chunked_fnet.errors import InputError
from chunked_fnet.sliding_window.padding import padded_reader
from chunked_fnet.sliding_window.runner import FlipSpec, ModelLike, PatchRunner
from chunked_fnet.sliding_window.window import BlendKind, PadMode, SlidingWindow

__all__ = ["predict_volume"]


def predict_volume(
    model: ModelLike | Sequence[ModelLike],
    volume: np.ndarray,
    *,
    patch: Sequence[int] = (32, 64, 64),
    overlap: float | Sequence[float] = 0.25,
    blend: BlendKind = "gaussian",
    batch_size: int = 4,
    device: str | torch.device = "cpu",
    multiple: int = 16,
    pad_mode: PadMode = "reflect",
    tta_flips: FlipSpec = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    align: bool = False,
) -> np.ndarray:
    """Predict a whole ``(C, Z, Y, X)`` volume with the global sliding window; ``(C_out, Z, Y, X)`` float32.

    Window options are :class:`~chunked_fnet.sliding_window.window.SlidingWindow`'s (``patch`` must be
    divisible by ``multiple``; axes longer than the volume are shrunk), model options
    :class:`~chunked_fnet.sliding_window.runner.PatchRunner`'s. The volume and the sums are held on
    ``device``: for volumes larger than memory use :func:`chunked_fnet.predict.predict`, which gives
    the same voxels chunk by chunk.
    """
    if np.ndim(volume) != 4:
        raise InputError(f"volume must be (C, Z, Y, X), got shape {np.shape(volume)}")
    window = SlidingWindow(tuple(volume.shape[1:]), tuple(patch), overlap, multiple, blend, pad_mode=pad_mode, align=align)
    runner = PatchRunner(model, device, tta_flips, amp_dtype, channels_last, batch_size)
    frame = window.grid.frame
    piece = runner.weighted_sums(window, padded_reader(volume, pad_mode), list(window.grid.corners()), frame)
    return window.blend_pieces(frame, [piece])
