"""Training: manifests and splits, patches from the chunked store, exact resume, evaluation, bounded cache."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from chunked_fnet.cli import main as cli
from chunked_fnet.errors import InputError
from chunked_fnet.evaluate.report import evaluate_run, write_report
from chunked_fnet.model import load_checkpoint
from chunked_fnet.preprocess.resample import ModelGrid, resample_region
from chunked_fnet.synth.dataset import SynthConfig
from chunked_fnet.train.data import PairReader, PatchDataset, describe_pair, expand_pairs
from chunked_fnet.train.manifest import read_manifest, split_pairs
from chunked_fnet.train.trainer import TrainConfig, train
from factories import paired_synth
from processes import kill_when


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    paired_synth(root, SynthConfig(size_t=2, size_z=16, size_y=48, size_x=48, fovs=3, voxel_size=(0.4, 0.3, 0.3), chunks=(16, 32, 32)))
    return root



def _config(dataset: Path, out: Path, **kw) -> TrainConfig:
    settings = dict(
        manifest=str(dataset / "manifest.yaml"),
        output=str(out),
        structure="dna",
        model={"depth": 1, "width": 4},
        voxel_size=(0.4, 0.4, 0.4),
        patch_shape=(8, 16, 16),
        batch_size=2,
        iterations=6,
        n_train=4,
        checkpoint_every=3,
        validate_every=2,
        validation_patches=2,
        workers=0,
    )
    settings.update(kw)
    return TrainConfig(**settings)


def _losses(run: Path) -> list[tuple[str, str, str]]:
    with (run / "losses.csv").open() as f:
        return [tuple(r) for r in csv.reader(f)][1:]


def test_manifest_split_is_reproducible_and_keeps_a_test_pair(dataset: Path) -> None:
    pairs = expand_pairs(read_manifest(dataset / "manifest.yaml"))
    assert len(pairs) == 6  # 3 images x 2 time points
    a = split_pairs(pairs, n_train=30, seed=0)
    b = split_pairs(pairs, n_train=30, seed=0)
    assert a == b and len(a[0]) == 5 and len(a[1]) == 1
    train, test = split_pairs(pairs, n_train=4, seed=1)
    assert len(train) == 4 and len(test) == 2 and not set(p.name for p in train) & set(p.name for p in test)


def test_manifest_errors_name_file_and_entry(tmp_path: Path) -> None:
    bad = tmp_path / "m.yaml"
    bad.write_text(yaml.safe_dump({"images": [{"path": "x.zarr", "target_chanel": "dna"}]}))
    with pytest.raises(InputError, match=r"m.yaml, entry 1: .*target_chanel"):
        read_manifest(bad)


def test_csv_manifest(dataset: Path, tmp_path: Path) -> None:
    table = tmp_path / "m.csv"
    table.write_text(f"path,input_channel,target_channel,time_points\n{dataset}/synth.zarr/0,0,dna,1\n")
    pairs = expand_pairs(read_manifest(table))
    assert [(p.input_channel, p.target_channel, p.t) for p in pairs] == [(0, "dna", 1)]


def test_resample_region_equals_whole() -> None:
    rng = np.random.default_rng(0)
    source = rng.normal(size=(13, 40, 37)).astype(np.float32)
    grid = ModelGrid(source.shape, (0.29, 0.108, 0.108), (0.29, 0.29, 0.29))
    assert grid.shape == (13, 15, 14)
    read = lambda region: source[region]  # noqa: E731
    whole = resample_region(read, grid, tuple(slice(0, n) for n in grid.shape))
    part = resample_region(read, grid, (slice(2, 9), slice(5, 15), slice(0, 6)))
    np.testing.assert_allclose(part, whole[2:9, 5:15, 0:6], atol=1e-6)
    # a constant image stays constant; the mean is preserved by the anti-aliasing filter
    flat = resample_region(lambda region: np.full((13, 40, 37), 3.0, np.float32)[region], grid, tuple(slice(0, n) for n in grid.shape))
    np.testing.assert_allclose(flat, 3.0, rtol=1e-6)


def test_patches_come_from_store_zscored_and_deterministic(dataset: Path) -> None:
    pairs = expand_pairs(read_manifest(dataset / "manifest.yaml"))
    specs = [describe_pair(p) for p in pairs[:2]]
    ds = PatchDataset(specs, (0.4, 0.4, 0.4), (8, 16, 16), seed=3, length=10)
    x1, y1 = ds[7]
    x2, y2 = PatchDataset(specs, (0.4, 0.4, 0.4), (8, 16, 16), seed=3, length=10, cache_bytes=0)[7]  # window reads
    assert x1.shape == (1, 8, 16, 16)
    torch.testing.assert_close(x1, x2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    whole_x, whole_y = PairReader(specs[0], (0.4, 0.4, 0.4)).whole()
    assert abs(float(whole_x.mean())) < 0.05 and abs(float(whole_x.std()) - 1) < 0.1  # z-scored per frame


def test_patch_larger_than_image_is_refused(dataset: Path) -> None:
    specs = [describe_pair(expand_pairs(read_manifest(dataset / "manifest.yaml"))[0])]
    with pytest.raises(InputError, match="smaller than the training patch"):
        PatchDataset(specs, (0.4, 0.4, 0.4), (32, 64, 64), seed=0, length=1)


def test_cache_stays_within_budget(dataset: Path) -> None:
    specs = [describe_pair(p) for p in expand_pairs(read_manifest(dataset / "manifest.yaml"))]
    one_pair = 2 * 4 * int(np.prod(specs[0].grid((0.4, 0.4, 0.4)).shape))
    ds = PatchDataset(specs, (0.4, 0.4, 0.4), (8, 16, 16), seed=0, length=60, cache_bytes=int(2.5 * one_pair))
    for i in range(60):
        ds[i]
    assert len({ds.draw(i)[0] for i in range(60)}) == len(specs)  # the data (6 pairs) exceed the cache (2)
    assert 0 < ds.cache.peak_bytes <= 2.5 * one_pair


def test_resume_gives_the_same_losses_and_weights(dataset: Path, tmp_path: Path) -> None:
    straight = train(_config(dataset, tmp_path / "straight", iterations=6), progress=False)
    train(_config(dataset, tmp_path / "resumed", iterations=3), progress=False)
    resumed = train(_config(dataset, tmp_path / "resumed", iterations=6), resume=True, progress=False)
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "resumed")
    assert len(_losses(tmp_path / "straight")) == 6
    a, card = load_checkpoint(straight)
    b, _ = load_checkpoint(resumed)
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert card.training.iterations == 6 and card.structure == "dna"
    assert (tmp_path / "straight" / "losses.png").stat().st_size > 1000


def _killed(dataset: Path, tmp_path: Path, ready: str, **kw) -> tuple[Path, Path]:
    """An uninterrupted run here, and the same in a real ``train`` process SIGKILLed once ``ready`` exists in its
    folder; returns its folder and config file (one thread, as conftest gives this process: the same sums)."""
    train(_config(dataset, tmp_path / "straight", precision="fp32", device="cpu", **kw), progress=False)
    run, config = tmp_path / "killed", tmp_path / "killed.yaml"
    config.write_text(yaml.safe_dump({**_config(dataset, run, precision="fp32", device="cpu", **kw).model_dump(mode="json"), "threads": 1}))
    kill_when(["train", "--config", str(config), "--no-progress"], run / ready)
    assert not (run / "dna.ckpt").exists()
    return run, config


def _same_as_straight(tmp_path: Path, iterations: int) -> None:
    assert _losses(tmp_path / "straight") == _losses(tmp_path / "killed") and len(_losses(tmp_path / "killed")) == iterations
    a, _ = load_checkpoint(tmp_path / "straight" / "dna.ckpt")
    b, card = load_checkpoint(tmp_path / "killed" / "dna.ckpt")
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)
    assert card.training.iterations == iterations


def test_killed_before_its_first_checkpoint_resumes_from_iteration_0(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, config = _killed(dataset, tmp_path, "config.yaml", iterations=4, checkpoint_every=100)
    assert not (run / "checkpoints").exists()
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({**yaml.safe_load(config.read_text()), "learning_rate": 0.01, "model": {"depth": 1, "width": 8}}))
    assert cli(["train", "--config", str(other), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(run) in err and "learning_rate: interrupted run 0.001, now 0.01" in err and "model.width: " in err, err
    assert cli(["train", "--config", str(config), "--resume", "--no-progress"]) == 0
    _same_as_straight(tmp_path, 4)


def test_killed_after_its_first_checkpoint_resumes_exactly(dataset: Path, tmp_path: Path) -> None:
    run, config = _killed(dataset, tmp_path, "checkpoints/latest/state.json", iterations=8, checkpoint_every=2)
    assert json.loads((run / "checkpoints/latest/state.json").read_text())["iteration"] < 8
    assert cli(["train", "--config", str(config), "--resume", "--no-progress"]) == 0
    _same_as_straight(tmp_path, 8)


def test_refuses_existing_run_and_changed_settings_on_resume(dataset: Path, tmp_path: Path) -> None:
    train(_config(dataset, tmp_path / "run", iterations=2), progress=False)
    with pytest.raises(InputError, match="already exists"):
        train(_config(dataset, tmp_path / "run", iterations=2), progress=False)
    with pytest.raises(InputError, match="learning_rate"):
        train(_config(dataset, tmp_path / "run", iterations=4, learning_rate=0.01), resume=True, progress=False)


def test_evaluate_writes_metrics_and_figure(dataset: Path, tmp_path: Path) -> None:
    train(_config(dataset, tmp_path / "run", iterations=2), progress=False)
    rows = evaluate_run(tmp_path / "run", progress=False)
    assert {r["split"] for r in rows} == {"train", "test"} and len(rows) == 6
    for r in rows:
        assert np.isfinite(r["normalized_error"]) and -1 <= r["pearson_r"] <= 1
        assert -1 <= r["ssim"] <= 1 and np.isfinite(r["psnr_db"])
        assert r["nrmse"] ** 2 == pytest.approx(r["normalized_error"], rel=1e-6)  # scikit-image and ours agree
        assert r["fsc_resolution_um"] >= 2 * 0.4  # the model grid's sampling limit, µm (or inf: nothing resolved)
    table, figure = write_report(rows, tmp_path / "eval")
    assert table.read_text().startswith("structure,split,image,normalized_error,pearson_r,ssim,psnr_db,nrmse,fsc_resolution_um")
    assert figure.stat().st_size > 1000


def test_cli_train_config_typo_is_named_with_suggestion(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({"manifest": str(dataset / "manifest.yaml"), "output": str(tmp_path / "r"), "structure": "dna", "learnig_rate": 0.1}))
    assert cli(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert "learnig_rate" in err and "did you mean 'learning_rate'" in err
    assert not (tmp_path / "r").exists()
