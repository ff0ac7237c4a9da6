"""``chunked-fnet predict --scheduler`` against a cluster started with the ``dask scheduler`` and
``dask worker`` command lines on 127.0.0.1, as a user's own cluster would be."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from chunked_fnet import open_image

from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.synth.dataset import SynthConfig, generate
from dask_cli import cli_cluster
from factories import tiny_checkpoint

STRUCTURES = ("dna", "er", "membrane")
FLAGS = ["--patch", "8", "16", "16", "--chunks", "8", "16", "16", "--overlap", "0.25", "--precision", "fp32", "--shards", "none", "--no-progress"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], np.ndarray]:
    root = tmp_path_factory.mktemp("cli_cluster")
    generate(SynthConfig(size_t=3, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)), root / "in.zarr", progress=False)
    models = [tiny_checkpoint(root / f"{s}.ckpt", s, seed=i) for i, s in enumerate(STRUCTURES)]
    options = PredictOptions(patch_shape=(8, 16, 16), chunks=(8, 16, 16), overlap=0.25, precision="fp32")
    reference, _ = predict(root / "in.zarr", models, root / "reference.zarr", options=options, progress=False)
    return root / "in.zarr", models, reference.values


def _snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cli_predict_on_dask_scheduler_and_dask_worker_processes(data, tmp_path: Path) -> None:
    image, models, reference = data
    before = _snapshot(image)
    with cli_cluster(tmp_path, n_workers=2) as cluster:
        pids = cluster.worker_pids()
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids.values())
        result = subprocess.run(
            [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", *map(str, models),
             "--out", str(tmp_path / "out.zarr"), "--scheduler", cluster.address, *FLAGS],
            capture_output=True, text=True, check=False, timeout=300,
        )
        assert result.returncode == 0, result.stderr
        # every listening socket of the cluster's processes is on the loopback address
        for pid in [cluster.scheduler.pid, *pids.values()]:
            listening = [c.laddr for c in psutil.Process(pid).net_connections("inet") if c.status == psutil.CONN_LISTEN]
            assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    assert "chunk tasks on 2 worker(s)" in result.stdout and "channels: dna, er, membrane" in result.stdout
    out = open_image(tmp_path / "out.zarr")
    assert out.shape == (3, 3, 9, 40, 36)
    np.testing.assert_allclose(out.values, reference, atol=1e-5, rtol=0)
    assert _snapshot(image) == before


FINE = ["--patch", "8", "16", "16", "--chunks", "4", "8", "8", "--overlap", "0.25", "--precision", "fp32", "--shards", "none", "--no-progress"]
TOTAL_FINE = 3 * 3 * 5 * 5  # time points x chunks along z, y, x


def _start_predict(image: Path, models: list[Path], out: Path, address: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", *map(str, models), "--out", str(out),
         "--scheduler", address, *FINE, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _done(out: Path) -> int:
    folder = out / ".chunked_fnet" / "done"
    return len(list(folder.iterdir())) if folder.exists() else 0


def _wait_for_done(out: Path, at_least: int, proc: subprocess.Popen, timeout: float = 240) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        n = _done(out)
        if n >= at_least:
            return n
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {at_least} chunks done in {timeout} s")


def test_resume_after_sigkill_of_the_client_computes_only_the_rest(data, tmp_path: Path) -> None:
    image, models, reference = data
    out = tmp_path / "out.zarr"
    with cli_cluster(tmp_path, n_workers=2) as cluster:
        client = _start_predict(image, models, out, cluster.address)
        _wait_for_done(out, 10, client)
        client.send_signal(signal.SIGKILL)
        client.wait(timeout=30)
        assert client.returncode == -signal.SIGKILL
        done_at_kill = _done(out)
        assert 10 <= done_at_kill < TOTAL_FINE
        # a changed parameter is refused, naming it, and nothing is written
        changed = _start_predict(image, models, out, cluster.address, "--resume", "--blend", "cosine")
        _, err = changed.communicate(timeout=300)
        assert changed.returncode == 2 and "cannot resume" in err and "window.blend: interrupted run \"gaussian\", now \"cosine\"" in err
        resumed = _start_predict(image, models, out, cluster.address, "--resume")
        stdout, stderr = resumed.communicate(timeout=300)
        assert resumed.returncode == 0, stderr
    match = re.search(r"wrote .*: (\d+) chunk tasks .* \((\d+) of (\d+) were already done\)", stdout)
    assert match, stdout
    computed, skipped, total = map(int, match.groups())
    assert total == TOTAL_FINE and computed + skipped == total and skipped >= done_at_kill and computed > 0
    print(f"resume: {skipped} of {total} chunks were done when the client was killed; the resumed run computed {computed}")
    np.testing.assert_allclose(open_image(out).values, reference, atol=1e-5, rtol=0)
    assert _done(out) == TOTAL_FINE


def test_losing_a_worker_process_mid_run_gives_identical_output(data, tmp_path: Path) -> None:
    image, models, reference = data
    out = tmp_path / "out.zarr"
    with cli_cluster(tmp_path, n_workers=2) as cluster:
        pids = cluster.worker_pids()
        client = _start_predict(image, models, out, cluster.address)
        _wait_for_done(out, 10, client)
        victim = next(iter(pids.values()))
        os.kill(victim, signal.SIGKILL)
        stdout, stderr = client.communicate(timeout=300)
        assert client.returncode == 0, stderr
        assert not psutil.pid_exists(victim) or psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
    assert f"wrote {out}: {TOTAL_FINE} chunk tasks" in stdout
    np.testing.assert_allclose(open_image(out).values, reference, atol=1e-5, rtol=0)


def test_a_chunk_damaged_mid_run_stops_the_run_at_once_naming_it(data, tmp_path: Path) -> None:
    """An input chunk damaged during the run (a storage fault): no retry can decode it, so the first
    output chunk that reads it stops the run, naming it and the damaged file; what was finished stays
    recorded, and a resume once the input is restored computes only the rest. (A failure that a retry
    may fix is retried: tests/test_fatal_errors.py.)"""
    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import Hardware, create_output, execute, plan
    from chunked_fnet.predict.submit import RunStoppedError

    image, models, reference = data
    copy = tmp_path / "in.zarr"
    shutil.copytree(image, copy)
    out = tmp_path / "out.zarr"
    options = PredictOptions(patch_shape=(8, 16, 16), chunks=(8, 16, 16), overlap=0.25, retries=1, precision="fp32", shards="none")
    job = plan(str(copy), models, str(out), options)  # frame statistics read before the fault
    policy = job.resolve_policy(Hardware())
    create_output(job, policy)
    chunk = copy / "0" / "c" / "2" / "0" / "0" / "1" / "1"  # t=2, brightfield, z 0:9, y 20:40, x 20:36
    good_bytes = chunk.read_bytes()
    chunk.write_bytes(b"\x00garbage" * 7)
    with local_client(ClusterSpec(n_workers=2)) as client:
        with pytest.raises(RunStoppedError) as info:
            execute(job, policy, client, progress=False)
    message = str(info.value)
    print(message[:300])
    total = 3 * 2 * 3 * 3
    done = _done(out)
    # the chunk that stopped the run (one of t=2 that reads the broken chunk), its damaged file and its cause
    assert re.search(r"stopped at a failure no retry can fix \(t=2 z\[\d+:\d+\] y\[\d+:\d+\] x\[\d+:\d+\]: UnreadableChunkError: ", message), message
    assert "in.zarr/0/c/2/0/0/1/1: chunk cannot be decoded (RuntimeError: Zstd decompression error" in message
    assert f"{done} of {total} chunks are written and recorded: --resume computes the rest" in message and done < total
    chunk.write_bytes(good_bytes)
    resumed, summary = predict(copy, models, out, options=options, resume=True, progress=False)
    assert (summary.chunks, summary.total_chunks) == (total - done, total)
    np.testing.assert_allclose(resumed.values, reference, atol=1e-5, rtol=0)


def test_local_cluster_listens_on_loopback_only() -> None:
    """The default cluster: scheduler (in this process), nanny and worker processes, and the
    scheduler's HTTP endpoint, all on 127.0.0.1, and never on dask's fixed dashboard port."""
    from chunked_fnet.cluster import ClusterSpec, local_client

    me = psutil.Process()
    with local_client(ClusterSpec(n_workers=1)) as client:
        assert len(client.run(os.getpid)) == 1
        listening = [c.laddr for p in (me, *me.children(recursive=True)) for c in p.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    assert len(listening) >= 4, listening  # scheduler, its HTTP endpoint, nanny, worker
    assert all(addr.ip == "127.0.0.1" for addr in listening) and all(addr.port != 8787 for addr in listening), listening
