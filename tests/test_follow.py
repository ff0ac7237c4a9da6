"""``predict --follow``: a real writer process appends frames to a real OME-Zarr while the follower
predicts them on a real local cluster; the finished output equals a batch prediction of the finished
time-lapse, whatever the writer's way (growing the t axis, or filling one allocated ahead), the zarr
format, a SIGKILL of the follower mid-way (then ``--follow --resume``), and however it ends."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet.cluster import ClusterSpec
from chunked_fnet.errors import InputError, OutputExistsError
from chunked_fnet.io.reader import open_image
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.predict.follow import follow
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint

WRITER = Path(__file__).parents[1] / "examples" / "live_timelapse_writer.py"
FRAMES = 4
OPTIONS = PredictOptions(chunks=(8, 32, 32), precision="fp32", levels=2, shards="none")  # a task per chunk: frames in steps
SHARDED = OPTIONS.model_copy(update={"shards": "auto"})  # 16 x 64 x 64: one shard a frame
ONE_WORKER = ClusterSpec(n_workers=1)
CHUNKS_PER_FRAME = 8  # 8 x 32 x 32 chunks of a 9 x 40 x 36 frame: 2 x 2 x 2


@pytest.fixture(scope="module")
def client():
    """One real local cluster (a worker process) for the in-process follows, up before any writer starts:
    its start-up must not decide how many frames the first look finds."""
    from chunked_fnet.cluster import local_client

    with local_client(ONE_WORKER) as c:
        yield c


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, client) -> tuple[Path, list[Path], np.ndarray]:
    """A finished time-lapse, a tiny model, and the batch prediction of every frame (the reference)."""
    root = tmp_path_factory.mktemp("follow")
    generate(SynthConfig(size_t=FRAMES, size_z=9, size_y=40, size_x=36, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 20, 20)),
             root / "source.zarr", progress=False)
    models = [tiny_checkpoint(root / "dna.ckpt", color="0000FF")]
    reference, _ = predict(root / "source.zarr", models, root / "batch.zarr", options=OPTIONS, client=client, progress=False)
    return root / "source.zarr", models, reference.values


def _writer(source: Path, target: Path, *, mode: str, version: str = "0.5", interval: float = 1.5, mark: bool = True,
            start_after: float = 0.0) -> subprocess.Popen:
    args = [sys.executable, str(WRITER), str(source), str(target), "--mode", mode, "--version", version,
            "--interval", str(interval), "--start-after", str(start_after)] + (["--mark-complete"] if mark else [])
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _frames_done(out: Path, chunks_per_frame: int) -> int:
    done = [p.name for p in (out / ".chunked_fnet" / "done").glob("t*")]
    return sum(sum(n.startswith(f"t{t}-") for n in done) == chunks_per_frame for t in range(FRAMES))


@pytest.mark.parametrize(("mode", "version"), [("grow", "0.5"), ("allocate", "0.4")])
def test_the_followed_output_equals_the_batch_prediction_of_the_finished_time_lapse(
    finished, client, tmp_path: Path, mode: str, version: str,
) -> None:
    source, models, reference = finished
    live, out = tmp_path / "live.zarr", tmp_path / "pred.zarr"
    writer = _writer(source, live, mode=mode, version=version, interval=2.0)
    try:
        summary = follow(live, models, out, options=SHARDED if mode == "grow" else OPTIONS, client=client, progress=False, poll=0.2)
    finally:
        stdout, stderr = writer.communicate(timeout=120)
    assert writer.returncode == 0, stderr
    assert "marked complete" in stdout
    assert summary.stopped == "the input is marked complete"
    assert (summary.frames, summary.total_frames) == (FRAMES, FRAMES)
    assert summary.steps >= 2  # the frames came over time, not all at once
    assert len(summary.latencies) == FRAMES and all(s >= 0 for s in summary.latencies)
    predicted = open_image(out)
    assert predicted.shape == reference.shape
    np.testing.assert_allclose(predicted.values, reference, atol=1e-5, rtol=0)
    # the pyramid grew with it: level 1 of every frame is the block mean of level 0, as a batch run's
    batch = source.parent / "batch.zarr"
    np.testing.assert_allclose(open_image(out, level=1).values, open_image(batch, level=1).values, atol=1e-5, rtol=0)
    record = json.loads((out / ".chunked_fnet" / "run.json").read_text())
    assert record["follow"] is True and record["time_points"] == list(range(FRAMES)) and len(record["frame_stats"]) == FRAMES
    assert record["output"]["shape"][0] == FRAMES
    assert record["output"]["shards"] == ([16, 64, 64] if mode == "grow" else None)  # a sharded output grows too


def test_a_follower_killed_mid_way_is_resumed_to_the_same_output(finished, client, tmp_path: Path) -> None:
    """SIGKILL of the follower (a preempted job) while the writer goes on; ``--follow --resume`` finishes it."""
    source, models, reference = finished
    live, out = tmp_path / "live.zarr", tmp_path / "pred.zarr"
    writer = _writer(source, live, mode="grow", interval=2.0)
    follower = subprocess.Popen(
        [sys.executable, "-m", "chunked_fnet", "predict", str(live), "--models", *map(str, models), "--out", str(out), "--follow",
         "--workers", "1", "--chunks", "8", "32", "32", "--shards", "none", "--precision", "fp32", "--levels", "2", "--no-progress", "--poll", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 180
        while _frames_done(out, CHUNKS_PER_FRAME) < 1:
            assert follower.poll() is None, follower.communicate()
            assert time.monotonic() < deadline, "the follower predicted no frame in 180 s"
            time.sleep(0.05)
        follower.kill()
        assert follower.wait(timeout=60) == -signal.SIGKILL
        chunks_before = len(list((out / ".chunked_fnet" / "done").glob("t*")))
        assert chunks_before < FRAMES * CHUNKS_PER_FRAME
        summary = follow(live, models, out, options=OPTIONS, client=client, resume=True, progress=False, poll=0.2)
    finally:
        if follower.poll() is None:
            follower.kill()
        writer.communicate(timeout=120)
    assert summary.total_frames == FRAMES and summary.chunks == FRAMES * CHUNKS_PER_FRAME - chunks_before  # only what was missing
    np.testing.assert_allclose(open_image(out).values, reference, atol=1e-5, rtol=0)


def test_the_idle_timeout_ends_a_follow_whose_writer_never_marks_the_end(finished, client, tmp_path: Path) -> None:
    source, models, reference = finished
    live, out = tmp_path / "live.zarr", tmp_path / "pred.zarr"
    writer = _writer(source, live, mode="allocate", interval=0.1, mark=False)
    assert writer.wait(timeout=120) == 0  # every frame written, the end never marked
    summary = follow(live, models, out, options=OPTIONS, client=client, idle_timeout=2.0, progress=False, poll=0.2)
    assert summary.stopped == "no new frame in 2 s (--idle-timeout)"
    assert (summary.frames, summary.total_frames) == (FRAMES, FRAMES)
    np.testing.assert_allclose(open_image(out).values, reference, atol=1e-5, rtol=0)
    # a resume of the finished follow: nothing left to do, nothing refused
    again = follow(live, models, out, options=OPTIONS, client=client, resume=True, idle_timeout=0.5, progress=False, poll=0.1)
    assert (again.frames, again.chunks, again.total_frames) == (0, 0, FRAMES)
    # a follow without --resume into an output that exists, or with a time range, is refused; --overwrite starts over
    with pytest.raises(OutputExistsError, match="already exists"):
        follow(live, models, out, options=OPTIONS, client=client, idle_timeout=0.5)
    anew = follow(live, models, out, options=OPTIONS, client=client, overwrite=True, idle_timeout=0.5, progress=False, poll=0.1)
    assert (anew.frames, anew.chunks) == (FRAMES, FRAMES * CHUNKS_PER_FRAME)
    np.testing.assert_allclose(open_image(out).values, reference, atol=1e-5, rtol=0)
    with pytest.raises(InputError, match=r"a time range \(--time\) selects a fixed set"):
        follow(live, models, tmp_path / "other.zarr", options=OPTIONS.model_copy(update={"time": (0, 2)}), client=client)


def test_sigterm_ends_a_follow_in_one_line_with_the_resume_hint(finished, tmp_path: Path) -> None:
    source, models, _ = finished
    live, out = tmp_path / "live.zarr", tmp_path / "pred.zarr"
    writer = _writer(source, live, mode="allocate", interval=0.1, mark=False)
    writer.communicate(timeout=120)
    follower = subprocess.Popen(
        [sys.executable, "-m", "chunked_fnet", "predict", str(live), "--models", *map(str, models), "--out", str(out), "--follow",
         "--workers", "1", "--chunks", "8", "32", "32", "--shards", "none", "--precision", "fp32", "--no-progress"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 180
    while _frames_done(out, CHUNKS_PER_FRAME) < FRAMES:
        assert follower.poll() is None, follower.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)  # waiting for frames that do not come
    follower.send_signal(signal.SIGTERM)
    _, stderr = follower.communicate(timeout=60)
    assert follower.returncode == 128 + signal.SIGTERM
    assert stderr.strip().splitlines()[-1] == (
        "chunked-fnet predict: stopped by SIGTERM (the frames predicted so far are kept: rerun with --follow --resume to go on)"
    )
    assert not list((out / ".chunked_fnet" / "owner").glob("*.json")) or all(
        json.loads(p.read_text()).get("released") for p in (out / ".chunked_fnet" / "owner").glob("*.json")
    )


@pytest.mark.parametrize("encoding", [None, {"name": "v2", "separator": "/"}, {"name": "v2", "separator": "."}])
def test_a_frame_is_complete_when_every_chunk_of_its_channel_is_stored(tmp_path: Path, encoding) -> None:
    """zarr v3 keys, NGFF 0.4's nested v2 keys, and flat v2 keys; frames counted from the first, stopping at the first gap."""
    import zarr

    from chunked_fnet.io.completeness import complete_prefix

    kwargs = {"zarr_format": 3} if encoding is None else {"zarr_format": 2, "chunk_key_encoding": encoding}
    array = zarr.create_array(tmp_path / "a.zarr", shape=(5, 2, 8, 8), chunks=(1, 1, 4, 4), dtype="f4", **kwargs)
    array[0] = array[1] = array[3] = 1
    array[2, 0] = 1
    array[2, 1, :4, :4] = 1  # frame 2 of channel 1: one of its four chunks
    def frames(c: int, start: int = 0) -> list:
        return [(slice(t, t + 1), slice(c, c + 1), slice(0, 8), slice(0, 8)) for t in range(start, 5)]
    assert complete_prefix(array, frames(0)) == 4  # frame 4 never written
    assert complete_prefix(array, frames(1)) == 2
    assert complete_prefix(array, frames(1, start=3)) == 1
