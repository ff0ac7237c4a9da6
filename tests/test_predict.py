"""Chunked ensemble prediction: invariant to chunking and worker count, equal to the in-memory global
sliding window, time-lapse x ensemble layout, physical metadata, and clear refusals."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet import open_image
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.errors import ChunkedFnetError
from chunked_fnet.sliding_window import predict_volume
from chunked_fnet.model import load_checkpoint
from chunked_fnet.predict import PredictOptions, plan, predict
from chunked_fnet.predict.ensemble import StackedEnsemble
from chunked_fnet.predict.job import model_grid_frame
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint

STRUCTURES = ("dna", "er", "membrane")


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    root = tmp_path_factory.mktemp("predict")
    # 0.2 µm lateral input, models at 0.4 µm: the job resamples (y/x by 1/2) onto the model grid
    config = SynthConfig(size_t=3, size_z=13, size_y=70, size_x=62, voxel_size=(0.4, 0.2, 0.2), chunks=(13, 32, 32))
    generate(config, root / "in.zarr", progress=False)
    models = [tiny_checkpoint(root / f"{s}.ckpt", s, seed=i) for i, s in enumerate(STRUCTURES)]
    return root / "in.zarr", models


OPTIONS = dict(patch_shape=(16, 16, 16), overlap=0.25, batch_size=3, precision="fp32")  # compared with float32 references


def _reference(image: Path, models: list[Path], options: PredictOptions) -> np.ndarray:
    """The in-memory global sliding window over each whole (preprocessed) frame."""
    job = plan(str(image), models, "unused", options)
    ensemble = StackedEnsemble([load_checkpoint(p)[0] for p in models])
    frames = []
    for ti, t in enumerate(job.times):
        frame = model_grid_frame(job, ti)
        whole = frame[(slice(None), *(slice(0, n) for n in job.grid.shape))]
        frames.append(predict_volume(ensemble, whole, patch=options.patch_shape, overlap=options.overlap, batch_size=1, multiple=4))
    return np.stack(frames)


def test_chunk_and_worker_invariance_equals_global_sliding_window(setup, tmp_path: Path) -> None:
    image, models = setup
    outputs = []
    for k, (chunks, workers) in enumerate([((16, 16, 16), 1), ((5, 35, 9), 2), ((13, 35, 31), 2)]):
        options = PredictOptions(**OPTIONS, chunks=chunks, shards="none")  # a task per chunk (tests/test_shards.py: per shard)
        with local_client(ClusterSpec(n_workers=workers)) as client:
            assert len(client.scheduler_info()["workers"]) == workers
            out, summary = predict(image, models, tmp_path / f"out{k}.zarr", options=options, client=client, progress=False)
        assert out.data.chunksize == (1, 1, *(min(c, n) for c, n in zip(chunks, out.shape[2:])))
        assert summary.workers == workers and summary.chunks == 3 * np.prod([-(-n // c) for n, c in zip(out.shape[2:], chunks)])
        # every patch of the global sliding window ran once per frame, whatever the chunks: no halo recompute
        assert summary.patch_evaluations == 3 * summary.policy.window.grid.n_patches
        outputs.append(out.values)
    reference = _reference(image, models, PredictOptions(**OPTIONS))
    assert outputs[0].shape == reference.shape == (3, 3, 13, 35, 31)
    for values in outputs:
        np.testing.assert_allclose(values, reference, atol=1e-5, rtol=0)
    assert np.isfinite(reference).all() and reference.std() > 0


def test_timelapse_ensemble_layout_and_physical_metadata(setup, tmp_path: Path) -> None:
    image, models = setup
    out, _ = predict(image, models, tmp_path / "out.zarr", options=PredictOptions(**OPTIONS, time=(1, 3), levels=2), progress=False)
    assert out.dims == ("t", "c", "z", "y", "x")
    assert out.shape == (2, 3, 13, 35, 31)
    assert list(out["c"].values) == list(STRUCTURES)
    assert out.dtype == np.float32
    assert out.attrs["scale"] == {"t": 300.0, "z": 0.4, "y": 0.4, "x": 0.4}
    assert out["t"].values.tolist() == [300.0, 600.0]  # time points 1 and 2 of the input
    source = open_image(image)
    # the model grid starts on the input's first voxel centre and ends inside its extent
    assert out["x"].values[0] == source["x"].values[0] and out["x"].values[-1] <= source["x"].values[-1]
    assert open_image(tmp_path / "out.zarr", level=1).shape == (2, 3, 7, 18, 16)  # y/x halve; z (0.4 < 0.8 µm) too
    assert out.attrs["channel_colors"] == ["00FF00"] * 3


def test_refusals_name_the_problem_and_touch_nothing(setup, tmp_path: Path) -> None:
    image, models = setup
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in image.rglob("*") if p.is_file()}
    dup = tiny_checkpoint(tmp_path / "dna2.ckpt", "dna", seed=9)
    with pytest.raises(ChunkedFnetError, match=r"same structure \['dna'\]"):
        predict(image, [models[0], dup], tmp_path / "a.zarr", progress=False)
    with pytest.raises(ChunkedFnetError, match="no input .*channel named 'phase'"):
        predict(image, models, tmp_path / "b.zarr", options=PredictOptions(input_channel="phase"), progress=False)
    with pytest.raises(ChunkedFnetError, match="time range"):
        predict(image, models, tmp_path / "c.zarr", options=PredictOptions(time=(2, 9)), progress=False)
    other = tiny_checkpoint(tmp_path / "er2.ckpt", "er2", seed=3, voxel=(0.3, 0.3, 0.3))
    with pytest.raises(ChunkedFnetError, match="different voxel sizes"):
        predict(image, [models[0], other], tmp_path / "d.zarr", progress=False)
    (tmp_path / "e.zarr").mkdir()
    (tmp_path / "e.zarr" / "zarr.json").write_text("{}")
    with pytest.raises(ChunkedFnetError, match="already exists"):
        predict(image, models, tmp_path / "e.zarr", options=PredictOptions(**OPTIONS), progress=False)
    assert (tmp_path / "e.zarr" / "zarr.json").read_text() == "{}"
    for name in "abcd":
        assert not (tmp_path / f"{name}.zarr").exists()
    after = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in image.rglob("*") if p.is_file()}
    assert before == after


def test_cli_predict_on_local_worker_processes(setup, tmp_path: Path) -> None:
    image, models = setup
    out = tmp_path / "cli.zarr"
    result = subprocess.run(
        [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", *map(str, models), "--out", str(out),
         "--patch", "16", "16", "16", "--overlap", "0.25", "--chunks", "13", "32", "32", "--time", "0", "1", "--workers", "2", "--no-progress"],
        capture_output=True, text=True, check=False, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "chunk tasks on 2 worker(s)" in result.stdout and "channels: dna, er, membrane" in result.stdout
    assert open_image(out).shape == (1, 3, 13, 35, 31)


def test_cli_unreachable_scheduler_times_out_with_message(setup, tmp_path: Path) -> None:
    image, models = setup
    result = subprocess.run(
        [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", str(models[0]), "--out", str(tmp_path / "x.zarr"),
         "--scheduler", "tcp://127.0.0.1:9"],
        capture_output=True, text=True, check=False, timeout=120,
    )
    assert result.returncode == 2
    assert "no dask scheduler answered at tcp://127.0.0.1:9" in result.stderr
    assert not (tmp_path / "x.zarr").exists()


def test_output_on_the_input_grid_is_chunk_invariant_and_interpolates_the_model_grid(setup, tmp_path: Path) -> None:
    image, models = setup
    from chunked_fnet.preprocess.resample import interpolate_axis

    model_grid, _ = predict(image, models[:1], tmp_path / "m.zarr", options=PredictOptions(**OPTIONS, time=(0, 1)), progress=False)
    outputs = []
    for k, chunks in enumerate([(13, 70, 62), (5, 32, 20)]):
        options = PredictOptions(**OPTIONS, time=(0, 1), output_grid="input", chunks=chunks)
        out, _ = predict(image, models[:1], tmp_path / f"i{k}.zarr", options=options, progress=False)
        outputs.append(out.values)
    source = open_image(image)
    assert outputs[0].shape == (1, 1, 13, 70, 62)
    assert out.attrs["scale"] == {"t": 300.0, "z": 0.4, "y": 0.2, "x": 0.2}
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(out["x"].values, source["x"].values)
    # the input-grid output is the model-grid output, linearly interpolated (input voxel k at model k/2)
    expected = model_grid.values
    for axis, n in zip((2, 3, 4), (13, 70, 62)):
        factor = source.attrs["scale"]["zyx"[axis - 2]] / 0.4
        expected = interpolate_axis(expected, axis, np.arange(n) * factor)
    np.testing.assert_allclose(outputs[0], expected, atol=1e-5, rtol=0)


def test_a_long_run_is_handed_to_the_scheduler_a_batch_of_frames_at_a_time(setup, tmp_path: Path, monkeypatch) -> None:
    """With a batch of at most 5 chunks and 2 chunks per frame, the 3 frames go to the scheduler as
    two frames, then the last one once chunks have finished; the output is the one-graph output."""
    import chunked_fnet.predict.submit as run

    image, models = setup
    options = PredictOptions(**OPTIONS, chunks=(13, 18, 31), shards="none")  # 2 chunks per frame: 35 = 18 + 17
    windows: list[list[int]] = []
    more = run.FrameBatches.more

    def recorded(self):  # noqa: ANN001, ANN202
        futures = more(self)
        windows.append(sorted({task.time_index for task in futures.values()}))
        return futures

    with local_client(ClusterSpec(n_workers=1)) as client:
        whole, _ = predict(image, models, tmp_path / "one.zarr", options=options, client=client, progress=False)
        monkeypatch.setattr(run, "BATCH_CHUNKS", 5)
        monkeypatch.setattr(run.FrameBatches, "more", recorded)
        windowed, summary = predict(image, models, tmp_path / "windowed.zarr", options=options, client=client, progress=False)
    assert windows == [[0, 1], [2]] and summary.chunks == summary.total_chunks == 6
    np.testing.assert_array_equal(windowed.values, whole.values)


def test_a_time_lapse_finishes_its_frames_in_storage_order(setup, tmp_path: Path) -> None:
    """dask.order would run the frames of one batch last first; the run hands them over earliest first, so the
    frames of a time-lapse are finished (their chunks recorded done) in the order they were taken."""
    from chunked_fnet.predict.ledger import Ledger

    image, models = setup
    options = PredictOptions(**OPTIONS, chunks=(13, 18, 31), shards="none")  # 2 chunks per frame, 3 frames, one batch
    with local_client(ClusterSpec(n_workers=1, threads_per_worker=1)) as client:
        _, summary = predict(image, models, tmp_path / "out.zarr", options=options, client=client, progress=False)
    assert summary.chunks == 6
    done = Path(Ledger(str(tmp_path / "out.zarr")).root) / "done"
    finished: dict[int, int] = {}
    for record in done.iterdir():
        t = int(record.name.split("-")[0].removeprefix("t"))
        finished[t] = max(finished.get(t, 0), record.stat().st_mtime_ns)
    assert sorted(finished, key=finished.get) == [0, 1, 2], finished


def test_a_frame_of_one_block_hands_its_chunks_its_sums_without_a_task_per_piece(setup, tmp_path: Path) -> None:
    """A whole-frame patch makes each frame one block: its task returns its sums as they are and each chunk task
    takes a view of its part, so dask runs no getitem task per chunk (a frame of several blocks still does, the
    check can see them); the values are the global sliding window's."""
    image, models = setup
    whole = PredictOptions(**{**OPTIONS, "patch_shape": (16, 36, 32)}, chunks=(5, 16, 16), shards="none", time=(0, 2))
    split = whole.model_copy(update={"patch_shape": (16, 16, 16)})
    prefixes = {}
    for name, options in (("whole", whole), ("split", split)):
        with local_client(ClusterSpec(n_workers=2, threads_per_worker=1)) as client:
            out, summary = predict(image, models, tmp_path / f"{name}.zarr", options=options, client=client, progress=False)
            prefixes[name] = set(client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.task_prefixes)))
        assert summary.chunks == 2 * 3 * 3 * 2, summary
        if name == "whole":
            assert summary.policy.window.patch_shape == (16, 36, 32) and summary.patch_evaluations == 2
            np.testing.assert_allclose(out.values, _reference(image, models, options), rtol=1e-5, atol=1e-5)
    assert "getitem" not in prefixes["whole"] and "getitem" in prefixes["split"], prefixes


def test_dask_sizes_a_block_s_sums_by_their_bytes_on_the_workers() -> None:
    """Placement, work stealing, spilling and the dashboard read dask's sizeof: a block's sums must count as their
    bytes (an unregistered object counts ~56 bytes, and would be moved between workers as if free)."""
    from chunked_fnet.sliding_window import Box
    from chunked_fnet.sliding_window.window import WeightedSum

    with local_client(ClusterSpec(n_workers=1, threads_per_worker=1)) as client:
        future = client.submit(lambda: WeightedSum(Box.of_shape((8, 16, 16)), np.ones((2, 8, 16, 16), np.float32)))
        future.result()
        assert client.nbytes(summary=False)[future.key] >= 2 * 8 * 16 * 16 * 4
