"""bioimage.io model packages: export passes bioimageio.core's own test; a package predicts through the
chunked pipeline exactly as its checkpoint does, and a foreign network's package as it does on the whole
volume in memory; packages the pipeline cannot reproduce are refused by name."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("bioimageio.core")

from bioimageio_packages import LAYERS, build_plain_package, plain_network, zscore  # noqa: E402
from chunked_fnet.cli import main as cli  # noqa: E402
from chunked_fnet.errors import InputError  # noqa: E402
from chunked_fnet.cluster import ClusterSpec, local_client  # noqa: E402
from chunked_fnet.io.writer import create_image, open_for_writing, write_region  # noqa: E402
from chunked_fnet.model.bioimageio import _load_description, _network, load_package_model, read_package  # noqa: E402
from chunked_fnet.predict import Hardware, PredictOptions, plan, predict  # noqa: E402
from chunked_fnet.predict.ensemble import check_ensemble  # noqa: E402
from chunked_fnet.synth.dataset import SynthConfig  # noqa: E402
from chunked_fnet.train.trainer import TrainConfig, train  # noqa: E402
from factories import paired_synth, tiny_checkpoint  # noqa: E402


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny U-Net trained for a few iterations on synthetic data, and that data (the predict input)."""
    root = tmp_path_factory.mktemp("bioimageio")
    paired_synth(root, SynthConfig(size_t=1, size_z=28, size_y=64, size_x=64, fovs=2, voxel_size=(0.4, 0.3, 0.3), chunks=(28, 32, 32)))
    run = TrainConfig(
        manifest=str(root / "manifest.yaml"), output=str(root / "run"), structure="dna", model={"depth": 1, "width": 4},
        voxel_size=(0.4, 0.4, 0.4), patch_shape=(8, 16, 16), batch_size=2, iterations=4, n_train=2, checkpoint_every=4,
        validate_every=2, validation_patches=2, workers=0,
    )
    return train(run, progress=False), root / "synth.zarr" / "0"


@pytest.fixture(scope="module")
def exported(trained: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    ckpt, image = trained
    out = tmp_path_factory.mktemp("export") / "dna_bioimageio.zip"
    # an explicit halo (the default declares none, so that thin stacks are not padded): the tests below check it is kept
    assert cli(["export-bioimageio", str(ckpt), str(out), "--sample", str(image), "--author", "Test Person", "--halo", "11"]) == 0
    return out


@pytest.fixture(scope="module")
def client():
    """One single-worker local cluster for every prediction here (starting one per run costs seconds)."""
    with local_client(ClusterSpec(n_workers=1)) as c:
        yield c


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_plain_package(tmp_path_factory.mktemp("plain") / "plain.zip")


def test_export_passes_bioimageio_test_and_describes_the_card(exported: Path, trained: tuple[Path, Path]) -> None:
    from bioimageio.core import test_model

    summary = test_model(exported)  # local files only: no network needed
    assert summary.status == "passed", summary.format()
    names = set(zipfile.ZipFile(exported).namelist())
    assert {"weights.pt", "weights.torchscript.pt", "fnet_unet.py", "test_input.npy", "test_output.npy", "cover.png", "README.md"} <= names
    descr = _load_description(exported)
    inp, out = descr.inputs[0], descr.outputs[0]
    assert [p.id for p in inp.preprocessing if p.id != "ensure_dtype"] == ["zero_mean_unit_variance"]
    space = {str(a.id): a for a in inp.axes if a.type == "space"}
    assert {k: (a.scale, a.unit, a.size.min, a.size.step) for k, a in space.items()} == {k: (0.4, "micrometer", 24, 2) for k in "zyx"}
    assert {a.halo for a in out.axes if a.type == "space"} == {11}  # a depth-1 U-Net's whole receptive field
    card = descr.config.model_extra["chunked_fnet"]["card"]
    assert card["structure"] == "dna" and card["training"]["iterations"] == 4 and "metrics" in card
    readme = zipfile.ZipFile(exported).read("README.md").decode()
    assert "0.4 x 0.4 x 0.4 µm" in readme and "halo of 11 voxels" in readme and "iterations: 4" in readme
    info = read_package(exported)
    assert (info.structure, info.voxel_size, info.min_shape, info.step, info.halo) == ("dna", (0.4, 0.4, 0.4), (24,) * 3, (2,) * 3, (11,) * 3)


def test_export_refuses_an_existing_package(exported: Path, trained: tuple[Path, Path], capsys: pytest.CaptureFixture) -> None:
    before = exported.read_bytes()
    assert cli(["export-bioimageio", str(trained[0]), str(exported)]) == 2
    assert "already exists" in capsys.readouterr().err and exported.read_bytes() == before


OPTIONS = dict(patch_shape=(28, 40, 40), overlap=38, precision="fp32", chunks=(8, 24, 24))  # its band margin covers the halo


def test_package_predicts_as_its_checkpoint(exported: Path, trained: tuple[Path, Path], client, tmp_path: Path) -> None:
    ckpt, image = trained
    options = PredictOptions(**OPTIONS)
    window = plan(str(image), [exported], "unused", options).resolve_policy(Hardware()).window
    assert window.grid.n_patches > 1 and window.halo == (11,) * 3  # patches meet: the halo matters
    from_zip, _ = predict(image, [exported], tmp_path / "zip.zarr", options=options, client=client, progress=False)
    from_ckpt, _ = predict(image, [ckpt], tmp_path / "ckpt.zarr", options=options, client=client, progress=False)
    assert list(from_zip["c"].values) == ["dna"] and from_zip.attrs["scale"] == from_ckpt.attrs["scale"]
    np.testing.assert_allclose(from_zip.values, from_ckpt.values, atol=1e-5, rtol=0)
    assert from_ckpt.values.std() > 0


def test_halo_and_minimum_are_enforced(exported: Path, trained: tuple[Path, Path]) -> None:
    image = str(trained[1])
    with pytest.raises(InputError, match=r"less than the models' halo 11; use an overlap of at least 30"):
        plan(image, [exported], "unused", PredictOptions(**{**OPTIONS, "overlap": 16})).resolve_policy(Hardware())
    with pytest.raises(InputError, match=r"smaller than the models take, at least \(24, 24, 24\)"):
        plan(image, [exported], "unused", PredictOptions(**{**OPTIONS, "patch_shape": (16, 40, 40)})).resolve_policy(Hardware())
    auto = plan(image, [exported], "unused", PredictOptions()).resolve_policy(Hardware())
    assert all(p >= 24 and p % 2 == 0 for p in auto.window.patch_shape)


def _volume(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    values = (300.0 + 100.0 * gaussian_filter(np.random.default_rng(1).normal(size=shape), 1.0) * 5).astype(np.float32)
    create_image(path, shape=(1, *shape), dims=("c", "z", "y", "x"), chunks=(1, *shape), scale={"z": 0.4, "y": 0.4, "x": 0.4},
                 channel_names=["brightfield"])
    write_region(open_for_writing(path), (slice(0, 1), slice(None), slice(None), slice(None)), values[None])
    return values


def test_foreign_package_is_chunk_invariant_and_equals_the_whole_volume(plain: Path, client, tmp_path: Path) -> None:
    volume = _volume(tmp_path / "in.zarr", (20, 40, 36))
    outputs = []
    for k, chunks in enumerate([(8, 16, 16), (20, 13, 36)]):
        options = PredictOptions(patch_shape=(12, 16, 16), overlap=8, precision="fp32", chunks=chunks)
        out, _ = predict(tmp_path / "in.zarr", [plain], tmp_path / f"out{k}.zarr", options=options, client=client, progress=False)
        outputs.append(out.values[0, 0])
    assert list(out["c"].values) == ["nuclei"] and out.attrs["scale"]["x"] == pytest.approx(0.4)
    np.testing.assert_allclose(outputs[0], outputs[1], atol=1e-5, rtol=0)
    with torch.no_grad():  # the network on the whole volume in memory, channel last, zero padding at its border
        whole = plain_network()(torch.from_numpy(zscore(volume))[None, ..., None]).numpy()[0, ..., 0]
    inner = (slice(LAYERS, -LAYERS),) * 3  # the volume's own border: zero padding here, reflection in the pipeline
    np.testing.assert_allclose(outputs[0][inner], whole[inner], atol=1e-5, rtol=0)
    assert np.abs(whole).max() > 0.01


def test_both_weight_formats_load_to_the_same_function(plain: Path) -> None:
    from dataclasses import replace

    from chunked_fnet.model.bioimageio import PackageModule

    module, info = load_package_model(plain)
    assert info.weights == "pytorch_state_dict" and info.input_axes == ("batch", "z", "y", "x", "channel")
    scripted = PackageModule(_network(_load_description(plain), replace(info, weights="torchscript"), "cpu"), info)
    x = torch.randn(2, 1, 8, 12, 16)
    with torch.no_grad():
        y = module(x)
        assert y.shape == (2, 1, 8, 12, 16)
        torch.testing.assert_close(scripted(x), y, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"inputs": 2}, r"has 2 input\(s\) \['raw', 'mask'\] and 1 output\(s\)"),
    ({"space": "yx"}, r"axes \['batch', 'y', 'x', 'channel'\] \(2D package\)"),
])
def test_packages_predict_cannot_run_are_refused_by_name(tmp_path: Path, kwargs: dict, message: str) -> None:
    package = build_plain_package(tmp_path / "refused.zip", **kwargs)
    with pytest.raises(InputError, match=rf"refused\.zip: .*{message}"):
        check_ensemble([str(package)])


def test_not_a_package_and_duplicate_structures_are_refused(tmp_path: Path, exported: Path, trained: tuple[Path, Path]) -> None:
    bogus = tmp_path / "bogus.zip"
    bogus.write_bytes(b"not a zip")
    with pytest.raises(InputError, match=r"bogus\.zip: not a valid bioimage.io model package"):
        check_ensemble([str(bogus)])
    with pytest.raises(InputError, match=r"same structure \['dna'\]"):
        check_ensemble([str(trained[0]), str(exported)])


def test_a_thin_stack_predicts_through_the_package_as_through_its_checkpoint(client, tmp_path: Path) -> None:
    """A depth-2 package declares the network's multiple (4) as its minimum and no halo, so a 16-slice field is
    not padded: bioimageio.core and the chunked pipeline give the checkpoint's prediction, and the package still
    passes bioimageio's own test. (It used to declare 56^3 and a halo of 27: the field was mirrored to 56 slices.)"""
    from bioimageio.core import predict as bioimageio_predict
    from bioimageio.core import test_model

    from chunked_fnet.model.bioimageio_export import export_bioimageio
    from chunked_fnet.model.checkpoint import load_checkpoint

    ckpt = tiny_checkpoint(tmp_path / "d2.ckpt")
    package = export_bioimageio(ckpt, tmp_path / "d2.zip", authors=["Test Person"])
    summary = test_model(package)
    assert summary.status == "passed", summary.format()
    info = read_package(package)
    assert (info.min_shape, info.step, info.halo) == ((4,) * 3, (4,) * 3, (0,) * 3)
    readme = zipfile.ZipFile(package).read("README.md").decode()
    assert "overlap tiles by at least 27 voxels" in readme and "`--halo 28`, which raises the minimum size to 60" in readme

    shape = (16, 48, 40)
    volume = _volume(tmp_path / "in.zarr", shape)
    model = load_checkpoint(ckpt)[0].eval()
    with torch.no_grad():  # the checkpoint on the whole volume: its own zero padding, nothing mirrored
        reference = model(torch.from_numpy(zscore(volume))[None, None]).numpy()[0, 0]
    assert reference.std() > 0
    through_core = next(iter(bioimageio_predict(model=str(package), inputs=volume[None, None]).members.values())).data.values[0, 0]
    assert through_core.shape == shape
    np.testing.assert_allclose(through_core, reference, atol=min(1e-5, 1e-3 * reference.std()), rtol=0)

    options = PredictOptions(precision="fp32")  # the automatic window, the same for both: the whole field, unpadded
    windows = [plan(str(tmp_path / "in.zarr"), [m], "unused", options).resolve_policy(Hardware()).window for m in (package, ckpt)]
    assert windows[0].patch_shape == windows[1].patch_shape == shape
    from_zip, _ = predict(tmp_path / "in.zarr", [package], tmp_path / "zip.zarr", options=options, client=client, progress=False)
    from_ckpt, _ = predict(tmp_path / "in.zarr", [ckpt], tmp_path / "ckpt.zarr", options=options, client=client, progress=False)
    np.testing.assert_allclose(from_zip.values, from_ckpt.values, atol=1e-5, rtol=0)
    np.testing.assert_allclose(from_ckpt.values[0, 0], reference, atol=1e-5, rtol=0)


def test_a_halo_consumers_cannot_pad_by_is_refused(tmp_path: Path) -> None:
    from chunked_fnet.model.bioimageio_export import declared_sizes

    assert declared_sizes(2, 4) == (4, 0) and declared_sizes(2, 4, 28) == (60, 28)
    with pytest.raises(InputError, match=r"halo 27: .* 2 \* halo must be a multiple of 4; use 26 or 28"):
        declared_sizes(2, 4, 27)
