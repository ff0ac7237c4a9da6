"""The synthetic paired dataset: deterministic, chunking-independent, readable by every OME-Zarr reader,
and physically sensible (defocus contrast in bright-field, labels where the structures are)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import zarr
from scipy.ndimage import gaussian_filter, gaussian_gradient_magnitude

from chunked_fnet import open_image, select_channels
from chunked_fnet.synth.dataset import SynthConfig, generate
from chunked_fnet.synth.optics import BrightfieldSimulator, Optics
from chunked_fnet.synth.render import render_region
from chunked_fnet.synth.scene import make_scene, state_at

SMALL = dict(size_t=1, size_z=24, size_y=64, size_x=64, voxel_size=(0.29, 0.29, 0.29), chunks=(24, 64, 64))


def _generate(tmp_path: Path, name: str, **kwargs) -> tuple[SynthConfig, list[str]]:
    config = SynthConfig(**{**SMALL, **kwargs})
    return config, generate(config, tmp_path / name, progress=False)


def test_layout_names_and_scale(tmp_path: Path) -> None:
    config, (path,) = _generate(tmp_path, "a.zarr", size_t=2)
    image = open_image(path)
    assert image.dims == ("t", "c", "z", "y", "x")
    assert image.shape == (2, 7, 24, 64, 64)
    assert list(image["c"].values) == ["brightfield", "dna", "nuclear_envelope", "nucleoli", "membrane", "mitochondria", "er"]
    assert image.attrs["scale"] == {"t": 300.0, "z": 0.29, "y": 0.29, "x": 0.29}
    assert image.dtype == np.uint16


def test_deterministic_and_seeded(tmp_path: Path) -> None:
    _, (a,) = _generate(tmp_path, "a.zarr")
    _, (b,) = _generate(tmp_path, "b.zarr")
    _, (c,) = _generate(tmp_path, "c.zarr", seed=1)
    va, vb, vc = (open_image(p).values for p in (a, b, c))
    np.testing.assert_array_equal(va, vb)
    assert not np.array_equal(va, vc)


def test_values_do_not_depend_on_chunking(tmp_path: Path) -> None:
    _, (a,) = _generate(tmp_path, "a.zarr", chunks=(24, 64, 64))
    _, (b,) = _generate(tmp_path, "b.zarr", chunks=(8, 16, 48))
    assert open_image(b).data.chunksize == (1, 1, 8, 16, 48)
    np.testing.assert_array_equal(open_image(a).values, open_image(b).values)


def test_render_is_tile_consistent() -> None:
    scene = make_scene(3, 0, (30.0, 30.0), stack_depth=9.0)
    state = state_at(scene, 0.0)
    voxel = (0.29, 0.108, 0.108)
    whole = render_region(state, (0.0, 5.0, 5.0), (20, 60, 50), voxel)
    top = render_region(state, (0.0, 5.0, 5.0), (20, 25, 50), voxel)
    bottom = render_region(state, (0.0, 5.0 + 25 * 0.108, 5.0), (20, 35, 50), voxel)
    for name, values in whole.items():
        np.testing.assert_allclose(np.concatenate([top[name], bottom[name]], axis=1), values, atol=1e-6, err_msg=name)


def test_fluorescence_labels_where_the_structures_are(tmp_path: Path) -> None:
    config, (path,) = _generate(tmp_path, "a.zarr", size_y=96, size_x=96, chunks=(24, 96, 96))
    scene = make_scene(config.seed, 0, (96 * 0.29, 96 * 0.29), stack_depth=24 * 0.29)
    truth = render_region(state_at(scene, 0.0), (0.0, 0.0, 0.0), (24, 96, 96), config.voxel_size)
    image = open_image(path).isel(t=0)
    dna = select_channels(image, "dna").values.astype(float)
    inside = truth["dna"] > 0.5
    outside = truth["cell"] < 0.1
    assert inside.sum() > 1000 and outside.sum() > 1000
    # signal (counts over the camera offset) inside nuclei is many times the background outside cells
    assert (dna[inside].mean() - 100) > 10 * (dna[outside].mean() - 100)
    membrane = select_channels(image, "membrane").values.astype(float)
    assert np.corrcoef(membrane.ravel(), truth["membrane"].ravel())[0, 1] > 0.5


def test_brightfield_phase_object_shows_defocus_contrast() -> None:
    """A weak, non-absorbing bead is nearly invisible in focus and shows up above and below it."""
    optics = Optics()
    sim = BrightfieldSimulator(optics, (0.1, 0.1), (64, 64), pad_um=3.0, n_angles=3)
    grid = sim.grid

    def bead(zs, y0, x0, ny, nx):
        z = np.asarray(zs)[:, None, None]
        y = y0 + 0.1 * np.arange(ny)[None, :, None]
        x = x0 + 0.1 * np.arange(nx)[None, None, :]
        inside = (z - 2.0) ** 2 + (y - 3.2) ** 2 + (x - 3.2) ** 2 < 1.0
        return (0.02 * inside).astype(np.float32), np.zeros(inside.shape, np.float32)

    fields, exit_z = sim.exit_fields(bead, (0.0, 0.0), (0.0, 4.0), 0.1)
    assert fields.shape[-2:] == grid
    focus, below, above = sim.focal_planes(fields, exit_z, [2.0, 0.0, 4.0])
    contrast = [float(p.std() / p.mean()) for p in (focus, below, above)]
    assert contrast[1] > 2 * contrast[0] and contrast[2] > 2 * contrast[0]
    # defocus on either side inverts the contrast of the bead's centre
    assert np.sign(below[32, 32] - below.mean()) != np.sign(above[32, 32] - above.mean())


def test_brightfield_changes_with_z_and_carries_nuclear_information(tmp_path: Path) -> None:
    """A linear model on local bright-field features predicts DNA far better than mitochondria.

    This is the property the dataset exists for (as in the paper: nuclear structures are learnable
    from transmitted light, thin tubules much less); the U-Net figures are in the training issue.
    """
    _, (path,) = _generate(tmp_path, "a.zarr", size_y=96, size_x=96, chunks=(24, 96, 96))
    image = open_image(path).isel(t=0).values.astype(float)
    bf = image[0]
    planes = bf.reshape(bf.shape[0], -1)
    assert np.corrcoef(planes[4], planes[20])[0, 1] < 0.9  # not one image repeated over z
    bf = (bf - bf.mean()) / bf.std()
    features = [np.ones_like(bf)]
    for sigma in (0, 1, 2, 4):
        smooth = gaussian_filter(bf, sigma) if sigma else bf
        features += [smooth, smooth**2, gaussian_gradient_magnitude(bf, max(sigma, 0.7))]
    x = np.stack([f.ravel() for f in features], axis=1)

    def fit(channel: int) -> float:
        y = image[channel].ravel()
        coef, *_ = np.linalg.lstsq(x, (y - y.mean()) / y.std(), rcond=None)
        return float(np.corrcoef(x @ coef, y)[0, 1])

    r_dna, r_mito = fit(1), fit(5)
    assert r_dna > 0.2
    assert r_dna > 2.5 * r_mito


def test_timelapse_cells_move_and_change(tmp_path: Path) -> None:
    _, (path,) = _generate(tmp_path, "a.zarr", size_t=3, time_interval=900.0)
    dna = select_channels(open_image(path), "dna").values.astype(float)
    assert not np.array_equal(dna[0], dna[2])
    r01 = np.corrcoef(dna[0].ravel(), dna[1].ravel())[0, 1]
    r02 = np.corrcoef(dna[0].ravel(), dna[2].ravel())[0, 1]
    assert 0.2 < r02 < r01 < 0.999  # frames are related, and drift apart over time


def test_magnification_changes_pixel_size_not_the_sample(tmp_path: Path) -> None:
    """Same seed at two lateral pixel sizes: the same cells, sampled more finely."""
    _, (coarse,) = _generate(tmp_path, "c.zarr", size_y=64, size_x=64, voxel_size=(0.29, 0.2, 0.2), chunks=(24, 64, 64))
    _, (fine,) = _generate(tmp_path, "f.zarr", size_y=128, size_x=128, voxel_size=(0.29, 0.1, 0.1), chunks=(24, 128, 128))
    a = select_channels(open_image(coarse), "dna").isel(t=0).values.astype(float)
    b = select_channels(open_image(fine), "dna").isel(t=0).values.astype(float)
    b2 = b.reshape(24, 64, 2, 64, 2).mean(axis=(2, 4))
    assert np.corrcoef(a.ravel(), b2.ravel())[0, 1] > 0.8


def test_multiple_fields_of_view_form_a_collection(tmp_path: Path) -> None:
    _, paths = _generate(tmp_path, "fovs.zarr", fovs=2)
    assert paths == [f"{tmp_path / 'fovs.zarr'}/0", f"{tmp_path / 'fovs.zarr'}/1"]
    first = open_image(tmp_path / "fovs.zarr", series=0).values
    second = open_image(tmp_path / "fovs.zarr", series=1).values
    assert first.shape == second.shape and not np.array_equal(first, second)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_cli_synth_output_read_alike_by_all_readers_and_valid(tmp_path: Path, version: str) -> None:
    from ngff_zarr import validate
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    out = tmp_path / "cli.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "chunked_fnet", "synth", str(out), "--size", "2", "16", "48", "48", "--voxel-size", "0.29", "0.3", "0.3",
         "--chunks", "8", "32", "32", "--levels", "2", "--ngff-version", version, "--no-progress"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "synthetic paired dataset" in result.stdout
    ours = open_image(out).values
    node = next(iter(Reader(parse_url(str(out)))()))
    np.testing.assert_array_equal(np.asarray(node.data[0]), ours)
    np.testing.assert_array_equal(zarr.open_array(str(out / "0"), mode="r")[...], ours)
    driver = "zarr3" if version == "0.5" else "zarr"
    store = ts.open({"driver": driver, "kvstore": {"driver": "file", "path": str(out / "0")}}, open=True).result()
    np.testing.assert_array_equal(store.read().result(), ours)
    attrs = zarr.open_group(str(out), mode="r").attrs.asdict()
    validate(attrs, version=version, model="image", strict=True)


def test_cli_refuses_to_overwrite_and_leaves_files_alone(tmp_path: Path) -> None:
    _, (path,) = _generate(tmp_path, "a.zarr")
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(path).rglob("*") if p.is_file()}
    result = subprocess.run(
        [sys.executable, "-m", "chunked_fnet", "synth", path, "--size", "1", "8", "16", "16", "--no-progress"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "already exists" in result.stderr and "--overwrite" in result.stderr
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(path).rglob("*") if p.is_file()}
    assert before == after


def test_cli_rejects_bad_settings_with_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "chunked_fnet", "synth", str(tmp_path / "x.zarr"), "--voxel-size", "0.29", "0", "0.1"],
        capture_output=True, text=True, check=False,
    )
    assert result.returncode == 2
    assert "voxel_size" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "x.zarr").exists()
