"""Generate the paired synthetic dataset and write it as OME-Zarr, one output chunk at a time.

Channel 0 is the bright-field z-stack, channels 1.. one fluorescence channel per structure. Each
(field of view, time point) is simulated independently: bright-field by propagating through full
planes (optics couples distant pixels), fluorescence per output-chunk column with a PSF halo. Memory
is bounded by the plane size and the chunk size, never by the dataset size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.ndimage import gaussian_filter
from tqdm.auto import tqdm

from chunked_fnet.memory import release_memory
from chunked_fnet.io.convert import remove_partial_output
from chunked_fnet.io.writer import build_pyramid, create_collection, create_image, write_region
from chunked_fnet.synth.noise import tiled_normal
from chunked_fnet.synth.optics import BrightfieldSimulator, Optics
from chunked_fnet.synth.render import STRUCTURES, refractive_index, render_region
from chunked_fnet.synth.scene import CellState, make_scene, state_at

BRIGHTFIELD = "brightfield"
CHANNEL_COLORS = {
    BRIGHTFIELD: "FFFFFF",
    "dna": "3F7FFF",
    "nuclear_envelope": "FF00FF",
    "nucleoli": "FFFF00",
    "membrane": "FF3F3F",
    "mitochondria": "00FF00",
    "er": "FF9F00",
}
NOISE_BLOCK = 64  # y/x size of the global noise tiles: noise does not depend on the output chunking
NOISE_BLOCK_Z = 8


class Photons(BaseModel):
    """Expected photo-electrons per voxel at full label density, and camera parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    dna: float = 900.0
    nuclear_envelope: float = 700.0
    nucleoli: float = 700.0
    membrane: float = 500.0
    mitochondria: float = 900.0
    er: float = 500.0
    brightfield: float = 4000.0  # photons in an empty field
    background: float = 15.0  # autofluorescence
    offset: float = 100.0  # camera baseline (counts)
    read_noise: float = 1.6  # electrons rms


class SynthConfig(BaseModel):
    """Everything that determines a synthetic dataset; the same config and seed give the same voxels."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    size_t: int = Field(1, ge=1, description="time points")
    size_z: int = Field(32, ge=1)
    size_y: int = Field(256, ge=8)
    size_x: int = Field(256, ge=8)
    fovs: int = Field(1, ge=1, description="fields of view (independent samples)")
    voxel_size: tuple[float, float, float] = (0.29, 0.108, 0.108)  # z, y, x µm: the paper's static data
    time_interval: float = Field(300.0, gt=0, description="seconds between frames")
    seed: int = 0
    cell_diameter: float = Field(11.0, gt=1)
    cell_height: float = Field(7.5, gt=1)
    chunks: tuple[int, int, int] = (32, 256, 256)  # z, y, x
    version: Literal["0.4", "0.5"] = "0.5"
    levels: int = Field(1, ge=1)
    optics: Optics = Optics()
    photons: Photons = Photons()

    @field_validator("voxel_size")
    @classmethod
    def _positive(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(not s > 0 for s in v):
            raise ValueError(f"voxel_size must be > 0 in z, y and x, got {v}")
        return v

    @property
    def channel_names(self) -> tuple[str, ...]:
        return (BRIGHTFIELD, *STRUCTURES)

    @property
    def image_shape(self) -> tuple[int, int, int, int, int]:
        return (self.size_t, len(self.channel_names), self.size_z, self.size_y, self.size_x)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.image_shape)) * 2 * self.fovs


def image_paths(out: str | Path, fovs: int) -> list[str]:
    """Where each field of view is written: the output itself, or series 0, 1, ... of a collection."""
    return [str(out)] if fovs == 1 else [f"{out}/{i}" for i in range(fovs)]


def generate(config: SynthConfig, out: str | Path, *, overwrite: bool = False, progress: bool = True, threads: int = 2) -> list[str]:
    """Write the dataset; returns the image path of each field of view. Stopped part way (an error, Ctrl-C,
    SIGTERM), it removes the half-written output it made, so the rerun starts clean."""
    existed = Path(str(out)).exists()
    try:
        return _generate(config, out, overwrite, progress, threads)
    except BaseException:
        if overwrite or not existed:  # else the failure was the refusal to replace what is there
            remove_partial_output(out)
        raise


def _generate(config: SynthConfig, out: str | Path, overwrite: bool, progress: bool, threads: int) -> list[str]:
    paths = image_paths(out, config.fovs)
    if config.fovs > 1:
        create_collection(out, config.version, overwrite)  # series 0, 1, ...: the fields of view
    with tqdm(total=config.fovs * config.size_t, desc="synth (fov x t)", unit="stack", disable=not progress) as bar:
        for fov, path in enumerate(paths):
            scene = make_scene(
                config.seed,
                fov,
                (config.size_y * config.voxel_size[1], config.size_x * config.voxel_size[2]),
                stack_depth=config.size_z * config.voxel_size[0],
                cell_diameter=config.cell_diameter,
                cell_height=config.cell_height,
            )
            group = create_image(
                path,
                shape=config.image_shape,
                chunks=(1, 1, *config.chunks),
                dtype="uint16",
                scale={"t": config.time_interval, "z": config.voxel_size[0], "y": config.voxel_size[1], "x": config.voxel_size[2]},
                channel_names=config.channel_names,
                channel_colors=[CHANNEL_COLORS[c] for c in config.channel_names],
                display_ranges=_display_ranges(config),
                levels=config.levels,
                version=config.version,
                name=f"synthetic hiPSC fov {fov}",
                overwrite=overwrite or config.fovs > 1,
            )
            for t in range(config.size_t):
                state = state_at(scene, minutes=t * config.time_interval / 60.0)
                _write_brightfield(group, config, state, fov, t)
                release_memory()
                _write_fluorescence(group, config, state, fov, t, threads)
                release_memory()
                bar.update(1)
            if config.levels > 1:
                build_pyramid(group, progress=False)
    return paths


def _display_ranges(config: SynthConfig) -> list[dict[str, float]]:
    """Each channel's omero display range: from the camera offset to about its brightest signal."""
    p = config.photons
    ends = [p.offset + getattr(p, name) * (1.3 if name == BRIGHTFIELD else 0.8) for name in config.channel_names]
    out = [{"min": 0.0, "max": 65535.0, "start": p.offset, "end": end} for end in ends]
    out[0]["start"] = p.offset + 0.5 * p.brightfield  # channel 0 is the bright field
    return out


def camera_counts(expected: np.ndarray, config: SynthConfig, key: Sequence[int], z0: int, y0: int, x0: int) -> np.ndarray:
    """Counts from expected photo-electrons: shot noise (Gaussian approximation of Poisson, variance
    equal to the mean) plus read noise and offset. The noise is drawn per global block so it does
    not depend on how the image is chunked. Public: the real-morphology data (synth.real) shares this camera."""
    block = (NOISE_BLOCK_Z, NOISE_BLOCK, NOISE_BLOCK)
    start = (z0, y0, x0)
    counts = tiled_normal(config.seed, [*key, 0], start, expected.shape, block)  # shot noise, scaled below
    counts *= np.sqrt(np.maximum(expected, 0))
    counts += expected
    counts += config.photons.read_noise * tiled_normal(config.seed, [*key, 1], start, expected.shape, block)
    counts += config.photons.offset
    np.rint(counts, out=counts)
    np.clip(counts, 0, 65535, out=counts)
    return counts.astype(np.uint16)


def _write_brightfield(group: zarr.Group, config: SynthConfig, state: CellState, fov: int, t: int) -> None:
    dz, dy, dx = config.voxel_size
    sim = BrightfieldSimulator(config.optics, (dy, dx), (config.size_y, config.size_x))
    dz_bpm = dz / math.ceil(dz / 0.3)  # propagation steps of at most 0.3 µm

    def render_slab(zs: np.ndarray, y0: float, x0: float, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
        delta = np.zeros((len(zs), ny, nx), dtype=np.float32)
        absorption = np.zeros_like(delta)
        for ys in range(0, ny, 256):
            for xs in range(0, nx, 256):
                shape = (len(zs), min(256, ny - ys), min(256, nx - xs))
                d = render_region(state, (zs[0], y0 + ys * dy, x0 + xs * dx), shape, (dz_bpm, dy, dx))
                delta[:, ys : ys + shape[1], xs : xs + shape[2]], absorption[:, ys : ys + shape[1], xs : xs + shape[2]] = refractive_index(d)
        return delta, absorption

    top = state.coverslip_z + float(state.height.max()) + 0.5
    fields, exit_z = sim.exit_fields(render_slab, (0.0, 0.0), (state.coverslip_z - 0.5, top), dz_bpm)
    cz = config.chunks[0]
    planes = sim.focal_planes(fields, exit_z, np.arange(config.size_z) * dz)
    for z0 in range(0, config.size_z, cz):
        n = min(cz, config.size_z - z0)
        counts = np.empty((n, config.size_y, config.size_x), dtype=np.uint16)
        for g0 in range(0, n, 4):  # a few planes at a time: float temporaries stay small
            g = min(4, n - g0)
            expected = np.stack([next(planes) for _ in range(g)])
            expected *= config.photons.brightfield
            counts[g0 : g0 + g] = camera_counts(expected, config, (fov, t, 0), z0 + g0, 0, 0)
        write_region(group, (slice(t, t + 1), slice(0, 1), slice(z0, z0 + n), slice(None), slice(None)), counts[None, None])


def _write_fluorescence(group: zarr.Group, config: SynthConfig, state: CellState, fov: int, t: int, threads: int) -> None:
    sigma = [s / v for s, v in zip(config.optics.psf_sigma(), config.voxel_size, strict=True)]
    halo = [int(math.ceil(4 * s)) + 1 for s in sigma]
    _, cy, cx = config.chunks
    columns = [(y, x) for y in range(0, config.size_y, cy) for x in range(0, config.size_x, cx)]
    bleach = math.exp(-t * config.time_interval / (3600.0 * 8))  # slow photobleaching over hours
    peaks = [getattr(config.photons, s) * bleach for s in STRUCTURES]

    def column(yx: tuple[int, int]) -> None:
        y0, x0 = yx
        ny, nx = min(cy, config.size_y - y0), min(cx, config.size_x - x0)
        counts = np.empty((len(STRUCTURES), config.size_z, ny, nx), dtype=np.uint16)
        sub = 128  # render sub-tiles: temporaries stay small whatever the chunk size
        for sy in range(0, ny, sub):
            for sx in range(0, nx, sub):
                my, mx = min(sub, ny - sy), min(sub, nx - sx)
                box = (config.size_z + 2 * halo[0], my + 2 * halo[1], mx + 2 * halo[2])
                origin = [(i - h) * v for i, h, v in zip((0, y0 + sy, x0 + sx), halo, config.voxel_size, strict=True)]
                dens = render_region(state, origin, box, config.voxel_size)
                inner = (slice(halo[0], -halo[0]), slice(halo[1], halo[1] + my), slice(halo[2], halo[2] + mx))
                for c, name in enumerate(STRUCTURES):
                    expected = config.photons.background + peaks[c] * gaussian_filter(dens.pop(name), sigma, mode="constant", truncate=4.0)[inner]
                    counts[c, :, sy : sy + my, sx : sx + mx] = camera_counts(expected, config, (fov, t, c + 1), 0, y0 + sy, x0 + sx)
                del dens
        for c in range(len(STRUCTURES)):
            region = (slice(t, t + 1), slice(c + 1, c + 2), slice(None), slice(y0, y0 + ny), slice(x0, x0 + nx))
            write_region(group, region, counts[c][None, None])

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        list(pool.map(column, columns))


def summary(paths: Sequence[str], config: SynthConfig, seconds: float | None = None) -> str:
    """A short human-readable description of what was written."""
    disk = sum(f.stat().st_size for root in map(Path, paths) if root.exists() for f in root.rglob("*") if f.is_file())
    lines = [
        f"synthetic paired dataset: {len(paths)} field(s) of view",
        *[f"  {p}" for p in paths],
        f"  axes t,c,z,y,x shape {config.image_shape}  uint16  chunks {(1, 1, *config.chunks)}  NGFF {config.version}",
        f"  voxel size z,y,x {config.voxel_size} um, frame interval {config.time_interval:g} s",
        f"  channels: {', '.join(config.channel_names)}",
        f"  {config.nbytes / 1e9:.3f} GB uncompressed, {disk / 1e9:.3f} GB on disk",
    ]
    if seconds is not None:
        lines.append(f"  written in {seconds:.1f} s")
    return "\n".join(lines)
