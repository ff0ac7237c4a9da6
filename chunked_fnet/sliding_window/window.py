"""The sliding window of a frame as one value: its patch grid, its blending weights, its padding.

A voxel's prediction is the weighted mean of the outputs of every patch that covers it::

    out[v] = sum_p w[v - s_p] * f(x[patch p])[v - s_p]  /  sum_p w[v - s_p]

The numerator can be computed in pieces (any set of patches, over any box: a :class:`WeightedSum`)
and added up later; the denominator is a property of the grid alone (:meth:`SlidingWindow.weight_sum`).
A :class:`SlidingWindow` is built once per run and handed to every task, so the tasks that evaluate
patches and the tasks that blend them cannot disagree on the grid or the weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

import numpy as np
from dask.sizeof import sizeof

from chunked_fnet.errors import InputError
from chunked_fnet.sliding_window.box import Box
from chunked_fnet.sliding_window.grid import Corner, PatchGrid, overlap_voxels, triple

__all__ = [
    "MIN_WEIGHT", "BlendKind", "PadMode", "SlidingWindow", "WeightedSum", "band_margin", "blend_weights", "fit_patch", "min_band_overlap",
]

BlendKind = Literal["band", "gaussian", "cosine", "linear", "constant"]
PadMode = Literal["reflect", "symmetric", "edge", "constant"]

#: Smallest blending weight, relative to the maximum (1). Keeps every voxel's weight sum > 0, also
#: at the frame's border where only a patch's edge covers it.
MIN_WEIGHT = 1e-3


def _profile_1d(n: int, kind: str, sigma_scale: float) -> np.ndarray:
    # distance from the centre, exact half-integers, so every profile is exactly symmetric
    d = np.abs(np.arange(n, dtype=np.float64) - (n - 1) / 2.0)
    if kind == "gaussian":
        w = np.exp(-0.5 * (d / max(sigma_scale * n, 1e-6)) ** 2)
    elif kind == "cosine":  # Hann window sampled at voxel centres, > 0 at the edges
        w = 0.5 * (1.0 + np.cos(2.0 * np.pi * d / n))
    elif kind == "linear":  # tent, 1/n at the edge voxels
        w = 1.0 - 2.0 * d / n
    elif kind == "constant":
        w = np.ones(n)
    else:
        raise InputError(f"unknown blend kind {kind!r}; expected gaussian, cosine, linear or constant")
    return w / w.max()


def band_profile(n: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """1-D weights of the ``band`` blend: 1 over the patch's centre, and at a side that has a neighbour
    (not ``first``/``last``) 0 over the outer ``margin`` voxels, where the network's zero padding
    reaches inward (benchmarks/border_effect.py), then a raised cosine up to 1 across the rest of the
    overlap. Two neighbours' ramps add up to exactly 1, so each voxel takes its value from the patches
    in which it lies far enough from the border, and nowhere is the centre of a patch thrown away."""
    w = np.ones(n)
    if overlap < 2:
        return w
    margin = band_margin(overlap)
    ramp = overlap - 2 * margin  # margin + ramp + margin == overlap: the neighbour's ramp mirrors this one
    u = np.arange(overlap, dtype=np.float64)
    side = np.where(u < margin, 0.0, np.where(u >= margin + ramp, 1.0, 0.5 * (1 - np.cos(np.pi * (u - margin + 0.5) / ramp))))
    if not first:
        w[:overlap] = np.minimum(w[:overlap], side)
    if not last:
        w[n - overlap :] = np.minimum(w[n - overlap :], side[::-1])
    return w


def band_margin(overlap: int) -> int:
    """The voxels at each side of a ``band`` patch that get no weight where it has a neighbour: the
    outer rim of an ``overlap`` (the rest, about a quarter of it, is the ramp)."""
    if overlap < 2:
        return 0
    return (overlap - max(1, overlap // 4)) // 2


def min_band_overlap(halo: int, multiple: int = 1) -> int:
    """The smallest overlap (a multiple of ``multiple``) whose ``band`` margin covers ``halo`` voxels."""
    m = max(1, int(multiple))
    overlap = m * math.ceil(max(0, 2 * halo) / m)
    while band_margin(overlap) < halo:
        overlap += m
    return overlap


def blend_weights(patch_shape: Sequence[int], kind: BlendKind = "gaussian", sigma_scale: float | Sequence[float] = 0.125) -> np.ndarray:
    """The blending window of one patch: ``float32``, max exactly 1, values in ``[MIN_WEIGHT, 1]``,
    symmetric under flipping any axis; separable. ``gaussian``: sigma = ``sigma_scale * patch`` per
    axis (MONAI's default scale); ``cosine``: a Hann bump; ``linear``: a tent; ``constant``: plain
    averaging."""
    shape = tuple(int(p) for p in patch_shape)
    if len(shape) != 3 or any(p < 1 for p in shape):
        raise InputError(f"patch shape must be three positive sizes, got {patch_shape!r}")
    scales = triple(sigma_scale, "sigma_scale")
    if any(float(s) <= 0 for s in scales):
        raise InputError(f"sigma_scale must be > 0, got {sigma_scale!r}")
    pz, py, px = (_profile_1d(n, kind, float(s)) for n, s in zip(shape, scales))
    w = pz[:, None, None] * py[None, :, None] * px[None, None, :]
    return np.maximum(w / w.max(), MIN_WEIGHT).astype(np.float32)


def fit_patch(patch: Sequence[int], shape: Sequence[int], multiple: int = 16, minimum: Sequence[int] = (1, 1, 1)) -> tuple[int, int, int]:
    """Check ``patch`` is divisible by ``multiple`` (the network's down-sampling factor) and at least
    ``minimum`` (the smallest input the networks take), and shrink each axis longer than the frame's
    to the smallest multiple covering that axis, but not below ``minimum``."""
    patch = tuple(int(p) for p in patch)
    shape = tuple(int(n) for n in shape)
    if len(patch) != 3 or len(shape) != 3:
        raise InputError(f"patch and shape must be (z, y, x), got {patch} and {shape}")
    if any(p < 1 for p in patch):
        raise InputError(f"patch sizes must be >= 1, got {patch}")
    m = max(1, int(multiple))
    bad = [p for p in patch if p % m]
    if bad:
        raise InputError(f"patch {patch} must be divisible by {m} along every axis (the network's down-sampling factor); {bad} are not")
    small = [(p, lo) for p, lo in zip(patch, minimum) if p < lo]
    if small:
        raise InputError(f"patch {patch} is smaller than the models take, at least {tuple(minimum)} (z, y, x)")
    return tuple(p if n >= p else max(lo, min(p, m * math.ceil(n / m))) for p, n, lo in zip(patch, shape, minimum))  # type: ignore[return-value]


@dataclass(frozen=True)
class WeightedSum:
    """``sum_p w * f(patch p)`` of some set of patches over ``box`` (frame coordinates):
    ``values`` is ``(C, *box.shape)`` float32. Pieces of different patch sets add up."""

    box: Box
    values: np.ndarray

    def __post_init__(self) -> None:
        if self.values.ndim != 4 or self.values.shape[1:] != self.box.shape:
            raise ValueError(f"values of shape {self.values.shape} do not fit box {self.box} (expected (C, {self.box.shape}))")

    def crop(self, box: Box) -> WeightedSum:
        """The part over ``box`` (inside this one), copied, so the rest can be freed (all of it: itself)."""
        return self if box == self.box else WeightedSum(box, self.view(box).values.copy())

    def view(self, box: Box) -> WeightedSum:
        """The part over ``box`` (inside this one), sharing this one's memory."""
        return self if box == self.box else WeightedSum(box, self.values[(slice(None), *box.within(self.box))])


@sizeof.register(WeightedSum)
def _sizeof_weighted_sum(piece: WeightedSum) -> int:
    # dask places tasks near their inputs' bytes, steals, spills and reports memory by sizeof: without this
    # it would count a frame's sums as 56 bytes (an object's), and move them between workers as if free
    return int(piece.values.nbytes) + 64


@dataclass(frozen=True)
class SlidingWindow:
    """The global sliding window over one ``(z, y, x)`` frame.

    ``patch`` is fitted to the frame (:func:`fit_patch`) and to ``multiple``; ``overlap`` is a
    fraction of the patch (``< 1``) or model voxels (``>= 1``), one or per axis; ``blend``/``sigma_scale``
    choose the weights (:func:`blend_weights`, or ``band``: :func:`band_profile`, which needs no
    weight at a frame border and so depends on where a patch lies); ``pad_mode`` how the frame is
    padded past its end; ``align`` keeps every patch on a multiple of the step
    (:func:`~chunked_fnet.sliding_window.grid.patch_starts`); ``min_patch`` is the smallest patch the
    networks take (a multiple of ``multiple``); ``halo`` the rim of a patch's output that a network
    declares invalid: where patches meet, their overlap must give it no weight (``band``: the margin
    covers it) or, for the other blends, hold it twice over. The grid is built once; weights once
    per process (left out when pickled, so a task receives a few numbers, not patch-sized arrays).
    """

    frame_shape: tuple[int, int, int]
    patch: tuple[int, int, int]  # no defaults here: a run's window is the run policy's (predict/policy.py)
    overlap: float | tuple[float, float, float]
    multiple: int
    blend: BlendKind
    sigma_scale: float = 0.125
    pad_mode: PadMode = "reflect"
    align: bool = False
    min_patch: tuple[int, int, int] = (1, 1, 1)
    halo: tuple[int, int, int] = (0, 0, 0)
    grid: PatchGrid = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.frame_shape)
        if len(shape) == 4:  # (C, Z, Y, X)
            shape = shape[1:]
        if len(shape) != 3 or min(shape) < 1:
            raise InputError(f"a frame is (Z, Y, X) with every size >= 1, got {self.frame_shape!r}")
        if self.pad_mode not in ("reflect", "symmetric", "edge", "constant"):
            raise InputError(f"unknown pad_mode {self.pad_mode!r}; expected reflect, symmetric, edge or constant")
        overlap = self.overlap if isinstance(self.overlap, (int, float)) else tuple(float(o) for o in self.overlap)
        patch = fit_patch(self.patch, shape, self.multiple, self.min_patch)
        object.__setattr__(self, "frame_shape", shape)
        object.__setattr__(self, "overlap", overlap)
        object.__setattr__(self, "grid", PatchGrid(shape, patch, overlap, self.align))
        self._check_halo()
        if self.blend != "band":
            blend_weights((1, 1, 1), self.blend, self.sigma_scale)  # refuse a bad kind or scale now, not in a task

    def _check_halo(self) -> None:
        """Refuse an overlap that would blend in a network's declared-invalid rim where patches meet."""
        for axis, (n, p, o, h) in enumerate(zip(self.frame_shape, self.grid.patch, self.overlap_voxels, self.halo)):
            if h <= 0 or n <= p:  # one patch along this axis: no patch meets another
                continue
            if self.blend == "band" and band_margin(o) < h:
                raise InputError(
                    f"the overlap {o} along {'zyx'[axis]} leaves a rim of {band_margin(o)} voxels without weight, less than the models' "
                    f"halo {h}; use an overlap of at least {min_band_overlap(h, self.multiple)} voxels (and a patch larger than it)"
                )
            if self.blend != "band" and o < 2 * h:
                raise InputError(
                    f"the overlap {o} along {'zyx'[axis]} is less than twice the models' halo {h}; use an overlap of at least {2 * h} voxels"
                )

    @property
    def overlap_voxels(self) -> tuple[int, int, int]:
        return tuple(overlap_voxels(p, o) for p, o in zip(self.grid.patch, triple(self.overlap, "overlap")))  # type: ignore[return-value]

    @property
    def patch_shape(self) -> tuple[int, int, int]:
        """The patch actually used (fitted to the frame)."""
        return self.grid.patch

    @property
    def weights(self) -> np.ndarray:
        """The weights of a patch with neighbours on every side (of every patch, for the kinds other than ``band``)."""
        return self._weights(((False, False),) * 3 if self.blend == "band" else ())

    @cached_property
    def _weights_cache(self) -> dict[tuple, np.ndarray]:
        return {}

    def weights_for(self, corner: Sequence[int]) -> np.ndarray:
        """The blending weights of the patch starting at ``corner`` (read-only, cached per kind of position)."""
        return self._weights(self.grid.edges(corner) if self.blend == "band" else ())

    def unit_weights(self, corner: Sequence[int]) -> bool:
        """Whether every weight of the patch at ``corner`` is exactly 1 (a ``band`` patch without neighbours:
        a whole-frame patch), so that weighting its output is the identity (cached with the weights)."""
        edges = self.grid.edges(corner) if self.blend == "band" else ()
        key = ("ones", edges)
        ones = self._weights_cache.get(key)
        if ones is None:
            profiles = self._band_profiles(edges) if self.blend == "band" else None
            if profiles is not None and all(((p >= 0) & (p <= 1)).all() for p in profiles):
                # Decided from the 1-D profiles, not the patch-sized weights (a whole-frame patch's are 67 MB, built
                # and compared in every block task: ~0.05 CPU-s a frame). Each weight is float32((pz * py) * px),
                # which rounds monotonically in each factor in [0, 1]: every weight lies between the one made of
                # the profiles' minima and 1, so all are 1 exactly when that one is.
                pz, py, px = profiles
                ones = bool(np.float32(pz.min() * py.min() * px.min()) == 1)
            else:
                ones = bool((self.weights_for(corner) == 1).all())
            self._weights_cache[key] = ones
        return ones  # type: ignore[return-value]

    def _band_profiles(self, edges: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The ``band`` weights' 1-D profiles along z, y, x for a patch with the frame ``edges`` it touches."""
        return tuple(band_profile(p, o, first, last) for p, o, (first, last) in zip(self.grid.patch, self.overlap_voxels, edges))  # type: ignore[return-value]

    def _weights(self, key: tuple) -> np.ndarray:
        w = self._weights_cache.get(key)
        if w is None:
            if self.blend == "band":
                pz, py, px = self._band_profiles(key)
                w = (pz[:, None, None] * py[None, :, None] * px[None, None, :]).astype(np.float32)
            else:
                w = blend_weights(self.grid.patch, self.blend, self.sigma_scale)
            w.setflags(write=False)
            self._weights_cache[key] = w
        return w

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_weights_cache", None)  # a property of the other fields: rebuilt where it is used
        return state

    def weight_sum(self, box: Box) -> np.ndarray:
        """``sum_p w[v - s_p]`` over every patch, for the voxels of ``box``: the blend's denominator,
        needing no model output. Added in canonical patch order, so bitwise the same in every task."""
        wsum = np.zeros(box.shape, dtype=np.float32)
        for corner in self.grid.patches_touching(box):
            dst, src = overlap_slices(self.grid.patch_box(corner), box)
            wsum[dst] += self.weights_for(corner)[src]
        if not (wsum > 0).all():  # a band too narrow for its margins: refuse rather than divide by 0
            raise InputError(f"the blend weights of {self} leave voxels of {box} without weight; use a wider overlap")
        return wsum

    def blend_pieces(self, box: Box, pieces: Iterable[WeightedSum]) -> np.ndarray:
        """The blended prediction over ``box`` from weighted sums whose patch sets partition the patches
        touching it (e.g. the pieces that the owners of neighbouring blocks computed): ``(C, *box.shape)``."""
        pieces = list(pieces)
        whole = len(pieces) == 1 and pieces[0].box == box
        touching = self.grid.patches_touching(box) if whole else ()  # weight_sum below finds them itself otherwise
        if whole and len(touching) == 1 and self.unit_weights(touching[0]):
            # one patch of weight 1 covers the box (a whole-frame patch): its sum is the blend, bit for bit the
            # general path's (0 + v, divided by 1) without its zero-filled buffers and passes over the chunk
            return np.add(pieces[0].values, np.float32(0), dtype=np.float32)
        acc: np.ndarray | None = None
        for piece in pieces:
            if not box.contains(piece.box):
                raise ValueError(f"piece {piece.box} is not inside region {box}")
            if acc is None:
                acc = np.zeros((piece.values.shape[0], *box.shape), dtype=np.float32)
            acc[(slice(None), *piece.box.within(box))] += piece.values
        if acc is None:
            raise ValueError(f"no pieces given for region {box}")
        acc /= self.weight_sum(box)
        return acc

    def owned(self, block: Box) -> tuple[list[Corner], Box | None]:
        """The patches ``block`` owns and the real voxels they cover."""
        return self.grid.patches_owned(block), self.grid.owned_extent(block)


def overlap_slices(patch: Box, region: Box) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """Where a patch meets a region: ``(dst, src)``, the common voxels in region-local and in
    patch-local coordinates (the patch may start in the padding past the frame)."""
    lo = tuple(max(a, b) for a, b in zip(patch.start, region.start))
    hi = tuple(min(a, b) for a, b in zip(patch.stop, region.stop))
    dst = tuple(slice(a - r, b - r) for a, b, r in zip(lo, hi, region.start))
    src = tuple(slice(a - p, b - p) for a, b, p in zip(lo, hi, patch.start))
    return dst, src
