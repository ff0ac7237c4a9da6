"""Checkpoints (save/load/hash/rejections), safetensors helpers, and the pytorch_fnet importer."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from chunked_fnet.errors import ChunkedFnetError, OutputExistsError
from chunked_fnet.model import (
    CheckpointError,
    FnetUNet,
    InputSpec,
    MissingMetadataError,
    ModelCard,
    Provenance,
    UNetConfig,
    checkpoint_hash,
    import_pytorch_fnet,
    load_card,
    load_checkpoint,
    load_tensors,
    read_pytorch_fnet,
    save_checkpoint,
    save_tensors,
)
from chunked_fnet.model.pytorch_fnet import fnet_key_to_pytorch_fnet, pytorch_fnet_key_to_fnet

CFG = UNetConfig(depth=2, width=4)



def randomize_bn_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial affine parameters and running statistics (so eval-mode
    outputs depend on all of them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
                m.num_batches_tracked.fill_(7)
    return model


def make_model(config: UNetConfig = CFG, seed: int = 0) -> FnetUNet:
    torch.manual_seed(seed)
    return randomize_bn_(FnetUNet(config), seed).eval()


def make_card(config: UNetConfig = CFG, **kw) -> ModelCard:
    fields = dict(
        structure="dna",
        architecture=config,
        voxel_size=(0.29, 0.108, 0.108),
        input=InputSpec(modality="brightfield", channel="brightfield"),
        target_channel="dna",
        color="3F7FFF",
        training=Provenance(
            dataset="synthetic.zarr",
            iterations=100,
            seed=1,
            batch_size=2,
            patch_shape=(16, 32, 32),
            learning_rate=1e-3,
            loss="mse",
            versions={"torch": torch.__version__},
            created="2025-01-01T00:00:00+00:00",
        ),
        metrics={"pearson_r": 0.81},
    )
    fields.update(kw)
    return ModelCard(**fields)


@pytest.fixture
def ckpt(tmp_path) -> Path:
    return save_checkpoint(tmp_path / "dna.ckpt", make_model(), make_card())


def edit_card(ckpt: Path, fn) -> None:
    card = json.loads((ckpt / "card.json").read_text())
    fn(card)
    (ckpt / "card.json").write_text(json.dumps(card))


# --------------------------------------------------------------------------------------------------
# round trip


def test_round_trip_identical_outputs_and_card(tmp_path):
    model, card = make_model(), make_card()
    path = save_checkpoint(tmp_path / "dna.ckpt", model, card)
    assert path.is_dir() and sorted(p.name for p in path.iterdir()) == ["card.json", "model.safetensors"]
    loaded, loaded_card = load_checkpoint(path)
    assert not loaded.training
    assert loaded_card == card
    assert load_card(path) == card
    assert loaded.config == CFG
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    x = torch.randn(1, 1, 8, 12, 8)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert not list(tmp_path.glob(".*"))  # no temporary directories left behind


def test_card_round_trips_non_finite_metrics(tmp_path):
    card = make_card(metrics={"pearson_r": float("nan"), "loss": float("inf"), "mse": 0.5})
    path = save_checkpoint(tmp_path / "nan.ckpt", make_model(), card)
    text = (path / "card.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    metrics = load_card(path).metrics
    assert metrics["pearson_r"] != metrics["pearson_r"] and metrics["loss"] == float("inf") and metrics["mse"] == 0.5


def test_card_is_indented_json(ckpt):
    text = (ckpt / "card.json").read_text()
    assert text.startswith("{\n  ") and text.endswith("}\n")
    data = json.loads(text)
    assert data["structure"] == "dna" and data["architecture"]["width"] == 4
    assert data["voxel_size"] == [0.29, 0.108, 0.108] and data["format_version"] == 1


def test_card_defaults_and_validation():
    card = ModelCard(
        structure="er",
        architecture=UNetConfig(),
        voxel_size=(0.29, 0.29, 0.29),
        input=InputSpec(channel=0),
        training=Provenance(dataset="imported"),
    )
    assert card.color == "FFFFFF" and card.normalization.method == "zscore" and card.metrics == {}
    assert card.input.channel == 0 and card.training.iterations is None
    assert make_card(color="#3f7fff").color == "3F7FFF"
    for bad in [dict(voxel_size=(0.29, 0.0, 0.1)), dict(color="blue"), dict(structure="")]:
        with pytest.raises(ValueError):
            make_card(**bad)


def test_hash_is_stable_and_tracks_content(tmp_path, ckpt):
    h = checkpoint_hash(ckpt)
    assert len(h) == 64 and h == checkpoint_hash(ckpt)
    # same content elsewhere: same hash
    other = save_checkpoint(tmp_path / "copy.ckpt", make_model(), make_card())
    assert checkpoint_hash(other) == h
    # different weights: different hash
    changed = make_model()
    with torch.no_grad():
        changed.head.bias.add_(1e-3)
    assert checkpoint_hash(save_checkpoint(tmp_path / "w.ckpt", changed, make_card())) != h
    # different card: different hash
    assert checkpoint_hash(save_checkpoint(tmp_path / "c.ckpt", make_model(), make_card(color="FF0000"))) != h


def test_overwrite_refused_then_allowed(tmp_path, ckpt):
    before = checkpoint_hash(ckpt)
    with pytest.raises(OutputExistsError, match="already exists"):
        save_checkpoint(ckpt, make_model(seed=1), make_card())
    assert checkpoint_hash(ckpt) == before
    save_checkpoint(ckpt, make_model(seed=1), make_card(), overwrite=True)
    assert checkpoint_hash(ckpt) != before
    model, _ = load_checkpoint(ckpt)
    assert torch.equal(model.head.weight, make_model(seed=1).head.weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dna.ckpt"]


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)])
def test_checkpoint_permissions_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    """Colleagues sharing a models folder can read the checkpoints (not 0600/0700 temp-file modes)."""
    from chunked_fnet.train.trainer import save_training_state

    model = make_model()
    previous = os.umask(umask)
    try:
        ckpt = save_checkpoint(tmp_path / "dna.ckpt", model, make_card())
        save_checkpoint(ckpt, make_model(seed=1), make_card(), overwrite=True)  # the swap keeps the modes
        optimizer = torch.optim.Adam(model.parameters())
        model(torch.zeros(1, 1, 8, 8, 8)).mean().backward()
        optimizer.step()
        save_training_state(tmp_path / "run", model, optimizer, 1, make_card())
        save_training_state(tmp_path / "run", model, optimizer, 2, make_card())
    finally:
        os.umask(previous)
    latest = tmp_path / "run" / "checkpoints" / "latest"
    modes = {p.relative_to(tmp_path).as_posix(): p.stat().st_mode & 0o777 for p in [ckpt, latest, *ckpt.iterdir(), *latest.iterdir()]}
    assert modes == {
        "dna.ckpt": dir_mode, "dna.ckpt/model.safetensors": file_mode, "dna.ckpt/card.json": file_mode,
        "run/checkpoints/latest": dir_mode, "run/checkpoints/latest/model.safetensors": file_mode,
        "run/checkpoints/latest/card.json": file_mode, "run/checkpoints/latest/optimizer.safetensors": file_mode,
        "run/checkpoints/latest/state.json": file_mode,
    }
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dna.ckpt", "run"]  # no temporary left behind
    assert sorted(p.name for p in latest.parent.iterdir()) == ["latest"]


def test_overwrite_only_replaces_checkpoint_directories(tmp_path):
    precious = tmp_path / "results"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(
        CheckpointError,
        match=r"refusing to overwrite .*results: it is not a checkpoint directory.*notes\.txt",
    ):
        save_checkpoint(precious, make_model(), make_card(), overwrite=True)
    assert (precious / "notes.txt").read_text() == "keep me"
    empty = tmp_path / "empty.ckpt"
    empty.mkdir()
    load_checkpoint(save_checkpoint(empty, make_model(), make_card(), overwrite=True))


def test_save_refuses_card_that_does_not_describe_model(tmp_path):
    with pytest.raises(CheckpointError, match="does not match the model"):
        save_checkpoint(tmp_path / "x.ckpt", make_model(), make_card(UNetConfig(depth=2, width=8)))
    assert not (tmp_path / "x.ckpt").exists()


def test_load_never_unpickles(ckpt, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    load_checkpoint(ckpt)


# --------------------------------------------------------------------------------------------------
# rejections


def test_missing_path(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"checkpoint not found: .*nope\.ckpt.*model\.safetensors and card\.json"
    ):
        load_checkpoint(tmp_path / "nope.ckpt")
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint_hash(tmp_path / "nope.ckpt")


def test_path_is_a_file(tmp_path):
    (tmp_path / "model.p").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file.*import"):
        load_checkpoint(tmp_path / "model.p")


def test_card_missing(ckpt):
    (ckpt / "card.json").unlink()
    with pytest.raises(CheckpointError, match=r"card\.json: model card missing"):
        load_checkpoint(ckpt)


def test_card_not_json(ckpt):
    (ckpt / "card.json").write_text("{structure: dna")
    with pytest.raises(CheckpointError, match=r"card\.json: not valid JSON"):
        load_card(ckpt)


@pytest.mark.parametrize(
    "drop, name",
    [
        (("voxel_size",), "voxel_size"),
        (("training", "dataset"), "training.dataset"),
        (("architecture",), "architecture"),
    ],
)
def test_card_missing_field_is_named(ckpt, drop, name):
    def fn(card):
        d = card
        for key in drop[:-1]:
            d = d[key]
        del d[drop[-1]]

    edit_card(ckpt, fn)
    with pytest.raises(CheckpointError, match=rf"missing required field '{name}'") as err:
        load_checkpoint(ckpt)
    assert str(ckpt) in str(err.value)


def test_card_unknown_field(ckpt):
    edit_card(ckpt, lambda c: c["architecture"].update(dropout=0.1))
    with pytest.raises(CheckpointError, match=r"unknown field 'architecture.dropout'"):
        load_card(ckpt)
    edit_card(ckpt, lambda c: (c["architecture"].pop("dropout"), c.update(strucure="dna")))
    with pytest.raises(CheckpointError, match=r"unknown field 'strucure'"):
        load_card(ckpt)


def test_card_bad_value_and_newer_format(ckpt):
    edit_card(ckpt, lambda c: c.update(voxel_size=[0.29, -1, 0.1]))
    with pytest.raises(CheckpointError, match=r"field 'voxel_size'.*> 0"):
        load_card(ckpt)
    edit_card(ckpt, lambda c: c.update(voxel_size=[0.29, 0.1, 0.1], format_version=2))
    with pytest.raises(CheckpointError, match=r"format_version 2 is not supported"):
        load_card(ckpt)


def test_truncated_weights(ckpt):
    w = ckpt / "model.safetensors"
    data = w.read_bytes()
    w.write_bytes(data[: len(data) // 2])
    with pytest.raises(
        CheckpointError, match=r"model\.safetensors: is truncated or not a valid safetensors file"
    ):
        load_checkpoint(ckpt)
    w.write_bytes(b"\x01\x02\x03")
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated"):
        load_checkpoint(ckpt)
    w.write_bytes(b"garbage!" * 100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*not a valid safetensors file"):
        load_checkpoint(ckpt)


def test_weights_missing(ckpt):
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"weights missing"):
        load_checkpoint(ckpt)


def test_architecture_width_mismatch_names_tensor_and_shapes(ckpt):
    edit_card(ckpt, lambda c: c["architecture"].update(width=8))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(ckpt)
    msg = str(err.value)
    assert "'encoders.0.conv1.weight'" in msg
    assert "(4, 1, 3, 3, 3)" in msg and "(8, 1, 3, 3, 3)" in msg
    assert "model.safetensors" in msg


def test_architecture_depth_mismatch_names_missing_and_unexpected_keys(ckpt):
    edit_card(ckpt, lambda c: c["architecture"].update(depth=3))
    with pytest.raises(CheckpointError, match=r"missing keys: .*encoders\.2\.") as err:
        load_checkpoint(ckpt)
    assert "first mismatching tensor" in str(err.value)
    edit_card(ckpt, lambda c: c["architecture"].update(depth=1))
    with pytest.raises(CheckpointError, match=r"unexpected keys: decoders\.1\..*\(42 in all\)"):
        load_checkpoint(ckpt)


def test_architecture_dims_mismatch(ckpt):
    edit_card(ckpt, lambda c: c["architecture"].update(dims=2))
    with pytest.raises(CheckpointError, match=r"\(4, 1, 3, 3, 3\).*\(4, 1, 3, 3\)"):
        load_checkpoint(ckpt)


def test_errors_are_package_errors():
    assert issubclass(CheckpointError, ChunkedFnetError) and issubclass(CheckpointError, ValueError)


# --------------------------------------------------------------------------------------------------
# safetensors helpers


def test_save_load_tensors_round_trip(tmp_path):
    base = torch.arange(12.0)
    tensors = {
        "a": torch.randn(3, 4),
        "step": torch.tensor(5),
        "view": base[2:6],
        "other": base.view(3, 4).t(),
    }
    path = save_tensors(tmp_path / "state.safetensors", tensors, {"iteration": "5", "note": "x"})
    got, meta = load_tensors(path)
    assert meta == {"iteration": "5", "note": "x"}
    assert set(got) == set(tensors) and all(torch.equal(got[k], tensors[k]) for k in tensors)
    _, meta = load_tensors(save_tensors(tmp_path / "nometa.safetensors", {"a": torch.zeros(2)}))
    assert meta == {}
    assert not list(tmp_path.glob(".*"))


def test_save_tensors_is_byte_deterministic(tmp_path):
    # safetensors writes metadata from a hash map; the files (and so checkpoint hashes) must not vary
    tensors = {"b": torch.ones(3), "a": torch.zeros(2, 2)}
    meta = {f"key{i}": str(i) for i in range(8)}
    blobs = {save_tensors(tmp_path / f"{i}.safetensors", tensors, meta).read_bytes() for i in range(10)}
    assert len(blobs) == 1
    assert load_tensors(tmp_path / "0.safetensors")[1] == meta


def test_save_tensors_rejects_bad_metadata(tmp_path):
    with pytest.raises(TypeError, match="metadata must map str -> str"):
        save_tensors(tmp_path / "s.safetensors", {"a": torch.zeros(1)}, {"it": 5})


def test_load_tensors_rejections(tmp_path):
    with pytest.raises(CheckpointError, match=r"missing\.safetensors: not found"):
        load_tensors(tmp_path / "missing.safetensors")
    path = save_tensors(tmp_path / "s.safetensors", {"a": torch.randn(100)})
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"s\.safetensors: is truncated"):
        load_tensors(path)


# --------------------------------------------------------------------------------------------------
# pytorch_fnet importer
#
# A network with pytorch_fnet's module structure (fnet/nn_modules/fnet_nn_3d_params.py, master, and
# fnet_nn_3d.py, release_1): the U-Net defined recursively, "net_recurse" being level 0 and every
# "sub_u" one level deeper; written here independently of chunked_fnet's FnetUNet.


def _conv(dims):
    return nn.Conv3d if dims == 3 else nn.Conv2d


def _bn(dims):
    return nn.BatchNorm3d if dims == 3 else nn.BatchNorm2d


class RefTwoConv(nn.Module):
    def __init__(self, dims, n_in, n_out):
        super().__init__()
        self.conv1 = _conv(dims)(n_in, n_out, kernel_size=3, padding=1)
        self.bn1 = _bn(dims)(n_out)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv(dims)(n_out, n_out, kernel_size=3, padding=1)
        self.bn2 = _bn(dims)(n_out)
        self.relu2 = nn.ReLU()

    def forward(self, x):
        return self.relu2(self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x))))))


class RefLevel(nn.Module):
    def __init__(self, dims, n_in, n_out, depth):
        super().__init__()
        self.depth = depth
        self.sub_2conv_more = RefTwoConv(dims, n_in, n_out)
        if depth > 0:
            self.sub_2conv_less = RefTwoConv(dims, 2 * n_out, n_out)
            self.conv_down = _conv(dims)(n_out, n_out, 2, stride=2)
            self.bn0 = _bn(dims)(n_out)
            self.relu0 = nn.ReLU()
            convt = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
            self.convt = convt(2 * n_out, n_out, kernel_size=2, stride=2)
            self.bn1 = _bn(dims)(n_out)
            self.relu1 = nn.ReLU()
            self.sub_u = RefLevel(dims, n_out, 2 * n_out, depth - 1)

    def forward(self, x):
        more = self.sub_2conv_more(x)
        if self.depth == 0:
            return more
        deeper = self.sub_u(self.relu0(self.bn0(self.conv_down(more))))
        up = self.relu1(self.bn1(self.convt(deeper)))
        return self.sub_2conv_less(torch.cat((more, up), 1))


class RefNet(nn.Module):
    def __init__(self, dims=3, depth=4, mult_chan=32, in_channels=1, out_channels=1):
        super().__init__()
        self.net_recurse = RefLevel(dims, in_channels, mult_chan, depth)
        self.conv_out = _conv(dims)(mult_chan, out_channels, kernel_size=3, padding=1)

    def forward(self, x):
        return self.conv_out(self.net_recurse(x))


def make_ref(seed=0, **kw) -> RefNet:
    torch.manual_seed(seed)
    return randomize_bn_(RefNet(**kw), seed).eval()


def adam_state(net: nn.Module) -> dict:
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, betas=(0.5, 0.999))
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p in net.parameters():
        p.grad = None
    return opt.state_dict()


def release_1_file(net: RefNet, **extra) -> dict:
    """fnet/fnet_model.py (release_1), Model.get_state()."""
    return dict(
        nn_module="fnet_nn_3d",
        nn_kwargs={},
        nn_state=net.state_dict(),
        optimizer_state=adam_state(net),
        count_iter=50000,
        **extra,
    )


def master_file(net: RefNet, **nn_kwargs) -> dict:
    """fnet/fnet_model.py (master), Model.get_state()."""
    return {
        "fnet_model_class": "fnet.fnet_model.Model",
        "fnet_model_kwargs": {
            "betas": (0.5, 0.999),
            "criterion_class": "fnet.losses.WeightedMSE",
            "init_weights": True,
            "lr": 0.001,
            "nn_class": "fnet.nn_modules.fnet_nn_3d_params.Net",
            "nn_kwargs": nn_kwargs,
            "scheduler": None,
            "weight_decay": 0,
            "gpu_ids": 0,
        },
        "fnet_model_posargs": [],
        "nn_state": net.state_dict(),
        "optimizer_state": adam_state(net),
        "count_iter": 1234,
    }


def data_parallel(state: dict) -> dict:
    return {"module." + k: v for k, v in state.items()}


META = dict(structure="dna", voxel_size=(0.29, 0.29, 0.29))


def assert_same_outputs(ref: RefNet, model: FnetUNet, dims=3, in_channels=1):
    x = torch.randn(2, in_channels, *([8] * dims))
    with torch.no_grad():
        expected, got = ref(x), model(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "layout",
    ["release_1", "release_1+legacy", "master", "release_1+DataParallel", "master+DataParallel", "bare"],
)
def test_import_layouts_give_the_same_outputs(tmp_path, layout):
    ref = make_ref(depth=2, mult_chan=4)
    if layout.startswith("release_1"):
        saved = release_1_file(ref)
    elif layout.startswith("master"):
        saved = master_file(ref, depth=2, mult_chan=4)
    else:
        saved = ref.state_dict()
    if layout.endswith("DataParallel"):
        saved["nn_state"] = data_parallel(saved["nn_state"])
    path = tmp_path / "model.p"
    # "legacy": the pre-1.6 torch.save format (a plain pickle stream), as release_1-era files have
    torch.save(saved, path, _use_new_zipfile_serialization=not layout.endswith("legacy"))

    model, card = import_pytorch_fnet(path, **META, input_channel=0, color="#3f7fff")
    assert model.config == UNetConfig(depth=2, width=4) and not model.training
    assert_same_outputs(ref, model)
    assert card.structure == "dna" and card.voxel_size == (0.29, 0.29, 0.29)
    assert card.input.channel == 0 and card.color == "3F7FFF"
    assert card.training.dataset == "imported from pytorch_fnet: model.p"
    expected_iter = {"release_1": 50000, "master": 1234, "bare": None}[layout.split("+")[0]]
    assert card.training.iterations == expected_iter
    if layout.startswith("master"):
        assert card.training.learning_rate == 0.001 and card.training.loss == "fnet.losses.WeightedMSE"
    assert (
        card.training.versions["pytorch_fnet_layout"]
        == {"release_1": "release_1", "master": "master", "bare": "bare state dict"}[layout.split("+")[0]]
    )


def test_import_2d_multichannel_and_old_torch_without_num_batches_tracked(tmp_path):
    ref = make_ref(seed=3, dims=2, depth=3, mult_chan=4, in_channels=2, out_channels=3)
    state = {k: v for k, v in ref.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save(
        dict(nn_module="fnet_nn_2d", nn_state=state, optimizer_state={}, count_iter=7), tmp_path / "m.p"
    )
    model, card = import_pytorch_fnet(tmp_path / "m.p", **META)
    assert card.architecture == UNetConfig(dims=2, depth=3, width=4, in_channels=2, out_channels=3)
    assert_same_outputs(ref, model, dims=2, in_channels=2)


def test_import_master_model_directory(tmp_path):
    ref = make_ref(depth=1, mult_chan=2)
    (tmp_path / "dna").mkdir()
    torch.save(master_file(ref, depth=1, mult_chan=2), tmp_path / "dna" / "model.p")
    model, card = import_pytorch_fnet(tmp_path / "dna", **META)
    assert_same_outputs(ref, model)


def test_import_then_save_checkpoint(tmp_path):
    ref = make_ref(depth=2, mult_chan=4)
    torch.save(release_1_file(ref), tmp_path / "model.p")
    model, card = import_pytorch_fnet(tmp_path / "model.p", **META)
    path = save_checkpoint(tmp_path / "dna.ckpt", model, card)
    loaded, loaded_card = load_checkpoint(path)
    assert loaded_card == card
    assert_same_outputs(ref, loaded)


def test_key_mapping_covers_the_paper_default_net():
    with torch.device("meta"):
        ref = RefNet()
        ours = FnetUNet()
    ref_shapes = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    our_shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert len(ref_shapes) == len(our_shapes)
    assert {pytorch_fnet_key_to_fnet(k, 4): s for k, s in ref_shapes.items()} == our_shapes
    assert {fnet_key_to_pytorch_fnet(k, 4): s for k, s in our_shapes.items()} == ref_shapes
    assert pytorch_fnet_key_to_fnet("net_recurse.sub_u.sub_u.conv_down.weight", 4) == "downs.2.conv.weight"
    assert (
        pytorch_fnet_key_to_fnet("net_recurse.sub_u.sub_u.sub_u.sub_u.sub_2conv_more.bn2.bias", 4)
        == "bottleneck.bn2.bias"
    )
    assert pytorch_fnet_key_to_fnet("conv_out.weight", 4) == "head.weight"
    with pytest.raises(KeyError):
        pytorch_fnet_key_to_fnet("net_recurse.pool.weight", 4)


@pytest.mark.parametrize(
    "given, named",
    [
        ({}, "structure or voxel_size"),
        ({"structure": "dna"}, "voxel_size"),
        ({"voxel_size": (0.29, 0.29, 0.29)}, "structure"),
    ],
)
def test_import_missing_metadata_is_named(tmp_path, given, named):
    torch.save(release_1_file(make_ref(depth=1, mult_chan=2)), tmp_path / "model.p")
    with pytest.raises(CheckpointError, match=rf"do not record {named}; supply") as err:
        import_pytorch_fnet(tmp_path / "model.p", **given)
    assert "model.p" in str(err.value) and "depth 1" in str(err.value)
    assert isinstance(err.value, MissingMetadataError)  # the CLI asks for err.value.missing
    assert err.value.missing == [m for m in ("structure", "voxel_size") if m not in given]
    assert err.value.found.config == UNetConfig(depth=1, width=2)


def test_read_pytorch_fnet_inspects_without_metadata(tmp_path):
    torch.save(master_file(make_ref(depth=2, mult_chan=4)), tmp_path / "model.p")
    info = read_pytorch_fnet(tmp_path / "model.p")
    assert info.layout == "master" and info.config == UNetConfig(depth=2, width=4) and info.count_iter == 1234
    assert info.nn_class == "fnet.nn_modules.fnet_nn_3d_params.Net"


class OpensAFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


class RunsAShell:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("payload", [OpensAFile, RunsAShell])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_import_refuses_code_running_pickle(tmp_path, payload, writer):
    marker = tmp_path / "pwned"
    evil = release_1_file(make_ref(depth=1, mult_chan=2), extra=payload(marker))
    path = tmp_path / "model.p"
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f, protocol=2)
    with pytest.raises(CheckpointError, match=r"model\.p: refusing to load.*could run code"):
        import_pytorch_fnet(path, **META)
    assert not marker.exists()


def test_import_rejects_non_fnet_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        import_pytorch_fnet(tmp_path / "missing.p", **META)
    torch.save({"weights": [1, 2, 3]}, tmp_path / "other.p")
    with pytest.raises(
        CheckpointError, match=r"expected a dict with 'nn_state'.*found a dict with keys \['weights'\]"
    ):
        import_pytorch_fnet(tmp_path / "other.p", **META)
    torch.save({"nn_state": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "mlp.p")
    with pytest.raises(CheckpointError, match=r"not pytorch_fnet's U-Net"):
        import_pytorch_fnet(tmp_path / "mlp.p", **META)
    (tmp_path / "garbage.p").write_bytes(b"not a pickle at all" * 20)
    with pytest.raises(CheckpointError, match=r"garbage\.p: (not a readable torch\.save file|refusing)"):
        import_pytorch_fnet(tmp_path / "garbage.p", **META)
    torch.save(release_1_file(make_ref(depth=1, mult_chan=2)), tmp_path / "t.p")
    data = (tmp_path / "t.p").read_bytes()
    (tmp_path / "t.p").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"t\.p: not a readable torch\.save file"):
        import_pytorch_fnet(tmp_path / "t.p", **META)


def test_import_rejects_non_standard_variant(tmp_path):
    # an early pytorch_fnet variant down-sampled by max-pooling: no conv_down/bn0/bn1 tensors
    ref = make_ref(depth=2, mult_chan=4)
    state = {k: v for k, v in ref.state_dict().items() if ".conv_down." not in k and ".bn0." not in k}
    torch.save(dict(nn_module="fnet_nn_3d_pool", nn_state=state, count_iter=1), tmp_path / "pool.p")
    with pytest.raises(CheckpointError, match=r"fnet_nn_3d_pool.*missing keys: downs\.0\.conv\.weight"):
        import_pytorch_fnet(tmp_path / "pool.p", **META)
    # extra tensors the U-Net does not have
    state = dict(ref.state_dict(), **{"net_recurse.dropout.weight": torch.zeros(1)})
    torch.save(dict(nn_module="fnet_nn_3d", nn_state=state), tmp_path / "drop.p")
    with pytest.raises(
        CheckpointError, match=r"not part of pytorch_fnet's U-Net: net_recurse\.dropout\.weight"
    ):
        import_pytorch_fnet(tmp_path / "drop.p", **META)


def test_import_bad_user_metadata(tmp_path):
    torch.save(release_1_file(make_ref(depth=1, mult_chan=2)), tmp_path / "model.p")
    with pytest.raises(CheckpointError, match=r"field 'voxel_size'"):
        import_pytorch_fnet(tmp_path / "model.p", structure="dna", voxel_size=(0.29, -0.1, 0.1))


def test_cli_import_fnet_names_missing_metadata_then_imports(tmp_path, capsys):
    from chunked_fnet.cli import main as cli

    ref = make_ref(depth=1, mult_chan=2)
    torch.save(release_1_file(ref), tmp_path / "model.p")
    assert cli(["import-fnet", str(tmp_path / "model.p"), str(tmp_path / "dna.ckpt")]) == 2
    assert "voxel_size" in capsys.readouterr().err and not (tmp_path / "dna.ckpt").exists()
    args = ["import-fnet", str(tmp_path / "model.p"), str(tmp_path / "dna.ckpt"), "--structure", "dna", "--voxel-size", "0.29", "0.29", "0.29"]
    assert cli(args) == 0
    loaded, card = load_checkpoint(tmp_path / "dna.ckpt")
    assert card.structure == "dna" and card.voxel_size == (0.29, 0.29, 0.29)
    assert_same_outputs(ref, loaded)
