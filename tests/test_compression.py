"""The prediction's codec: blosc lz4 with byte shuffle by default on every pyramid level, in NGFF 0.5 and 0.4, zstd
or none on request, the values the same whatever the codec; a resume keeps the interrupted run's codec."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet.errors import InputError
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint

OPTIONS = dict(patch_shape=(16, 16, 16), overlap=0.25, precision="fp32", chunks=(8, 16, 16), shards="none", levels=2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("compression")
    generate(SynthConfig(size_t=1, size_z=12, size_y=40, size_x=36, chunks=(12, 32, 32)), root / "in.zarr", progress=False)
    return root / "in.zarr", [tiny_checkpoint(root / "dna.ckpt", "dna", seed=0)]


def _codecs(path: Path, level: int) -> list[dict]:
    """The stored codec chain of one level, as its metadata file names it (zarr.json or .zarray)."""
    v3 = path / str(level) / "zarr.json"
    if v3.exists():
        return json.loads(v3.read_text())["codecs"]
    return [json.loads((path / str(level) / ".zarray").read_text())["compressor"]]


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_the_default_codec_is_blosc_lz4_with_shuffle_and_the_values_are_the_codec_s_own(setup, tmp_path: Path, version: str) -> None:
    image, models = setup
    outputs = {}
    for compression in ("lz4", "zstd", "none"):
        options = PredictOptions(**OPTIONS, version=version, **({} if compression == "lz4" else {"compression": compression}))
        out, _ = predict(image, models, tmp_path / f"{compression}.zarr", options=options, progress=False)
        outputs[compression] = out.values
        for level in (0, 1):
            codecs = [c for c in _codecs(tmp_path / f"{compression}.zarr", level) if c is not None and c.get("name") != "bytes"]
            names = [c.get("name", c.get("id")) for c in codecs]
            assert names == {"lz4": ["blosc"], "zstd": ["zstd"], "none": []}[compression], (level, codecs)
            if compression == "lz4":
                config = codecs[0].get("configuration", codecs[0])
                assert config["cname"] == "lz4" and config["shuffle"] in ("shuffle", 1), config
    assert outputs["lz4"].std() > 0
    np.testing.assert_array_equal(outputs["lz4"], outputs["zstd"])
    np.testing.assert_array_equal(outputs["lz4"], outputs["none"])


def test_a_resume_keeps_the_codec_of_the_interrupted_run_and_an_older_record_reads_as_zstd(setup, tmp_path: Path) -> None:
    """A run record from before the option existed holds no ``compression``: that output is zstd (zarr's default
    then), so it resumes with ``compression: zstd`` and the default (lz4) is refused, naming the option."""
    image, models = setup
    out = tmp_path / "out.zarr"
    options = PredictOptions(**OPTIONS, compression="zstd")
    done, _ = predict(image, models, out, options=options, progress=False)
    record_path = out / ".chunked_fnet" / "run.json"
    record = json.loads(record_path.read_text())
    del record["options"]["compression"]  # as an older version wrote it
    record_path.write_text(json.dumps(record))
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and ".chunked_fnet" not in p.parts}
    with pytest.raises(InputError, match=r'options.compression: interrupted run "zstd", now "lz4"'):
        predict(image, models, out, options=options.model_copy(update={"compression": "lz4"}), resume=True, progress=False)
    assert {p: p.read_bytes() for p in before} == before  # the refusal touched nothing
    resumed, _ = predict(image, models, out, options=options, resume=True, progress=False)
    np.testing.assert_array_equal(resumed.values, done.values)
    shutil.rmtree(out)
