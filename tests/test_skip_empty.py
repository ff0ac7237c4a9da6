"""Skipping empty background (--skip-empty): the white-noise rule, outputs unchanged wherever no skipped
patch has weight, the skipped patches counted in the summary and the ledger, the level recorded and kept
by a resume, and the flag."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import chunked_fnet.predict.policy as policy_module
from chunked_fnet import cli
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.errors import InputError
from chunked_fnet.io.writer import create_image, write_region
from chunked_fnet.model import load_checkpoint
from chunked_fnet.predict import Hardware, ModelConstraints, PredictOptions, Predictor, predict, predict_plate, resolve_policy
from chunked_fnet.predict.background import background_patches, white_noise_score
from chunked_fnet.predict.ensemble import StackedEnsemble
from chunked_fnet.preprocess.frame import ModelGridFrame
from chunked_fnet.preprocess.normalize import frame_stats
from chunked_fnet.preprocess.resample import ModelGrid
from chunked_fnet.sliding_window import SlidingWindow, predict_volume
from chunked_fnet.sliding_window.padding import read_extent
from factories import tiny_checkpoint, write_plate

SHAPE = (16, 64, 96)
BLOB = (8, 16, 16)  # a bright-field "cell": a smooth bump, the rest camera noise on medium
# 3 x 5 patches of 16x32x32 (starts 0, 16, 32 in y; 0 ... 64 in x): the 4 whose box holds the blob are evaluated
OPTIONS = dict(patch_shape=(16, 32, 32), overlap=16, chunks=(16, 32, 32), batch_size=1, precision="fp32", shards="none")  # counts per chunk task
EVALUATED = {(0, y, x) for y in (0, 16) for x in (0, 16)}


def _volume(shape: tuple[int, ...] = SHAPE, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = 1000.0 + 10.0 * rng.standard_normal(shape)
    grid = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    values += 300.0 * np.exp(-sum((g - c) ** 2 for g, c in zip(grid, BLOB)) / (2 * 3.0**2))
    return values.astype(np.float32)


def _write(path: Path, values: np.ndarray, voxel: tuple[float, float, float] = (0.4, 0.4, 0.4)) -> Path:
    group = create_image(str(path), shape=(1, 1, *values.shape), dims=("t", "c", "z", "y", "x"), chunks=(1, 1, 16, 32, 32),
                         dtype="float32", scale={"t": 1.0, **dict(zip("zyx", voxel))}, channel_names=["brightfield"])
    write_region(group, (slice(0, 1), slice(0, 1), slice(None), slice(None), slice(None)), values[None, None])
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("skip_empty")
    image = _write(root / "in.zarr", _volume())
    models = [tiny_checkpoint(root / "dna.ckpt"), tiny_checkpoint(root / "er.ckpt", "er", seed=1)]
    with local_client(ClusterSpec(n_workers=1)) as client:
        full, _ = predict(image, models, root / "full.zarr", options=PredictOptions(**OPTIONS), client=client, progress=False)
        skipped, summary = predict(image, models, root / "skip.zarr", options=PredictOptions(**OPTIONS, skip_empty="auto"),
                                   client=client, progress=False)
        yield root, image, models, client, full.values, skipped.values, summary


def _weighted_by(window: SlidingWindow, corners: set[tuple[int, int, int]]) -> np.ndarray:
    """Voxels of the frame where any patch of ``corners`` has blending weight."""
    mask = np.zeros(window.frame_shape, dtype=bool)
    for corner in corners:
        box = window.grid.patch_box(corner)
        inside = tuple(slice(a, min(b, n)) for a, b, n in zip(box.start, box.stop, window.frame_shape))
        weights = window.weights_for(corner)[tuple(slice(0, s.stop - s.start) for s in inside)]
        mask[inside] |= weights > 0
    return mask


def test_white_noise_scores_low_and_anything_imaged_high() -> None:
    rng = np.random.default_rng(1)
    for shape in [(16, 16, 16), (8, 32, 32), (32, 64, 64), (1, 64, 64)]:
        assert max(white_noise_score(rng.standard_normal(shape)) for _ in range(20)) < policy_module.SKIP_EMPTY_LEVEL
    assert white_noise_score(np.full((8, 16, 16), 7.0)) == 0.0  # flat medium without noise
    noise = rng.standard_normal((16, 32, 32))
    assert white_noise_score(noise + 0.5 * np.linspace(-1, 1, 32)) > policy_module.SKIP_EMPTY_LEVEL  # a gradient of 1 noise std is not white
    assert white_noise_score(1e4 + 100 * noise) == pytest.approx(white_noise_score(noise))  # scale free: raw or z-scored alike
    bump = np.zeros((16, 32, 32))
    bump[6:10, 12:20, 12:20] = 3.0  # a small object well above the noise
    assert white_noise_score(noise + bump) > 10


def test_a_patch_past_the_frame_is_scored_on_the_voxels_its_padding_mirrors() -> None:
    # x 60..69 of a 64-voxel axis reads 60..63, then 62..57 mirrored: voxels 57..63
    assert read_extent((slice(0, 8), slice(0, 8), slice(60, 70)), (8, 8, 64), "reflect") == (slice(0, 8), slice(0, 8), slice(57, 64))
    assert read_extent((slice(0, 8), slice(0, 8), slice(60, 70)), (8, 8, 64), "constant")[2] == slice(60, 64)  # zeros past the end


def test_the_rule_reads_the_input_voxels_not_the_resampled_ones() -> None:
    """Resampling onto the model grid interpolates the noise (neighbours correlate): the rule must look at the input's own voxels."""
    values = 1000.0 + 10.0 * np.random.default_rng(2).standard_normal((16, 32, 32)).astype(np.float32)
    grid = ModelGrid(values.shape, (0.4, 0.8, 0.8), (0.4, 0.4, 0.4))  # y/x up-sampled by 2: model voxels between input voxels
    frame = ModelGridFrame(values, ("z", "y", "x"), None, 0, frame_stats(values), grid)
    window = SlidingWindow(grid.shape, (16, 16, 16), 8, 4, "band", align=True)
    corners = list(window.grid.corners())
    assert all(background_patches(frame, window, corners, policy_module.SKIP_EMPTY_LEVEL))
    assert white_noise_score(frame.read((slice(0, 16), slice(0, 16), slice(0, 16)))) > 10  # on the model grid it is not white


def test_outputs_are_unchanged_wherever_no_skipped_patch_has_weight(setup) -> None:
    root, _, _, _, full, skipped, summary = setup
    window = summary.policy.window
    corners = set(window.grid.corners())
    assert len(corners) == 15 and EVALUATED <= corners
    assert summary.background_patches == 11 and summary.patch_evaluations == 4
    changed = _weighted_by(window, corners - EVALUATED)
    assert 0 < changed.sum() < changed.size
    np.testing.assert_allclose(skipped[0][:, ~changed], full[0][:, ~changed], rtol=0, atol=1e-5)
    assert np.abs(skipped[0][:, changed] - full[0][:, changed]).max() > 1e-4  # the skipped patches did not run
    assert np.isfinite(skipped).all()


def test_skipped_patches_are_counted_in_the_summary_and_recorded(setup) -> None:
    root, _, _, _, _, _, summary = setup
    # blocks of 16x32x32 own the patches whose centre they hold: the two at x >= 64 own background only
    assert summary.background_blocks == 2
    assert "11 background patches skipped (level 4), 2 block tasks without a model call" in str(summary)
    record = json.loads((root / "skip.zarr" / ".chunked_fnet" / "run.json").read_text())
    assert record["skip_empty"]["level"] == policy_module.SKIP_EMPTY_LEVEL and record["options"]["skip_empty"] == "auto"
    blocks = [json.loads(p.read_text()) for p in sorted((root / "skip.zarr" / ".chunked_fnet" / "blocks").iterdir())]
    assert len(blocks) == 6 and sum(b["background"] for b in blocks) == 11 and sum(b["patches"] for b in blocks) == 15
    attrs = json.loads((root / "skip.zarr" / "zarr.json").read_text())["attributes"]["chunked_fnet"]
    assert attrs["skip_empty"] == record["skip_empty"]
    assert "skip_empty" not in json.loads((root / "full.zarr" / ".chunked_fnet" / "run.json").read_text())  # off: no rule recorded


def test_an_empty_field_is_predicted_as_flat_medium_without_running_the_models(setup, tmp_path: Path) -> None:
    """Every patch of camera noise on medium is skipped: the output is the blend of the models' response to
    z-score 0, which is what the global sliding window gives for a flat frame."""
    _, _, models, client, _, _, _ = setup
    noise = 1000.0 + 10.0 * np.random.default_rng(3).standard_normal(SHAPE)
    image = _write(tmp_path / "empty.zarr", noise.astype(np.float32))
    out, summary = predict(image, models, tmp_path / "out.zarr", options=PredictOptions(**OPTIONS, skip_empty="auto"), client=client,
                           progress=False)
    assert summary.background_patches == 15 and summary.background_blocks == 6 and summary.patch_evaluations == 0
    ensemble = StackedEnsemble([load_checkpoint(p)[0] for p in models])
    flat = predict_volume(ensemble, np.zeros((1, *SHAPE), dtype=np.float32), policy=summary.policy)
    np.testing.assert_allclose(out.values[0], flat, rtol=0, atol=1e-5)


def test_an_image_without_background_is_predicted_exactly_as_without_skipping(setup, tmp_path: Path) -> None:
    _, _, models, client, _, _, _ = setup
    grid = np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij")
    structured = _volume() + 50.0 * np.sin(grid[1] / 5.0) * np.cos(grid[2] / 7.0)  # something imaged in every patch
    image = _write(tmp_path / "cells.zarr", structured.astype(np.float32))
    full, _ = predict(image, models, tmp_path / "full.zarr", options=PredictOptions(**OPTIONS), client=client, progress=False)
    skip, summary = predict(image, models, tmp_path / "skip.zarr", options=PredictOptions(**OPTIONS, skip_empty="auto"), client=client,
                            progress=False)
    assert summary.background_patches == 0 and summary.patch_evaluations == 15
    np.testing.assert_array_equal(skip.values, full.values)


def test_a_plate_summary_counts_the_fields_skipped_patches(setup, tmp_path: Path) -> None:
    _, _, models, client, _, _, _ = setup
    write_plate(tmp_path / "plate.zarr", wells=("A/1", "B/1"), fields=("0",))  # random normal fields: white noise throughout
    summary = predict_plate(tmp_path / "plate.zarr", models, tmp_path / "pred.zarr", options=PredictOptions(**OPTIONS, skip_empty="auto"),
                            client=client, progress=False)
    assert [r.background_patches for r in summary.runs] == [1, 1] and "2 background patches skipped, 2 block tasks without a model call" in str(summary)


def test_the_in_memory_predictor_skips_as_a_chunked_run_does(setup) -> None:
    _, _, models, _, _, skipped, _ = setup
    predicted = Predictor(models, PredictOptions(**OPTIONS, skip_empty="auto"))(_volume(), scale=(0.4, 0.4, 0.4))
    np.testing.assert_allclose(predicted, skipped[0], rtol=0, atol=1e-5)


def test_a_resume_keeps_the_recorded_level_and_counts_what_it_computed(setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root, image, models, client, _, skipped, _ = setup
    out = tmp_path / "resumed.zarr"
    shutil.copytree(root / "skip.zarr", out)
    done = out / ".chunked_fnet" / "done"
    (done / "t0-z0-y0-x0").unlink()  # interrupted before its first chunk: it needs 4 blocks, with 3 evaluated and 5 background patches
    monkeypatch.setattr(policy_module, "SKIP_EMPTY_LEVEL", 1e9)  # a later default would skip every patch
    resumed, summary = predict(image, models, out, options=PredictOptions(**OPTIONS, skip_empty="auto"), client=client, progress=False,
                               resume=True)
    assert summary.policy.skip_empty == 4.0 and summary.chunks == 1
    assert summary.background_patches == 5 and summary.background_blocks == 0  # this run's blocks only
    np.testing.assert_array_equal(resumed.values, skipped)
    with pytest.raises(InputError, match="skip_empty"):  # resuming without the rule would mix two outputs
        predict(image, models, out, options=PredictOptions(**OPTIONS), client=client, progress=False, resume=True)


def test_the_policy_records_the_level_only_when_skipping() -> None:
    def policy(recorded: dict | None = None, **options):  # noqa: ANN003, ANN202
        return resolve_policy(PredictOptions(**options), (16, 64, 64), ModelConstraints(4, (4, 4, 4), width=4), Hardware(), recorded=recorded)

    assert policy().skip_empty is None and "skip_empty" not in policy().record()
    assert policy(skip_empty="auto").record()["skip_empty"]["level"] == policy_module.SKIP_EMPTY_LEVEL
    assert policy(skip_empty=2.5).skip_empty == 2.5
    recorded = policy(skip_empty="auto").record() | {"skip_empty": {"rule": "...", "level": 6.0}}
    assert policy(recorded, skip_empty="auto").skip_empty == 6.0  # resume: the interrupted run's level
    assert policy(recorded, skip_empty=3.0).skip_empty == 3.0  # an explicit level is the user's


def test_the_flag_and_a_bad_level() -> None:
    def options(*argv: str) -> PredictOptions:
        return cli.predict_options(cli.build_parser().parse_args(["predict", "in.zarr", "--models", "m.ckpt", "--out", "o.zarr", *argv]))

    assert options().skip_empty == "off"
    assert options("--skip-empty", "auto").skip_empty == "auto" and options("--skip-empty", "6").skip_empty == 6.0
    with pytest.raises(InputError, match=r"^predict options: field 'skip_empty': Value error, skip_empty is off, auto or a level > 0 .*got -1$"):
        options("--skip-empty", "-1")
    assert PredictOptions(skip_empty=True).skip_empty == "auto" and PredictOptions(skip_empty=False).skip_empty == "off"  # YAML on/off
