"""Frame statistics computed by the tasks that read the frame (``predict/frame_stats.py``): recorded per frame,
a bad frame stopping the run in one line naming it (whatever finished kept, the rest resumable once fixed), and a
resume refused when a frame's input changed since the interrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.errors import ChunkedFnetError
from chunked_fnet.io.reader import open_image
from chunked_fnet.io.writer import create_image, open_for_writing, write_region
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.predict.plan import plan
from factories import tiny_checkpoint

OPTIONS = PredictOptions(patch_shape=(8, 16, 16), overlap=0.25, chunks=(8, 16, 16), precision="fp32", device="cpu")


def _write(path: Path, data: np.ndarray) -> Path:
    create_image(path, shape=data.shape, dims=("t", "c", "z", "y", "x"), chunks=(1, 1, 8, 16, 16), dtype=data.dtype,
                 scale={"z": 0.4, "y": 0.4, "x": 0.4}, channel_names=["brightfield"])
    write_region(open_for_writing(path), tuple(slice(None) for _ in data.shape), data)
    return path


def _data() -> np.ndarray:
    return np.random.default_rng(0).integers(100, 4000, (3, 1, 8, 24, 40), dtype=np.uint16)


def _done(out: Path) -> list[str]:
    return sorted(p.name for p in (out / ".chunked_fnet" / "done").iterdir())


def test_a_bad_frame_fails_the_run_there_and_the_fixed_input_resumes_to_a_fresh_runs_output(tmp_path: Path) -> None:
    data = _data()
    good = data.copy()
    data[1] = 777  # frame 1 constant: it cannot be z-scored
    image = _write(tmp_path / "in.zarr", data)
    model = tiny_checkpoint(tmp_path / "dna.ckpt")
    with local_client(ClusterSpec(n_workers=2)) as client:
        with pytest.raises(ChunkedFnetError, match=r"in\.zarr t=1: is constant \(every voxel = 777\)"):
            predict(image, [model], tmp_path / "out.zarr", options=OPTIONS, client=client, progress=False)
        done = _done(tmp_path / "out.zarr")  # the run stops at a failure no retry can fix: what finished before is kept
        assert not [d for d in done if d.startswith("t1-")]
        ledger = tmp_path / "out.zarr" / ".chunked_fnet" / "frames"
        assert not (ledger / "t1").exists()  # a frame that cannot be z-scored records no statistics
        write_region(open_for_writing(image), (slice(1, 2), *(slice(None),) * 4), good[1:2])  # the input fixed
        out, summary = predict(image, [model], tmp_path / "out.zarr", options=OPTIONS, client=client, progress=False, resume=True)
        assert summary.chunks == summary.total_chunks - len(done)  # only frame 1's chunks computed
        fresh, _ = predict(_write(tmp_path / "good.zarr", good), [model], tmp_path / "fresh.zarr", options=OPTIONS, client=client, progress=False)
    np.testing.assert_array_equal(out.values, fresh.values)
    stats = plan(tmp_path / "good.zarr", [model], tmp_path / "unused.zarr", OPTIONS).stats  # the client's own pass
    for t, s in enumerate(stats):
        assert json.loads((tmp_path / "out.zarr" / ".chunked_fnet" / "frames" / f"t{t}").read_text()) == {"mean": s.mean, "std": s.std}


def test_a_resume_refuses_a_frame_whose_input_changed_since_the_interrupted_run(tmp_path: Path) -> None:
    data = _data()
    image = _write(tmp_path / "in.zarr", data)
    model = tiny_checkpoint(tmp_path / "dna.ckpt")
    out = tmp_path / "out.zarr"
    with local_client(ClusterSpec(n_workers=1)) as client:
        predict(image, [model], out, options=OPTIONS, client=client, progress=False)
        before = open_image(out).values.copy()
        for marker in (out / ".chunked_fnet" / "done").glob("t2-*"):  # frame 2 as an interrupted run left it: not done
            marker.unlink()
        changed = data[2:3].copy()
        changed[0, 0, 0, 0, :4] += 1
        write_region(open_for_writing(image), (slice(2, 3), *(slice(None),) * 4), changed)
        with pytest.raises(ChunkedFnetError, match=r"in\.zarr t=2 changed since this output's run began .* --overwrite to start over"):
            predict(image, [model], out, options=OPTIONS, client=client, progress=False, resume=True)
    np.testing.assert_array_equal(open_image(out).values, before)  # nothing of the changed input was written
    shutil.rmtree(out)


def test_a_resume_keeps_statistics_an_earlier_version_recorded_in_their_last_bits_and_refuses_others(tmp_path: Path) -> None:
    """An output begun by an earlier version holds statistics whose std differs in its last bits (float64
    deviations summed by BLAS): a resume z-scores with those, recorded, and does not call the input changed;
    a std further off, or another mean, is refused."""
    data = _data()
    image = _write(tmp_path / "in.zarr", data)
    model = tiny_checkpoint(tmp_path / "dna.ckpt")
    out = tmp_path / "out.zarr"
    frame = out / ".chunked_fnet" / "frames" / "t2"
    with local_client(ClusterSpec(n_workers=1)) as client:
        predict(image, [model], out, options=OPTIONS, client=client, progress=False)
        exact = json.loads(frame.read_text())
        for off, accepted in ((1e-13, True), (1e-9, False)):
            for marker in (out / ".chunked_fnet" / "done").glob("t2-*"):  # frame 2 not finished
                marker.unlink()
            recorded = {"mean": exact["mean"], "std": exact["std"] * (1 + off)}
            frame.write_text(json.dumps(recorded))
            if accepted:
                predict(image, [model], out, options=OPTIONS, client=client, progress=False, resume=True)
                assert json.loads(frame.read_text()) == recorded  # kept: every chunk of the frame z-scored with it
                assert [d for d in _done(out) if d.startswith("t2-")]
            else:
                with pytest.raises(ChunkedFnetError, match=r"in\.zarr t=2 changed since this output's run began"):
                    predict(image, [model], out, options=OPTIONS, client=client, progress=False, resume=True)
        frame.write_text(json.dumps({"mean": np.nextafter(exact["mean"], np.inf), "std": exact["std"]}))
        with pytest.raises(ChunkedFnetError, match=r"in\.zarr t=2 changed since this output's run began"):
            predict(image, [model], out, options=OPTIONS, client=client, progress=False, resume=True)


@pytest.mark.parametrize("patch", [(8, 16, 16), (8, 24, 40)], ids=["statistics task", "one block a frame"])
def test_the_task_that_computes_a_frame_s_statistics_z_scores_with_the_recorded_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patch: tuple[int, int, int],
) -> None:
    """record_frame_stats hands back what the ledger holds, and the tasks z-score with it (a frame's
    statistics task, or its only block task, which computes them): with the recorded std
    made 1 % larger in-process (the tolerance widened to let it through), the resumed frame's output differs
    from the fresh run's: it was z-scored with the recorded std, not the recomputed one."""
    import chunked_fnet.predict.frame_stats as fs

    data = _data()
    image = _write(tmp_path / "in.zarr", data)
    model = tiny_checkpoint(tmp_path / "dna.ckpt")
    out = tmp_path / "out.zarr"
    frame = out / ".chunked_fnet" / "frames" / "t0"  # input t=2, written at output t=0
    options = OPTIONS.model_copy(update={"time": (2, 3), "patch_shape": patch})
    monkeypatch.setattr(fs, "RECORDED_STD_TOLERANCE", 0.02)  # seen by the tasks: an in-process worker (threads)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        predict(image, [model], out, options=options, client=client, progress=False)
        fresh = open_image(out).values.copy()
        exact = json.loads(frame.read_text())
        for marker in (out / ".chunked_fnet" / "done").glob("t*"):
            marker.unlink()
        frame.write_text(json.dumps({"mean": exact["mean"], "std": exact["std"] * 1.01}))
        predict(image, [model], out, options=options, client=client, progress=False, resume=True)
    again = open_image(out).values
    assert not np.allclose(again, fresh, rtol=1e-4, atol=1e-4)  # z-scored with the recorded std, not the recomputed one
