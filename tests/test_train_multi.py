"""Several structures in one training run, and the fast step: each model as if trained alone, the
patches read once for all of them, the precision chosen once and kept on resume."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from chunked_fnet.cli import main as cli
from chunked_fnet.errors import InputError
from chunked_fnet.model import load_checkpoint
from chunked_fnet.synth.dataset import SynthConfig, generate
from chunked_fnet.train import data as train_data
from chunked_fnet.train import trainer
from chunked_fnet.device import bf16_is_native
from chunked_fnet.train.step import TrainStep, training_precision
from chunked_fnet.train.trainer import TrainConfig, load_train_configs, train, train_many
from processes import kill_when

STRUCTURES = ("dna", "membrane")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("data")
    config = SynthConfig(size_t=1, size_z=16, size_y=48, size_x=48, fovs=3, voxel_size=(0.4, 0.3, 0.3), chunks=(16, 32, 32))
    generate(config, root / "synth.zarr", progress=False)
    # no target_channel: each structure's config names its own
    (root / "manifest.yaml").write_text(yaml.safe_dump({"images": [{"path": f"synth.zarr/{i}"} for i in range(3)]}))
    return root


def _settings(dataset: Path, out: Path, **kw) -> dict:
    settings = dict(
        manifest=str(dataset / "manifest.yaml"), output=str(out), model={"depth": 1, "width": 4}, voxel_size=(0.4, 0.4, 0.4),
        patch_shape=(8, 16, 16), batch_size=2, iterations=6, n_train=2, checkpoint_every=3, validate_every=2,
        validation_patches=2, workers=0, precision="fp32",
    )
    settings.update(kw)
    return settings


def _alone(dataset: Path, out: Path, structure: str, **kw) -> TrainConfig:
    return TrainConfig(**_settings(dataset, out, structure=structure, target_channel=structure, **kw))


def _together(dataset: Path, out: Path, **kw) -> list[TrainConfig]:
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump({**_settings(dataset, out, **kw), "structures": [{"structure": s} for s in STRUCTURES]}))
    return load_train_configs(path)


def _rows(run: Path) -> list[list[str]]:
    with (run / "losses.csv").open() as f:
        return list(csv.reader(f))


def _assert_same_weights(a: Path, b: Path) -> None:
    ma, _ = load_checkpoint(a)
    mb, _ = load_checkpoint(b)
    for (name, p), q in zip(ma.state_dict().items(), mb.state_dict().values(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=name)


def test_each_structure_learns_as_if_trained_alone_from_one_read(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    original = train_data.PatchDataset.__getitem__
    monkeypatch.setattr(train_data.PatchDataset, "__getitem__", lambda self, i: reads.append(i) or original(self, i))

    together = train_many(_together(dataset, tmp_path / "both"), progress=False)
    shared_reads = len(reads)
    alone = [train(_alone(dataset, tmp_path / f"alone_{s}", s), progress=False) for s in STRUCTURES]
    assert shared_reads == 6 * 2 + 2  # 6 batches of 2 and 2 validation patches, once for both structures
    assert len(reads) - shared_reads == 2 * shared_reads  # apart: as many again for each

    assert [p.parent.name for p in together] == list(STRUCTURES)
    for s, t, a in zip(STRUCTURES, together, alone, strict=True):
        _assert_same_weights(t, a)
        assert _rows(t.parent) == _rows(a.parent)
        card = load_checkpoint(t)[1]
        assert card.structure == s and card.target_channel == s and card.training.precision == "fp32"
        assert json.loads((t.parent / "split.json").read_text())["train"][0]["target_channel"] == s
    # the two structures learned different things from the same patches
    assert _rows(together[0].parent)[1][1] != _rows(together[1].parent)[1][1]
    record = json.loads((together[0].parent / "throughput.json").read_text())
    assert record["iterations"] == 6 and record["structures_in_run"] == 2 and 0 <= record["data_wait_fraction"] <= 1


def test_resume_with_one_structure_ahead_gives_the_straight_run(dataset: Path, tmp_path: Path) -> None:
    straight = train_many(_together(dataset, tmp_path / "straight"), progress=False)
    train_many(_together(dataset, tmp_path / "resumed", iterations=3), progress=False)
    # a crash between two structures' checkpoints leaves one ahead: here dna went on alone to 6
    train(_alone(dataset, tmp_path / "resumed" / "dna", "dna", iterations=6), resume=True, progress=False)
    resumed = train_many(_together(dataset, tmp_path / "resumed", iterations=6), resume=True, progress=False)
    for a, b in zip(straight, resumed, strict=True):
        _assert_same_weights(a, b)
        assert _rows(a.parent) == _rows(b.parent)


def test_structures_killed_before_their_first_checkpoint_resume_from_iteration_0(dataset: Path, tmp_path: Path) -> None:
    """Every structure's config is recorded before the slow part, so a kill there leaves folders ``--resume`` starts."""
    kw = dict(iterations=4, checkpoint_every=100, device="cpu", threads=1)
    straight = train_many(_together(dataset, tmp_path / "straight", **kw), progress=False)
    _together(dataset, tmp_path / "killed", **kw)  # writes killed.yaml
    kill_when(["train", "--config", str(tmp_path / "killed.yaml"), "--no-progress"], *(tmp_path / "killed" / s / "config.yaml" for s in STRUCTURES))
    assert not list((tmp_path / "killed").glob("*/checkpoints"))
    assert cli(["train", "--config", str(tmp_path / "killed.yaml"), "--resume", "--no-progress"]) == 0
    for a in straight:
        _assert_same_weights(a, tmp_path / "killed" / a.parent.name / a.name)
        assert _rows(a.parent) == _rows(tmp_path / "killed" / a.parent.name)


def test_every_structure_records_its_config_before_any_image_is_read(dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def killed(*_: object) -> None:
        raise RuntimeError("killed")

    monkeypatch.setattr(trainer, "expand_pairs", killed)  # the first image read of the first structure
    with pytest.raises(RuntimeError, match="killed"):
        train_many(_together(dataset, tmp_path / "run"), progress=False)
    assert all((tmp_path / "run" / s / "config.yaml").exists() for s in STRUCTURES)


def test_settings_the_structures_share_must_agree(dataset: Path, tmp_path: Path) -> None:
    dna = _alone(dataset, tmp_path / "a", "dna")
    with pytest.raises(InputError, match=r"differ in \['patch_shape'\].*must be equal"):
        train_many([dna, _alone(dataset, tmp_path / "b", "membrane", patch_shape=(8, 32, 32))], progress=False)
    with pytest.raises(InputError, match="distinct output folders"):
        train_many([dna, _alone(dataset, tmp_path / "a", "membrane")], progress=False)
    path = tmp_path / "twice.yaml"
    path.write_text(yaml.safe_dump({**_settings(dataset, tmp_path / "t"), "structures": ["dna", {"structure": "dna"}]}))
    with pytest.raises(InputError, match=r"listed twice: \['dna'\]"):
        load_train_configs(path)
    path.write_text(yaml.safe_dump({**_settings(dataset, tmp_path / "t"), "structures": [{"structure": "dna", "colour": "FF0000"}]}))
    with pytest.raises(InputError, match="structures entry 1: unknown field 'colour'; did you mean 'color'"):
        load_train_configs(path)
    alone = tmp_path / "alone.yaml"
    alone.write_text(yaml.safe_dump({**_settings(dataset, tmp_path / "n"), "structure": "dna"}))
    with pytest.raises(InputError, match=r"manifest .*manifest.yaml: entry 1 \(and 2 more\) names no target_channel.*structure 'dna'"):
        train(load_train_configs(alone)[0], progress=False)
    assert not (tmp_path / "n").exists()  # refused before anything was written


def test_cli_trains_named_structures_into_one_folder_each(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({**_settings(dataset, tmp_path / "runs", iterations=2), "structure": "ignored"}))
    assert cli(["train", "--config", str(config), "--structures", *STRUCTURES, "--no-progress"]) == 0
    out = capsys.readouterr().out
    for s in STRUCTURES:
        assert (tmp_path / "runs" / s / f"{s}.ckpt" / "model.safetensors").is_file()
        assert f"{s}: model" in out
    assert "iterations/s in fp32 (2 structure(s) per iteration" in out


def test_precision_auto_follows_the_hardware_and_resume_keeps_the_record(dataset: Path, tmp_path: Path) -> None:
    cpu = torch.device("cpu")
    assert training_precision("auto", cpu) == ("bf16" if bf16_is_native(cpu) else "fp32")
    assert training_precision("fp32", cpu) == "fp32"
    with pytest.raises(InputError, match="fp16' trains only on CUDA"):
        training_precision("fp16", cpu)

    run = tmp_path / "run"
    train(_alone(dataset, run, "dna", iterations=3, precision="bf16"), progress=False)
    record = json.loads((run / "training.json").read_text())
    assert record["precision"] == "bf16" and record["memory_format"] == "channels_last_3d" and record["optimizer"] == "Adam (fused)"
    # the record wins over a changed machine: edit it as if the run had begun in fp32
    (run / "training.json").write_text(json.dumps({**record, "precision": "fp32"}))
    final = train(_alone(dataset, run, "dna", iterations=4, precision="bf16"), resume=True, progress=False)
    assert load_checkpoint(final)[1].training.precision == "fp32"
    assert json.loads((run / "throughput.json").read_text())["memory_format"] == "contiguous"


def test_bf16_step_learns_like_fp32() -> None:
    """The fast step (bf16 autocast, channels-last, fused Adam) follows float32's descent on a toy problem."""
    from chunked_fnet.model import FnetUNet

    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 1, 8, 16, 16, generator=g)
    y = torch.nn.functional.avg_pool3d(x, 3, stride=1, padding=1)
    losses = {}
    for precision in ("fp32", "bf16"):
        torch.manual_seed(0)
        step = TrainStep(FnetUNet(depth=1, width=8), torch.device("cpu"), precision, learning_rate=1e-2, betas=(0.5, 0.999))
        losses[precision] = [float(step(x, y)) for _ in range(30)]
        assert all(p.is_contiguous(memory_format=torch.channels_last_3d) for p in step.model.parameters() if p.ndim == 5) == (precision == "bf16")
    assert losses["fp32"][-1] < 0.2 * losses["fp32"][0]
    assert abs(losses["bf16"][-1] - losses["fp32"][-1]) < 0.1 * losses["fp32"][0]
