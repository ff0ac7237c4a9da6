"""The global sliding-window grid and seam-free blending, shared by in-memory and chunked inference.

Everything here is pure numpy (no torch), so a dask task can use it without importing a model.

The one idea the whole package rests on: the grid of model patches is a property of the *volume*,
never of how the volume is chunked. Along each axis the patches start at ``0, step, 2*step, ...``
and the last one is shifted back to end exactly at the (padded) edge (:func:`patch_starts`). A
voxel's prediction is the weighted mean of the outputs of every patch that covers it, weights
taken from one fixed window (:func:`blend_weights`)::

    out[v] = sum_p w[v - s_p] * f(x[patch p])[v - s_p]  /  sum_p w[v - s_p]

Whichever region a caller asks for, :func:`blend_region` evaluates exactly the global patches that
touch that region, in the same (lexicographic) order, so a region computed alone equals the same
region cut out of the whole-volume result. Padding: when an axis is shorter than the patch, the
volume is padded *at the end only* up to the patch size (see :attr:`PatchGrid.padded_shape`);
volume and padded coordinates therefore coincide on the real voxels, and the padded voxels are
only ever read, never returned.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from chunked_fnet.errors import InputError

__all__ = [
    "BlendKind",
    "PatchGrid",
    "Region",
    "blend_region",
    "blend_weights",
    "chunk_regions",
    "finish_region",
    "normalize_region",
    "patch_overlap",
    "patch_starts",
    "unbatched",
    "weight_sum",
]

Region = tuple[slice, slice, slice]
BlendKind = Literal["gaussian", "cosine", "linear", "constant"]
Corner = tuple[int, int, int]

#: Smallest blending weight, relative to the maximum (1). Keeps every voxel's weight sum > 0, also
#: at the volume's border where only a patch's edge covers it.
MIN_WEIGHT = 1e-3


def _triple(value: int | float | Sequence[int | float], name: str) -> tuple:
    if isinstance(value, (int, float, np.integer, np.floating)):
        return (value, value, value)
    values = tuple(value)
    if len(values) != 3:
        raise InputError(f"{name} must be one number or three (z, y, x), got {value!r}")
    return values


def patch_starts(size: int, patch: int, step: int) -> np.ndarray:
    """Start indices of the global sliding-window grid along one axis.

    Starts are ``0, step, 2*step, ...`` while a window fits, plus one last window shifted back so it
    ends exactly at ``size`` (kept only if it is not already there). When ``size <= patch`` there
    is a single window at 0 (the caller pads the axis up to ``patch``). The result is sorted,
    unique, ``int64``, and depends on nothing but its three arguments.
    """
    size, patch, step = int(size), int(patch), int(step)
    if size < 1 or patch < 1 or step < 1:
        raise InputError(f"size, patch and step must be >= 1, got size={size}, patch={patch}, step={step}")
    if size <= patch:
        return np.zeros(1, dtype=np.int64)
    last = size - patch
    starts = np.arange(0, last + 1, step, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, np.int64(last))
    return starts


def normalize_region(region: Sequence[slice], shape: Sequence[int]) -> Region:
    """Resolve ``None``/negative bounds of three unit-step slices against ``shape``; refuse empty or
    out-of-range regions (a region is always within the real volume, never in its padding)."""
    region = tuple(region)
    if len(region) != 3 or not all(isinstance(s, slice) for s in region):
        raise InputError(f"a region is three slices (z, y, x), got {region!r}")
    out = []
    for axis, (s, n) in enumerate(zip(region, shape)):
        if s.step not in (None, 1):
            raise InputError(f"region slices must have step 1, got {s!r} on axis {axis}")
        start = 0 if s.start is None else int(s.start)
        stop = n if s.stop is None else int(s.stop)
        if start < 0:
            start += n
        if stop < 0:
            stop += n
        if not 0 <= start < stop <= n:
            raise InputError(f"region {s!r} on axis {axis} is empty or outside the volume (size {n})")
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


@dataclass(frozen=True)
class PatchGrid:
    """The global patch grid of a ``(z, y, x)`` volume.

    ``overlap`` is the fraction of a patch shared with its neighbour, one float or one per axis, in
    ``[0, 1)``; the step is ``max(1, round(patch * (1 - overlap)))``. Build it from the *whole*
    volume's shape in every task: two tasks that agree on (shape, patch, overlap) agree on every patch.
    """

    shape: tuple[int, int, int]
    patch: tuple[int, int, int]
    overlap: float | tuple[float, float, float] = 0.25
    step: tuple[int, int, int] = field(init=False)
    starts: tuple[np.ndarray, np.ndarray, np.ndarray] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in _triple(self.shape, "shape"))
        patch = tuple(int(p) for p in _triple(self.patch, "patch"))
        overlap = tuple(float(o) for o in _triple(self.overlap, "overlap"))
        if any(n < 1 for n in shape):
            raise InputError(f"volume shape must be positive, got {shape}")
        if any(p < 1 for p in patch):
            raise InputError(f"patch shape must be positive, got {patch}")
        if any(not 0.0 <= o < 1.0 for o in overlap):
            raise InputError(f"overlap must be in [0, 1), got {overlap}")
        step = tuple(max(1, int(round(p * (1.0 - o)))) for p, o in zip(patch, overlap))
        starts = tuple(patch_starts(n, p, s) for n, p, s in zip(shape, patch, step))
        for a in starts:
            a.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "patch", patch)
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "step", step)
        object.__setattr__(self, "starts", starts)

    @property
    def padded_shape(self) -> tuple[int, int, int]:
        """The shape the volume is (virtually) padded to, at the end of each axis: ``max(size, patch)``."""
        return tuple(max(n, p) for n, p in zip(self.shape, self.patch))  # type: ignore[return-value]

    @property
    def n_patches(self) -> int:
        return int(math.prod(len(s) for s in self.starts))

    @property
    def recompute_factor(self) -> float:
        """Voxels the model evaluates for the whole volume, per voxel of the volume (>= 1 unless padded
        voxels dominate; e.g. about 1.7-2.4 for 25 % overlap)."""
        return self.n_patches * math.prod(self.patch) / math.prod(self.shape)

    def corners(self) -> Iterator[Corner]:
        """Every patch start corner, in the canonical (lexicographic) order."""
        for c in itertools.product(*self.starts):
            yield tuple(int(v) for v in c)  # type: ignore[misc]

    def _touching_axis(self, axis: int, sl: slice) -> np.ndarray:
        s = self.starts[axis]
        return s[(s < sl.stop) & (s + self.patch[axis] > sl.start)]

    def patches_touching(self, region: Sequence[slice]) -> list[Corner]:
        """Start corners of every patch that overlaps ``region`` (volume coordinates), in canonical order."""
        region = normalize_region(region, self.shape)
        per_axis = [self._touching_axis(a, region[a]) for a in range(3)]
        return [tuple(int(v) for v in c) for c in itertools.product(*per_axis)]  # type: ignore[misc]

    def halo_for(self, region: Sequence[slice]) -> Region:
        """The smallest box (padded-volume coordinates) holding every patch that touches ``region``:
        what a task must read to compute ``region``. It always contains ``region``."""
        region = normalize_region(region, self.shape)
        out = []
        for a in range(3):
            t = self._touching_axis(a, region[a])
            out.append(slice(int(t[0]), int(t[-1]) + self.patch[a]))
        return tuple(out)  # type: ignore[return-value]

    def _owned_axis(self, axis: int, sl: slice) -> np.ndarray:
        s = self.starts[axis]
        centre = np.minimum(s + self.patch[axis] // 2, self.shape[axis] - 1)
        return s[(centre >= sl.start) & (centre < sl.stop)]

    def patches_owned(self, region: Sequence[slice]) -> list[Corner]:
        """Start corners of the patches whose centre voxel lies in ``region``, in canonical order.

        Over any partition of the volume, every patch is owned by exactly one region (a patch whose
        centre falls in the padding counts at the last real voxel), so regions that each evaluate
        only their own patches evaluate the global grid exactly once: no halo recompute. May be empty
        (a region thinner than the step).
        """
        region = normalize_region(region, self.shape)
        per_axis = [self._owned_axis(a, region[a]) for a in range(3)]
        return [tuple(int(v) for v in c) for c in itertools.product(*per_axis)]  # type: ignore[misc]

    def owned_extent(self, region: Sequence[slice]) -> Region | None:
        """The real voxels covered by the patches owned by ``region`` (None if it owns none): where
        their weighted outputs land, and so what its neighbours must receive of them."""
        region = normalize_region(region, self.shape)
        out = []
        for a in range(3):
            t = self._owned_axis(a, region[a])
            if t.size == 0:
                return None
            out.append(slice(int(t[0]), min(int(t[-1]) + self.patch[a], self.shape[a])))
        return tuple(out)  # type: ignore[return-value]

    def patch_evaluations(self, regions: Iterable[Sequence[slice]]) -> int:
        """How many patch evaluations computing each of ``regions`` separately costs (vs :attr:`n_patches`
        for the whole volume at once): the price of chunking."""
        return sum(
            math.prod(len(self._touching_axis(a, r[a])) for a in range(3))
            for r in (normalize_region(r, self.shape) for r in regions)
        )


def chunk_regions(shape: Sequence[int], chunks: Sequence[int] | Sequence[Sequence[int]]) -> list[Region]:
    """The regions of a chunked ``(z, y, x)`` volume, in C order: ``chunks`` is either one chunk
    shape (regular, last chunk ragged) or dask-style per-axis chunk sizes."""
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or len(chunks) != 3:
        raise InputError(f"shape and chunks must both be 3-D, got {shape} and {chunks!r}")
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
        bounds.append([slice(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])])
    return [tuple(r) for r in itertools.product(*bounds)]  # type: ignore[misc]


def _profile_1d(n: int, kind: str, sigma_scale: float) -> np.ndarray:
    # distance from the centre, exact half-integers, so every profile is exactly symmetric
    d = np.abs(np.arange(n, dtype=np.float64) - (n - 1) / 2.0)
    if kind == "gaussian":
        sigma = max(sigma_scale * n, 1e-6)
        w = np.exp(-0.5 * (d / sigma) ** 2)
    elif kind == "cosine":
        # Hann window sampled at voxel centres: (1 + cos(2 pi d / n)) / 2, > 0 at the edges
        w = 0.5 * (1.0 + np.cos(2.0 * np.pi * d / n))
    elif kind == "linear":
        # tent, 1/n at the edge voxels
        w = 1.0 - 2.0 * d / n
    elif kind == "constant":
        w = np.ones(n)
    else:
        raise InputError(f"unknown blend kind {kind!r}; expected gaussian, cosine, linear or constant")
    return w / w.max()


def blend_weights(
    patch_shape: Sequence[int],
    kind: BlendKind = "gaussian",
    sigma_scale: float | Sequence[float] = 0.125,
) -> np.ndarray:
    """The blending window of one patch: ``float32``, shape ``patch_shape``, max exactly 1, every value
    in ``[MIN_WEIGHT, 1]``, symmetric under flipping any axis.

    Separable (outer product of 1-D profiles). ``gaussian``: sigma = ``sigma_scale * patch`` per axis
    (MONAI's default scale); ``cosine``: a Hann bump sampled at voxel centres; ``linear``: a tent
    (pyramid); ``constant``: plain averaging. Values are clamped from below at :data:`MIN_WEIGHT`.
    """
    shape = tuple(int(p) for p in patch_shape)
    if len(shape) != 3 or any(p < 1 for p in shape):
        raise InputError(f"patch shape must be three positive sizes, got {patch_shape!r}")
    scales = _triple(sigma_scale, "sigma_scale")
    if any(float(s) <= 0 for s in scales):
        raise InputError(f"sigma_scale must be > 0, got {sigma_scale!r}")
    pz, py, px = (_profile_1d(n, kind, float(s)) for n, s in zip(shape, scales))
    w = pz[:, None, None] * py[None, :, None] * px[None, None, :]
    w = np.maximum(w / w.max(), MIN_WEIGHT)
    return w.astype(np.float32)


def unbatched(predict_patch: Callable[[Corner], np.ndarray]) -> Callable[[list[Corner]], np.ndarray]:
    """Adapt a one-patch function ``starts -> (C, pz, py, px)`` to :func:`blend_region`'s batched form."""

    def predict_batch(corners: list[Corner]) -> np.ndarray:
        return np.stack([np.asarray(predict_patch(c)) for c in corners])

    return predict_batch


def weight_sum(region: Sequence[slice], grid: PatchGrid, weights: np.ndarray) -> np.ndarray:
    """``sum_p w[v - s_p]`` over every global patch, for the voxels of ``region``: the denominator of the
    blend, a property of the grid alone (no model output needed). ``float32``, added in canonical
    patch order, so it is bitwise the same whichever task computes it."""
    region = normalize_region(region, grid.shape)
    weights = np.asarray(weights, dtype=np.float32)
    r0 = tuple(s.start for s in region)
    rshape = tuple(s.stop - s.start for s in region)
    wsum = np.zeros(rshape, dtype=np.float32)
    for corner in grid.patches_touching(region):
        dst, src = patch_overlap(corner, grid.patch, r0, rshape)
        wsum[dst] += weights[src]
    return wsum


def finish_region(
    region: Sequence[slice], grid: PatchGrid, weights: np.ndarray, parts: Iterable[tuple[Sequence[slice], np.ndarray]]
) -> np.ndarray:
    """Complete the blend of ``region`` from partial weighted sums.

    ``parts`` are ``(part_region, values)`` pairs, ``values`` ``(C, ...)`` the weighted sum of model
    outputs of one set of patches over ``part_region`` (volume coordinates, inside ``region``), e.g.
    the pieces that the owners of neighbouring regions computed (:meth:`PatchGrid.patches_owned`).
    When the parts' patch sets partition the patches touching ``region``, the result equals
    :func:`blend_region` of ``region`` up to float32 summation order. Returns ``(C, rz, ry, rx)``.
    """
    region = normalize_region(region, grid.shape)
    r0 = tuple(s.start for s in region)
    rshape = tuple(s.stop - s.start for s in region)
    acc: np.ndarray | None = None
    for part_region, values in parts:
        values = np.asarray(values, dtype=np.float32)
        if acc is None:
            acc = np.zeros((values.shape[0],) + rshape, dtype=np.float32)
        dst = []
        for a, s in enumerate(part_region):
            if not (r0[a] <= s.start < s.stop <= r0[a] + rshape[a]):
                raise ValueError(f"part {tuple(part_region)} is not inside region {region}")
            dst.append(slice(s.start - r0[a], s.stop - r0[a]))
        if values.shape[1:] != tuple(s.stop - s.start for s in dst):
            raise ValueError(f"part {tuple(part_region)} has values of shape {values.shape}")
        acc[(slice(None), *dst)] += values
    if acc is None:
        raise ValueError(f"no parts given for region {region}")
    acc /= weight_sum(region, grid, weights)
    return acc


def patch_overlap(
    corner: Sequence[int], patch: Sequence[int], r0: Sequence[int], rshape: Sequence[int]
) -> tuple[Region, Region]:
    """Where a patch starting at ``corner`` meets the region starting at ``r0`` of shape ``rshape``:
    ``(dst, src)``, the intersection in region-local and in patch-local coordinates."""
    dst, src = [], []
    for a in range(3):
        lo = max(corner[a], r0[a])
        hi = min(corner[a] + patch[a], r0[a] + rshape[a])
        dst.append(slice(lo - r0[a], hi - r0[a]))
        src.append(slice(lo - corner[a], hi - corner[a]))
    return tuple(dst), tuple(src)  # type: ignore[return-value]


def blend_region(
    region: Sequence[slice],
    grid: PatchGrid,
    weights: np.ndarray,
    predict_batch: Callable[[list[Corner]], np.ndarray],
    *,
    batch_size: int = 4,
) -> np.ndarray:
    """Blend the predictions of every global patch touching ``region`` into that region.

    ``predict_batch(corners)`` gets a list of at most ``batch_size`` patch start corners (padded-volume
    coordinates, canonical order) and returns an array ``(N, C, pz, py, px)`` of model outputs. Only
    two buffers the size of the region are kept (weighted sum and weight sum, ``float32``), so memory
    is O(region + batch), never O(volume). Returns ``(C, rz, ry, rx)`` ``float32``.

    Each output voxel accumulates its patches in the same order whatever the region, so a region
    computed alone equals the same voxels of a bigger region (up to the model's own batch-size
    dependence, usually a few ulp).
    """
    region = normalize_region(region, grid.shape)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != grid.patch:
        raise InputError(f"weights have shape {weights.shape}, the grid's patch is {grid.patch}")
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    corners = grid.patches_touching(region)
    r0 = tuple(s.start for s in region)
    rshape = tuple(s.stop - s.start for s in region)
    wsum = np.zeros(rshape, dtype=np.float32)
    acc: np.ndarray | None = None
    for i in range(0, len(corners), batch_size):
        batch = corners[i : i + batch_size]
        pred = np.asarray(predict_batch(batch))
        if pred.ndim != 5 or pred.shape[0] != len(batch) or pred.shape[2:] != grid.patch:
            raise ValueError(
                f"predict_batch returned shape {pred.shape} for {len(batch)} patches; expected "
                f"({len(batch)}, C, {', '.join(map(str, grid.patch))})"
            )
        if acc is None:
            acc = np.zeros((pred.shape[1],) + rshape, dtype=np.float32)
        elif pred.shape[1] != acc.shape[0]:
            raise ValueError(f"predict_batch changed its channel count from {acc.shape[0]} to {pred.shape[1]}")
        for corner, out in zip(batch, pred):
            dst_t, src_t = patch_overlap(corner, grid.patch, r0, rshape)
            w = weights[src_t]
            acc[(slice(None),) + dst_t] += w * out[(slice(None),) + src_t].astype(np.float32, copy=False)
            wsum[dst_t] += w
    assert acc is not None  # a region always touches at least one patch
    acc /= wsum
    return acc
