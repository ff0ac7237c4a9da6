"""Virtual padding: read any window of a frame, running past its ends, as if the frame were padded.

Only the in-range bounding box of a request is read, so a task never pads (or holds) more than its
own patches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from chunked_fnet.errors import InputError
from chunked_fnet.sliding_window.window import PadMode

__all__ = ["Reader", "padded_reader", "read_extent"]

#: Three unit-step slices in padded coordinates -> ``(C, len_z, len_y, len_x)``.
Reader = Callable[[Sequence[slice]], np.ndarray]


def _pad_index(idx: np.ndarray, n: int, mode: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Map (possibly out-of-range) indices of a padded axis onto ``[0, n)``; second value is the
    validity mask for ``constant`` mode (None otherwise).

    ``reflect`` mirrors about the edge voxels (``... 2 1 | 0 1 2 ... n-1 | n-2 ...``) and repeats with
    period ``2(n-1)``, so any pad width works (as ``numpy.pad``); for ``n == 1`` it falls back to
    ``edge``. ``symmetric`` mirrors including the edge voxel (period ``2n``).
    """
    if mode == "reflect":
        if n == 1:
            return np.zeros_like(idx), None
        period = 2 * (n - 1)
        m = np.mod(idx, period)
        return np.where(m < n, m, period - m), None
    if mode == "symmetric":
        m = np.mod(idx, 2 * n)
        return np.where(m < n, m, 2 * n - 1 - m), None
    if mode == "edge":
        return np.clip(idx, 0, n - 1), None
    if mode == "constant":
        valid = (idx >= 0) & (idx < n)
        return np.clip(idx, 0, n - 1), valid
    raise InputError(f"unknown pad_mode {mode!r}; expected reflect, symmetric, edge or constant")


def _axis_reads(s: slice, n: int, mode: str) -> tuple[np.ndarray, np.ndarray | None, int, int]:
    """One axis of a padded read: the in-range index of each requested voxel, the validity mask
    (``constant``), and the in-range ``[lo, hi)`` that holds them all."""
    if s.start is None or s.stop is None or s.step not in (None, 1) or s.stop <= s.start:
        raise InputError(f"padded reads need explicit, non-empty unit-step slices, got {s!r}")
    idx, valid = _pad_index(np.arange(s.start, s.stop, dtype=np.int64), n, mode)
    return idx, valid, int(idx.min()), int(idx.max()) + 1


def read_extent(region: Sequence[slice], shape: Sequence[int], pad_mode: PadMode = "reflect") -> tuple[slice, ...]:
    """The in-range voxels (z, y, x slices of a frame of ``shape``) that a padded read of ``region`` reads:
    where a patch's input comes from, its mirrored padding included."""
    return tuple(slice(*_axis_reads(s, int(n), pad_mode)[2:]) for s, n in zip(region, shape, strict=True))


def padded_reader(volume: Any, pad_mode: PadMode = "reflect") -> Reader:
    """A :data:`Reader` over an array-like ``(C, Z, Y, X)`` volume (numpy,
    zarr, dask, anything with ``.shape`` and basic slicing).

    The returned function takes three unit-step slices in *padded* coordinates (they may run past
    either end of an axis) and returns ``(C, len_z, len_y, len_x)``, out-of-range voxels filled per
    ``pad_mode`` (``constant`` pads with 0). It reads only the in-range bounding box of what it is
    asked for, and returns a view when no padding is involved. Identical to ``numpy.pad`` of the whole
    volume with the same mode, cut at the same place.
    """
    shape = tuple(int(n) for n in volume.shape)
    if len(shape) != 4:
        raise InputError(f"volume must be (C, Z, Y, X), got shape {shape}")
    _pad_index(np.zeros(1, dtype=np.int64), 1, pad_mode)  # validate the mode now

    def read(region: Sequence[slice]) -> np.ndarray:
        region = tuple(region)
        if len(region) != 3:
            raise InputError(f"read_region takes three slices (z, y, x), got {region!r}")
        maps, masks, box = [], [], []
        for s, n in zip(region, shape[1:]):
            idx, valid, lo, hi = _axis_reads(s, n, pad_mode)
            maps.append(None if (idx.size == hi - lo and idx[0] == lo and np.all(np.diff(idx) == 1)) else idx - lo)
            masks.append(valid)
            box.append(slice(lo, hi))
        block = np.asarray(volume[(slice(None), *box)])
        for axis, m in enumerate(maps):
            if m is not None:
                block = np.take(block, m, axis=axis + 1)
        if any(v is not None and not v.all() for v in masks):
            block = block.copy()
            for axis, v in enumerate(masks):
                if v is not None and not v.all():
                    index = [slice(None)] * 4
                    index[axis + 1] = ~v
                    block[tuple(index)] = 0
        return block

    return read
