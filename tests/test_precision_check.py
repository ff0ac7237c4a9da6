"""The precision check (issue 29, item 1): a run in a reduced precision compares it with fp32 on one real
patch before its first block, records the result, and is refused in one line outside the measured bound,
leaving no output; fp32 runs compute nothing for it; a resume keeps the interrupted run's check."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("bioimageio.core")

import autocast_net  # noqa: E402
from bioimageio_packages import build_plain_package  # noqa: E402
from chunked_fnet.cli import main as cli  # noqa: E402
from chunked_fnet.cluster import ClusterSpec, local_client  # noqa: E402
from chunked_fnet.io.reader import image_attributes  # noqa: E402
from chunked_fnet.predict import PredictOptions, plan, predict  # noqa: E402
from chunked_fnet.predict.ledger import Ledger  # noqa: E402
from chunked_fnet.predict.policy import REDUCED_MAX_OVER_STD, REDUCED_MIN_R, Hardware  # noqa: E402
from chunked_fnet.predict.precision_check import PrecisionError, compare, measure_job  # noqa: E402
from chunked_fnet.synth.dataset import SynthConfig, generate  # noqa: E402
from factories import tiny_checkpoint  # noqa: E402

OPTIONS = dict(patch_shape=(12, 24, 24), overlap=8, chunks=(9, 20, 20), device="cpu")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The input, a tiny U-Net checkpoint and two packages of :class:`autocast_net.AutocastNet` (sane, and garbage under autocast)."""
    root = tmp_path_factory.mktemp("precision")
    generate(SynthConfig(size_t=1, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), root / "in.zarr", progress=False)
    tiny_checkpoint(root / "dna.ckpt")
    source = Path(autocast_net.__file__)
    build_plain_package(root / "sane.zip", architecture=(source, "AutocastNet", {"garbage": False}))
    build_plain_package(root / "garbage.zip", architecture=(source, "AutocastNet", {"garbage": True}))
    return root


@pytest.fixture(scope="module")
def forwards(root: Path) -> Path:
    """The file every forward pass of an AutocastNet appends its thread and autocast state to (in this
    process and in the workers, which inherit the environment when they start)."""
    path = root / "forwards.txt"
    os.environ[autocast_net.FORWARDS] = str(path)
    yield path
    os.environ.pop(autocast_net.FORWARDS, None)


@pytest.fixture(scope="module")
def client(forwards: Path):
    with local_client(ClusterSpec(n_workers=1, threads_per_worker=1)) as c:
        yield c


def _passes(path: Path) -> list[str]:
    """The forward passes logged since the last call (the log is emptied)."""
    lines = path.read_text().splitlines() if path.exists() else []
    path.write_text("")
    return lines


def test_a_bf16_run_records_its_check_within_the_bound(root: Path, client, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "bf16.zarr"
    predict(root / "in.zarr", [root / "dna.ckpt"], out, options=PredictOptions(**OPTIONS, precision="bf16"), client=client, progress=False)
    record = Ledger(str(out)).read_record()
    check = record["precision"]["check"]
    assert check["r"] >= REDUCED_MIN_R and check["max_over_std"] <= REDUCED_MAX_OVER_STD
    assert check["r"] > 0.99 and check["max_over_std"] < 1.0  # rounding, not a wrong result
    assert check["patch"] == record["window"]["patch"] == [12, 24, 24] and len(check["corner"]) == 3
    assert check["bound"] == {"min_r": REDUCED_MIN_R, "max_over_std": REDUCED_MAX_OVER_STD}
    assert check["seconds"] > 0 and check["device"].startswith("cpu") and check["cudnn"] is None and set(check["channels"]) == {"dna"}
    assert image_attributes(str(out))["chunked_fnet"]["precision"]["check"] == check  # the image's own provenance too
    assert cli(["info", str(out)]) == 0
    assert f"precision check against fp32 on a 12x24x24 patch on {check['device']}: r {check['r']}" in capsys.readouterr().out


def test_a_wrong_reduced_precision_is_refused_in_one_line_leaving_no_output(
    root: Path, client, tmp_path: Path, capsys: pytest.CaptureFixture, forwards: Path,
) -> None:
    out = tmp_path / "garbage.zarr"
    options = PredictOptions(**OPTIONS, precision="bf16")
    _passes(forwards)
    with pytest.raises(PrecisionError) as caught:
        predict(root / "in.zarr", [root / "garbage.zip"], out, options=options, client=client, progress=False)
    message = str(caught.value)
    assert "\n" not in message and "precision bf16 computes wrong on cpu" in message and "rerun with --precision fp32" in message
    assert f"r >= {REDUCED_MIN_R} and max <= {REDUCED_MAX_OVER_STD} x std" in message and "Pearson r " in message and "max |bf16 - fp32| " in message
    assert not out.exists()  # not even the claim's folder
    assert [p.split()[-1] for p in _passes(forwards)] == ["autocast", "fp32"]  # the check's two passes, no block's
    # the command line says it in one line, naming the way out
    code = cli(["predict", str(root / "in.zarr"), "--models", str(root / "garbage.zip"), "--out", str(out), "--scheduler",
                client.scheduler.address, "--precision", "bf16", "--device", "cpu", "--patch-shape", "12", "24", "24", "--overlap", "8",
                "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--precision fp32" in err and "Pearson r" in err, err
    assert not out.exists()
    # the same package in fp32 runs (the garbage is the reduced precision's alone)
    predict(root / "in.zarr", [root / "garbage.zip"], out, options=options.model_copy(update={"precision": "fp32"}), client=client, progress=False)


def test_fp32_runs_compute_nothing_for_the_check(root: Path, client, tmp_path: Path, forwards: Path) -> None:
    """Counted by the model's own log: an fp32 run's forward passes are its patches; a bf16 run adds the check's two."""
    patches = len(list(plan(str(root / "in.zarr"), [root / "sane.zip"], tmp_path / "p.zarr", PredictOptions(**OPTIONS))
                       .resolve_policy(Hardware()).window.grid.corners()))
    counts = {}
    for precision in ("fp32", "bf16"):
        _passes(forwards)
        out = tmp_path / f"{precision}.zarr"
        predict(root / "in.zarr", [root / "sane.zip"], out, options=PredictOptions(**OPTIONS, precision=precision), client=client, progress=False)
        counts[precision] = _passes(forwards)
        assert ("check" in Ledger(str(out)).read_record()["precision"]) == (precision == "bf16")
    assert len(counts["fp32"]) == patches and all(p.endswith(" fp32") for p in counts["fp32"])
    assert len(counts["bf16"]) == patches + 2 and sum(p.endswith(" fp32") for p in counts["bf16"]) == 1  # the check's reference


def test_a_resume_keeps_the_recorded_check_and_takes_records_without_one(root: Path, client, tmp_path: Path, forwards: Path) -> None:
    out = tmp_path / "resumed.zarr"
    options = PredictOptions(**OPTIONS, precision="bf16")
    predict(root / "in.zarr", [root / "sane.zip"], out, options=options, client=client, progress=False)
    ledger = Ledger(str(out))
    first = ledger.read_record()
    _passes(forwards)
    predict(root / "in.zarr", [root / "sane.zip"], out, options=options, client=client, progress=False, resume=True)
    assert _passes(forwards) == [] and ledger.read_record() == first  # nothing re-checked (nor recomputed)
    old = {**first, "precision": {k: v for k, v in first["precision"].items() if k != "check"}}
    ledger.write_record(old)  # a record made before the check existed
    predict(root / "in.zarr", [root / "sane.zip"], out, options=options, client=client, progress=False, resume=True)
    assert _passes(forwards) == [] and "check" not in ledger.read_record()["precision"]


def test_the_check_runs_its_forward_passes_in_the_device_thread(root: Path, tmp_path: Path, forwards: Path) -> None:
    job = plan(str(root / "in.zarr"), [root / "sane.zip"], tmp_path / "x.zarr", PredictOptions(**OPTIONS, precision="bf16"))
    policy = job.resolve_policy(Hardware())
    _passes(forwards)
    check = measure_job(job, policy, device_thread=True)
    passes = _passes(forwards)
    assert [p.split()[1] for p in passes] == ["autocast", "fp32"]  # the run's precision, then the reference
    assert all(p.startswith("chunked_fnet-cpu_") for p in passes), passes
    assert check["device_thread"] is True and check["r"] >= REDUCED_MIN_R
    check = measure_job(job, policy)  # the run's own choice: none on a CPU
    assert check["device_thread"] is False and not any(p.startswith("chunked_fnet-") for p in _passes(forwards))


def test_compare_tells_rounding_from_garbage() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(2, 4, 8, 8)).astype(np.float32)
    rounded = ref.copy()
    rounded[1] += 1e-3 * rng.normal(size=ref[1].shape)
    (r0, m0), (r1, m1) = compare(ref, rounded)
    assert r0 == 1.0 and m0 == 0.0 and 0.9999 < r1 < 1.0 and 0 < m1 < 0.01
    garbage = ref.copy()
    garbage[0] = rng.uniform(size=ref[0].shape)
    garbage[1, 0, 0, 0] = np.nan
    (r0, m0), (r1, m1) = compare(ref, garbage)
    assert abs(r0) < 0.2 and m0 > 1 and np.isnan(r1) and m1 == np.inf
    assert json.dumps(compare(np.ones((1, 4)), np.ones((1, 4)))) == "[[1.0, 0.0]]"  # a constant output, reproduced


def test_the_in_process_predictor_checks_its_first_frame(root: Path, forwards: Path) -> None:
    """cf.Predictor resolves its policy in this process, without prepare(): it checks the first frame of each shape itself."""
    from chunked_fnet.io.reader import open_image
    from chunked_fnet.predict.predictor import Predictor

    frame = open_image(root / "in.zarr").isel(t=0)
    options = PredictOptions(**OPTIONS, precision="bf16")
    with pytest.raises(PrecisionError, match=r"precision bf16 computes wrong on cpu .* rerun with --precision fp32"):
        Predictor([root / "garbage.zip"], options)(frame)
    predictor = Predictor([root / "sane.zip"], options)
    _passes(forwards)
    first = predictor(frame)
    checked = len(_passes(forwards))
    second = predictor(frame)
    assert checked == len(_passes(forwards)) + 2  # the check's two passes, at the first frame only
    assert first.attrs["precision_check"]["r"] >= REDUCED_MIN_R and second.attrs["precision_check"] == first.attrs["precision_check"]
    assert "precision_check" not in Predictor([root / "sane.zip"], options.model_copy(update={"precision": "fp32"}))(frame).attrs


def test_a_follow_checks_before_it_creates_its_output(root: Path, client, tmp_path: Path) -> None:
    """predict --follow resolves its policy without prepare(): it checks the same way, before creating its output."""
    from chunked_fnet.predict.follow import follow

    options = PredictOptions(**OPTIONS, precision="bf16")
    out = tmp_path / "followed.zarr"
    with pytest.raises(PrecisionError, match="rerun with --precision fp32"):
        follow(root / "in.zarr", [root / "garbage.zip"], out, options=options, client=client, idle_timeout=0.5, poll=0.1, progress=False)
    assert not out.exists()
    follow(root / "in.zarr", [root / "sane.zip"], out, options=options, client=client, idle_timeout=0.5, poll=0.1, progress=False)
    assert Ledger(str(out)).read_record()["precision"]["check"]["r"] >= REDUCED_MIN_R


def test_a_worker_keeps_its_verdict_for_later_runs_of_the_same_models_and_patch(
    root: Path, client, tmp_path: Path, forwards: Path, capsys: pytest.CaptureFixture,
) -> None:
    """The check is two whole-patch forwards, one in fp32: measured once per worker for a key (models, patch,
    precision, flips, device, libraries), on every core the worker may use, its threads put back after."""
    import torch

    from chunked_fnet.device import usable_cores

    options = PredictOptions(**{**OPTIONS, "patch_shape": (12, 16, 16)}, precision="bf16")  # a key no other test measures
    copy = tmp_path / "copy.zarr"
    shutil.copytree(root / "in.zarr", copy)
    checks = []
    for i, source in enumerate((root / "in.zarr", copy)):
        _passes(forwards)
        out = tmp_path / f"kept{i}.zarr"
        predict(source, [root / "sane.zip"], out, options=options, client=client, progress=False)
        checks.append((Ledger(str(out)).read_record()["precision"]["check"], len(_passes(forwards))))
    (first, first_passes), (second, second_passes) = checks
    assert first["reused"] is False and second["reused"] is True
    assert second_passes == first_passes - 2  # the same patches, and no forward for the check this time
    assert second["measured_on"] == first["measured_on"] == str(root / "in.zarr")
    assert {k: v for k, v in second.items() if k != "reused"} == {k: v for k, v in first.items() if k != "reused"}
    cores = usable_cores()
    assert first["threads"] == cores  # the check ran on every core the worker may use (1 task thread otherwise)
    assert client.run(torch.get_num_threads) == {w: 1 for w in client.scheduler_info()["workers"]}  # and gave them back
    assert cli(["info", str(tmp_path / "kept1.zarr")]) == 0
    assert f"kept by its worker from a check on {root / 'in.zarr'}" in capsys.readouterr().out
    # another patch shape is another key: measured again
    _passes(forwards)
    out = tmp_path / "other.zarr"
    predict(root / "in.zarr", [root / "sane.zip"], out, options=options.model_copy(update={"patch_shape": (12, 20, 20)}), client=client, progress=False)
    assert Ledger(str(out)).read_record()["precision"]["check"]["reused"] is False
    assert sum(p.endswith(" fp32") for p in _passes(forwards)) == 1
