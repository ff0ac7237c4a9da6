"""Training until the validation loss plateaus: the rule itself, the validation split (manifest and plate)
that it needs, a run that stops there, and a stopped run that a resume neither retrains nor changes; and the
learning rate lowered on the same validation losses, resumed exactly."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from chunked_fnet.errors import InputError
from chunked_fnet.evaluate.report import evaluate_run
from chunked_fnet.model import load_checkpoint, load_tensors
from chunked_fnet.synth.dataset import SynthConfig, generate
from chunked_fnet.train.data import expand_pairs
from chunked_fnet.train.manifest import read_manifest, split_pairs, validation_pairs
from chunked_fnet.train.trainer import LearningRateDecay, PlateauRule, TrainConfig, learning_rate_decays, train
from factories import write_plate


def test_the_rule_stops_at_the_first_validation_without_enough_improvement() -> None:
    rule = PlateauRule(patience=2, min_delta=0.1)
    falling = [(i * 10, 1.0 / (i + 1)) for i in range(8)]  # every validation improves the best by >= 12 %
    assert rule.stop_at(falling) is None
    assert rule.stop_at([(10, 1.0), (20, 0.5)]) is None  # fewer than patience + 1 validations: nothing to judge
    # best 0.5 at 20; 30 and 40 reach 0.46 > 0.5 * 0.9: no 10 % improvement in 2 validations -> stop at 40
    assert rule.stop_at([(10, 1.0), (20, 0.5), (30, 0.48), (40, 0.46), (50, 0.1)]) == 40
    # 0.44 at 40 is 12 % below 0.5: still improving; then 50 and 60 do not beat 0.44 by 10 %
    assert rule.stop_at([(10, 1.0), (20, 0.5), (30, 0.48), (40, 0.44), (50, 0.43), (60, 0.45)]) == 60
    assert PlateauRule(patience=1, min_delta=0).stop_at([(1, 2.0), (2, 2.0)]) == 2  # equal is no improvement
    with pytest.raises(ValueError, match="patience"):
        PlateauRule(patience=0)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plateau_data")
    generate(SynthConfig(size_t=1, size_z=16, size_y=48, size_x=48, fovs=4, voxel_size=(0.4, 0.3, 0.3), chunks=(16, 32, 32)),
             root / "synth.zarr", progress=False)
    splits = ["train", "train", "validation", "test"]
    manifest = {"images": [{"path": f"synth.zarr/{i}", "target_channel": "dna", "split": s} for i, s in enumerate(splits)]}
    (root / "manifest.yaml").write_text(yaml.safe_dump(manifest))
    (root / "no_validation.yaml").write_text(yaml.safe_dump({"images": [e for e in manifest["images"] if e["split"] != "validation"]}))
    return root


def _config(dataset: Path, out: Path, **kw) -> TrainConfig:  # noqa: ANN003
    settings = dict(
        manifest=str(dataset / "manifest.yaml"), output=str(out), structure="dna", model={"depth": 1, "width": 4},
        voxel_size=(0.4, 0.4, 0.4), patch_shape=(8, 16, 16), batch_size=2, iterations=40, checkpoint_every=100,
        validate_every=2, validation_patches=2, workers=0, precision="fp32",
        learning_rate=1e-12,  # the weights barely move: the validation loss is flat and the rule must stop at its 3rd validation
        plateau={"patience": 2, "min_delta": 0.01},
    )
    settings.update(kw)
    return TrainConfig(**settings)


def _losses(run: Path) -> list[list[str]]:
    with (run / "losses.csv").open() as f:
        return list(csv.reader(f))[1:]


def test_a_validation_split_is_neither_trained_nor_tested(dataset: Path) -> None:
    pairs = expand_pairs(read_manifest(dataset / "manifest.yaml"))
    train_pairs, test = split_pairs(pairs, n_train=30, seed=0)
    assert [p.path.rsplit("/", 1)[1] for p in validation_pairs(pairs)] == ["2"]
    assert [p.path.rsplit("/", 1)[1] for p in train_pairs] == ["0", "1"]
    assert [p.path.rsplit("/", 1)[1] for p in test] == ["3"]


def test_a_run_stops_where_its_validation_loss_plateaus(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    ckpt = train(_config(dataset, run), progress=False)
    rows = _losses(run)
    assert [int(r[0]) for r in rows] == list(range(1, 7))  # validations at 2, 4, 6: the third stops it, far before 40
    assert [r[0] for r in rows if r[2]] == ["2", "4", "6"]
    record = json.loads((run / "plateau.json").read_text())
    assert record["stopped_at"] == 6 and record["validations"] == 3
    assert record["rule"] == {"patience": 2, "min_delta": 0.01, "keep": "best"}
    _, card = load_checkpoint(ckpt)
    assert card.training.iterations == record["best_at"]  # the kept model is the lowest validation loss's
    split = json.loads((run / "split.json").read_text())
    assert [len(split[k]) for k in ("train", "validation", "test")] == [2, 1, 1]
    assert sorted({r["split"] for r in evaluate_run(run, progress=False)}) == ["test", "train", "validation"]
    assert (run / "losses.png").stat().st_size > 0

    # a resume of the stopped run, even with more iterations allowed, trains no further and keeps the model
    weights = {k: v.clone() for k, v in load_checkpoint(ckpt)[0].state_dict().items()}
    train(_config(dataset, run, iterations=80), resume=True, progress=False)
    assert _losses(run) == rows
    after = load_checkpoint(ckpt)[0].state_dict()
    assert all(torch.equal(weights[k], after[k]) for k in weights)


def test_a_run_resumed_before_its_plateau_stops_where_an_uninterrupted_one_does(dataset: Path, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    train(_config(dataset, whole, learning_rate=1e-3, plateau={"patience": 1, "min_delta": 0.5}), progress=False)
    stop = json.loads((whole / "plateau.json").read_text())["stopped_at"]
    assert stop < 40
    part = tmp_path / "part"
    train(_config(dataset, part, learning_rate=1e-3, plateau={"patience": 1, "min_delta": 0.5}, iterations=stop - 1,
                  checkpoint_every=1), progress=False)
    assert not (part / "plateau.json").exists()
    train(_config(dataset, part, learning_rate=1e-3, plateau={"patience": 1, "min_delta": 0.5}, checkpoint_every=1), resume=True,
          progress=False)
    assert _losses(part) == _losses(whole)
    assert json.loads((part / "plateau.json").read_text()) == json.loads((whole / "plateau.json").read_text())


def test_a_plateau_rule_without_a_validation_split_is_refused(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"marks no pair 'split: validation' \(the test split must not decide when training ends\)"):
        train(_config(dataset, tmp_path / "run", manifest=str(dataset / "no_validation.yaml")), progress=False)
    run = tmp_path / "fixed"  # without the rule, the test split's patches are the validation loss, as in pytorch_fnet
    train(_config(dataset, run, manifest=str(dataset / "no_validation.yaml"), plateau=None, iterations=4), progress=False)
    assert [r[0] for r in _losses(run) if r[2]] == ["2", "4"]
    assert json.loads((run / "split.json").read_text())["validation"] == []


def test_plate_validation_wells(tmp_path: Path) -> None:
    wells = ("A/1", "A/2", "B/1", "B/2")
    write_plate(tmp_path / "plate.zarr", wells=wells, shape=(8, 24, 20))

    def manifest(**images) -> Path:  # noqa: ANN003
        path = tmp_path / "manifest.yaml"
        path.write_text(yaml.safe_dump({"images": {"plate": "plate.zarr", "target_channel": "dna", **images}}))
        return path

    entries = read_manifest(manifest(test_wells=["B/2"], validation_wells=["B/1"]))
    by_split = {s: sorted({"/".join(e.path.split("/")[-3:-1]) for e in entries if e.split == s}) for s in ("train", "validation", "test")}
    assert by_split == {"train": ["A/1", "A/2"], "validation": ["B/1"], "test": ["B/2"]}
    with pytest.raises(InputError, match=r"the wells \['B/1'\] are in both test_wells and validation_wells"):
        read_manifest(manifest(test_wells=["B/1"], validation_wells=["B/1"]))
    with pytest.raises(InputError, match="test_wells and validation_wells name every well"):
        read_manifest(manifest(test_wells=["A/1", "A/2"], validation_wells=["B/1", "B/2"]))
    with pytest.raises(InputError, match=r"no well C/9"):
        read_manifest(manifest(test_wells=["B/2"], validation_wells=["C/9"]))


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(ckpt)[0].state_dict()


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_kept_model_is_the_lowest_validation_losss_and_keep_last_keeps_the_stops(dataset: Path, tmp_path: Path) -> None:
    # min_delta 0: the rule stops only after a validation no lower than the best before it, so best and stop differ
    rule = {"patience": 1, "min_delta": 0.0}
    best_run = tmp_path / "best"
    best = train(_config(dataset, best_run, learning_rate=3e-2, plateau=rule), progress=False)
    record = json.loads((best_run / "plateau.json").read_text())
    curve = [(int(r[0]), float(r[2])) for r in _losses(best_run) if r[2]]
    best_at = min(curve, key=lambda iv: iv[1])[0]
    assert record["best_at"] == best_at < record["stopped_at"] < 40
    _, card = load_checkpoint(best)
    assert card.training.iterations == best_at
    assert _same(_weights(best), _weights(best_run / "checkpoints" / "best"))

    # the kept weights are those a run of exactly best_at iterations ends with (trained independently, no rule)
    plain = train(_config(dataset, tmp_path / "plain", learning_rate=3e-2, plateau=None, iterations=best_at), progress=False)
    assert _same(_weights(best), _weights(plain))

    last_run = tmp_path / "last"
    last = train(_config(dataset, last_run, learning_rate=3e-2, plateau={**rule, "keep": "last"}), progress=False)
    assert _losses(last_run) == _losses(best_run)
    assert not (last_run / "checkpoints" / "best").exists()
    assert load_checkpoint(last)[1].training.iterations == record["stopped_at"]
    assert not _same(_weights(last), _weights(best))
    assert _same(_weights(last), _weights(last_run / "checkpoints" / "latest"))


def test_a_resumed_run_keeps_the_same_best_model_as_an_uninterrupted_one(dataset: Path, tmp_path: Path) -> None:
    rule = {"patience": 1, "min_delta": 0.0}
    whole = train(_config(dataset, tmp_path / "whole", learning_rate=3e-2, plateau=rule), progress=False)
    stop = json.loads((tmp_path / "whole" / "plateau.json").read_text())["stopped_at"]
    part = tmp_path / "part"
    train(_config(dataset, part, learning_rate=3e-2, plateau=rule, iterations=stop - 1, checkpoint_every=1), progress=False)
    resumed = train(_config(dataset, part, learning_rate=3e-2, plateau=rule, checkpoint_every=1), resume=True, progress=False)
    assert load_checkpoint(resumed)[1].training.iterations == load_checkpoint(whole)[1].training.iterations
    assert _same(_weights(resumed), _weights(whole))


def test_the_decay_rule_lowers_the_rate_after_more_than_patience_validations_without_improvement() -> None:
    rule = LearningRateDecay(factor=0.5, patience=1, min_delta=0.1)
    assert rule.decays(1.0, [(i * 10, 1.0 / (i + 1)) for i in range(8)]) == []  # every validation improves by >= 12 %
    # best 0.5 at 20; 30 (0.48) and 40 (0.46) are not 10 % below it: the second of them lowers the rate
    assert rule.decays(1.0, [(10, 1.0), (20, 0.5), (30, 0.48), (40, 0.46)]) == [(40, 0.5)]
    # the count starts again after a decay: two more without improvement lower it again
    flat = [(i, 1.0) for i in range(1, 8)]
    assert rule.decays(1.0, flat) == [(3, 0.5), (5, 0.25), (7, 0.125)]
    assert LearningRateDecay(factor=0.5, patience=1, min_delta=0.1, cooldown=2).decays(1.0, flat) == [(3, 0.5), (7, 0.25)]
    assert LearningRateDecay(factor=0.5, patience=1, min_learning_rate=0.3).decays(1.0, flat) == [(3, 0.5), (5, 0.3)]
    with pytest.raises(ValueError, match="factor"):
        LearningRateDecay(factor=1.0)


_DECAY = {"factor": 0.1, "patience": 0, "min_delta": 0.99}  # every validation after the first lowers the rate


def test_a_decayed_rate_is_what_trains_after_the_validation_that_lowered_it(dataset: Path, tmp_path: Path) -> None:
    common = dict(learning_rate=3e-2, plateau=None, iterations=8)
    constant = tmp_path / "constant"
    train(_config(dataset, constant, **common), progress=False)
    decayed = tmp_path / "decayed"
    ckpt = train(_config(dataset, decayed, learning_rate_decay=_DECAY, **common), progress=False)
    assert learning_rate_decays(decayed) == [(4, pytest.approx(3e-3)), (6, pytest.approx(3e-4)), (8, pytest.approx(3e-5))]
    # the same steps through iteration 4 (the decay there acts from 5 on), other ones after
    assert _losses(decayed)[:5] == _losses(constant)[:5]
    assert _losses(decayed)[5][1] != _losses(constant)[5][1]
    record = json.loads((decayed / "learning_rate.json").read_text())
    assert record["initial"] == 3e-2 and record["now"] == pytest.approx(3e-5) and record["validations"] == 4
    card = load_checkpoint(ckpt)[1].training
    assert card.learning_rate == 3e-2 and card.learning_rate_decays == [(4, pytest.approx(3e-3)), (6, pytest.approx(3e-4))]
    _, saved = load_tensors(decayed / "checkpoints" / "latest" / "optimizer.safetensors")
    assert json.loads(saved["param_groups"])[0]["lr"] == pytest.approx(3e-5)  # the validation at 8 set it before the save
    assert not (constant / "learning_rate.json").exists() and load_checkpoint(constant / "dna.ckpt")[1].training.learning_rate_decays == []


def test_a_run_resumed_across_its_decays_trains_at_the_rates_an_uninterrupted_one_does(dataset: Path, tmp_path: Path) -> None:
    common = dict(learning_rate=3e-2, plateau=None, learning_rate_decay=_DECAY)
    whole = train(_config(dataset, tmp_path / "whole", iterations=10, **common), progress=False)
    part = tmp_path / "part"
    train(_config(dataset, part, iterations=5, **common), progress=False)  # stops after the decay at 4
    resumed = train(_config(dataset, part, iterations=10, **common), resume=True, progress=False)
    assert _losses(part) == _losses(tmp_path / "whole") and len(_losses(part)) == 10
    assert learning_rate_decays(part) == learning_rate_decays(tmp_path / "whole")
    assert _same(_weights(resumed), _weights(whole))
    with pytest.raises(InputError, match="learning_rate_decay"):
        train(_config(dataset, part, iterations=12, **{**common, "learning_rate_decay": {**_DECAY, "factor": 0.5}}), resume=True, progress=False)


def test_a_decay_rule_without_a_validation_split_is_refused(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"learning_rate_decay: .* marks no pair 'split: validation' \(the test split must not shape training\)"):
        train(_config(dataset, tmp_path / "run", manifest=str(dataset / "no_validation.yaml"), plateau=None, learning_rate_decay=_DECAY),
              progress=False)
