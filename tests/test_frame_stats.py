"""Frame statistics computed by the tasks that read the frame (``predict/frame_stats.py``): recorded per frame,
a bad frame stopping the run in one line naming it (whatever finished kept, the rest resumable once fixed), and a
resume refused when a frame's input changed since the interrupted run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

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
