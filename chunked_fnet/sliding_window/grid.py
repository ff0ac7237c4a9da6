"""The global patch grid of a frame: where every model patch lies, whatever the frame's chunking.

Along each axis patches start at ``0, step, 2*step, ...`` and a last one is shifted back to end
exactly at the (padded) edge (:func:`patch_starts`). The grid depends on the frame's shape, the
patch and the overlap only, so every task that builds it agrees on every patch. An axis shorter
than the patch is padded at its end up to the patch: frame and padded coordinates coincide on the
real voxels.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from chunked_fnet.errors import InputError
from chunked_fnet.sliding_window.box import Box

__all__ = ["Corner", "PatchGrid", "overlap_voxels", "patch_starts", "triple"]

Corner = tuple[int, int, int]


def triple(value: int | float | Sequence[int | float], name: str) -> tuple:
    """One number for every axis, or one per axis (z, y, x)."""
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (value, value, value)
    values = tuple(value)
    if len(values) != 3:
        raise InputError(f"{name} must be one number or three (z, y, x), got {value!r}")
    return values


def patch_starts(size: int, patch: int, step: int, align: bool = False) -> np.ndarray:
    """Start indices of the global sliding-window grid along one axis: ``0, step, ...`` while a
    window fits, plus a last window ending exactly at ``size`` (MONAI's grid); or, with ``align``,
    ``0, step, 2*step, ...`` until the frame is covered, the last window running into the padding
    past the end, so every window starts on a multiple of ``step`` (a U-Net gives the same output
    for a voxel in two windows only when they sit on the same phase of its down-sampling grid). A
    single window at 0 when ``size <= patch``. Sorted, unique, ``int64``."""
    size, patch, step = int(size), int(patch), int(step)
    if size < 1 or patch < 1 or step < 1:
        raise InputError(f"size, patch and step must be >= 1, got size={size}, patch={patch}, step={step}")
    if size <= patch:
        return np.zeros(1, dtype=np.int64)
    if align:
        return np.arange(0, -(-(size - patch) // step) * step + 1, step, dtype=np.int64)
    last = size - patch
    starts = np.arange(0, last + 1, step, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, np.int64(last))
    return starts


def overlap_voxels(patch: int, overlap: float) -> int:
    """An overlap given as a fraction of the patch (``< 1``) or in voxels (``>= 1``), in voxels."""
    if overlap >= 1:
        if overlap != int(overlap) or overlap >= patch:
            raise InputError(f"an overlap in voxels must be a whole number below the patch ({patch}), got {overlap:g}")
        return int(overlap)
    return patch - max(1, int(round(patch * (1.0 - overlap))))


@dataclass(frozen=True)
class PatchGrid:
    """The patches of a ``(z, y, x)`` frame: ``overlap`` is what a patch shares with its neighbour, one
    or per axis, as a fraction of the patch (``< 1``; the step is ``max(1, round(patch * (1 - overlap)))``)
    or in voxels (``>= 1``; the step is ``patch - overlap``); ``align``: see :func:`patch_starts`."""

    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    overlap: float | tuple[float, float, float]
    align: bool = False
    step: tuple[int, int, int] = field(init=False)
    starts: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in triple(self.shape, "shape"))
        patch = tuple(int(p) for p in triple(self.patch, "patch"))
        overlap = tuple(float(o) for o in triple(self.overlap, "overlap"))
        if any(n < 1 for n in shape):
            raise InputError(f"volume shape must be positive, got {shape}")
        if any(p < 1 for p in patch):
            raise InputError(f"patch shape must be positive, got {patch}")
        if any(o < 0 for o in overlap):
            raise InputError(f"overlap must be >= 0 (a fraction below 1, or voxels), got {overlap}")
        step = tuple(p - overlap_voxels(p, o) for p, o in zip(patch, overlap))
        starts = tuple(patch_starts(n, p, s, self.align) for n, p, s in zip(shape, patch, step))
        for a in starts:
            a.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "patch", patch)
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "starts", starts)

    @property
    def frame(self) -> Box:
        return Box.of_shape(self.shape)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """The shape the frame is (virtually) padded to, at the end of each axis: where the last patch ends."""
        return tuple(int(s[-1]) + p for s, p in zip(self.starts, self.patch))  # type: ignore[return-value]

    def edges(self, corner: Sequence[int]) -> tuple[tuple[bool, bool], ...]:
        """Per axis, whether the patch at ``corner`` is the first and the last along it (no neighbour there)."""
        return tuple((c == s[0], c == s[-1]) for c, s in zip(corner, self.starts))

    @property
    def n_patches(self) -> int:
        return int(math.prod(len(s) for s in self.starts))

    @property
    def recompute_factor(self) -> float:
        """Voxels the model evaluates per voxel of the frame (e.g. about 1.7-2.4 for 25 % overlap)."""
        return self.n_patches * math.prod(self.patch) / math.prod(self.shape)

    def corners(self) -> Iterator[Corner]:
        """Every patch start corner, in the canonical (lexicographic) order."""
        for c in itertools.product(*self.starts):
            yield tuple(int(v) for v in c)  # type: ignore[misc]

    def patch_box(self, corner: Sequence[int]) -> Box:
        """The (padded-frame) voxels of the patch starting at ``corner``."""
        return Box(tuple(corner), tuple(c + p for c, p in zip(corner, self.patch)))

    def bounding_box(self, corners: Sequence[Sequence[int]]) -> Box:
        """The smallest (padded-frame) box holding every patch of ``corners``: what to read for them."""
        return Box(tuple(min(c[a] for c in corners) for a in range(3)), tuple(max(c[a] for c in corners) + self.patch[a] for a in range(3)))

    def _box(self, region: Box | Sequence[slice]) -> Box:
        box = region if isinstance(region, Box) else Box.from_slices(region, self.shape)
        if not self.frame.contains(box):
            raise InputError(f"region {box} is outside the frame {self.frame}")
        return box

    def patches_touching(self, region: Box | Sequence[slice]) -> list[Corner]:
        """Start corners of every patch that overlaps ``region``, in canonical order."""
        box = self._box(region)
        per_axis = [s[(s < hi) & (s + p > lo)] for s, p, lo, hi in zip(self.starts, self.patch, box.start, box.stop)]
        return [tuple(int(v) for v in c) for c in itertools.product(*per_axis)]  # type: ignore[misc]

    def owner_voxels(self, axis: int) -> np.ndarray:
        """Along ``axis``, the voxel that owns each patch start: its centre, or the last real voxel
        for a centre in the padding (the one rule by which blocks share out the patches)."""
        return np.minimum(self.starts[axis] + self.patch[axis] // 2, self.shape[axis] - 1)

    def _owned_axis(self, axis: int, lo: int, hi: int) -> np.ndarray:
        return self.starts[axis][(lo <= self.owner_voxels(axis)) & (self.owner_voxels(axis) < hi)]

    def patches_owned(self, region: Box | Sequence[slice]) -> list[Corner]:
        """Start corners of the patches whose centre voxel lies in ``region``, in canonical order.

        Over any partition of the frame every patch has exactly one owner (a centre in the padding
        counts at the last real voxel), so regions that each evaluate only their own patches evaluate
        the grid exactly once: no halo recompute. May be empty (a region thinner than the step).
        """
        box = self._box(region)
        per_axis = [self._owned_axis(a, box.start[a], box.stop[a]) for a in range(3)]
        return [tuple(int(v) for v in c) for c in itertools.product(*per_axis)]  # type: ignore[misc]

    def owned_extent(self, region: Box | Sequence[slice]) -> Box | None:
        """The real voxels covered by the patches ``region`` owns (None if it owns none): where their
        weighted outputs land, and so what its neighbours must receive of them."""
        box = self._box(region)
        lo, hi = [], []
        for a in range(3):
            t = self._owned_axis(a, box.start[a], box.stop[a])
            if t.size == 0:
                return None
            lo.append(int(t[0]))
            hi.append(min(int(t[-1]) + self.patch[a], self.shape[a]))
        return Box(tuple(lo), tuple(hi))
