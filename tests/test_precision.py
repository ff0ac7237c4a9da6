"""``precision: auto``: measured once per run on a worker, recorded, used by every task, kept on resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.predict.precision import BF16_MARGIN
from chunked_fnet.synth.dataset import SynthConfig, generate
from factories import tiny_checkpoint

OPTIONS = dict(patch_shape=(8, 32, 32), chunks=(9, 40, 40))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("precision")
    generate(SynthConfig(size_t=1, size_z=9, size_y=80, size_x=72, voxel_size=(0.4, 0.4, 0.4), chunks=(9, 40, 40)), root / "in.zarr", progress=False)
    return root, root / "in.zarr", [tiny_checkpoint(root / "dna.ckpt")]


def _record(out: Path) -> dict:
    return json.loads((out / ".chunked_fnet" / "run.json").read_text())


def test_auto_measures_on_a_worker_records_and_computes_in_the_choice(data) -> None:
    root, image, models = data
    with local_client(ClusterSpec(n_workers=1)) as client:
        auto, summary = predict(image, models, root / "auto.zarr", options=PredictOptions(**OPTIONS), client=client, progress=False)
        choice = _record(root / "auto.zarr")["precision"]
        seconds = choice["measured"]["seconds"]
        assert set(seconds) == {"fp32", "bf16"} and all(s > 0 for s in seconds.values())
        assert choice["chosen"] == ("bf16" if seconds["bf16"] <= BF16_MARGIN * seconds["fp32"] else "fp32")
        assert choice["measured"]["device"] == "cpu" and choice["measured"]["patch"] == [8, 32, 32]
        assert summary.precision.startswith(choice["chosen"] + " (auto: ") and choice["chosen"] in str(summary)
        # the tasks computed in the chosen precision: equal to a run told that precision, and not to the other
        chosen, _ = predict(image, models, root / "chosen.zarr", options=PredictOptions(precision=choice["chosen"], **OPTIONS),
                            client=client, progress=False)
        other = "fp32" if choice["chosen"] == "bf16" else "bf16"
        different, _ = predict(image, models, root / "other.zarr", options=PredictOptions(precision=other, **OPTIONS),
                               client=client, progress=False)
    np.testing.assert_array_equal(auto.values, chosen.values)
    assert np.abs(auto.values - different.values).max() > 1e-4  # bf16 and fp32 differ visibly: the check above means something
    assert _record(root / "chosen.zarr")["precision"] == {"chosen": choice["chosen"]}  # explicit: nothing measured


def test_resume_computes_in_the_interrupted_runs_recorded_precision(data) -> None:
    """A resume does not measure again: the missing chunks are computed in the precision the run record names."""
    root, image, models = data
    out = root / "resumed.zarr"
    with local_client(ClusterSpec(n_workers=1)) as client:
        first, _ = predict(image, models, out, options=PredictOptions(**OPTIONS), client=client, progress=False)
        chosen = _record(out)["precision"]["chosen"]
        other = "fp32" if chosen == "bf16" else "bf16"
        reference, _ = predict(image, models, root / "ref_other.zarr", options=PredictOptions(precision=other, **OPTIONS),
                               client=client, progress=False)
        # the record now names the other precision; one chunk is undone
        record = _record(out)
        record["precision"] = {"chosen": other, "why": "edited by the test"}
        (out / ".chunked_fnet" / "run.json").write_text(json.dumps(record))
        marker = out / ".chunked_fnet" / "done" / "t0-z0-y0-x0"
        assert marker.exists()
        marker.unlink()
        arr = zarr.open_group(str(out), mode="r+")["0"]
        arr[0, :, 0:9, 0:40, 0:40] = 0
        resumed, summary = predict(image, models, out, options=PredictOptions(**OPTIONS), client=client, resume=True, progress=False)
    assert summary.chunks == 1 and summary.precision == f"{other} (edited by the test)"
    values = resumed.values
    np.testing.assert_array_equal(values[..., 0:9, 0:40, 0:40], reference.values[..., 0:9, 0:40, 0:40])  # the recorded precision
    np.testing.assert_array_equal(values[..., 40:], first.values[..., 40:])  # the rest untouched
    shutil.rmtree(root / "ref_other.zarr")
