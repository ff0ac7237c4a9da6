"""Failures that must end in one line and leave a state that a rerun can finish: a lost scheduler,
mistakes caught before the first byte is written, a failed output creation, missing input chunks."""

from __future__ import annotations

import errno
import hashlib
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet import open_image
from chunked_fnet.errors import ChunkedFnetError
from chunked_fnet.predict import PredictOptions, predict
from dask_cli import cli_cluster
from factories import prediction_case

FLAGS = ["--patch", "8", "16", "16", "--chunks", "4", "8", "8", "--overlap", "0.25", "--precision", "fp32", "--shards", "none", "--no-progress"]
OPTIONS = PredictOptions(patch_shape=(8, 16, 16), chunks=(4, 8, 8), overlap=0.25, precision="fp32", shards="none")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    image, models, reference = prediction_case(tmp_path_factory.mktemp("failures"), OPTIONS)
    return image, models, reference


def _snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "chunked_fnet", *args], capture_output=True, text=True, check=False, timeout=timeout)


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _done(out: Path) -> int:
    folder = out / ".chunked_fnet" / "done"
    return len(list(folder.iterdir())) if folder.exists() else 0


def test_a_lost_scheduler_ends_in_one_line_and_resume_finishes(data, tmp_path: Path) -> None:
    image, models, reference = data
    before = _snapshot(image)
    out = tmp_path / "out.zarr"
    (tmp_path / "first").mkdir()
    with cli_cluster(tmp_path / "first", n_workers=2) as cluster:
        proc = subprocess.Popen(
            [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", *map(str, models), "--out", str(out),
             "--scheduler", cluster.address, *FLAGS],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 240
        while _done(out) < 5:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        cluster.scheduler.send_signal(signal.SIGKILL)
        _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 2, stderr
    line = _one_line(stderr)
    assert "lost its dask scheduler" in line and "--resume" in line and str(out) in line, line
    assert 5 <= _done(out) < 3 * 3 * 5 * 5
    (tmp_path / "second").mkdir()
    with cli_cluster(tmp_path / "second", n_workers=2) as cluster:
        resumed = _cli("predict", str(image), "--models", *map(str, models), "--out", str(out), "--scheduler", cluster.address, *FLAGS, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    np.testing.assert_allclose(open_image(out).values, reference, atol=1e-5, rtol=0)
    assert _snapshot(image) == before


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--patch", "0", "16", "16"], r"patch sizes must be >= 1"),
        (["--device", "banana"], r"device 'banana' is not a torch device"),
    ],
)
def test_mistakes_are_refused_before_the_output_exists(data, tmp_path: Path, flags: list[str], message: str) -> None:
    image, models, _ = data
    out = tmp_path / "out.zarr"
    result = _cli("predict", str(image), "--models", *map(str, models), "--out", str(out), "--workers", "1", *FLAGS, *flags)
    assert result.returncode == 2
    import re

    assert re.search(message, _one_line(result.stderr))
    assert not out.exists()
    # the rerun with the mistake fixed is not told the output "already exists"
    fixed = _cli("predict", str(image), "--models", *map(str, models), "--out", str(out), "--workers", "1", *FLAGS, "--time", "0", "1")
    assert fixed.returncode == 0, fixed.stderr


def test_a_failed_creation_leaves_nothing_behind(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import chunked_fnet.predict.prepare as run

    image, models, _ = data
    out = tmp_path / "out.zarr"
    real = run.Ledger.write_record

    def disk_full(self, record):  # the image's metadata and arrays exist by now; the disk fills up
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run.Ledger, "write_record", disk_full)
    with pytest.raises(ChunkedFnetError, match=r"could not create the output .*out.zarr: No space left on device; nothing was left behind") as info:
        predict(image, models, out, options=OPTIONS.model_copy(update={"time": (0, 1)}), progress=False)
    assert "\n" not in str(info.value)
    assert not out.exists()
    monkeypatch.setattr(run.Ledger, "write_record", real)
    result, _ = predict(image, models, out, options=OPTIONS.model_copy(update={"time": (0, 1)}), progress=False)
    assert result.shape[0] == 1


def test_missing_input_chunks_are_refused_or_filled_on_request(data, tmp_path: Path) -> None:
    import shutil

    image, models, _ = data
    holed = tmp_path / "holed.zarr"
    shutil.copytree(image, holed)
    (holed / "0" / "c" / "1" / "0" / "0" / "1" / "0").unlink()  # t=1, brightfield, y 20:40, x 0:20: as after an interrupted copy
    before = _snapshot(holed)
    with pytest.raises(ChunkedFnetError, match=r"level 0: 1 of the 12 stored chunks the prediction reads are missing \(c/1/0/0/1/0\); the store is incomplete") as info:
        predict(holed, models, tmp_path / "a.zarr", options=OPTIONS, progress=False)
    assert "--missing-chunks fill" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "a.zarr").exists()
    # frames that do not read the hole are fine
    ok, _ = predict(holed, models, tmp_path / "b.zarr", options=OPTIONS.model_copy(update={"time": (2, 3)}), progress=False)
    assert ok.shape[0] == 1
    # on request, predicted from the fill value, and the count is recorded
    filled, _ = predict(holed, models, tmp_path / "c.zarr", options=OPTIONS.model_copy(update={"missing_chunks": "fill"}), progress=False)
    assert np.isfinite(filled.values).all()
    import json

    record = json.loads((tmp_path / "c.zarr" / ".chunked_fnet" / "run.json").read_text())
    assert record["input"]["missing_chunks_filled"] == 1
    assert _snapshot(holed) == before


def test_a_store_with_no_chunks_is_refused_at_once(tmp_path: Path, data) -> None:
    from chunked_fnet import create_image

    _, models, _ = data
    empty = tmp_path / "empty.zarr"
    create_image(empty, shape=(1, 1, 512, 8192, 8192), dims=("t", "c", "z", "y", "x"), chunks=(1, 1, 64, 1024, 1024), dtype="uint16",
                 scale={"z": 0.4, "y": 0.4, "x": 0.4}, channel_names=["brightfield"])
    start = time.monotonic()
    with pytest.raises(ChunkedFnetError, match=r"512 of the 512 stored chunks the prediction reads are missing"):
        predict(empty, models, tmp_path / "out.zarr", options=OPTIONS, progress=False)
    assert time.monotonic() - start < 60  # a listing, not a read of 34 G voxels (generous: this is a refusal, not a benchmark)


def test_a_run_that_stops_progressing_ends_after_stall_timeout_and_resumes(data, tmp_path: Path) -> None:
    """A bounded wait: on a cluster where nothing can run (no workers), the run stops after
    ``stall_timeout`` seconds in one line naming the output and --resume; the resume then finishes."""
    from distributed import Client, LocalCluster

    from chunked_fnet.predict import Hardware, create_output, execute, plan
    from chunked_fnet.predict.submit import RunInterruptedError

    image, models, reference = data
    out = tmp_path / "out.zarr"
    options = OPTIONS.model_copy(update={"stall_timeout": 2.0})
    job = plan(str(image), models, str(out), options)  # statistics on this process's threads: the cluster below cannot run anything
    policy = job.resolve_policy(Hardware())
    create_output(job, policy)
    with LocalCluster(n_workers=0, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        start = time.monotonic()
        with pytest.raises(RunInterruptedError, match=r"stopped on the dask scheduler .*no chunk finished in 2 s \(stall_timeout\)\); 0 of 225 chunks are written and recorded: rerun the same command with --resume") as info:
            execute(job, policy, client, progress=False)
        assert time.monotonic() - start < 60 and "\n" not in str(info.value)
    # stall_timeout is a runtime option: the resume may (and, on a busy machine starting a fresh cluster, should) allow more
    resumed, summary = predict(image, models, out, options=OPTIONS, resume=True, progress=False)
    assert summary.chunks == summary.total_chunks == 225
    np.testing.assert_allclose(resumed.values, reference, atol=1e-5, rtol=0)
