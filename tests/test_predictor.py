"""The in-process predictor (``cf.Predictor``): one frame in memory, no cluster, the same values as
the chunked path writes for that frame."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import chunked_fnet as cf
from chunked_fnet.errors import InputError
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint


@pytest.fixture(scope="module")
def timelapse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predictor")
    generate(SynthConfig(size_t=2, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), root / "in.zarr", progress=False)
    return root


CASES = {
    # the defaults: one patch covers the frame; the chunked run still splits it into 8 blocks and 18 chunks
    "defaults": ({}, (0.4, 0.4, 0.4)),
    # an explicit window of many patches: blending at every seam
    "patches": ({"patch_shape": (8, 16, 16), "overlap": 4, "precision": "fp32"}, (0.4, 0.4, 0.4)),
    # models at another voxel size, written back on the input's grid: resampling both ways
    "resampled": ({"output_grid": "input", "precision": "fp32"}, (0.5, 0.3, 0.3)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_frame_predicted_in_process_equals_the_chunked_run(timelapse: Path, tmp_path: Path, case: str) -> None:
    extra, voxel = CASES[case]
    models = [tiny_checkpoint(tmp_path / "dna.ckpt", "dna", seed=1, voxel=voxel),
              tiny_checkpoint(tmp_path / "membrane.ckpt", "membrane", seed=2, voxel=voxel, color="FF00FF")]
    options = PredictOptions(chunks=(4, 16, 16), shards="none", **extra)
    chunked, summary = predict(timelapse / "in.zarr", models, tmp_path / "out.zarr", options=options, progress=False)
    assert summary.total_chunks > 2  # the chunked side really is chunked

    predictor = cf.Predictor(models, options)
    image = cf.open_image(timelapse / "in.zarr")
    frame = image.isel(t=1)  # a DataArray with c (narrowed to brightfield), z, y, x and its scale
    got = predictor(frame)
    want = chunked.isel(t=1)
    assert got.dims == ("c", "z", "y", "x") and list(got["c"].values) == ["dna", "membrane"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got.values, want.values, atol=1e-5, rtol=0)
    for d in "zyx":  # the same physical positions as the written image
        np.testing.assert_allclose(got[d].values, want[d].values, atol=1e-9)
    assert got.attrs["patch_shape"] == list(summary.policy.window.patch_shape)
    # a plain NumPy frame with its voxel size gives the same values
    values = cf.select_channels(frame, "brightfield").values
    np.testing.assert_allclose(predictor(values, scale=(0.4, 0.4, 0.4)), want.values, atol=1e-5, rtol=0)


def test_the_predictor_refuses_what_is_not_one_frame(timelapse: Path, tmp_path: Path) -> None:
    model = tiny_checkpoint(tmp_path / "dna.ckpt")
    predictor = cf.Predictor([model])
    image = cf.open_image(timelapse / "in.zarr")
    with pytest.raises(InputError, match=r"holds 2 time points; a Predictor takes one frame at a time"):
        predictor(image)
    with pytest.raises(InputError, match=r"a frame is a \(z, y, x\) array; got shape \(2, 9, 40, 36\)"):
        predictor(np.zeros((2, 9, 40, 36), np.float32))
    with pytest.raises(InputError, match=r"input_channel 'phase' is not one of them"):
        cf.Predictor([model], PredictOptions(input_channel="phase"))(image.isel(t=0))
    with pytest.raises(InputError, match=r"is constant"):
        predictor(np.ones((9, 40, 36), np.float32))
    with pytest.raises(InputError, match=r"all positive; got \[0.4, 0.0, 0.4\]"):
        predictor(np.random.default_rng(0).random((9, 40, 36)), scale=(0.4, 0.0, 0.4))


def test_the_readme_example_runs_as_written(timelapse: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's few lines for acquisition software, executed as they stand (files named as there)."""
    import re
    import shutil

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "cf.Predictor" in b)
    tiny_checkpoint(tmp_path / "dna.ckpt", "dna", seed=1, voxel=(0.29, 0.108, 0.108))
    tiny_checkpoint(tmp_path / "membrane.ckpt", "membrane", seed=2, voxel=(0.29, 0.108, 0.108), color="FF00FF")
    shutil.copytree(timelapse / "in.zarr", tmp_path / "live.zarr")
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # noqa: S102 - the README's own code
    prediction, nuclei = scope["prediction"], scope["nuclei"]
    assert prediction.dims == ("c", "z", "y", "x") and list(prediction["c"].values) == ["dna", "membrane"]
    assert nuclei.dims == ("z", "y", "x") and np.isfinite(nuclei.values).all()
    # on the models' grid: 0.4 µm voxels resampled to 0.29 x 0.108 x 0.108
    from chunked_fnet.preprocess.resample import ModelGrid

    assert prediction.shape[1:] == ModelGrid((9, 40, 36), (0.4, 0.4, 0.4), (0.29, 0.108, 0.108)).shape
    assert prediction.attrs["scale"] == {"z": 0.29, "y": 0.108, "x": 0.108}


def test_the_top_level_names_leave_the_subpackages_reachable() -> None:
    """``cf.Predictor`` and ``cf.PredictOptions`` are at the top; ``cf.predict`` stays the subpackage
    (a function of that name there made ``import chunked_fnet.predict.ownership as o`` fail)."""
    import types

    import chunked_fnet.predict.ownership as ownership

    assert isinstance(cf.predict, types.ModuleType) and ownership.claimed is not None
    assert cf.Predictor is cf.predict.Predictor and cf.PredictOptions is cf.predict.PredictOptions
