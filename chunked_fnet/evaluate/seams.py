"""A seam metric: does a tiled prediction show structure along its tile/chunk boundaries?

Two numbers per output, for a grid of boundary planes (every ``chunks`` voxels along z, y, x):

- ``step_ratio``: the mean absolute voxel-to-voxel difference *across* boundary planes divided by
  the mean across the other planes at the same position modulo ``period`` (worst axis). A seam is a
  step at the boundary: ratio > 1; a seamless output is statistically the same at boundaries as
  elsewhere: ratio ~ 1. ``period`` should be the network's down-sampling factor (2**depth): a U-Net's
  strided layers leave a faint pattern of that period in any output, seams or not, so boundaries
  (which fall on multiples of it) are compared with planes of the same phase.
- ``relative_step_ratio`` (with a reference): ``step_ratio`` divided by the reference's own ratio at
  the same planes, which removes what the image itself does there (the main figure to report).
- ``error_ratio`` (with a reference, e.g. one whole-volume forward pass): mean |error| on voxels
  touching a boundary divided by mean |error| elsewhere; plus ``relative_error`` =
  ||pred - ref|| / ||ref - mean(ref)||.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _boundaries(n: int, chunk: int) -> np.ndarray:
    return np.arange(chunk, n, chunk)


def _step_ratios(pred: np.ndarray, chunks: Sequence[int], period: int) -> list[float]:
    ratios = []
    for axis, (n, c) in enumerate(zip(pred.shape[-3:], chunks, strict=True)):
        b = _boundaries(n, c)
        if not len(b):
            continue
        steps = np.moveaxis(np.abs(np.diff(pred, axis=pred.ndim - 3 + axis)), pred.ndim - 3 + axis, 0)
        at = np.zeros(n - 1, dtype=bool)
        at[b - 1] = True  # the difference between voxel b-1 and b crosses the boundary
        phases = {int(i) % period for i in b}
        same_phase = np.array([(i + 1) % period in phases for i in range(n - 1)]) & ~at
        if not same_phase.any():
            same_phase = ~at
        ratios.append(float(steps[at].mean() / steps[same_phase].mean()))
    return ratios


def seam_metrics(
    prediction: np.ndarray, chunks: Sequence[int], reference: np.ndarray | None = None, period: int = 1
) -> dict[str, float]:
    """Seam metrics of a (..., Z, Y, X) prediction for boundaries every ``chunks`` voxels."""
    pred = np.asarray(prediction, dtype=np.float64)
    spatial = pred.shape[-3:]
    ratios = _step_ratios(pred, chunks, period)
    near = np.zeros(spatial, dtype=bool)
    for axis, (n, c) in enumerate(zip(spatial, chunks, strict=True)):
        b = _boundaries(n, c)
        if len(b):
            index = [slice(None)] * 3
            index[axis] = np.concatenate([b - 1, b])
            near[tuple(index)] = True
    out = {"step_ratio": max(ratios) if ratios else 1.0}
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        # the same planes in a reference without boundaries: what the signal itself does there
        ref_ratios = _step_ratios(ref, chunks, period)
        out["relative_step_ratio"] = max(r / q for r, q in zip(ratios, ref_ratios, strict=True)) if ratios else 1.0
        err = np.abs(pred - ref)
        flat_near = np.broadcast_to(near, err.shape)
        out["error_ratio"] = float(err[flat_near].mean() / err[~flat_near].mean())
        out["relative_error"] = float(np.linalg.norm(pred - ref) / np.linalg.norm(ref - ref.mean()))
    return out
