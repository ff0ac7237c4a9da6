"""Whole-volume sliding-window inference in one call, in the spirit of MONAI's ``sliding_window_inference``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from chunked_fnet.errors import InputError
from chunked_fnet.sliding_window.padding import padded_reader
from chunked_fnet.sliding_window.runner import FlipSpec, ModelLike, PatchRunner
from chunked_fnet.sliding_window.window import BlendKind, PadMode, SlidingWindow

if TYPE_CHECKING:
    from chunked_fnet.predict.policy import RunPolicy

__all__ = ["predict_volume"]


def predict_volume(
    model: ModelLike | Sequence[ModelLike],
    volume: np.ndarray,
    *,
    patch: Sequence[int] | str = "auto",
    overlap: float | Sequence[float] | str = "auto",
    blend: BlendKind | str = "auto",
    batch_size: int | str = "auto",
    device: str | torch.device = "cpu",
    multiple: int = 16,
    pad_mode: PadMode = "reflect",
    tta_flips: FlipSpec = False,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
    align: bool | None = None,
    policy: RunPolicy | None = None,
) -> np.ndarray:
    """Predict a whole ``(C, Z, Y, X)`` volume with the global sliding window; ``(C_out, Z, Y, X)`` float32.

    Where any of ``patch``, ``overlap``, ``blend`` or ``batch_size`` is ``auto`` (the default), the
    window is the run policy's (:func:`chunked_fnet.predict.resolve_policy`, on this process's
    memory), the one a chunked :func:`chunked_fnet.predict.predict` of the same models and frame uses;
    given all four, it is exactly that :class:`~chunked_fnet.sliding_window.window.SlidingWindow`
    (``patch`` divisible by ``multiple``; axes longer than the volume are shrunk). Model options are
    :class:`~chunked_fnet.sliding_window.runner.PatchRunner`'s (float32 unless ``amp_dtype``). The
    volume and the sums are held on ``device``: for volumes larger than memory use
    :func:`chunked_fnet.predict.predict`, which gives the same voxels chunk by chunk. A resolved
    ``policy`` gives the window, the batch and the precision at once (``evaluate``).
    """
    if np.ndim(volume) != 4:
        raise InputError(f"volume must be (C, Z, Y, X), got shape {np.shape(volume)}")
    frame_shape = tuple(volume.shape[1:])
    if policy is not None:
        from chunked_fnet.device import autocast_dtype

        window, batch_size, amp_dtype = policy.window, policy.batch_size, autocast_dtype(policy.precision, device)
    elif "auto" in (patch, overlap, blend, batch_size):
        from chunked_fnet.predict.options import PredictOptions  # the policy sits above the sliding window
        from chunked_fnet.predict.policy import Hardware, ModelConstraints, resolve_policy

        models = list(model) if isinstance(model, (list, tuple)) else [model]
        width = max(int(getattr(getattr(m, "config", m), "width", 32)) for m in models)
        options = PredictOptions(patch_shape=patch, overlap=overlap, blend=blend, batch_size=batch_size, pad_mode=pad_mode)  # type: ignore[arg-type]
        policy = resolve_policy(options, frame_shape, ModelConstraints(multiple, (multiple,) * 3, width=width), Hardware.here(str(device)))
        window, batch_size = policy.window, policy.batch_size
    else:
        window = SlidingWindow(frame_shape, tuple(patch), overlap, multiple, blend, pad_mode=pad_mode, align=bool(align))  # type: ignore[arg-type]
    runner = PatchRunner(model, device, tta_flips, amp_dtype, channels_last, int(batch_size))
    frame = window.grid.frame
    piece = runner.weighted_sums(window, padded_reader(volume, window.pad_mode), list(window.grid.corners()), frame)
    return window.blend_pieces(frame, [piece])
