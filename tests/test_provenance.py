"""Provenance in the image: what made a prediction is in its own attributes (models with sha256 and card
summary, input and selection, window, blend, TTA, precision, version) and in the NGFF multiscales
``metadata``; it survives a copy of the zarr nodes alone, and ``chunked-fnet info`` prints it."""

from __future__ import annotations

from pathlib import Path

import ngff_zarr
import pytest
import zarr

from chunked_fnet.cli import main
from chunked_fnet.cluster import ClusterSpec
from chunked_fnet.model import checkpoint_hash
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint


def _copy_zarr_nodes(source: Path, target: Path) -> None:
    """What a zarr tool copies: every group and array with its attributes and values, nothing else (no ``.chunked_fnet``)."""
    src = zarr.open_group(source, mode="r")
    dst = zarr.open_group(target, mode="w", zarr_format=src.metadata.zarr_format)
    dst.attrs.update(src.attrs.asdict())
    for name, array in src.arrays():
        copy = dst.create_array(name, shape=array.shape, chunks=array.chunks, dtype=array.dtype, dimension_names=getattr(array.metadata, "dimension_names", None))
        copy[...] = array[...]
        copy.attrs.update(array.attrs.asdict())


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_what_made_a_prediction_is_in_the_image_and_survives_a_zarr_copy(tmp_path: Path, version: str, capsys: pytest.CaptureFixture) -> None:
    generate(SynthConfig(size_t=2, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), tmp_path / "in.zarr", progress=False)
    model = tiny_checkpoint(tmp_path / "dna.ckpt", seed=3)
    options = PredictOptions(chunks=(9, 40, 40), precision="fp32", tta_flips=True, version=version)
    out = tmp_path / "out.zarr"
    predict(tmp_path / "in.zarr", [model], out, options=options, client=ClusterSpec(n_workers=1), progress=False)

    attrs = zarr.open_group(out, mode="r").attrs.asdict()
    made = attrs["chunked_fnet"]
    card = made["models"]["cards"][0]
    assert (card["structure"], card["file"], card["sha256"]) == ("dna", "dna.ckpt", checkpoint_hash(model))
    assert card["training"]["seed"] == 3 and card["architecture"] == {"depth": 2, "width": 4}
    assert made["input"]["path"] == str(tmp_path / "in.zarr") and made["input"]["shape_zyx"] == [9, 40, 36]
    assert made["input"]["time_points"] == [0, 1]
    assert made["tta_flips"] is True and made["precision"]["chosen"] == "fp32" and made["window"]["blend"] == "band"
    ngff = attrs["ome"] if version == "0.5" else attrs
    metadata = ngff["multiscales"][0]["metadata"]
    assert metadata["method"] == "chunked_fnet.predict" and metadata["kwargs"]["tta_flips"] is True
    ngff_zarr.validate(attrs, version=version, model="image", strict=True)  # still a valid NGFF image

    copy = tmp_path / "copy.zarr"
    _copy_zarr_nodes(out, copy)
    assert not (copy / ".chunked_fnet").exists()
    capsys.readouterr()
    assert main(["info", str(copy)]) == 0
    printed = capsys.readouterr().out
    assert f"model dna: dna.ckpt (chunked_fnet checkpoint), sha256 {checkpoint_hash(model)[:12]}" in printed
    assert "TTA flips on" in printed and "precision: fp32 (explicit)" in printed
    assert f"from {tmp_path / 'in.zarr'} (level 0, channel 0" in printed
