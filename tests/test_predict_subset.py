"""predict() honours a DataArray subset: exactly its time points, its z/y/x extent and its pyramid
level, at the subset's physical origin; selections it cannot honour are refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from chunked_fnet import create_image, open_image, select_channels, write_region
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.errors import ChunkedFnetError
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint

OPTIONS = PredictOptions(patch_shape=(16, 16, 16), overlap=0.25, batch_size=2, chunks=(8, 16, 16), precision="fp32")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("subset")
    # 0.2 µm lateral input with a second pyramid level at 0.4 µm; models at 0.4 µm
    config = SynthConfig(size_t=3, size_z=13, size_y=64, size_x=60, voxel_size=(0.4, 0.2, 0.2), chunks=(13, 32, 32), levels=2)
    generate(config, root / "in.zarr", progress=False)
    ckpt = tiny_checkpoint(root / "dna.ckpt", color="0000FF")
    with local_client(ClusterSpec(n_workers=1)) as client:
        yield root, root / "in.zarr", [ckpt], client


def _store_of(subset: xr.DataArray, path: Path) -> Path:
    """A store that holds only ``subset``: its voxels, its scale, its origin, its channel names."""
    dims = tuple(subset.dims)
    group = create_image(
        path, shape=subset.shape, dims=dims, chunks=subset.shape, dtype=subset.dtype,
        scale=dict(subset.attrs["scale"]),
        translation={d: float(subset[d].values[0]) for d in dims if d != "c"},
        channel_names=[str(c) for c in subset["c"].values],
    )
    write_region(group, tuple(slice(None) for _ in dims), subset.values)
    return path


def _predict(setup, image, name: str) -> xr.DataArray:
    root, _, models, client = setup
    out, _ = predict(image, models, root / name, options=OPTIONS, client=client, progress=False)
    return out


SUBSETS = {
    "t": lambda im: im.isel(t=slice(1, 3)),
    "z": lambda im: im.isel(z=slice(3, 11)),
    "yx": lambda im: im.isel(y=slice(10, 50), x=slice(7, 45)),
    "tzyx": lambda im: im.sel(t=slice(300.0, 300.0)).isel(z=slice(1, 12), y=slice(0, 33), x=slice(25, 60)),
}


@pytest.mark.parametrize("kind", list(SUBSETS))
def test_subset_equals_a_store_holding_only_that_region(setup, kind: str) -> None:
    root, image_path, _, _ = setup
    subset = SUBSETS[kind](open_image(image_path))
    out = _predict(setup, subset, f"sub-{kind}.zarr")
    expected = _predict(setup, _store_of(subset, root / f"crop-{kind}.zarr"), f"crop-pred-{kind}.zarr")
    assert out.shape == expected.shape
    assert out.sizes["t"] == subset.sizes["t"]
    np.testing.assert_allclose(out.values, expected.values, rtol=0, atol=1e-6)
    # the output overlays the subset: its first voxel at the subset's physical origin
    for d in ("t", "z", "y", "x"):
        assert out[d].values[0] == pytest.approx(float(subset[d].values[0]), abs=1e-9), d
        assert out[d].values[0] == pytest.approx(expected[d].values[0], abs=1e-9), d


def test_level_one_input_is_read_at_that_level(setup) -> None:
    root, image_path, _, _ = setup
    level1 = open_image(image_path, level=1).isel(t=slice(0, 1))
    assert level1.attrs["scale"]["y"] == pytest.approx(0.4)
    out = _predict(setup, level1, "level1.zarr")
    expected = _predict(setup, _store_of(level1, root / "crop-level1.zarr"), "crop-pred-level1.zarr")
    assert out.shape == (1, 1, 13, 32, 30) == expected.shape
    np.testing.assert_allclose(out.values, expected.values, rtol=0, atol=1e-6)
    assert [out[d].values[0] for d in "zyx"] == pytest.approx([float(level1[d].values[0]) for d in "zyx"])
    # and it differs from predicting level 0 (which is resampled from 0.2 µm)
    level0 = _predict(setup, open_image(image_path).isel(t=slice(0, 1)), "level0.zarr")
    assert level0.shape[-2:] == (32, 30) and not np.allclose(level0.values, out.values, atol=1e-3)


def test_a_single_channel_selection_is_its_channel(setup) -> None:
    _, image_path, _, _ = setup
    image = open_image(image_path).isel(t=slice(2, 3), y=slice(0, 32), x=slice(0, 32))
    by_name = _predict(setup, select_channels(image, "brightfield"), "bf.zarr")
    whole = _predict(setup, image, "bf-all.zarr")
    np.testing.assert_array_equal(by_name.values, whole.values)
    with pytest.raises(ChunkedFnetError, match="holds only channel 'dna'"):
        predict(select_channels(image, "dna"), setup[2], setup[0] / "x.zarr", options=OPTIONS.model_copy(update={"input_channel": "brightfield"}), progress=False)


@pytest.mark.parametrize(
    "select,message",
    [
        (lambda im: im.isel(y=slice(0, None, 2)), r"along y is not a contiguous range of voxels \(indices \[0, 2, 4,"),
        (lambda im: im.isel(t=[0, 2]), r"along t is not a contiguous range of voxels \(indices \[0, 2\]\)"),
        (lambda im: im.isel(x=[3, 1, 2]), r"along x is not a contiguous range"),
        (lambda im: im.isel(z=4), r"a single z plane was selected \(z=1.6"),
        (lambda im: im * 2, r"values were changed after opening \(mul\)"),
        (lambda im: im.isel(t=slice(0, 1)).load(), r"holds its values in memory"),
        (lambda im: xr.DataArray(im.values, dims=im.dims), r"does not say which OME-Zarr it came from"),
    ],
)
def test_selections_that_cannot_be_honoured_are_refused(setup, select, message: str) -> None:
    root, image_path, models, client = setup
    out = root / "refused.zarr"
    with pytest.raises(ChunkedFnetError, match=message) as info:
        predict(select(open_image(image_path)), models, out, options=OPTIONS, client=client, progress=False)
    assert "\n" not in str(info.value)
    assert not out.exists()
