"""Boxes of voxels: the one value type for regions, blocks, chunks and pieces of a frame.

A :class:`Box` is ``[start, stop)`` per axis in the frame's global voxel coordinates (as daisy's
``Roi``): it knows its shape, intersects other boxes and says where it lies inside another, so no
caller does slice arithmetic by hand.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from chunked_fnet.errors import InputError

__all__ = ["Box", "partition"]


@dataclass(frozen=True, order=True)
class Box:
    """A non-empty half-open box ``[start, stop)`` of voxels, one pair of bounds per axis."""

    start: tuple[int, ...]
    stop: tuple[int, ...]

    def __post_init__(self) -> None:
        start = tuple(int(v) for v in self.start)
        stop = tuple(int(v) for v in self.stop)
        if len(start) != len(stop) or not all(a < b for a, b in zip(start, stop)):
            raise InputError(f"a box needs start < stop on every axis, got start {start}, stop {stop}")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "stop", stop)

    @classmethod
    def of_shape(cls, shape: Sequence[int]) -> Box:
        """The whole array of ``shape``."""
        return cls((0,) * len(shape), tuple(shape))

    @classmethod
    def from_slices(cls, slices: Sequence[slice], shape: Sequence[int]) -> Box:
        """Unit-step slices (``None`` and negative bounds resolved against ``shape``) as a box that must
        lie inside ``shape``; an empty or out-of-range selection is refused, naming the axis."""
        slices = tuple(slices)
        if len(slices) != len(shape) or not all(isinstance(s, slice) for s in slices):
            raise InputError(f"a region is {len(shape)} slices, got {slices!r}")
        start, stop = [], []
        for axis, (s, n) in enumerate(zip(slices, shape)):
            if s.step not in (None, 1):
                raise InputError(f"region slices must have step 1, got {s!r} on axis {axis}")
            lo = 0 if s.start is None else int(s.start)
            hi = n if s.stop is None else int(s.stop)
            lo, hi = lo + n if lo < 0 else lo, hi + n if hi < 0 else hi
            if not 0 <= lo < hi <= n:
                raise InputError(f"region {s!r} on axis {axis} is empty or outside the volume (size {n})")
            start.append(lo)
            stop.append(hi)
        return cls(tuple(start), tuple(stop))

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in zip(self.start, self.stop))

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    def intersect(self, other: Box) -> Box | None:
        """The common voxels, or None when the boxes do not meet."""
        lo = tuple(max(a, b) for a, b in zip(self.start, other.start))
        hi = tuple(min(a, b) for a, b in zip(self.stop, other.stop))
        return Box(lo, hi) if all(a < b for a, b in zip(lo, hi)) else None

    def contains(self, other: Box) -> bool:
        return all(a <= c and d <= b for a, b, c, d in zip(self.start, self.stop, other.start, other.stop))

    def within(self, outer: Box) -> tuple[slice, ...]:
        """Where this box lies in an array holding ``outer`` (local slices); it must lie inside it."""
        if not outer.contains(self):
            raise ValueError(f"{self} is not inside {outer}")
        return tuple(slice(a - o, b - o) for a, b, o in zip(self.start, self.stop, outer.start))

    def __str__(self) -> str:
        return " ".join(f"{a}:{b}" for a, b in zip(self.start, self.stop))


def partition(shape: Sequence[int], chunks: Sequence[int] | Sequence[Sequence[int]]) -> list[Box]:
    """The boxes of a chunked array, in C order: ``chunks`` is one chunk shape (regular, the last chunk
    of an axis ragged) or dask-style sizes per axis."""
    shape = tuple(int(n) for n in shape)
    if len(chunks) != len(shape):
        raise InputError(f"shape {shape} and chunks {chunks!r} differ in their number of axes")
    bounds = []
    for n, c in zip(shape, chunks):
        if isinstance(c, (int, np.integer)):
            if c < 1:
                raise InputError(f"chunk sizes must be >= 1, got {chunks!r}")
            sizes = [min(int(c), n - i) for i in range(0, n, int(c))]
        else:
            sizes = [int(v) for v in c]
            if sum(sizes) != n or any(v < 1 for v in sizes):
                raise InputError(f"chunk sizes {c!r} do not partition an axis of size {n}")
        edges = np.concatenate([[0], np.cumsum(sizes)])
        bounds.append(list(zip(edges[:-1].tolist(), edges[1:].tolist())))
    return [Box(tuple(b[0] for b in combo), tuple(b[1] for b in combo)) for combo in itertools.product(*bounds)]
