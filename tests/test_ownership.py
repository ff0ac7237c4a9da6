"""A run owns its output (chunked_fnet/predict/ownership.py): two runs into one --out, a resume while
the first still runs, a run that died, an overwrite of what is not a zarr store; on disk and on S3."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet import open_image
from chunked_fnet.errors import OutputExistsError
from chunked_fnet.predict import PredictOptions
from chunked_fnet.predict.ownership import LEASE_S, claimed
from factories import prediction_case

FLAGS = ["--patch", "8", "16", "16", "--chunks", "4", "8", "8", "--overlap", "0.25", "--precision", "fp32", "--no-progress", "--workers", "1"]
OPTIONS = PredictOptions(patch_shape=(8, 16, 16), chunks=(4, 8, 8), overlap=0.25, precision="fp32")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    image, models, reference = prediction_case(tmp_path_factory.mktemp("ownership"), OPTIONS, size_t=2)
    return image, [str(m) for m in models], reference


def _predict(image: Path, models: list[str], out: Path, *extra: str) -> subprocess.Popen:
    args = [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", *models, "--out", str(out), *FLAGS, *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_two_runs_started_together_into_one_out_give_one_output_and_one_refusal(data, tmp_path: Path) -> None:
    """A job submitted twice: one run writes the output, the other is refused in one line and removes nothing."""
    image, models, reference = data
    for attempt in range(3):
        out = tmp_path / f"out{attempt}.zarr"
        runs = [_predict(image, models, out), _predict(image, models, out)]
        results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
        codes = sorted(code for code, _, _ in results)
        assert codes == [0, 2], results
        (loser,) = [err for code, _, err in results if code != 0]
        assert len(_lines(loser)) == 1 and "Traceback" not in loser, loser
        assert "is being written by another run" in loser and " on " in loser and "started" in loser, loser  # names the holder
        np.testing.assert_array_equal(open_image(out).values, reference)
        claims = json.loads((out / ".chunked_fnet" / "owner" / "0.json").read_text())
        assert claims["released"] is True and not (out / ".chunked_fnet" / "owner" / "1.json").exists()


def test_a_resume_while_the_run_is_live_is_refused_naming_it_then_taken_over_once_it_ends(data, tmp_path: Path) -> None:
    image, models, reference = data
    out = tmp_path / "held.zarr"
    with claimed(str(out)):  # this test process is the live run
        refused = _predict(image, models, out, "--resume")
        code, _, err = refused.wait(timeout=300), *refused.communicate()
        assert code == 2 and len(_lines(err)) == 1, err
        assert "is being written by another run" in err and f"pid {os.getpid()} on {socket.gethostname()}" in err, err
    assert not out.exists()  # the run that held it made nothing, and left nothing
    resumed = _predict(image, models, out, "--resume")  # a resume of nothing is a first run
    assert resumed.wait(timeout=300) == 0, resumed.communicate()
    np.testing.assert_array_equal(open_image(out).values, reference)
    assert json.loads((out / ".chunked_fnet" / "owner" / "0.json").read_text())["released"] is True


def test_the_claim_of_a_killed_run_on_this_host_is_taken_over_at_once_one_elsewhere_after_the_lease(tmp_path: Path) -> None:
    out = tmp_path / "dead.zarr"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from chunked_fnet.predict.ownership import claimed\n"
         f"with claimed({str(out)!r}):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputExistsError, match=rf"is being written by another run .*pid {holder.pid}"):
        with claimed(str(out)):
            pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with claimed(str(out)) as claim:  # its process is gone: no lease to wait out
        assert claim.number == 1
    # a claim from another host counts as live until its heartbeat is LEASE_S old
    path = out / ".chunked_fnet" / "owner" / "2.json"
    path.write_text(json.dumps({"run": "r", "host": "elsewhere", "pid": 1, "started": time.time(), "heartbeat": time.time()}))
    with pytest.raises(OutputExistsError, match="pid 1 on elsewhere"):
        with claimed(str(out)):
            pass
    path.write_text(json.dumps({"run": "r", "host": "elsewhere", "pid": 1, "started": 0, "heartbeat": time.time() - LEASE_S - 1}))
    with claimed(str(out)) as claim:
        assert claim.number == 3
    # a damaged claim (not JSON) is judged by its file's age: refused, named, while it could be a live run's
    damaged = out / ".chunked_fnet" / "owner" / "4.json"
    damaged.write_bytes(b"\x00{not json")
    with pytest.raises(OutputExistsError, match=r"another run of the unreadable claim .*owner/4.json"):
        with claimed(str(out)):
            pass
    os.utime(damaged, (time.time() - LEASE_S - 1,) * 2)
    with claimed(str(out)) as claim:
        assert claim.number == 5


def test_a_live_claim_keeps_its_heartbeat_and_a_released_one_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import chunked_fnet.predict.ownership as ownership

    monkeypatch.setattr(ownership, "HEARTBEAT_S", 0.05)
    path = tmp_path / "beat.zarr" / ".chunked_fnet" / "owner" / "0.json"
    with claimed(str(tmp_path / "beat.zarr")) as claim:
        claim.writing = True  # as a run does once its checks pass: the claim is then kept when it ends
        (tmp_path / "beat.zarr" / "zarr.json").write_text("{}")
        first = json.loads(path.read_text())["heartbeat"]
        time.sleep(0.5)
        assert json.loads(path.read_text())["heartbeat"] > first and ownership.is_live(json.loads(path.read_text()))
        assert json.loads(path.read_text())["run"] == claim.info["run"]
    assert json.loads(path.read_text())["released"] is True and not ownership.is_live(json.loads(path.read_text()))


def _race(output: str, n: int = 6) -> list[str]:
    """``n`` threads claim ``output`` at one moment; what each got."""
    start, tried, results = threading.Barrier(n), threading.Barrier(n), []

    def one() -> None:
        start.wait()
        try:
            with claimed(output) as claim:
                results.append(f"won {claim.number}")
                tried.wait()  # held until every thread has tried
        except OutputExistsError as exc:
            results.append(str(exc))
            tried.wait()

    threads = [threading.Thread(target=one) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_claims_made_at_one_moment_have_one_winner_on_disk(tmp_path: Path) -> None:
    results = _race(str(tmp_path / "race.zarr"))
    assert sorted(results)[-1] == "won 0" and sum(r.startswith("won") for r in results) == 1, results


def test_claims_made_at_one_moment_have_one_winner_on_s3(s3) -> None:
    s3.bucket("ownership")
    results = _race("s3://ownership/race.zarr")
    assert sum(r.startswith("won") for r in results) == 1, results
    assert all("is being written by another run" in r for r in results if not r.startswith("won")), results


def test_a_refused_resume_leaves_the_output_as_it_was(data, tmp_path: Path) -> None:
    image, models, _ = data
    out = tmp_path / "other.zarr"
    assert _predict(image, models, out).wait(timeout=300) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    refused = _predict(image, models, out, "--resume", "--tta")  # other parameters: refused after the claim
    code, _, err = refused.wait(timeout=300), *refused.communicate()
    assert code == 2 and "cannot resume" in err, err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_overwrite_refuses_what_is_not_a_zarr_store_and_writes_nothing_into_it(data, tmp_path: Path) -> None:
    image, models, _ = data
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "thesis.txt").write_text("precious")
    run = _predict(image, models, folder, "--overwrite")
    code, _, err = run.wait(timeout=300), *run.communicate()
    assert code == 2 and "is not a zarr store; refusing to delete it" in err, err
    assert sorted(p.name for p in folder.iterdir()) == ["thesis.txt"]
