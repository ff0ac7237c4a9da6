"""Sharded output (zarr v3 ``sharding_indexed``, NGFF 0.5): one stored object per shard, each written whole by
one task, so no two tasks ever write one object; the values are the unsharded run's whatever the shards,
chunks or workers; a run killed mid-way resumes per shard; other readers (tensorstore here; neuroglancer and
napari-ome-zarr through the shared viewer data, ``tests/viz_data.py``) read it."""

from __future__ import annotations

import math
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from chunked_fnet import open_image
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.io.writer import build_pyramid, create_image, grow_time_axis, write_region
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.predict.job import SHARD_OBJECT_BYTES, resolve_shards
from chunked_fnet.synth.dataset import SynthConfig, generate
from dask_cli import cli_cluster
from factories import tiny_checkpoint

STRUCTURES = ("dna", "er")
SHAPE = (3, 9, 40, 36)  # t, z, y, x of the input (and of the output: the models' grid is the input's)
BASE = dict(patch_shape=(8, 16, 16), overlap=0.25, precision="fp32", levels=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], dict[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("shards")
    t, z, y, x = SHAPE
    generate(SynthConfig(size_t=t, size_z=z, size_y=y, size_x=x, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), root / "in.zarr", progress=False)
    models = [tiny_checkpoint(root / f"{s}.ckpt", s, seed=i) for i, s in enumerate(STRUCTURES)]
    predict(root / "in.zarr", models, root / "reference.zarr", options=PredictOptions(**BASE, chunks=(4, 8, 8), shards="none"), progress=False)
    ref = zarr.open_group(root / "reference.zarr", mode="r")
    assert ref["0"].shards is None  # the reference is the unsharded layout
    return root / "in.zarr", models, {level: ref[level][:] for level in ("0", "1")}


def _files(array_folder: Path) -> int:
    return sum(1 for p in array_folder.rglob("*") if p.is_file() and p.name != "zarr.json")


@pytest.mark.parametrize(
    ("chunks", "shards", "workers"),
    [((4, 8, 8), (8, 16, 16), 2), ((4, 8, 8), (4, 40, 40), 1), ((2, 8, 8), (4, 16, 24), 2), ((4, 8, 8), "auto", 2)],
    ids=["8x16x16-2workers", "whole-planes-1worker", "other-chunks", "auto"],
)
def test_sharded_output_is_the_unsharded_output_whatever_the_shards_chunks_and_workers(data, tmp_path: Path, chunks, shards, workers) -> None:
    image, models, reference = data
    out = tmp_path / "out.zarr"
    with local_client(ClusterSpec(n_workers=workers)) as client:
        _, summary = predict(image, models, out, options=PredictOptions(**BASE, chunks=chunks, shards=shards), client=client, progress=False)
    group = zarr.open_group(out, mode="r")
    expected = resolve_shards(PredictOptions(**BASE, chunks=chunks, shards=shards), SHAPE[1:])
    assert expected is not None and group["0"].shards == (1, 1, *expected) and group["0"].chunks == (1, 1, *chunks)
    assert group["1"].shards is not None  # the pyramid is sharded too
    for level in ("0", "1"):
        np.testing.assert_allclose(group[level][:], reference[level], atol=1e-5, rtol=0)
    # one object per shard (a shard of only empty chunks would be left out; none is empty here), one task per shard
    shards_per_frame = math.prod(math.ceil(n / s) for n, s in zip(SHAPE[1:], expected, strict=True))
    assert _files(out / "0") == SHAPE[0] * len(STRUCTURES) * shards_per_frame
    assert summary.chunks == summary.total_chunks == SHAPE[0] * shards_per_frame
    assert f"each writing whole shards of {'x'.join(map(str, expected))}" in str(summary)
    assert len(list((out / ".chunked_fnet" / "done").iterdir())) == SHAPE[0] * shards_per_frame
    chunks_per_frame = math.prod(math.ceil(n / c) for n, c in zip(SHAPE[1:], chunks, strict=True))
    assert shards_per_frame < chunks_per_frame


def test_auto_shards_make_objects_of_about_the_measured_size_and_stay_off_for_ngff_04() -> None:
    big = (64, 4096, 4096)
    # the default chunks are already objects of that size: unsharded
    assert 4 * math.prod(PredictOptions().chunks) == SHARD_OBJECT_BYTES
    assert resolve_shards(PredictOptions(), big) is None
    # small chunks: y and x doubled, then z, up to the size
    assert resolve_shards(PredictOptions(chunks=(16, 64, 64)), big) == (32, 256, 256)
    assert resolve_shards(PredictOptions(chunks=(16, 64, 64), dtype="float16"), big) == (16, 512, 512)
    # never past the image (in whole chunks), and a single-chunk image stays unsharded
    assert resolve_shards(PredictOptions(chunks=(4, 8, 8)), (9, 40, 36)) == (12, 40, 40)
    assert resolve_shards(PredictOptions(chunks=(16, 64, 64)), (16, 64, 64)) is None
    assert resolve_shards(PredictOptions(chunks=(16, 64, 64), version="0.4"), big) is None  # zarr v2 has no shards
    assert resolve_shards(PredictOptions(chunks=(16, 64, 64), shards="none"), big) is None
    # an explicit shard larger than the image is clipped to the image in whole chunks
    assert resolve_shards(PredictOptions(chunks=(4, 8, 8), shards=(8, 64, 64)), (9, 40, 36)) == (8, 40, 40)


def test_tensorstore_reads_a_sharded_output(data, tmp_path: Path) -> None:
    ts = pytest.importorskip("tensorstore")
    image, models, reference = data
    out = tmp_path / "out.zarr"
    predict(image, models, out, options=PredictOptions(**BASE, chunks=(4, 8, 8), shards=(8, 16, 16)), progress=False)
    for level in ("0", "1"):
        array = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": str(out / level)}}, read=True).result()
        codecs = array.codec.to_json()["codecs"]
        assert codecs[0]["name"] == "sharding_indexed", codecs
        np.testing.assert_allclose(array.read().result(), reference[level], atol=1e-5, rtol=0)
    # and our own reader, as a DataArray with its channel names
    back = open_image(out)
    assert list(back.coords["c"].values) == list(STRUCTURES)
    np.testing.assert_allclose(back.values, reference["0"], atol=1e-5, rtol=0)


FLAGS = ["--patch", "8", "16", "16", "--chunks", "4", "8", "8", "--shards", "4", "8", "16", "--overlap", "0.25",
         "--precision", "fp32", "--levels", "2", "--no-progress"]
TOTAL_SHARDS = 3 * 3 * 5 * 3  # time points x shards along z, y, x


def _predict_cli(image: Path, models: list[Path], out: Path, address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", *map(str, models), "--out", str(out),
         "--scheduler", address, *FLAGS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _done(out: Path) -> int:
    folder = out / ".chunked_fnet" / "done"
    return len(list(folder.iterdir())) if folder.exists() else 0


def test_a_sharded_run_killed_mid_way_resumes_per_shard_to_the_same_output(data, tmp_path: Path) -> None:
    import time

    image, models, reference = data
    out = tmp_path / "out.zarr"
    with cli_cluster(tmp_path, n_workers=2) as cluster:
        first = _predict_cli(image, models, out, cluster.address)
        deadline = time.monotonic() + 240
        while _done(out) < 8:
            assert first.poll() is None, first.communicate()
            assert time.monotonic() < deadline, "no shard finished in time"
            time.sleep(0.05)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        done_at_kill = _done(out)
        assert 8 <= done_at_kill < TOTAL_SHARDS
        changed = _predict_cli(image, models, out, cluster.address, "--resume", "--shards", "4", "16", "16")
        _, err = changed.communicate(timeout=300)
        assert changed.returncode == 2 and "cannot resume" in err and "shards" in err, err
        resumed = _predict_cli(image, models, out, cluster.address, "--resume")
        stdout, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr
    match = re.search(r"wrote .*: (\d+) chunk tasks .* \((\d+) of (\d+) were already done\)", stdout)
    assert match, stdout
    computed, skipped, total = map(int, match.groups())
    assert total == TOTAL_SHARDS and computed + skipped == total and skipped >= done_at_kill and computed > 0
    group = zarr.open_group(out, mode="r")
    for level in ("0", "1"):
        np.testing.assert_allclose(group[level][:], reference[level], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--shards", "4", "8", "16", "--ngff-version", "0.4"], "need NGFF 0.5 (zarr v3)"),
     (["--shards", "6", "8", "16"], "must be positive multiples of chunks [4, 8, 8]")],
    ids=["ngff-0.4", "not-whole-chunks"],
)
def test_shards_that_cannot_be_written_are_refused_in_one_line_before_anything_is_written(data, tmp_path: Path, extra, message) -> None:
    image, models, _ = data
    out = tmp_path / "out.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", *map(str, models), "--out", str(out),
         "--chunks", "4", "8", "8", *extra, "--no-progress"],
        capture_output=True, text=True, timeout=120, check=False,
    )
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr
    assert not out.exists()


def test_a_sharded_image_grows_frame_by_frame_with_its_pyramid(tmp_path: Path) -> None:
    """What ``predict --follow`` does to a sharded output: lengthen t, write the new frame's whole shards,
    rebuild that frame's pyramid levels."""
    store = tmp_path / "grown.zarr"
    create_image(store, shape=(1, 1, 4, 16, 16), chunks=(1, 1, 2, 8, 8), shards=(1, 1, 4, 16, 16), levels=2, channel_names=["a"])
    frames = np.random.default_rng(0).standard_normal((3, 1, 4, 16, 16)).astype(np.float32)
    group = zarr.open_group(store, mode="r+")
    write_region(group, (slice(0, 1), slice(None), slice(None), slice(None), slice(None)), frames[:1])
    build_pyramid(store, progress=False, times=(0, 1))
    for t in (1, 2):
        grow_time_axis(store, t + 1)
        write_region(zarr.open_group(store, mode="r+"), (slice(t, t + 1), slice(None), slice(None), slice(None), slice(None)), frames[t : t + 1])
        build_pyramid(store, progress=False, times=(t, t + 1))
    group = zarr.open_group(store, mode="r")
    np.testing.assert_array_equal(group["0"][:], frames)
    np.testing.assert_allclose(group["1"][:], frames.reshape(3, 1, 2, 2, 8, 2, 8, 2).mean(axis=(3, 5, 7)), atol=1e-6)
    assert group["1"].shards == (1, 1, 2, 8, 8) and _files(store / "0") == 3
    with pytest.raises(Exception, match="not aligned to the zarr chunks of size"):  # half a shard is never written
        write_region(zarr.open_group(store, mode="r+"), (slice(0, 1), slice(None), slice(0, 2), slice(None), slice(None)), frames[:1, :, :2])
