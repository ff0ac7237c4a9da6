"""``chunked-fnet predict --cluster SPEC.yaml`` with ``kind: slurm`` against a real single-node SLURM
(``slurm_fixture.py``): every dask worker is a SLURM job submitted by dask-jobqueue, and the output
equals a LocalCluster run; cancelling one worker job mid-run changes nothing; the SLURM example runs.
Skipped, saying why, where SLURM or munge cannot be installed or started."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from chunked_fnet import open_image
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint
from slurm_fixture import Slurm

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = ("dna", "er")
T = 4  # time points: enough chunks that a worker job can be cancelled while the run is computing
FLAGS = ["--patch", "8", "16", "16", "--chunks", "4", "8", "8", "--overlap", "0.25", "--precision", "fp32", "--shards", "none", "--no-progress"]
TOTAL = T * 3 * 5 * 5  # time points x chunks along z, y, x
JOBS = 2


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], np.ndarray]:
    """A small synthetic time-lapse, two tiny U-Nets and their prediction on a LocalCluster (the reference)."""
    root = tmp_path_factory.mktemp("slurm_data")
    generate(SynthConfig(size_t=T, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), root / "in.zarr", progress=False)
    models = [tiny_checkpoint(root / f"{s}.ckpt", s, seed=i) for i, s in enumerate(STRUCTURES)]
    options = PredictOptions(patch_shape=(8, 16, 16), chunks=(4, 8, 8), overlap=0.25, precision="fp32")
    reference, _ = predict(root / "in.zarr", models, root / "reference.zarr", options=options, progress=False)  # LocalCluster, 2 processes
    return root / "in.zarr", models, reference.values


def _spec(folder: Path, slurm: Slurm) -> Path:
    """cluster/slurm.yaml adapted to the test SLURM: one 1-core job per worker, everything on loopback."""
    spec = yaml.safe_load((ROOT / "cluster" / "slurm.yaml").read_text())
    spec["jobs"] = JOBS
    spec["jobqueue"].update(
        queue=slurm.partition, cores=1, processes=1, memory="2GB", walltime="00:10:00", interface="lo",
        log_directory=str(folder / "logs"), local_directory=str(folder / "scratch"),
        scheduler_options={"dashboard_address": "127.0.0.1:0"},
        worker_extra_args=["--dashboard-address", "127.0.0.1:0"],  # a worker's HTTP endpoint listens on every address otherwise
    )
    del spec["jobqueue"]["job_extra_directives"]  # no GPUs here
    path = folder / "slurm_test.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _env(slurm: Slurm) -> dict[str, str]:
    """The environment of the client, which sbatch passes on to the jobs (--export=ALL): the SLURM
    config, this checkout first on PYTHONPATH and the venv's scripts on PATH."""
    env = slurm.env
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _start_predict(image: Path, models: list[Path], out: Path, spec: Path, slurm: Slurm) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", *map(str, models), "--out", str(out),
         "--cluster", str(spec), *FLAGS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(slurm), cwd=out.parent,
    )


def _done(out: Path) -> int:
    folder = out / ".chunked_fnet" / "done"
    return len(list(folder.iterdir())) if folder.exists() else 0


def _wait_until(condition, proc: subprocess.Popen, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise TimeoutError(f"{what} not within {timeout:g} s: {proc.communicate()}")
        time.sleep(0.05)


def _listening_of_this_slurm(slurm: Slurm) -> dict[str, list[str]]:
    """Listening sockets ('ip:port') of every process that carries this SLURM's SLURM_CONF: the
    daemons, the client (with its dask scheduler) and the jobs' dask nannies and workers, by kind."""
    found: dict[str, list[str]] = {}
    for p in psutil.process_iter(["name"]):
        try:
            env = p.environ()
            if env.get("SLURM_CONF") != str(slurm.conf):
                continue
            kind = p.info["name"] if p.info["name"].startswith("slurm") else ("job" if "SLURM_JOB_ID" in env else "client")
            for c in p.net_connections("inet"):
                if c.status == psutil.CONN_LISTEN:
                    found.setdefault(kind, []).append(f"{c.laddr.ip}:{c.laddr.port}")
        except (psutil.Error, OSError):
            continue
    return found


def _start_and_wait_for_both_jobs(
    image: Path, models: list[Path], out: Path, spec: Path, slurm: Slurm, chunks: int
) -> tuple[subprocess.Popen, set[str]]:
    """The CLI prediction, started and watched until both worker jobs have run and ``chunks`` chunks
    are written; returns the process and the ids of the SLURM jobs seen running."""
    proc = _start_predict(image, models, out, spec, slurm)
    running: set[str] = set()

    def computing_on_both_jobs() -> bool:
        running.update(slurm.jobs("running"))
        return len(running) >= JOBS and _done(out) >= chunks

    _wait_until(computing_on_both_jobs, proc, 180, f"{JOBS} running SLURM jobs and {chunks} chunks written")
    return proc, running


def _registered(logs: Path, job_id: str) -> str:
    """The scheduler address the dask worker of SLURM job ``job_id`` registered to, from its job log."""
    text = (logs / f"dask-worker-{job_id}.err").read_text()
    match = re.search(r"Registered to:\s+(tcp://\S+)", text)
    assert match, text[-2000:]
    return match.group(1)


def test_every_worker_is_a_slurm_job_and_the_output_equals_a_local_cluster_run(slurm: Slurm, data, tmp_path: Path) -> None:
    image, models, reference = data
    spec, out = _spec(tmp_path, slurm), tmp_path / "out.zarr"
    proc, running = _start_and_wait_for_both_jobs(image, models, out, spec, slurm, chunks=5)
    listening = _listening_of_this_slurm(slurm)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    # nothing listens on any address but loopback: the SLURM daemons, the client's scheduler, the jobs' workers
    print(f"listening: {listening}")
    assert {"slurmctld", "slurmd", "client", "job"} <= listening.keys(), listening
    assert all(addr.startswith("127.0.0.1:") for addrs in listening.values() for addr in addrs), listening
    # the workers were exactly the SLURM jobs seen running, each registered to the client's scheduler
    assert f"wrote {out}: {TOTAL} chunk tasks on {JOBS} worker(s)" in stdout, stdout
    schedulers = {_registered(tmp_path / "logs", j) for j in running}
    assert len(running) == JOBS and len(schedulers) == 1 and schedulers.pop().startswith("tcp://127.0.0.1:"), schedulers
    assert sorted(p.name for p in (tmp_path / "logs").glob("*.err")) == sorted(f"dask-worker-{j}.err" for j in running)
    np.testing.assert_allclose(open_image(out).values, reference, atol=1e-5, rtol=0)
    # closing the client's SLURMCluster ends its jobs
    deadline = time.monotonic() + 30
    while set(slurm.jobs()) & running and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not set(slurm.jobs()) & running


def test_scancel_of_one_worker_job_mid_run_gives_the_same_output(slurm: Slurm, data, tmp_path: Path) -> None:
    image, models, reference = data
    spec, out = _spec(tmp_path, slurm), tmp_path / "out.zarr"
    proc, running = _start_and_wait_for_both_jobs(image, models, out, spec, slurm, chunks=10)
    victim = sorted(running, key=int)[0]
    slurm.scancel(victim)
    done_at_cancel = _done(out)
    still_running = proc.poll() is None
    stdout, stderr = proc.communicate(timeout=300)
    print(f"scancel {victim} with {done_at_cancel} of {TOTAL} chunks written")
    assert still_running and done_at_cancel < TOTAL, (done_at_cancel, stdout)
    assert proc.returncode == 0, stderr
    assert f"wrote {out}: {TOTAL} chunk tasks" in stdout, stdout
    assert "CANCELLED" in (tmp_path / "logs" / f"dask-worker-{victim}.err").read_text()
    assert victim not in slurm.jobs()
    np.testing.assert_allclose(open_image(out).values, reference, atol=1e-5, rtol=0)


def test_the_slurm_example_runs_unchanged(slurm: Slurm, data, tmp_path: Path) -> None:
    image, models, _ = data
    spec, out = _spec(tmp_path, slurm), tmp_path / "pred.zarr"
    result = subprocess.run(
        ["bash", str(ROOT / "examples" / "slurm_predict.sh"), str(image), str(out), *map(str, models)],
        capture_output=True, text=True, timeout=300, env={**_env(slurm), "SPEC": str(spec)}, cwd=tmp_path, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"wrote {out}: " in result.stdout and "channels: dna, er" in result.stdout, result.stdout
    written = open_image(out)
    assert written.shape[:2] == (T, len(STRUCTURES)) and np.isfinite(written.values).all()
    assert open_image(out, level=2).shape[-1] < written.shape[-1]  # --levels 3
    for png in (tmp_path / "pred_overlay.png", tmp_path / "pred_timelapse.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000, png
    assert list((tmp_path / "logs").glob("dask-worker-*.err")), "no worker job ran"


def test_worker_jobs_that_never_start_end_the_run_with_a_clear_message(slurm: Slurm, data, tmp_path: Path) -> None:
    """sbatch refuses jobs for a partition that does not exist: the run stops after the spec's
    worker_timeout, naming the cause and what to check, and leaves no output behind."""
    image, models, _ = data
    spec_path, out = _spec(tmp_path, slurm), tmp_path / "out.zarr"
    spec = yaml.safe_load(spec_path.read_text())
    spec["jobqueue"]["queue"] = "no_such_partition"
    spec["worker_timeout"] = 15
    spec_path.write_text(yaml.safe_dump(spec))
    start = time.monotonic()
    proc = _start_predict(image, models, out, spec_path, slurm)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "no SLURM worker job joined within 15 s (2 job(s) asked of no_such_partition)" in stderr, stderr[-3000:]
    assert time.monotonic() - start < 90
    assert not out.exists()
