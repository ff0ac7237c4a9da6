"""Failures no retry can fix (a full disk, a read-only output, a damaged input chunk) stop a run at once,
in one line, with nothing retried; a retryable one is still tried ``retries + 1`` times. Real processes:
the ``chunked-fnet`` command line with its local cluster, on a small tmpfs mounted for the test (root only)."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet import open_image
from chunked_fnet.errors import InputError, OmeZarrError, UnreadableChunkError, retryable
from chunked_fnet.predict import PredictOptions, predict
import try_counter
from factories import prediction_case

FLAGS = ["--patch", "8", "16", "16", "--chunks", "4", "8", "8", "--overlap", "0.25", "--precision", "fp32", "--shards", "none", "--no-progress"]
OPTIONS = PredictOptions(patch_shape=(8, 16, 16), chunks=(4, 8, 8), overlap=0.25, precision="fp32", shards="none")
TOTAL = 225  # chunks: 3 time points x 3 x 5 x 5
PAGE = 4096  # a tmpfs stores each small file (a chunk, a marker) in one page
COUNTER = Path(__file__).with_name("try_counter.py")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    image, models, reference = prediction_case(tmp_path_factory.mktemp("fatal"), OPTIONS)
    return image, models, reference


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=True)


def _predict(image: Path, models: list[Path], out: Path, tries: Path, *extra: str) -> subprocess.Popen:
    """``chunked-fnet predict`` on its own local cluster, whose workers log each failed try into ``tries``."""
    env = {**os.environ, "DASK_DISTRIBUTED__WORKER__PRELOAD": f"['{COUNTER}']", "CFNET_TRY_LOG": str(tries)}
    return subprocess.Popen(
        [sys.executable, "-m", "chunked_fnet", "predict", str(image), "--models", *map(str, models), "--out", str(out), *FLAGS, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _done(out: Path) -> int:
    folder = out / ".chunked_fnet" / "done"
    return len([p for p in folder.iterdir() if not p.name.startswith(".")]) if folder.exists() else 0


def _failed_tries(tries: Path) -> Counter:
    """Failed tries per chunk (a retry's key carries its try: ``cfnet-chunk-TOKENr1-...``)."""
    keys = try_counter.tries(tries)
    return Counter(re.sub(r"^cfnet-(\w+)-[0-9a-f]{8}(r\d+)?-", r"\1-", k) for k in keys)


def _stopped_at_once(proc: subprocess.Popen, out: Path, tries: Path, cause: str) -> int:
    """Asserts the run ended in one line naming ``cause``, the chunks written and --resume, having tried
    no chunk twice; returns the chunks written."""
    _, stderr = proc.communicate(timeout=300)
    lines = [line for line in stderr.splitlines() if line.strip()]
    print(f"stderr: {len(lines)} line(s): {stderr[-600:]}")
    assert proc.returncode == 2 and len(lines) <= 3 and "Traceback" not in stderr, stderr
    done = _done(out)
    assert re.search(rf"stopped at a failure no retry can fix \(t=\d .*{cause}.*\); {done} of {TOTAL} chunks are written", lines[-1]), lines[-1]
    assert "--resume computes the rest once the cause is fixed" in lines[-1]
    failed = _failed_tries(tries)
    print(f"{done} chunks written, failed tries: {sum(failed.values())} ({failed.most_common(3)})")
    assert 0 < sum(failed.values()) < TOTAL - done  # not every remaining chunk tried once, let alone retries + 1 times
    assert max(failed.values()) == 1  # none retried
    return done


def test_a_full_disk_stops_the_run_at_once_in_one_line_and_resume_finishes(data, tmpfs: Path, tmp_path: Path) -> None:
    image, models, reference = data
    out, tries = tmpfs / "out.zarr", tmp_path / "tries.log"
    filler = tmpfs / "filler"
    free = os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize
    filler.write_bytes(b"\0" * (free - (3 + 2 * 16) * PAGE))  # room for the output's metadata and about 16 chunks with their markers
    done = _stopped_at_once(_predict(image, models, out, tries), out, tries, "OSError: \\[Errno 28\\] No space left on device")
    assert 0 < done < TOTAL
    filler.unlink()
    resumed = _predict(image, models, out, tries, "--resume")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"{TOTAL - done} chunk tasks" in stdout and f"({done} of {TOTAL} were already done)" in stdout, stdout
    assert np.array_equal(open_image(out).values, reference)


def test_a_read_only_output_stops_the_run_at_once_and_resume_finishes(data, tmpfs: Path, tmp_path: Path) -> None:
    image, models, reference = data
    out, tries = tmpfs / "out.zarr", tmp_path / "tries.log"
    proc = _predict(image, models, out, tries)
    deadline = time.monotonic() + 240
    while _done(out) < 5 or subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], capture_output=True, check=False).returncode != 0:
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()  # EBUSY: a file is open for writing; again
        time.sleep(0.02)
    done = _stopped_at_once(proc, out, tries, "OSError: \\[Errno 30\\] Read-only file system")
    subprocess.run(["mount", "-o", "remount,rw", str(tmpfs)], check=True)
    resumed = _predict(image, models, out, tries, "--resume")
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert f"({done} of {TOTAL} were already done)" in stdout, stdout
    assert np.array_equal(open_image(out).values, reference)


def test_a_retryable_failure_is_tried_retries_plus_one_times(data, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An input chunk that the system cannot open (ELOOP: not a cause that retries exclude) fails its
    chunks after ``retries + 1`` tries each; every other chunk is written, and no run was stopped."""
    import shutil

    import dask

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import ChunksFailedError, Hardware, create_output, execute, plan
    from chunked_fnet.predict.submit import RunStoppedError

    image, models, reference = data
    copy, out, tries = tmp_path / "in.zarr", tmp_path / "out.zarr", tmp_path / "tries.log"
    shutil.copytree(image, copy)
    job = plan(str(copy), models, str(out), OPTIONS)  # frame statistics read before the fault
    policy = job.resolve_policy(Hardware())
    create_output(job, policy)
    chunk = copy / "0" / "c" / "2" / "0" / "0" / "1" / "1"  # t=2, brightfield, z 0:9, y 20:40, x 20:36
    chunk.unlink()
    chunk.symlink_to(chunk.name)  # every open: OSError ELOOP
    monkeypatch.setenv("CFNET_TRY_LOG", str(tries))
    with dask.config.set({"distributed.worker.preload": [str(COUNTER)]}), local_client(ClusterSpec(n_workers=2)) as client:
        with pytest.raises(ChunksFailedError) as info:
            execute(job, policy, client, progress=False)
    assert not isinstance(info.value, RunStoppedError)
    failed = int(re.match(rf"(\d+) of {TOTAL} chunks", str(info.value)).group(1))
    assert "failed after 3 tries" in str(info.value) and "Too many levels of symbolic links" in str(info.value), info.value
    assert _done(out) == TOTAL - failed
    # the chunks failed with the one task that read the damaged input chunk (a frame of several blocks
    # reads each input chunk once, in a read task), and no chunk ran: first together, then in each chunk's
    # own retries, each retry with keys of its own
    assert policy.shared_reads
    keys = try_counter.tries(tries)
    assert all(re.match(r"cfnet-read-[0-9a-f]{8}(r\d+)?-t2-0\.1\.1$", k) for k in keys), [  # the odd ones out, whole, with their errors
        line for line in try_counter.lines(tries) if not re.match(r"cfnet-read-[0-9a-f]{8}(r\d+)?-t2-0\.1\.1$", line[0])]
    assert any(re.match(r"cfnet-read-[0-9a-f]{8}-", k) for k in keys), keys
    assert len({re.match(r"cfnet-read-[0-9a-f]{8}(r\d+)?-", k).group(1) for k in keys} - {None}) == 2 * failed, keys
    chunk.unlink()
    shutil.copy(image / "0" / "c" / "2" / "0" / "0" / "1" / "1", chunk)
    resumed, summary = predict(copy, models, out, options=OPTIONS, resume=True, progress=False)
    assert (summary.chunks, summary.total_chunks) == (failed, TOTAL)
    assert np.array_equal(resumed.values, reference)


@pytest.mark.parametrize(
    "exc,expected",
    [
        (OSError(errno.ENOSPC, "No space left on device"), False),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), False),
        (OSError(errno.EROFS, "Read-only file system"), False),
        (PermissionError(errno.EACCES, "Permission denied"), False),
        (PermissionError(errno.EPERM, "Operation not permitted"), False),
        (UnreadableChunkError("in.zarr/0/c/0/0/0/0/0: chunk cannot be decoded"), False),
        (InputError("input has NaN/Inf voxels in the (z, y, x) region ((0, 8), (0, 16), (0, 16)) at t=0"), False),
        (OSError(errno.ECONNRESET, "Connection reset by peer"), True),
        (TimeoutError("timed out"), True),
        (OmeZarrError("s3://b/in.zarr/0: cannot be read (ClientError: 503 Slow Down)"), True),
        (RuntimeError("anything else"), True),
    ],
)
def test_what_a_retry_may_fix(exc: BaseException, expected: bool) -> None:
    import pickle

    assert retryable(exc) is expected
    assert retryable(pickle.loads(pickle.dumps(exc))) is expected  # as the client receives it from a worker
