"""Bad input to ``predict``: one clear message each (what, where, what was expected), and no file touched.

Every case snapshots all files under the test folder (inputs, models, anything already there) before
the call and compares after: nothing may change and no output may appear. A frame that cannot be
z-scored is found by the task that reads it (``predict/frame_stats.py``: the input is read once, on the
workers): the run stops in one line naming the frame, its output holding no chunk of it, nothing else touched.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet import cli
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.errors import ChunkedFnetError
from chunked_fnet.io.writer import create_image, open_for_writing, write_region

from chunked_fnet.predict import PredictOptions, predict
from factories import tiny_checkpoint

OPTIONS = PredictOptions(patch_shape=(8, 16, 16), overlap=0.25, chunks=(8, 16, 16), precision="fp32")


def _write(path: Path, data: np.ndarray, dims=("t", "c", "z", "y", "x"), scale=None, names=("brightfield",)) -> Path:
    create_image(path, shape=data.shape, dims=dims, chunks=data.shape, dtype=data.dtype,
                 scale=scale or {"z": 0.4, "y": 0.4, "x": 0.4}, channel_names=list(names) if "c" in dims else None)
    write_region(open_for_writing(path), tuple(slice(None) for _ in data.shape), data)
    return path


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def good(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    image = _write(tmp_path / "in.zarr", rng.integers(100, 4000, (1, 1, 8, 24, 24), dtype=np.uint16))
    return image, tiny_checkpoint(tmp_path / "dna.ckpt")


def _refused(tmp_path: Path, call, match: str) -> None:
    """``call()`` raises one ChunkedFnetError matching ``match``; no file under tmp_path changed or appeared."""
    before = _snapshot(tmp_path)
    with pytest.raises(ChunkedFnetError, match=match):
        call()
    assert _snapshot(tmp_path) == before


def _failed_in_its_tasks(tmp_path: Path, call, match: str, out: str = "o.zarr") -> None:
    """``call()`` raises one ChunkedFnetError matching ``match``, found by the tasks: only the output ``out``
    appeared (its run record, no chunk marked done), every other file unchanged."""
    before = _snapshot(tmp_path)
    with pytest.raises(ChunkedFnetError, match=match):
        call()
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith(f"{out}/")} == before
    assert not [k for k in after if k.startswith(f"{out}/.chunked_fnet/done/")]


def test_missing_input_path(good, tmp_path: Path) -> None:
    _, model = good
    _refused(tmp_path, lambda: predict(tmp_path / "nope.zarr", [model], tmp_path / "o.zarr", progress=False), r"nope\.zarr: no such file or directory \(expected an OME-Zarr image\)")


def test_not_ome_zarr(good, tmp_path: Path) -> None:
    _, model = good
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("hello")
    _refused(tmp_path, lambda: predict(tmp_path / "plain", [model], tmp_path / "o.zarr", progress=False), r"plain.*(not a zarr|not an OME-Zarr|no zarr)")


def test_image_without_z_axis(good, tmp_path: Path) -> None:
    _, model = good
    flat = _write(tmp_path / "flat.zarr", np.ones((1, 24, 24), np.uint16), dims=("c", "y", "x"), scale={"y": 0.4, "x": 0.4})
    _refused(tmp_path, lambda: predict(flat, [model], tmp_path / "o.zarr", progress=False), r"flat\.zarr: the models are 3D; the image has no z axis \(dims \['c', 'y', 'x'\]\)")


def test_unknown_axis(good, tmp_path: Path) -> None:
    image, model = good
    meta = json.loads((image / "zarr.json").read_text())
    meta["attributes"]["ome"]["multiscales"][0]["axes"][0]["name"] = "q"
    (image / "zarr.json").write_text(json.dumps(meta))
    _refused(tmp_path, lambda: predict(image, [model], tmp_path / "o.zarr", progress=False), r"in\.zarr.*'q'")


def test_no_transmitted_light_channel_of_that_name(good, tmp_path: Path) -> None:
    image, model = good
    _refused(tmp_path, lambda: predict(image, [model], tmp_path / "o.zarr", options=PredictOptions(input_channel="DIC"), progress=False),
             r"no input \(transmitted-light\) channel named 'DIC'.*brightfield")


@pytest.mark.parametrize("change", ["zero", "missing"])
def test_physical_scale_zero_or_missing(good, tmp_path: Path, change: str) -> None:
    image, model = good
    meta = json.loads((image / "zarr.json").read_text())
    dataset = meta["attributes"]["ome"]["multiscales"][0]["datasets"][0]
    if change == "zero":
        dataset["coordinateTransformations"][0]["scale"][3] = 0.0
        match = r"in\.zarr: dataset '0' scale for axis 'y' is 0; expected a finite voxel size > 0"
    else:
        del dataset["coordinateTransformations"]
        match = r"in\.zarr: dataset '0' has no 'scale' coordinate transformation, so its voxel size is unknown"
    (image / "zarr.json").write_text(json.dumps(meta))
    _refused(tmp_path, lambda: predict(image, [model], tmp_path / "o.zarr", progress=False), match)


def test_nan_voxels_fail_by_default_and_fill_on_request(tmp_path: Path) -> None:
    model = tiny_checkpoint(tmp_path / "dna.ckpt")
    data = np.random.default_rng(1).normal(size=(1, 1, 8, 24, 24)).astype(np.float32)
    data[0, 0, 3, 5, 7] = np.nan
    data[0, 0, 4, 9, 9] = np.inf
    image = _write(tmp_path / "nan.zarr", data)
    _failed_in_its_tasks(tmp_path, lambda: predict(image, [model], tmp_path / "o.zarr", options=OPTIONS, progress=False),
                         r"nan\.zarr t=0: 2 of 4608 voxels are NaN or infinite.*--nonfinite fill")
    with local_client(ClusterSpec(n_workers=1)) as client:
        out, _ = predict(image, [model], tmp_path / "filled.zarr", options=OPTIONS.model_copy(update={"nonfinite": "fill"}), client=client, progress=False)
        finite = data.copy()
        finite[~np.isfinite(finite)] = np.nanmean(np.where(np.isfinite(data), data, np.nan))
        reference, _ = predict(_write(tmp_path / "finite.zarr", finite), [model], tmp_path / "ref.zarr", options=OPTIONS, client=client, progress=False)
    values = out.values
    assert np.isfinite(values).all()
    # fill = the frame's mean (of the finite voxels): identical to an input holding the mean there
    np.testing.assert_allclose(values, reference.values, atol=1e-5, rtol=0)


def test_constant_image(good, tmp_path: Path) -> None:
    _, model = good
    flat = _write(tmp_path / "const.zarr", np.full((1, 1, 8, 24, 24), 500, np.uint16))
    _failed_in_its_tasks(tmp_path, lambda: predict(flat, [model], tmp_path / "o.zarr", progress=False),
                         r"const\.zarr t=0: is constant \(every voxel = 500\); z-scoring needs a non-zero standard deviation")


def test_checkpoint_missing(good, tmp_path: Path) -> None:
    image, _ = good
    _refused(tmp_path, lambda: predict(image, [tmp_path / "gone.ckpt"], tmp_path / "o.zarr", progress=False), r"checkpoint not found: .*gone\.ckpt")


def test_checkpoint_truncated(good, tmp_path: Path) -> None:
    image, model = good
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _refused(tmp_path, lambda: predict(image, [model], tmp_path / "o.zarr", progress=False), r"dna\.ckpt/model\.safetensors: is truncated or not a valid safetensors file")


def test_checkpoint_of_another_architecture(good, tmp_path: Path) -> None:
    image, model = good
    card = json.loads((model / "card.json").read_text())
    card["architecture"]["width"] = 8
    (model / "card.json").write_text(json.dumps(card))
    _refused(tmp_path, lambda: predict(image, [model], tmp_path / "o.zarr", progress=False),
             r"dna\.ckpt/model\.safetensors: the weights do not match the architecture .*'width': 8.*weights have shape \(4, 1, 3, 3, 3\), the architecture needs \(8, 1, 3, 3, 3\)")


def test_checkpoint_for_two_input_channels(good, tmp_path: Path) -> None:
    image, _ = good
    two = tiny_checkpoint(tmp_path / "two.ckpt", in_channels=2)
    _refused(tmp_path, lambda: predict(image, [two], tmp_path / "o.zarr", progress=False), r"two\.ckpt: model takes 2 input channels; only single-channel")


def test_two_models_with_the_same_structure(good, tmp_path: Path) -> None:
    image, model = good
    twin = tmp_path / "dna_copy.ckpt"
    shutil.copytree(model, twin)
    _refused(tmp_path, lambda: predict(image, [model, twin], tmp_path / "o.zarr", progress=False), r"two ensemble models predict the same structure \['dna'\]")


def test_misspelt_config_key_names_it_and_suggests(good, tmp_path: Path, capsys) -> None:
    image, model = good
    config = tmp_path / "predict.yaml"
    config.write_text("patch_shape: [8, 16, 16]\noverlp: 0.5\n")
    before = _snapshot(tmp_path)
    code = cli.main(["predict", str(image), "--models", str(model), "--out", str(tmp_path / "o.zarr"), "--config", str(config)])
    err = capsys.readouterr().err
    assert code == 2
    assert "overlp" in err and "did you mean 'overlap'" in err and str(config) in err
    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize("where", ["inside", "same", "inside the collection"])
def test_output_inside_the_input(good, tmp_path: Path, where: str) -> None:
    image, model = good
    if where == "inside the collection":  # a series of a bioformats2raw-style collection, output beside it but in the collection
        collection = tmp_path / "plate.zarr"
        collection.mkdir()
        (collection / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
        shutil.copytree(image, collection / "0")
        image, out = collection / "0", collection / "pred.zarr"
    else:
        out = image / "pred.zarr" if where == "inside" else image
    _refused(tmp_path, lambda: predict(image, [model], out, progress=False), r"output .* is inside the input store")


def test_unreachable_scheduler_times_out_with_a_message(good, tmp_path: Path, capsys) -> None:
    image, model = good
    before = _snapshot(tmp_path)
    code = cli.main(["predict", str(image), "--models", str(model), "--out", str(tmp_path / "o.zarr"), "--scheduler", "tcp://127.0.0.1:9"])
    assert code == 2 and "no dask scheduler answered at tcp://127.0.0.1:9 within 10 s" in capsys.readouterr().err
    assert _snapshot(tmp_path) == before


def test_existing_output_is_not_overwritten_and_resume_refuses_foreign_output(good, tmp_path: Path) -> None:
    image, model = good
    other = _write(tmp_path / "other.zarr", np.ones((1, 1, 2, 8, 8), np.uint16))
    _refused(tmp_path, lambda: predict(image, [model], other, progress=False), r"other\.zarr already exists; pass --overwrite to replace it, or --resume")
    _refused(tmp_path, lambda: predict(image, [model], other, resume=True, progress=False),
             r"cannot resume .*other\.zarr: it holds no run record")
    _refused(tmp_path, lambda: predict(image, [model], other, resume=True, overwrite=True, progress=False), r"resume and overwrite exclude each other")


def test_credentials_in_storage_urls_are_never_printed(good, tmp_path: Path, capsys) -> None:
    _, model = good
    code = cli.main(["predict", "http://alice:hunter2@127.0.0.1:9/in.zarr", "--models", str(model),
                     "--out", "s3://bob:s3cr3t@bucket/out.zarr", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert "http://***@127.0.0.1:9/in.zarr: cannot be read" in captured.err
    assert "hunter2" not in captured.err + captured.out and "s3cr3t" not in captured.err + captured.out
