"""The host side's short cuts (`benchmarks/run.py throughput host-side`) give bit for bit what the plain formulas give:
z-scoring into one array, integer frames not searched for NaN, an integer frame's statistics summed in
integers (exact), a batch of one patch and an ensemble of
one model not copied, a patch of weight 1 not multiplied by it, a whole-target patch's output its own sum. No timings here."""

from __future__ import annotations

import os
import subprocess
import sys
from fractions import Fraction

import dask.array as da
import numpy as np
import pytest
import torch

import chunked_fnet.preprocess.frame as frame_module
from chunked_fnet.errors import InputError
from chunked_fnet.moments import integer_sums, moments
from chunked_fnet.predict.ensemble import StackedEnsemble
from chunked_fnet.preprocess.frame import ModelGridFrame
from chunked_fnet.preprocess.normalize import FrameStats
from chunked_fnet.preprocess.resample import ModelGrid
from chunked_fnet.sliding_window import Box, PatchRunner, SlidingWindow, padded_reader


def _plain_zscore(values: np.ndarray, stats: FrameStats) -> np.ndarray:
    """The formula FrameStats.apply had: a float32 cast, then each operation into a new float32 array."""
    return ((np.asarray(values, dtype=np.float32) - np.float32(stats.mean)) / np.float32(stats.std)).astype(np.float32)


@pytest.mark.parametrize("dtype", ["uint16", "int32", "float32", "float64"])
def test_zscore_is_bitwise_the_plain_formula_and_leaves_its_input_alone(dtype: str) -> None:
    rng = np.random.default_rng(0)
    values = (rng.normal(500.0, 120.0, size=(5, 7, 9)) if dtype.startswith("float") else rng.integers(0, 4000, size=(5, 7, 9))).astype(dtype)
    values[0, 0, :3] = (0, 1, 2) if not dtype.startswith("float") else (np.nan, np.inf, -0.0)
    kept = values.copy()
    stats = FrameStats(mean=497.31234567891, std=118.7654321987)
    out = stats.apply(values)
    assert out.dtype == np.float32 and out.shape == values.shape
    assert np.array_equal(out.view(np.uint32), _plain_zscore(values, stats).view(np.uint32))  # bits, NaN and -0.0 included
    assert np.array_equal(values, kept, equal_nan=True) and out is not values
    view = values[1:, ::2]  # a strided view: the same values as a copy of it
    assert np.array_equal(stats.apply(view).view(np.uint32), _plain_zscore(view.copy(), stats).view(np.uint32))


def _exact(values: np.ndarray) -> tuple[float, float]:
    """The correctly rounded mean and centred sum of squares of integer ``values``, in Python integers."""
    ints = [int(v) for v in values.ravel()]
    n, s1, s2 = len(ints), sum(ints), sum(v * v for v in ints)
    return float(Fraction(s1, n)), float(Fraction(n * s2 - s1 * s1, n))


@pytest.mark.parametrize(
    "dtype,low,high,shape",
    [("uint16", 0, 65535, (16, 64, 64)), ("uint16", 60000, 60012, (7, 33, 65)), ("uint8", 0, 255, (5, 6, 7)),
     ("int16", -3000, 3000, (9, 50, 50)), ("int8", -128, 127, (3, 4, 5))],
)
def test_integer_statistics_are_the_exact_ones_whatever_the_chunking(dtype: str, low: int, high: int, shape: tuple[int, ...]) -> None:
    """A camera's frame: its mean and centred sum of squares are the correctly rounded ones of its voxels
    (a narrow range over a large mean included, where float64 deviations summed in blocks are off in the last
    bits), the same for any dask chunking, and the input untouched."""
    values = np.random.default_rng(1).integers(low, high, size=shape, endpoint=True).astype(dtype)
    kept = values.copy()
    mean, m2 = _exact(values)
    for a in (values, da.from_array(values, chunks=(4, 16, 16)), da.from_array(values, chunks=(3, 7, 64)), da.from_array(values, chunks=1000)):
        m = moments(a, finite_only=True)
        assert (m.n, m.mean_a, m.m2_a) == (values.size, mean, m2)
    assert integer_sums(values) is not None and np.array_equal(values, kept)


@pytest.mark.parametrize("dtype,low,high", [("int32", -100000, 100000), ("uint32", 0, 2**32 - 1), ("int64", -(2**40), 2**40)])
def test_wide_integers_take_the_float64_statistics(dtype: str, low: int, high: int) -> None:
    """32- and 64-bit integers could overflow int64's sum of squares: they take the float64 path, within
    float64's rounding of the exact values."""
    values = np.random.default_rng(2).integers(low, high, size=(4, 30, 30), endpoint=True).astype(dtype)
    assert integer_sums(values) is None
    mean, m2 = _exact(values)
    m = moments(values, finite_only=True)
    assert m.mean_a == pytest.approx(mean, rel=1e-14) and m.m2_a == pytest.approx(m2, rel=1e-12)


def test_float_statistics_do_not_depend_on_blas_threads() -> None:
    """A float frame's centred sum of squares is summed by numpy, not BLAS: OpenBLAS splits a long dot product
    over its threads, so the bits changed with OPENBLAS_NUM_THREADS (1 in a dask worker, every core in a client),
    and a resumed run compares each frame's statistics with those recorded."""
    script = (
        "import numpy as np; from chunked_fnet.moments import moments; "
        "v = np.random.default_rng(3).normal(2000.0, 300.0, size=(32, 256, 256)).astype(np.float32); "
        "m = moments(v, finite_only=True); print(repr((m.mean_a, m.m2_a)))"
    )
    runs = {
        threads: subprocess.run([sys.executable, "-c", script], env={**os.environ, "OPENBLAS_NUM_THREADS": threads, "OMP_NUM_THREADS": threads},
                                capture_output=True, text=True, check=True).stdout
        for threads in ("1", "2", "4")
    }
    assert len(set(runs.values())) == 1, runs


def _frame(values: np.ndarray, nonfinite: str = "fail") -> ModelGridFrame:
    grid = ModelGrid(values.shape, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0))
    return ModelGridFrame(values, ("z", "y", "x"), None, 0, FrameStats(10.0, 3.0), grid, nonfinite)


def test_integer_frames_are_not_searched_for_nonfinite_voxels_and_float_frames_still_are(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.arange(4 * 6 * 8, dtype=np.uint16).reshape(4, 6, 8)
    region = (slice(1, 3), slice(0, 6), slice(2, 7))
    expected = _plain_zscore(values[region], FrameStats(10.0, 3.0))
    searched = []
    monkeypatch.setattr(frame_module.np, "isfinite", lambda a: searched.append(a.shape) or np.ones(a.shape, bool), raising=True)
    got = _frame(values).read(region)
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32)) and searched == []
    monkeypatch.undo()
    floats = values.astype(np.float32)
    floats[2, 3, 4] = np.nan
    with pytest.raises(InputError, match="NaN/Inf"):
        _frame(floats).read(region)
    filled = _frame(floats, "fill").read(region)  # the frame's mean z-scores to 0
    assert filled[1, 3, 2] == 0.0 and np.isfinite(filled).all()


class _Recorder(torch.nn.Module):
    """2x + 1, recording every input it is given and every output it returns."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x)
        self.outputs.append(2 * x + 1)
        return self.outputs[-1]


def test_a_one_model_ensemble_returns_its_output_and_several_are_stacked() -> None:
    a, b = _Recorder(), _Recorder()
    x = torch.randn(2, 1, 4, 8, 8)
    one = StackedEnsemble([a])(x)
    assert torch.equal(one, 2 * x + 1) and one.shape == (2, 1, 4, 8, 8)
    both = StackedEnsemble([a, b])(x)
    assert both.shape == (2, 2, 4, 8, 8) and torch.equal(both[:, :1], one) and torch.equal(both[:, 1:], one)


def test_a_whole_frame_patch_runs_on_a_view_of_the_input_with_weight_one_and_the_same_sums() -> None:
    vol = np.random.default_rng(1).standard_normal((1, 16, 32, 48)).astype(np.float32)
    window = SlidingWindow(vol.shape, (16, 32, 48), 0, multiple=16, blend="band", align=True)
    corners = list(window.grid.corners())
    assert len(corners) == 1 and window.unit_weights(corners[0]) and (window.weights_for(corners[0]) == 1).all()
    model = _Recorder()
    runner = PatchRunner(model, channels_last=False, batch_size=1)
    target = Box((0, 0, 0), (16, 32, 48))
    sums = runner.weighted_sums(window, padded_reader(vol), corners, target)
    expected = np.zeros_like(vol)
    expected += np.float32(1.0) * (2 * vol + 1)  # the plain weighting: acc += w * out
    assert np.array_equal(sums.values.view(np.uint32), expected.view(np.uint32))
    (seen,) = model.inputs
    assert seen.shape == (1, 1, 16, 32, 48) and np.shares_memory(seen.numpy(), vol)  # a view, not a stacked copy
    # the patch is the whole target: its output is the sum, not added into a zero-filled copy
    assert np.shares_memory(sums.values, model.outputs[0].numpy())
    part = Box((0, 0, 0), (16, 32, 24))  # a target smaller than the patch: the sum is its own array, as before
    cropped = runner.weighted_sums(window, padded_reader(vol), corners, part)
    assert np.array_equal(cropped.values, expected[:, :, :, :24]) and not np.shares_memory(cropped.values, model.outputs[1].numpy())


@pytest.mark.parametrize("blend", ["band", "gaussian"])
def test_patches_with_neighbours_are_weighted_as_before(blend: str) -> None:
    vol = np.random.default_rng(2).standard_normal((1, 16, 40, 40)).astype(np.float32)
    window = SlidingWindow(vol.shape, (16, 32, 32), (0, 16, 16) if blend == "band" else (0, 0.25, 0.25), multiple=16, blend=blend, align=blend == "band")
    corners = list(window.grid.corners())
    assert len(corners) > 1 and not any(window.unit_weights(c) for c in corners)
    target = Box((0, 0, 0), (16, 40, 40))
    model = _Recorder()
    one_by_one = PatchRunner(model, channels_last=False, batch_size=1).weighted_sums(window, padded_reader(vol), corners, target)
    batched = PatchRunner(model, channels_last=False, batch_size=3).weighted_sums(window, padded_reader(vol), corners, target)
    read = padded_reader(vol)
    expected = np.zeros((1, *target.shape), dtype=np.float32)
    for corner in corners:  # the plain formula, patch after patch in the runner's order
        from chunked_fnet.sliding_window.window import overlap_slices

        patch = window.grid.patch_box(corner)
        dst, src = overlap_slices(patch, target)
        out = 2 * read(patch.slices) + 1
        expected[(slice(None), *dst)] += window.weights_for(corner)[src] * out[(slice(None), *src)]
    assert np.array_equal(one_by_one.values, expected) and np.array_equal(batched.values, expected)


def test_z_scoring_in_place_gives_the_same_bits_and_leaves_an_array_in_memory_untouched(tmp_path) -> None:
    """A frame read from a store is z-scored where it lies (no new frame-sized array); the values are those of
    the copying path bit for bit, and a frame over an array in memory (a Predictor's input) never writes into it."""
    import zarr

    values = np.random.default_rng(3).normal(500, 80, (12, 20, 24)).astype(np.float32)
    stats = FrameStats(float(values.mean()), float(values.std()))
    expected = np.asarray(np.subtract(values, np.float32(stats.mean), dtype=np.float32)) / np.float32(stats.std)
    copy = values.copy()
    in_memory = ModelGridFrame(values, ("z", "y", "x"), None, 0, stats, ModelGrid(values.shape, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)))
    np.testing.assert_array_equal(in_memory.read((slice(None),) * 3), expected)
    np.testing.assert_array_equal(values, copy)  # the caller's array is as it was
    stored = zarr.create_array(tmp_path / "v.zarr", shape=values.shape, chunks=(6, 10, 12), dtype="float32")
    stored[...] = values
    from_store = ModelGridFrame(stored, ("z", "y", "x"), None, 0, stats, ModelGrid(values.shape, (1.0, 1.0, 1.0), (1.0, 1.0, 1.0)))
    np.testing.assert_array_equal(from_store.read((slice(None),) * 3), expected)
    np.testing.assert_array_equal(stored[...], copy)
    out = np.array(values)
    assert stats.apply(out, overwrite=True) is out  # in place: no new array
    np.testing.assert_array_equal(out, expected)


def test_unit_weights_is_decided_without_building_the_patch_sized_weights() -> None:
    """Whether a patch's weights are all 1 (a whole-frame patch) comes from the 1-D band profiles: the same answer
    as comparing the 3-D weights, for patches with and without neighbours, but no patch-sized array is built
    (a 64x512x512 patch's was built and compared in every block task)."""
    import itertools

    cases = [((16, 32, 48), (16, 32, 48), 0), ((16, 40, 40), (16, 32, 32), (0, 16, 16)), ((20, 30, 40), (8, 16, 16), 0.25),
             ((16, 32, 48), (16, 32, 32), (0, 0, 16)), ((9, 33, 17), (8, 16, 16), (1, 3, 2))]
    for frame, patch, overlap in cases:
        window = SlidingWindow(frame, patch, overlap, multiple=1, blend="band")
        fresh = SlidingWindow(frame, patch, overlap, multiple=1, blend="band")
        for corner in itertools.islice(window.grid.corners(), 12):
            assert window.unit_weights(corner) == bool((window.weights_for(corner) == 1).all()), (frame, patch, overlap, corner)
            fresh.unit_weights(corner)
        assert not any(isinstance(v, np.ndarray) for v in fresh._weights_cache.values())  # only the answers are kept
    whole = SlidingWindow((16, 32, 48), (16, 32, 48), 0, multiple=16, blend="band")
    assert whole.unit_weights(next(iter(whole.grid.corners())))


def test_a_run_opens_its_output_once_per_process_and_again_only_once_grown(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunk tasks write through the output level the worker's job opened once for the run, not a group
    and array opened again for every chunk (~3 ms of metadata each, mostly in zarr's one I/O loop thread);
    a followed time-lapse's output grown past the opened array is opened again."""
    from distributed import Client, LocalCluster

    import chunked_fnet.predict.job as job_module
    from chunked_fnet.io.reader import open_image
    from chunked_fnet.io.writer import create_image, grow_time_axis, open_for_writing, write_region
    from chunked_fnet.predict import PredictOptions, predict
    from chunked_fnet.predict.plan import plan
    from factories import tiny_checkpoint

    data = np.random.default_rng(0).integers(100, 4000, (3, 1, 8, 24, 40), dtype=np.uint16)
    image = tmp_path / "in.zarr"
    create_image(image, shape=data.shape, dims=("t", "c", "z", "y", "x"), chunks=(1, 1, 8, 16, 16), dtype=data.dtype,
                 scale={"z": 0.4, "y": 0.4, "x": 0.4}, channel_names=["brightfield"])
    write_region(open_for_writing(image), tuple(slice(None) for _ in data.shape), data)
    model = tiny_checkpoint(tmp_path / "dna.ckpt")
    options = PredictOptions(patch_shape=(8, 16, 16), overlap=0.25, chunks=(8, 16, 16), shards="none", precision="fp32", device="cpu")
    opened = []
    real = job_module.level_for_writing
    monkeypatch.setattr(job_module, "level_for_writing", lambda *a, **k: opened.append(a) or real(*a, **k))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        out, summary = predict(image, [model], tmp_path / "out.zarr", options=options, client=client, progress=False)
    assert summary.chunks == 3 * 2 * 3 and len(opened) == 1  # 18 chunk tasks, one opening
    assert np.isfinite(out.values).all()

    job = plan(image, [model], tmp_path / "out.zarr", options)
    opened.clear()
    assert job.output_level(3).shape[0] == 3 and job.output_level(1) is job.output_level(3) and len(opened) == 1
    grow_time_axis(tmp_path / "out.zarr", 5)
    assert job.output_level(5).shape[0] == 5 and len(opened) == 2
    assert np.array_equal(open_image(tmp_path / "out.zarr").values[:3], out.values)
