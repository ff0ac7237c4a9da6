"""Rasterise a :class:`~chunked_fnet.synth.scene.CellState` into per-structure densities on any box.

Every density is a function of global physical coordinates only (analytic shapes, hashed noise, and
tubules splatted with an internal margin), so a box rendered whole or as tiles gives the same voxels.
Densities are in [0, 1] (fraction of the voxel occupied, softened by about half a voxel so that the
sampled shapes are anti-aliased).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from chunked_fnet.synth.noise import value_noise_grid
from chunked_fnet.synth.scene import CellState

#: Fluorescent structures, in channel order, each with the density it images.
STRUCTURES = ("dna", "nuclear_envelope", "nucleoli", "membrane", "mitochondria", "er")
TUBE_RADIUS = 0.12  # µm, mitochondrial tubule
REFRACTIVE_INDEX = {  # increments over the medium; literature values for cells are 1.35-1.40
    "medium": 1.337,
    "cytoplasm": 0.025,  # cytoplasm is denser than nucleoplasm (Schuermann et al. 2016)
    "nucleus": 0.004,
    "chromatin": 0.010,
    "nuclear_envelope": 0.012,
    "nucleoli": 0.040,
    "membrane": 0.010,
    "mitochondria": 0.020,
    "er": 0.006,
}


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(x))


def render_region(
    state: CellState, origin: Sequence[float], shape: Sequence[int], voxel: Sequence[float]
) -> dict[str, np.ndarray]:
    """Densities of every structure (plus ``cell`` and ``nucleus``) on a (z, y, x) box.

    ``origin`` is the physical position (µm) of the box's first voxel centre, ``voxel`` the spacing.
    """
    shape = tuple(int(n) for n in shape)
    zc, yc, xc = [(o + v * np.arange(n)).astype(np.float32) for o, v, n in zip(origin, voxel, shape, strict=True)]
    # Edges are softened by about half a voxel (anti-aliasing); thin shells (membranes, envelope) are
    # at least half the coarsest voxel thick so that a 0.29 um z-step does not sample them into terraces.
    soft = 0.5 * float(np.cbrt(np.prod(voxel)))
    thin = max(0.1, 0.5 * float(max(voxel)))
    out = {k: np.zeros(shape, dtype=np.float32) for k in ("nucleus", "nucleoli", "dna", "nuclear_envelope", "er")}

    # Cell bodies: a Voronoi partition of the coverslip bounded by each cell's radius, domed on top.
    yy, xx = np.meshgrid(yc, xc, indexing="ij")
    k = min(2, len(state.center))
    dist, idx = state.tree.query(np.stack([yy.ravel(), xx.ravel()], axis=1), k=2 if k == 2 else 1)
    dist = dist.reshape(*yy.shape, -1)
    idx = idx.reshape(*yy.shape, -1)
    owner = idx[..., 0]
    d1 = dist[..., 0]
    radius = state.radius[owner]
    lateral = radius - d1
    if k == 2:
        sep = np.linalg.norm(state.center[idx[..., 1]] - state.center[owner], axis=-1)
        bisector = (dist[..., 1] ** 2 - d1**2) / (2 * np.maximum(sep, 1e-6))
        lateral = np.minimum(lateral, bisector)
    top = state.coverslip_z + state.height[owner] * np.sqrt(np.clip(1 - (d1 / radius) ** 4, 0, 1))
    z3 = zc[:, None, None]
    inside = np.minimum(np.minimum(lateral[None], top[None] - z3), z3 - state.coverslip_z)
    cell = _sigmoid(inside / soft).astype(np.float32)
    membrane = np.exp(-((inside / thin) ** 2)).astype(np.float32)

    # Per-cell organelles, evaluated only inside each cell's bounding box.
    half = np.array([shape[1] * voxel[1], shape[2] * voxel[2]]) / 2
    mid = np.array([yc[0], xc[0]]) + half
    candidates = state.tree.query_ball_point(mid, r=float(np.hypot(*half) + state.radius.max() + 1.0))
    tubules = []
    for i in candidates:
        _render_cell(state, i, zc, yc, xc, owner, soft, thin, out)
        tubules.append(state.mitochondria[i])
    out["mitochondria"] = _tubule_density(np.concatenate(tubules) if tubules else np.zeros((0, 3)), origin, shape, voxel)
    out.update(cell=cell, membrane=membrane)
    out["er"] *= cell * (1 - out["nucleus"])
    out["mitochondria"] *= cell
    return out


def _box(lo: float, hi: float, coords: np.ndarray) -> slice:
    return slice(int(np.searchsorted(coords, lo)), int(np.searchsorted(coords, hi)))


def _render_cell(
    state: CellState,
    i: int,
    zc: np.ndarray,
    yc: np.ndarray,
    xc: np.ndarray,
    owner: np.ndarray,
    soft: float,
    thin: float,
    out: dict[str, np.ndarray],
) -> None:
    # Python floats keep the float32 arrays float32 (numpy scalars would promote them to float64).
    cz, cy, cx = (float(v) for v in state.nucleus_center[i])
    az, ay, ax = (float(v) for v in state.nucleus_axes[i])
    r = float(state.radius[i])
    zs = _box(state.coverslip_z - 1.0, state.coverslip_z + state.height[i] + 1.0, zc)
    ys = _box(state.center[i, 0] - r - 1.0, state.center[i, 0] + r + 1.0, yc)
    xs = _box(state.center[i, 1] - r - 1.0, state.center[i, 1] + r + 1.0, xc)
    if zs.start >= zs.stop or ys.start >= ys.stop or xs.start >= xs.stop:
        return
    z = zc[zs][:, None, None] - cz
    y = yc[ys][None, :, None] - cy
    x = xc[xs][None, None, :] - cx
    cos, sin = float(np.cos(state.nucleus_angle[i])), float(np.sin(state.nucleus_angle[i]))
    u = cos * y + sin * x
    v = -sin * y + cos * x
    # First-order signed distance to the nuclear ellipsoid surface: f / |grad f|.
    f = (z / az) ** 2 + (u / ay) ** 2 + (v / ax) ** 2 - 1.0
    grad = 2.0 * np.sqrt((z / az**2) ** 2 + (u / ay**2) ** 2 + (v / ax**2) ** 2)
    sd = f / np.maximum(grad, 1e-6)
    nucleus = _sigmoid(-sd / soft)
    envelope = np.exp(-((sd / thin) ** 2))
    nucleoli = np.zeros_like(nucleus)
    for pz, py, px, pr in state.nucleoli[i].tolist():
        d = np.sqrt((zc[zs][:, None, None] - pz) ** 2 + (yc[ys][None, :, None] - py) ** 2 + (xc[xs][None, None, :] - px) ** 2)
        nucleoli = np.maximum(nucleoli, _sigmoid(-(d - pr) / soft))
    nucleoli *= nucleus
    # Chromatin: two octaves of noise that travel with the nucleus; heterochromatin lines the envelope.
    # (Axis-aligned so it can be evaluated separably; the nucleus' slow spin is not followed.)
    local = (zc[zs] - cz, yc[ys] - cy, xc[xs] - cx)
    seed = state.seed * 31 + i
    texture = 0.65 * value_noise_grid(local, 0.9, seed) + 0.35 * value_noise_grid(local, 0.45, seed + 1)
    dna = nucleus * (1 - nucleoli) * np.clip(0.55 + 0.45 * texture + 0.5 * np.exp(-(((sd + 0.35) / 0.3) ** 2)), 0, 1.2)
    # ER: thin sheets (the zero set of smooth noise), densest around the nucleus, in this cell only.
    sheets = np.exp(-((value_noise_grid(local, 1.3, seed + 2) / 0.12) ** 2))
    er = sheets * np.exp(-np.maximum(sd, 0) / 3.0) * (owner[ys, xs] == i)[None]
    box = (zs, ys, xs)
    for name, value in (("nucleus", nucleus), ("nuclear_envelope", envelope), ("nucleoli", nucleoli), ("dna", dna)):
        np.maximum(out[name][box], value, out=out[name][box])
    out["er"][box] += er.astype(np.float32)


def _tubule_density(points: np.ndarray, origin: Sequence[float], shape: Sequence[int], voxel: Sequence[float]) -> np.ndarray:
    """Splat tubule centre-line points (0.1 µm apart) and blur to tubes; margins make tiles agree."""
    voxel = np.asarray(voxel, dtype=np.float64)
    sigma = np.maximum(TUBE_RADIUS / voxel, 0.3)
    margin = np.ceil(4 * sigma).astype(int) + 2
    big = np.asarray(shape) + 2 * margin
    grid = np.zeros(int(np.prod(big)), dtype=np.float64)
    if len(points):
        pos = (points - np.asarray(origin)) / voxel + margin
        ok = np.all((pos >= 0) & (pos < big - 1), axis=1)
        pos = pos[ok]
        base = np.floor(pos).astype(np.int64)
        frac = pos - base
        mass = np.pi * TUBE_RADIUS**2 * 0.1 / float(np.prod(voxel))
        for corner in range(8):
            bits = np.array([(corner >> a) & 1 for a in range(3)])
            w = np.prod(np.where(bits, frac, 1 - frac), axis=1) * mass
            flat = np.ravel_multi_index((base + bits).T, big)
            grid += np.bincount(flat, weights=w, minlength=grid.size)
    tubes = gaussian_filter(grid.reshape(big), sigma=sigma, mode="constant", truncate=4.0)
    crop = tuple(slice(m, m + n) for m, n in zip(margin, shape, strict=True))
    # Each point carries the tube volume it stands for (in voxels), so the blurred sum is an occupancy.
    return np.clip(tubes[crop], 0, 1).astype(np.float32)


def refractive_index(d: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Refractive-index increment over the medium, and absorption index, from structure densities."""
    n = REFRACTIVE_INDEX
    delta = n["cytoplasm"] * d["cell"] * (1 - d["nucleus"]) + n["nucleus"] * d["nucleus"] + n["chromatin"] * d["dna"]
    for name in ("nucleoli", "nuclear_envelope", "membrane", "mitochondria", "er"):  # each density with its own increment
        delta = delta + n[name] * d[name]
    absorption = 2e-4 * d["nucleoli"] + 5e-5 * d["dna"]
    return delta.astype(np.float32), absorption.astype(np.float32)
