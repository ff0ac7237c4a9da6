"""Training from an HCS plate named in a manifest: every field a pair, split by well, a field without a
channel refused by name, and a short real training run (and its evaluation) from a plate manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from chunked_fnet.cli import main as cli
from chunked_fnet.errors import InputError
from chunked_fnet.evaluate.report import evaluate_run
from chunked_fnet.model import load_checkpoint
from chunked_fnet.train.data import expand_pairs
from chunked_fnet.train.manifest import read_manifest, split_pairs
from factories import write_plate

WELLS = ("A/1", "A/2", "B/1")


def _well(name: str) -> str:
    """The well of a pair named ``.../plate.zarr/A/2/1``."""
    return "/".join(name.split("/")[-3:-1])


def _manifest(root: Path, **images) -> Path:  # noqa: ANN003
    path = root / "manifest.yaml"
    path.write_text(yaml.safe_dump({"images": {"plate": "plate.zarr", "input_channel": "brightfield", "target_channel": "dna", **images}}))
    return path


@pytest.fixture(scope="module")
def plate(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plate_train")
    write_plate(root / "plate.zarr", wells=WELLS, shape=(8, 24, 20))
    return root


def test_every_field_is_a_pair_split_by_well(plate: Path) -> None:
    entries = read_manifest(_manifest(plate, test_wells=["B/1"]))
    assert [e.path for e in entries] == [str(plate / "plate.zarr" / w / f) for w in WELLS for f in "01"]  # relative to the manifest
    train, test = split_pairs(expand_pairs(entries), n_train=1, seed=3)  # n_train does not apply: the wells decide
    assert sorted(_well(p.name) for p in test) == ["B/1", "B/1"]
    assert sorted(_well(p.name) for p in train) == ["A/1", "A/1", "A/2", "A/2"]
    assert not {_well(p.name) for p in train} & {_well(p.name) for p in test}
    assert {(p.input_channel, p.target_channel) for p in train + test} == {("brightfield", "dna")}


def test_unknown_or_all_test_wells_and_a_typo_are_refused(plate: Path) -> None:
    with pytest.raises(InputError, match=r"no well C/9; the plate's wells are \['A/1', 'A/2', 'B/1'\]"):
        read_manifest(_manifest(plate, test_wells=["C/9"]))
    with pytest.raises(InputError, match="test_wells and validation_wells name every well"):
        read_manifest(_manifest(plate, test_wells=list(WELLS)))
    with pytest.raises(InputError, match=r"manifest .*manifest.yaml, images: .*test_well"):
        read_manifest(_manifest(plate, test_well=["B/1"]))


def test_a_field_without_a_channel_is_refused_by_name(tmp_path: Path) -> None:
    write_plate(tmp_path / "plate.zarr", wells=WELLS, shape=(8, 24, 20), without={"A/2/1": ["brightfield"], "B/1/0": ["dna"]})
    with pytest.raises(InputError) as caught:
        read_manifest(_manifest(tmp_path, test_wells=["B/1"]))
    message = str(caught.value)
    assert "2 field(s) of the plate lack a channel" in message
    assert f"{tmp_path / 'plate.zarr'}: well A/2, field 1 has no input channel 'brightfield'; its channels are ['dna']" in message
    assert f"{tmp_path / 'plate.zarr'}: well B/1, field 0 has no target channel 'dna'; its channels are ['brightfield']" in message
    assert "well A/1" not in message


def test_a_short_training_run_from_a_plate_manifest(plate: Path, tmp_path: Path) -> None:
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump({
        "manifest": str(_manifest(plate, test_wells=["A/2"])), "output": str(tmp_path / "run"), "structure": "dna",
        "model": {"depth": 1, "width": 4}, "voxel_size": [0.4, 0.4, 0.4], "patch_shape": [8, 16, 16], "batch_size": 2,
        "iterations": 3, "checkpoint_every": 3, "validate_every": 3, "validation_patches": 2, "workers": 0, "precision": "fp32",
    }))
    assert cli(["train", "--config", str(config), "--no-progress"]) == 0
    run = tmp_path / "run"
    split = json.loads((run / "split.json").read_text())
    assert sorted(_well(p["path"]) for p in split["test"]) == ["A/2", "A/2"]
    assert sorted(_well(p["path"]) for p in split["train"]) == ["A/1", "A/1", "B/1", "B/1"]
    lines = (run / "losses.csv").read_text().splitlines()
    assert len(lines) == 1 + 3
    _, card = load_checkpoint(run / "dna.ckpt")
    assert card.training.iterations == 3
    rows = evaluate_run(run, progress=False)
    assert sorted((r["split"], _well(str(r["image"]))) for r in rows) == sorted(
        [("test", "A/2")] * 2 + [("train", "A/1")] * 2 + [("train", "B/1")] * 2
    )
