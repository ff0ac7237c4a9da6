"""Choosing the inference patch: as large as memory allows, not the training patch.

A fully convolutional U-Net in eval mode gives the same output away from a patch's border whatever
the patch's size, so inference need not use the training patch (32x64x64 in the paper, which makes
a sliding window with 25 % overlap evaluate every voxel ~2.4 times). The whole z-depth of a frame is
taken where it fits and y/x grow until the activation memory of one patch reaches the budget; the
overlap (model voxels) is what the network's zero padding spoils plus a blending ramp. That depth
was measured on a *trained* model (``benchmarks/border_effect.py --checkpoint``: the CPU example's
DNA U-Net differs from a whole-frame pass by less than 1e-2 of its std only from 35 voxels inward,
1e-3 from 40; a randomly initialised paper U-Net, 12 voxels, understates it badly), and the seams
it leaves were measured against the overlap (``benchmarks/seams_vs_overlap.py``: 0.69 std at 32
voxels, 0.08 at 64, 0.011 at 80, 0.0016 at 96).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["AUTO_OVERLAP", "BYTES_PER_VOXEL_AND_CHANNEL", "MAX_TENSOR_ELEMENTS", "auto_patch"]

#: Overlap (model voxels) between neighbouring patches: a 36-voxel rim on each side that gets no
#: weight, and a 24-voxel raised-cosine ramp between (see ``window.band_profile``); a multiple of 16,
#: so neighbours stay on one phase of the U-Net's down-sampling grid.
AUTO_OVERLAP = 96

#: Peak host memory of a float32 forward pass of the fnet U-Net per output voxel and per channel of its
#: top level, measured for width 32 at 32x128x128 to 48x384x384 (771-800 bytes per voxel, i.e. ~25 per
#: channel), plus room for the input box and the weighted sums.
BYTES_PER_VOXEL_AND_CHANNEL = 32.0

#: Largest tensor a kernel may be given: cuDNN's and oneDNN's 3-D convolutions index with 32-bit
#: integers, and the U-Net's largest activation (the top level's skip concatenation) has 2 x width
#: channels per voxel, so a patch stays under this many elements / (2 x width) voxels.
MAX_TENSOR_ELEMENTS = 2**31 - 1


def _up(n: int, m: int) -> int:
    return m * math.ceil(n / m)


def _covering(n: int, k: int, overlap: int, m: int) -> int:
    """The smallest patch (a multiple of ``m``) that covers ``n`` voxels with ``k`` patches overlapping by ``overlap``."""
    return _up(n, m) if k == 1 else _up(math.ceil((n - overlap) / k) + overlap, m)


def _count(size: int, patch: int, overlap: int) -> int:
    return 1 if size <= patch else 1 + math.ceil((size - patch) / (patch - overlap))


def auto_patch(
    frame: Sequence[int], multiple: int, width: int, budget_bytes: float, min_patches: int = 1, overlap: int = AUTO_OVERLAP
) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(patch, overlap)`` (z, y, x; overlap in voxels) for a frame of ``frame`` model voxels.

    ``budget_bytes`` is what one patch's forward pass may use (a worker thread's share of its memory,
    or the free memory of its GPU); ``min_patches`` asks for at least that many patches per frame,
    so that a single frame still keeps every GPU (or CPU host) busy.
    """
    m = max(1, int(multiple))
    per_voxel = BYTES_PER_VOXEL_AND_CHANNEL * max(1, width)
    max_voxels = max(min(budget_bytes / per_voxel, MAX_TENSOR_ELEMENTS / (2 * max(1, width))), float(m**3))
    z_full, y_full, x_full = (_up(n, m) for n in frame)
    overlap = _up(overlap, m)
    # z: the whole depth if a 2*overlap-wide y/x patch of it fits; else as deep as fits
    pz = z_full if z_full * (2 * overlap + m) ** 2 <= max_voxels else max(2 * overlap + m, _up(int(max_voxels / (2 * overlap + m) ** 2), m) - m)
    pz = min(pz, z_full)
    side = max(m, int(math.sqrt(max_voxels / pz)) // m * m)
    # a budget too small for patches twice the overlap: neighbours share at most half a patch (the
    # step stays at least half the patch), at the cost of a thinner clean rim
    overlap = min(overlap, (side // 2) // m * m)
    oz = 0 if pz >= z_full else min(overlap, pz - m)
    # y/x: the numbers of patches (ky, kx) whose smallest covering patches fit the budget, give every
    # thread a patch, and evaluate the fewest voxels (patches need not be square: one frame on two
    # threads is cut once, across its longer axis, not into four)
    kz = _count(frame[0], pz, oz)
    limits = [max(1, math.ceil(n / max(m, side - overlap)) + 1) for n in frame[1:]]
    choices = []
    for ky in range(1, limits[0] + 1):
        for kx in range(1, limits[1] + 1):
            py, px = _covering(frame[1], ky, overlap, m), _covering(frame[2], kx, overlap, m)
            if (ky > 1 and py - overlap < m) or (kx > 1 and px - overlap < m):
                continue  # neighbours would share more than they add
            fits, busy = pz * py * px <= max_voxels, kz * ky * kx >= min_patches
            # within the budget first, then enough patches, then the fewest voxels evaluated, then the fewest patches
            choices.append(((not fits, not busy, ky * kx * py * px, ky * kx), ky, kx))
    _, ky, kx = min(choices)
    py, px = _covering(frame[1], ky, overlap, m), _covering(frame[2], kx, overlap, m)
    oy, ox = (0 if k == 1 else overlap for k in (ky, kx))
    return (pz, py, px), (oz, oy, ox)
