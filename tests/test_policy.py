"""The run policy (chunked_fnet/predict/policy.py): one decision of a run's window, precision and threads,
no trap in an explicit window, the recompute factor reported, the same output from the same command."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
import zarr

from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.device import bf16_is_native
from chunked_fnet.errors import InputError
from chunked_fnet.predict import Hardware, ModelConstraints, PredictOptions, plan, predict, resolve_policy
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint

DEMO_MODELS = ModelConstraints(4, (4, 4, 4), width=8)  # the demo's depth-2, width-8 U-Nets


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("policy")
    generate(SynthConfig(size_t=2, size_z=9, size_y=80, size_x=72, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 40, 40)), root / "in.zarr", progress=False)
    return root, root / "in.zarr", [tiny_checkpoint(root / "dna.ckpt"), tiny_checkpoint(root / "er.ckpt", "er", seed=1)]


def _record(out: Path) -> dict:
    return json.loads((out / ".chunked_fnet" / "run.json").read_text())


def _choices(precision: dict) -> dict:
    """A run record's precision less the check's timing: what two runs of one command must agree on."""
    check = {k: v for k, v in precision.get("check", {}).items() if k != "seconds"}
    return {**precision, **({"check": check} if "check" in precision else {})}


def test_the_demos_old_explicit_window_is_refused_naming_the_smallest_patch_that_works() -> None:
    """16x64x64 on the demo's 32x160x160 frame with a 96-voxel overlap had a 4x4x4 step (250x recompute)."""
    with pytest.raises(InputError, match=r"patch_shape \[16, 64, 64\] is too small .* the smallest patch that works is \[(\d+), (\d+), (\d+)\].*"
                       r"use patch_shape auto") as info:
        resolve_policy(PredictOptions(patch_shape=(16, 64, 64)), (32, 160, 160), DEMO_MODELS, Hardware())
    assert "\n" not in str(info.value)
    smallest = tuple(int(v) for v in str(info.value).split("smallest patch that works is [")[1].split("]")[0].split(","))
    works = resolve_policy(PredictOptions(patch_shape=smallest), (32, 160, 160), DEMO_MODELS, Hardware())
    assert works.recompute <= 2.0
    # the defaults evaluate the frame once, as one patch
    auto = resolve_policy(PredictOptions(), (32, 160, 160), DEMO_MODELS, Hardware())
    assert auto.window.patch_shape == (32, 160, 160) and auto.recompute == 1.0
    # an explicit patch and overlap is the user's trade-off: it runs as asked (its recompute factor is reported)
    costly = resolve_policy(PredictOptions(patch_shape=(16, 64, 64), overlap=0.25), (32, 160, 160), DEMO_MODELS, Hardware())
    assert costly.window.patch_shape == (16, 64, 64) and costly.recompute > 2.0
    # a patch large enough for the overlap is taken as given
    fine = resolve_policy(PredictOptions(patch_shape=(32, 256, 256)), (32, 400, 400), DEMO_MODELS, Hardware())
    assert fine.window.patch_shape == (32, 256, 256) and fine.window.overlap_voxels == (0, 96, 96) and fine.recompute <= 2.0


def test_the_recompute_factor_and_the_choices_are_in_the_summary_the_record_and_the_image(data) -> None:
    root, image, models = data
    out = root / "summary.zarr"
    with local_client(ClusterSpec(n_workers=1)) as client:
        _, summary = predict(image, models, out, options=PredictOptions(chunks=(9, 40, 40), shards="none"), client=client, progress=False)
    assert summary.recompute == pytest.approx(summary.policy.window.grid.recompute_factor)
    assert f"each voxel evaluated {summary.recompute:.2f}x" in str(summary) and summary.precision in str(summary)
    record = _record(out)
    assert record["window"]["recompute"] == pytest.approx(summary.recompute, abs=1e-4)
    attrs = zarr.open_group(str(out), mode="r").attrs["chunked_fnet"]
    assert attrs["precision"] == record["precision"] and attrs["window"] == record["window"]
    assert attrs["models"]["sha256"] == record["models"]["sha256"] and attrs["models"]["structures"] == ["dna", "er"]


def test_the_same_command_twice_writes_bit_identical_outputs_at_the_defaults(data) -> None:
    root, image, models = data
    outputs = []
    for k in range(2):
        with local_client(ClusterSpec(n_workers=2)) as client:
            out, summary = predict(image, models, root / f"same{k}.zarr", options=PredictOptions(chunks=(9, 40, 40), shards="none"), client=client, progress=False)
        outputs.append(out.values)
        assert summary.chunks == 2 * 2 * 2
    np.testing.assert_array_equal(outputs[0], outputs[1])
    first, second = (_record(root / f"same{k}.zarr")["precision"] for k in range(2))
    assert ("check" in first) == (first["chosen"] != "fp32")  # a reduced precision is checked against fp32 (on a bf16-native CPU: auto is bf16)
    assert _choices(first) == _choices(second)


def test_auto_precision_is_the_hardware_rule_computed_by_every_task_and_kept_on_resume(data) -> None:
    root, image, models = data
    expected = "bf16" if bf16_is_native(torch.device("cpu")) else "fp32"
    options = dict(chunks=(9, 40, 40))
    out = root / "auto.zarr"
    with local_client(ClusterSpec(n_workers=1)) as client:
        auto, summary = predict(image, models, out, options=PredictOptions(**options), client=client, progress=False)
        assert _record(out)["precision"]["chosen"] == expected and summary.precision.startswith(f"{expected} (auto: ")
        chosen, _ = predict(image, models, root / "chosen.zarr", options=PredictOptions(precision=expected, **options), client=client, progress=False)
        other = "fp32" if expected == "bf16" else "bf16"
        different, _ = predict(image, models, root / "other.zarr", options=PredictOptions(precision=other, **options), client=client, progress=False)
        np.testing.assert_array_equal(auto.values, chosen.values)  # the tasks computed in the chosen precision
        assert np.abs(auto.values - different.values).max() > 1e-4  # and the two precisions differ visibly
        chosen_record = dict(_record(root / "chosen.zarr")["precision"])
        assert (chosen_record.pop("check", None) is not None) == (expected != "fp32") and chosen_record == {"chosen": expected, "why": "explicit"}
        # a resume computes in the recorded precision (edited here to the other one), whatever the hardware rule says
        record = _record(out)
        record["precision"] = {"chosen": other, "why": "edited by the test"}
        (out / ".chunked_fnet" / "run.json").write_text(json.dumps(record))
        (out / ".chunked_fnet" / "done" / "t0-z0-y0-x0").unlink()
        zarr.open_group(str(out), mode="r+")["0"][0, :, 0:9, 0:40, 0:40] = 0
        resumed, summary = predict(image, models, out, options=PredictOptions(**options), client=client, resume=True, progress=False)
    assert summary.chunks == 1 and summary.precision == f"{other} (edited by the test)"
    np.testing.assert_array_equal(resumed.values[0, :, 0:9, 0:40, 0:40], different.values[0, :, 0:9, 0:40, 0:40])
    np.testing.assert_array_equal(resumed.values[0, ..., 40:], auto.values[0, ..., 40:])  # the rest untouched
    np.testing.assert_array_equal(resumed.values[1], auto.values[1])
    shutil.rmtree(root / "other.zarr")


def test_predict_predict_volume_and_evaluate_choose_the_same_window(data, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same models on the same frame: one window, whichever entry point asks."""
    import chunked_fnet.evaluate.report as report
    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.predict.job import model_grid_frame
    from chunked_fnet.sliding_window import predict_volume
    from chunked_fnet.train.trainer import TrainConfig, train

    root, image, _ = data
    (root / "manifest.yaml").write_text(yaml.safe_dump({"images": [
        {"path": str(image), "input_channel": "brightfield", "target_channel": "dna", "time_points": [t]} for t in (0, 1)]}))
    ckpt = train(TrainConfig(manifest=str(root / "manifest.yaml"), output=str(root / "run"), structure="dna", model={"depth": 2, "width": 4},
                             voxel_size=(0.4, 0.4, 0.4), patch_shape=(8, 16, 16), batch_size=2, iterations=2, n_train=1,
                             checkpoint_every=2, validate_every=2, validation_patches=0, workers=0), progress=False)
    seen = []
    monkeypatch.setattr(report, "predict_volume", lambda model, x, **kw: (seen.append(kw["policy"]), predict_volume(model, x, **kw))[1])
    report.evaluate_run(root / "run", progress=False)
    assert len(seen) == 2
    job = plan(str(image), [ckpt], "unused", PredictOptions())
    chunked = job.resolve_policy(Hardware.here())
    with local_client(ClusterSpec(n_workers=1)) as client:
        _, summary = predict(image, [ckpt], root / "same_window.zarr", options=PredictOptions(), client=client, progress=False)
    frame = model_grid_frame(job, 0)[(slice(None), *(slice(0, n) for n in job.grid.shape))]
    model = load_checkpoint(ckpt)[0]
    in_memory = predict_volume(model, frame, multiple=model.multiple, policy=chunked)
    np.testing.assert_array_equal(predict_volume(model, frame, multiple=model.multiple, amp_dtype=torch.bfloat16 if chunked.precision == "bf16" else None),
                                  in_memory)  # predict_volume's defaults are the policy's window
    for policy in (*seen, summary.policy):
        assert policy.window == chunked.window and policy.precision == chunked.precision


@pytest.mark.parametrize("given", ["path", "dataarray"])
def test_planning_opens_the_input_store_once(data, monkeypatch, given) -> None:
    """plan() reads metadata, checks completeness and computes the frame statistics from one opened store."""
    import chunked_fnet.io.reader as reader

    root, image, models = data
    source = reader.open_image(image) if given == "dataarray" else image
    opened: list[str] = []
    real = reader.open_zarr_group
    monkeypatch.setattr(reader, "open_zarr_group", lambda path, options: opened.append(str(path)) or real(path, options))
    job = plan(source, models, root / f"once-{given}.zarr", PredictOptions())
    assert opened == [str(image)]
    assert job.input_array.shape == zarr.open_array(image / "0", mode="r").shape  # the tasks in this process reuse it
    assert opened == [str(image)]


def test_the_smallest_patch_named_is_the_one_an_exhaustive_search_finds() -> None:
    """The refusal's search runs over each axis's cheaper sizes only; it must name the same patch volume as trying every size."""
    import itertools
    import math
    import random

    from chunked_fnet.predict import policy

    rng = random.Random(0)
    for _ in range(150):
        m = rng.choice([4, 8, 16])
        frame, needed = [rng.randint(5, 100) for _ in range(3)], [rng.randint(0, 40) for _ in range(3)]
        start = [max(m, rng.randint(1, 40) // m * m) for _ in range(3)]
        sizes = [range(p, max(p, m * math.ceil(n / m)) + 1, m) for p, n in zip(start, frame)]
        costs = [(math.prod(c), policy._recompute(c, frame, needed)) for c in itertools.product(*sizes)]
        best = min((v for v, r in costs if r <= policy.MAX_RECOMPUTE), default=None)
        found = policy._smallest_patch(start, frame, needed, m, [m] * 3)
        assert (found is None) == (best is None) and (found is None or math.prod(found[1]) == best), (frame, needed, start, found, best)
        assert found is None or found[0] == policy._recompute(found[1], frame, needed) <= policy.MAX_RECOMPUTE


def test_a_cpu_time_lapse_computes_in_each_workers_compute_lane_on_all_its_threads(data, tmp_path: Path) -> None:
    """Several block tasks on a CPU host: the policy runs their forward passes one at a time in each worker's
    compute lane, on the worker's task threads (the block tasks keep one torch thread for their own work),
    and the values are those of a run without it; a frame on its own keeps the host's threads in its task."""
    import threading

    from chunked_fnet.predict.job import lane_threads
    from chunked_fnet.sliding_window import PatchRunner

    cpu = Hardware(threads_per_host=(2,), device="cpu")
    lapse = resolve_policy(PredictOptions(), (16, 64, 64), DEMO_MODELS, cpu, frames=4)
    single = resolve_policy(PredictOptions(), (16, 64, 64), DEMO_MODELS, cpu, frames=1)
    gpu = resolve_policy(PredictOptions(), (16, 64, 64), DEMO_MODELS, Hardware(device="cuda"), frames=4)
    assert (lapse.compute_lane, lapse.block_threads) == (True, 1)
    assert (single.compute_lane, single.block_threads) == (False, 2)
    assert not gpu.compute_lane  # a GPU worker's device thread is its own rule
    assert lane_threads(lapse, torch.device("cpu")) is None  # outside a dask worker: the caller's thread computes

    seen: list[tuple[str, int]] = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append((threading.current_thread().name, torch.get_num_threads()))
        return x * 2

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = PatchRunner(probe, "cpu", device_thread=True, threads=2, channels_last=False).outputs(np.ones((1, 1, 4, 4, 4), np.float32))
        assert torch.get_num_threads() == 1  # the caller's thread keeps its count
    finally:
        torch.set_num_threads(before)
    assert float(out.min()) == 2.0
    assert seen and all(name.startswith("chunked_fnet-cpu") and threads == 2 for name, threads in seen), seen

    root, image, models = data
    options = PredictOptions(precision="fp32", patch_shape=(8, 32, 32), overlap=0.25)
    with local_client(ClusterSpec(n_workers=1, threads_per_worker=2)) as client:
        assert client.submit(lane_threads, lapse, torch.device("cpu"), pure=False).result() == 2
        lane, summary = predict(image, models, tmp_path / "lane.zarr", options=options, client=client, progress=False)
    with local_client(ClusterSpec(n_workers=2, threads_per_worker=1)) as client:
        plain, _ = predict(image, models, tmp_path / "plain.zarr", options=options, client=client, progress=False)
    assert summary.policy.compute_lane
    np.testing.assert_allclose(lane.values, plain.values, atol=1e-5, rtol=0)
    assert float(np.std(lane.values)) > 0


def test_the_default_local_cluster_is_one_worker_on_every_usable_core() -> None:
    from chunked_fnet.device import usable_cores

    with local_client(ClusterSpec()) as client:
        workers = list(client.scheduler_info()["workers"].values())
    assert [w["nthreads"] for w in workers] == [usable_cores()]
