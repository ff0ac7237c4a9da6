"""A colony of hiPS-like cells, described analytically in micrometres and evolving over time.

The scene is a small set of parameters per cell (drawn once from the seed), from which any region
at any time can be rendered: cells tile the coverslip like an epithelial colony (a Voronoi
partition bounded by a maximum radius), each with a dome-shaped body, an ellipsoidal nucleus, a few
nucleoli and a handful of mitochondrial tubules (random walks through the cytoplasm). Over time cells
drift, nuclei breathe and turn, nucleoli and mitochondria move with their cell.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from chunked_fnet.synth.noise import value_noise


@dataclass(frozen=True)
class CellParams:
    """Per-cell parameters (arrays of length n_cells unless stated), in µm, radians and minutes."""

    center: np.ndarray  # (n, 2) y, x at t=0
    velocity: np.ndarray  # (n, 2) µm/min
    wobble_phase: np.ndarray  # (n, 2)
    radius: np.ndarray  # lateral extent bound of the cell body
    height: np.ndarray
    nucleus_offset: np.ndarray  # (n, 2) y, x from cell centre
    nucleus_axes: np.ndarray  # (n, 3) z, y, x semi-axes
    nucleus_angle: np.ndarray  # rotation about z
    nucleus_spin: np.ndarray  # rad/min
    nucleus_phase: np.ndarray  # breathing phase
    nucleoli: list[np.ndarray]  # per cell (k, 4): z, y, x in nucleus units (|p|<1), radius µm
    mitochondria: list[list[np.ndarray]]  # per cell, per tubule (m, 3) z, y, x points relative to cell centre


@dataclass(frozen=True)
class Scene:
    """One field of view's sample: cell parameters plus global constants (µm unless stated)."""

    cells: CellParams
    coverslip_z: float
    seed: int
    extent: tuple[float, float]  # y, x size of the field of view
    margin: float


@dataclass(frozen=True)
class CellState:
    """Where every cell is at one time point: what the renderer needs."""

    center: np.ndarray  # (n, 2)
    radius: np.ndarray
    height: np.ndarray
    nucleus_center: np.ndarray  # (n, 3) z, y, x
    nucleus_axes: np.ndarray  # (n, 3)
    nucleus_angle: np.ndarray
    nucleoli: list[np.ndarray]  # per cell (k, 4) absolute z, y, x and radius
    mitochondria: list[np.ndarray]  # per cell (m, 3) absolute points, all tubules concatenated
    coverslip_z: float
    seed: int
    tree: cKDTree


def make_scene(
    seed: int,
    fov: int,
    extent_yx: tuple[float, float],
    stack_depth: float,
    cell_diameter: float = 11.0,
    cell_height: float = 7.5,
    margin: float = 12.0,
) -> Scene:
    """Draw the cells of one field of view (``extent_yx`` µm, plus a margin of cells around it).

    Cells sit on a jittered hexagonal lattice; a smooth colony mask leaves gaps of bare coverslip,
    as in real hiPS colonies imaged near their edges.
    """
    rng = np.random.default_rng([seed, fov, 7])
    ly, lx = extent_yx
    step = cell_diameter
    rows = int(np.ceil((ly + 2 * margin) / (step * 0.866))) + 1
    cols = int(np.ceil((lx + 2 * margin) / step)) + 1
    jj, ii = np.meshgrid(np.arange(cols), np.arange(rows))
    cy = -margin + ii * step * 0.866
    cx = -margin + jj * step + (ii % 2) * step / 2
    centers = np.stack([cy.ravel(), cx.ravel()], axis=1)
    centers += rng.normal(scale=0.15 * step, size=centers.shape)
    colony = value_noise((centers[:, 0], centers[:, 1]), spacing=4.0 * step, seed=seed * 7919 + fov)
    keep = colony > -0.55
    centers = centers[keep]
    n = len(centers)
    radius = step * rng.uniform(0.62, 0.78, n)
    height = np.clip(cell_height * rng.uniform(0.8, 1.15, n), 2.0, None)
    coverslip = float(max(0.3, (stack_depth - cell_height * 1.15) / 2))
    a_xy = 0.33 * step * rng.uniform(0.9, 1.1, n)
    nucleus_axes = np.stack(
        [np.minimum(0.36 * height, 0.42 * step), a_xy * rng.uniform(1.0, 1.25, n), a_xy / rng.uniform(1.0, 1.25, n)],
        axis=1,
    )
    nucleoli, mitochondria = [], []
    for i in range(n):
        k = rng.integers(1, 4)
        direction = rng.normal(size=(k, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        pos = direction * rng.uniform(0.0, 0.45, (k, 1))
        nucleoli.append(np.concatenate([pos, rng.uniform(0.55, 0.95, (k, 1))], axis=1))
        mitochondria.append(
            _tubules(rng, radius[i], height[i], nucleus_axes[i], coverslip, n_tubules=int(rng.integers(10, 16)))
        )
    cells = CellParams(
        center=centers,
        velocity=rng.normal(scale=0.04, size=(n, 2)) + rng.normal(scale=0.03, size=2),
        wobble_phase=rng.uniform(0, 2 * np.pi, (n, 2)),
        radius=radius,
        height=height,
        nucleus_offset=rng.normal(scale=0.06 * step, size=(n, 2)),
        nucleus_axes=nucleus_axes,
        nucleus_angle=rng.uniform(0, np.pi, n),
        nucleus_spin=rng.normal(scale=0.004, size=n),
        nucleus_phase=rng.uniform(0, 2 * np.pi, n),
        nucleoli=nucleoli,
        mitochondria=mitochondria,
    )
    return Scene(cells=cells, coverslip_z=coverslip, seed=seed * 1_000_003 + fov, extent=(ly, lx), margin=margin)


def _tubules(
    rng: np.random.Generator, radius: float, height: float, nuc_axes: np.ndarray, coverslip: float, n_tubules: int
) -> list[np.ndarray]:
    """Persistent random walks (0.1 µm steps) that stay in the cytoplasm: inside the cell, outside the nucleus."""
    tubes = []
    nuc_z = 0.45 * height
    for _ in range(n_tubules):
        for _attempt in range(50):
            r = rng.uniform(nuc_axes[1] * 1.1, radius * 0.85)
            phi = rng.uniform(0, 2 * np.pi)
            start = np.array([rng.uniform(0.6, 0.7 * height), r * np.sin(phi), r * np.cos(phi)])
            if _in_cytoplasm(start, radius, height, nuc_axes, nuc_z):
                break
        length = int(rng.integers(20, 60))
        direction = rng.normal(size=3)
        direction[0] *= 0.3
        direction /= np.linalg.norm(direction)
        points = [start]
        for _ in range(length):
            direction = direction + rng.normal(scale=0.25, size=3) * np.array([0.3, 1, 1])
            direction /= np.linalg.norm(direction)
            nxt = points[-1] + 0.1 * direction
            if not _in_cytoplasm(nxt, radius, height, nuc_axes, nuc_z):
                direction = -direction
                continue
            points.append(nxt)
        tube = np.asarray(points)
        tube[:, 0] += coverslip
        tubes.append(tube)
    return tubes


def _in_cytoplasm(p: np.ndarray, radius: float, height: float, nuc_axes: np.ndarray, nuc_z: float) -> bool:
    lateral = np.hypot(p[1], p[2])
    if lateral > 0.85 * radius or not 0.4 < p[0] < 0.85 * height * np.sqrt(max(0.0, 1 - (lateral / radius) ** 4)):
        return False
    rn = ((p[0] - nuc_z) / nuc_axes[0]) ** 2 + (p[1] / nuc_axes[1]) ** 2 + (p[2] / nuc_axes[2]) ** 2
    return rn > 1.25**2


def state_at(scene: Scene, minutes: float) -> CellState:
    """Positions and shapes of all cells ``minutes`` after the first frame."""
    c = scene.cells
    wobble = 0.6 * np.sin(2 * np.pi * minutes / 90.0 + c.wobble_phase)
    center = c.center + c.velocity * minutes + wobble
    breathe = 1.0 + 0.08 * np.sin(2 * np.pi * minutes / 120.0 + c.nucleus_phase)
    axes = c.nucleus_axes * np.stack([1.0 / breathe**2, breathe, breathe], axis=1)
    angle = c.nucleus_angle + c.nucleus_spin * minutes
    nuc_center = np.concatenate(
        [(scene.coverslip_z + 0.45 * c.height)[:, None], center + c.nucleus_offset], axis=1
    )
    nucleoli, mitochondria = [], []
    for i in range(len(center)):
        cos, sin = np.cos(angle[i]), np.sin(angle[i])
        p = c.nucleoli[i]
        local = p[:, :3] * axes[i]
        yx = np.stack([cos * local[:, 1] - sin * local[:, 2], sin * local[:, 1] + cos * local[:, 2]], axis=1)
        nucleoli.append(np.concatenate([nuc_center[i, :1] + local[:, :1], nuc_center[i, 1:] + yx, p[:, 3:]], axis=1))
        turn = c.nucleus_spin[i] * minutes * 0.5
        ct, st = np.cos(turn), np.sin(turn)
        pts = np.concatenate(c.mitochondria[i]) if c.mitochondria[i] else np.zeros((0, 3))
        rot = np.stack([pts[:, 0], ct * pts[:, 1] - st * pts[:, 2], st * pts[:, 1] + ct * pts[:, 2]], axis=1)
        rot[:, 1:] += center[i]
        mitochondria.append(rot)
    return CellState(
        center=center,
        radius=c.radius,
        height=c.height,
        nucleus_center=nuc_center,
        nucleus_axes=axes,
        nucleus_angle=angle,
        nucleoli=nucleoli,
        mitochondria=mitochondria,
        coverslip_z=scene.coverslip_z,
        seed=scene.seed,
        tree=cKDTree(center),
    )
