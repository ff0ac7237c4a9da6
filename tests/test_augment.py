"""Training-patch augmentation: the lateral plane's symmetries, applied to input and targets alike, drawn
reproducibly, off by default (the paper's), and refused where a swap of y and x would change the patch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from chunked_fnet.errors import InputError
from chunked_fnet.synth.dataset import SynthConfig
from chunked_fnet.train.augment import IDENTITY, PlaneSymmetry, draw_symmetry
from chunked_fnet.train.data import PatchDataset, describe_pair, expand_pairs
from chunked_fnet.train.manifest import read_manifest
from chunked_fnet.train.trainer import TrainConfig, load_train_configs, train
from factories import paired_synth

SCALE = (0.4, 0.4, 0.4)
PATCH = (8, 16, 16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("augment")
    paired_synth(root, SynthConfig(size_t=1, size_z=16, size_y=40, size_x=40, fovs=3, voxel_size=(0.4, 0.4, 0.4), chunks=(16, 40, 40)))
    return root


def _specs(dataset: Path) -> list:
    return [describe_pair(p) for p in expand_pairs(read_manifest(dataset / "manifest.yaml"))]


def test_the_dihedral_group_is_eight_distinct_permutations() -> None:
    a = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)  # no symmetry of its own
    images = {(s, fy, fx): PlaneSymmetry(s, fy, fx).apply(a) for s in (False, True) for fy in (False, True) for fx in (False, True)}
    assert len({im.tobytes() for im in images.values()}) == 8
    for im in images.values():
        assert im.shape == a.shape and im.flags.c_contiguous
        np.testing.assert_array_equal(np.sort(im, axis=None), np.sort(a, axis=None))  # a permutation of the voxels
        np.testing.assert_array_equal(im[:, 1, 1], a[:, 1, 1])  # the optical axis stays where it is: z never moves
    np.testing.assert_array_equal(images[(True, False, False)], a.transpose(0, 2, 1))
    np.testing.assert_array_equal(images[(False, True, True)], np.rot90(a, 2, axes=(1, 2)))
    assert IDENTITY.apply(a) is a  # no copy where nothing changes


def test_draws_cover_the_allowed_symmetries_and_none_draws_nothing() -> None:
    for augmentation, count in (("flips", 4), ("dihedral", 8)):
        rng = np.random.default_rng(0)
        seen = {draw_symmetry(rng, augmentation) for _ in range(200)}
        assert len(seen) == count
        assert augmentation == "dihedral" or not any(s.swap for s in seen)
    rng, fresh = np.random.default_rng(5), np.random.default_rng(5)
    assert draw_symmetry(rng, "none") is IDENTITY
    assert rng.integers(1 << 30) == fresh.integers(1 << 30)  # the rng is left as it was


def test_augmented_samples_are_the_plain_ones_transformed_alike(dataset: Path) -> None:
    specs = _specs(dataset)
    plain = PatchDataset(specs, SCALE, PATCH, seed=1, length=48)
    turned = PatchDataset(specs, SCALE, PATCH, seed=1, length=48, augmentation="dihedral")
    seen = set()
    for i in range(48):
        k, corner, symmetry = turned.draw(i)
        assert (k, corner) == plain.draw(i)[:2]  # same pair, same place: only the symmetry is added
        assert plain.draw(i)[2] is IDENTITY
        seen.add(symmetry)
        (x, y), (xt, yt) = plain[i], turned[i]
        torch.testing.assert_close(xt, torch.from_numpy(symmetry.apply(x.numpy())), rtol=0, atol=0)
        torch.testing.assert_close(yt, torch.from_numpy(symmetry.apply(y.numpy())), rtol=0, atol=0)
    assert len(seen) == 8
    assert any(not torch.equal(plain[i][0], turned[i][0]) for i in range(48))


def _config(dataset: Path, out: Path, **kw) -> TrainConfig:
    settings = dict(manifest=str(dataset / "manifest.yaml"), output=str(out), structure="dna", model={"depth": 1, "width": 4},
                    voxel_size=SCALE, patch_shape=PATCH, batch_size=2, iterations=4, n_train=2, checkpoint_every=2,
                    validate_every=2, validation_patches=2, workers=0)
    settings.update(kw)
    return TrainConfig(**settings)


def test_dihedral_needs_a_square_patch_and_voxel(dataset: Path, tmp_path: Path) -> None:
    assert _config(dataset, tmp_path / "r").augment == "none"  # the paper's default
    with pytest.raises(ValueError, match=r"patch must be square in y, x; got patch_shape \(8, 16, 24\).*use flips"):
        _config(dataset, tmp_path / "r", augment="dihedral", patch_shape=(8, 16, 24))
    with pytest.raises(ValueError, match=r"voxel must be square in y, x; got voxel_size \(0.4, 0.3, 0.4\)"):
        _config(dataset, tmp_path / "r", augment="dihedral", voxel_size=(0.4, 0.3, 0.4))
    assert _config(dataset, tmp_path / "r", augment="flips", patch_shape=(8, 16, 24)).augment == "flips"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"manifest": "m.yaml", "output": "o", "structure": "dna", "augment": "rotate"}))
    with pytest.raises(InputError, match="augment"):
        load_train_configs(config)


def test_a_run_records_its_augmentation_and_resumes_only_with_it(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(_config(dataset, out, augment="dihedral", iterations=2), progress=False)
    assert yaml.safe_load((out / "config.yaml").read_text())["augment"] == "dihedral"
    with pytest.raises(InputError, match="augment"):
        train(_config(dataset, out, augment="none", iterations=4), resume=True, progress=False)
    train(_config(dataset, out, augment="dihedral", iterations=4), resume=True, progress=False)


def test_the_cli_overrides_the_configs_augmentation(dataset: Path, tmp_path: Path) -> None:
    from chunked_fnet.cli import main as cli

    settings = _config(dataset, tmp_path / "run", iterations=2).model_dump(mode="json")
    config = tmp_path / "train.yaml"
    config.write_text(yaml.safe_dump(settings))
    assert cli(["train", "--config", str(config), "--augment", "flips", "--no-progress"]) == 0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["augment"] == "flips"
