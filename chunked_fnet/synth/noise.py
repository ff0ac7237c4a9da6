"""Random fields that are functions of *global* coordinates, so any tile of a scene renders the same.

numpy's generators draw sequences, whose values depend on how much was drawn before; a phantom
rendered tile by tile (in bounded memory, in any order, on any worker) instead needs values that
depend only on where they are. Integer lattice points are hashed (splitmix64) to uniform values,
and smooth noise interpolates them; per-block generators are seeded by the block's global index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> np.uint64(30))
    x = x * _M1
    x = x ^ (x >> np.uint64(27))
    x = x * _M2
    return x ^ (x >> np.uint64(31))


def hash_uniform(seed: int, *coords: np.ndarray) -> np.ndarray:
    """Uniform [0, 1) values, one per integer coordinate tuple, fixed by ``seed`` alone."""
    with np.errstate(over="ignore"):
        h = _mix(np.full(np.broadcast(*coords).shape, np.uint64(seed & 0xFFFFFFFFFFFFFFFF)) + _GOLDEN)
        for c in coords:
            h = _mix(h ^ (np.asarray(c).astype(np.int64).view(np.uint64) + _GOLDEN))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def value_noise(points: Sequence[np.ndarray], spacing: float, seed: int) -> np.ndarray:
    """Smooth noise in [-1, 1] at physical ``points`` (a tuple of same-shape coordinate arrays, µm).

    Lattice values at multiples of ``spacing`` are hashed, then blended with a smoothstep weight:
    C1-continuous, band-limited to about 1/spacing, and identical wherever it is evaluated from.
    """
    scaled = [np.asarray(p, dtype=np.float64) / spacing for p in points]
    base = [np.floor(s) for s in scaled]
    lo = [int(b.min()) for b in base]
    hi = [int(b.max()) + 2 for b in base]
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij", sparse=True)
    lattice = hash_uniform(seed, *grids) * 2.0 - 1.0
    idx = [(b - a).astype(np.intp) for b, a in zip(base, lo, strict=True)]
    frac = [s - b for s, b in zip(scaled, base, strict=True)]
    weight = [f * f * (3.0 - 2.0 * f) for f in frac]
    out = np.zeros(scaled[0].shape, dtype=np.float64)
    ndim = len(points)
    for corner in range(1 << ndim):
        w = np.ones_like(out)
        at = []
        for axis in range(ndim):
            bit = (corner >> axis) & 1
            w = w * (weight[axis] if bit else 1.0 - weight[axis])
            at.append(idx[axis] + bit)
        out += w * lattice[tuple(at)]
    return out


def block_normal(seed: int, key: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """Standard normal samples for one block of a global block grid, seeded by the block's index."""
    return np.random.default_rng([seed & 0xFFFFFFFF, *[int(k) & 0xFFFFFFFF for k in key]]).standard_normal(
        tuple(shape), dtype=np.float32
    )


def tiled_normal(
    seed: int, key: Sequence[int], start: Sequence[int], shape: Sequence[int], block: Sequence[int]
) -> np.ndarray:
    """Standard normal noise for the box ``start:start+shape`` of an unbounded array tiled in ``block``s.

    Every block draws from its own generator, so a box gets the same values however the array is cut.
    """
    out = np.empty(tuple(shape), dtype=np.float32)
    first = [s // b for s, b in zip(start, block, strict=True)]
    last = [(s + n - 1) // b for s, n, b in zip(start, shape, block, strict=True)]
    for index in np.ndindex(*[b - a + 1 for a, b in zip(first, last, strict=True)]):
        bidx = [a + i for a, i in zip(first, index, strict=True)]
        b0 = [i * b for i, b in zip(bidx, block, strict=True)]
        lo = [max(s, o) for s, o in zip(start, b0, strict=True)]
        hi = [min(s + n, o + b) for s, n, o, b in zip(start, shape, b0, block, strict=True)]
        values = block_normal(seed, [*key, *bidx], block)
        src = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, b0, strict=True))
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start, strict=True))
        out[dst] = values[src]
    return out


def value_noise_grid(axes: Sequence[np.ndarray], spacing: float, seed: int) -> np.ndarray:
    """:func:`value_noise` on the regular grid spanned by 1-D coordinate ``axes`` (µm), much faster.

    On an axis-aligned grid the smoothstep interpolation is separable: the lattice is contracted
    with one small (points x lattice) weight matrix per axis instead of gathering 2^d corners per point.
    """
    scaled = [np.asarray(a, dtype=np.float64) / spacing for a in axes]
    base = [np.floor(s).astype(np.int64) for s in scaled]
    lo = [int(b.min()) for b in base]
    hi = [int(b.max()) + 2 for b in base]
    grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij", sparse=True)
    out = (hash_uniform(seed, *grids) * 2.0 - 1.0).astype(np.float32)
    for axis, (s, b, a0, a1) in enumerate(zip(scaled, base, lo, hi, strict=True)):
        f = (s - b).astype(np.float32)
        w1 = f * f * (3.0 - 2.0 * f)
        weights = np.zeros((len(s), a1 - a0), dtype=np.float32)
        rows = np.arange(len(s))
        weights[rows, b - a0] = 1.0 - w1
        weights[rows, b - a0 + 1] = w1
        out = np.moveaxis(np.tensordot(out, weights, axes=([axis], [1])), -1, axis)
    return out
