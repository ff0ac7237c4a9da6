"""A run's time by stage (``PredictOptions(profile=True)``): the clock's exclusive accounting, work handed to
another thread counted, and a real run on worker processes that records every stage without changing a value.
No timing is asserted beyond "this stage took some CPU"."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from chunked_fnet.predict import PredictOptions, predict
from chunked_fnet.profiling import add_stages, clocked, in_this_scope, stage
from factories import prediction_case


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_stage_is_timed_exclusive_of_the_stages_inside_it() -> None:
    with clocked() as clock:
        with stage("outer"):
            _spin(0.03)
            with stage("inner"):
                _spin(0.06)
    record = clock.record()
    assert set(record) == {"task", "outer", "inner"}
    (outer_cpu, outer_wall), (inner_cpu, inner_wall) = record["outer"], record["inner"]
    assert 0.06 <= inner_cpu < 0.5 and 0.03 <= outer_cpu < 0.06  # outer's own 0.03 s, not inner's 0.06 s as well
    assert outer_wall >= outer_cpu * 0.5 and inner_wall >= inner_cpu * 0.5
    assert record["task"][0] < 0.03  # the scope itself did nothing else


def test_stages_outside_a_scope_cost_nothing_and_record_nothing() -> None:
    with stage("read"):  # no scope open: a no-op, not an error
        pass
    with clocked(enabled=False) as clock:
        with stage("read"):
            pass
    assert clock is None


def test_work_handed_to_another_thread_is_counted_in_its_scope_and_only_there() -> None:
    def forward() -> None:
        with stage("forward"):
            _spin(0.04)

    with ThreadPoolExecutor(1) as device_thread:
        with clocked() as clock:
            device_thread.submit(in_this_scope(forward)).result()
            device_thread.submit(forward).result()  # not handed over with its scope: another task's, uncounted here
        assert clock.record()["forward"][0] == pytest.approx(0.04, abs=0.03)
        with clocked() as fresh:  # a new scope starts empty
            pass
        assert set(fresh.record()) == {"task"}


def test_add_stages_sums_task_records() -> None:
    total = add_stages({}, {"read": [1.0, 2.0]})
    add_stages(total, {"read": [0.5, 0.5], "write": [1, 1]})
    assert total == {"read": [1.5, 2.5], "write": [1.0, 1.0]}


def test_a_profiled_run_records_every_stage_and_the_same_values(tmp_path: Path) -> None:
    from chunked_fnet.cluster import ClusterSpec, local_client

    options = PredictOptions(device="cpu", precision="fp32", patch_shape=(8, 16, 16), overlap=0.25, blend="gaussian")
    image, models, reference = prediction_case(tmp_path, options, size_t=2)
    with local_client(ClusterSpec(n_workers=2, threads_per_worker=1)) as client:
        out, summary = predict(image, models, tmp_path / "profiled.zarr", options=options.model_copy(update={"profile": True}),
                               client=client, progress=False)
    assert np.array_equal(out.values, reference)  # profiling changes no value
    stages = summary.stages
    assert {"read", "normalize", "staging", "forward", "blend", "finish", "write", "heap trim", "task"} <= set(stages)
    assert all(cpu >= 0 and wall >= 0 for cpu, wall in stages.values())
    assert stages["forward"][0] > 0 and stages["write"][0] > 0 and stages["read"][1] > 0
    assert "time by stage, all tasks (CPU s / wall s): " in str(summary)
    ledger = tmp_path / "profiled.zarr" / ".chunked_fnet"
    blocks = [json.loads(p.read_text()) for p in (ledger / "blocks").iterdir()]
    chunks = [json.loads(p.read_text()) for p in (ledger / "done").iterdir()]
    assert blocks and all("forward" in b["stages"] for b in blocks)
    assert chunks and all("write" in c["stages"] and "forward" not in c["stages"] for c in chunks)
    total = sum(b["stages"]["forward"][0] for b in blocks)
    assert stages["forward"][0] == pytest.approx(total)  # the summary is the sum of the tasks' records

    # an unprofiled run records no stages and writes no block records (no skip_empty here)
    _, plain = predict(image, models, tmp_path / "plain.zarr", options=options, progress=False)
    assert plain.stages is None and "time by stage" not in str(plain)
    assert not (tmp_path / "plain.zarr" / ".chunked_fnet" / "blocks").exists()
    assert all("stages" not in json.loads(p.read_text()) for p in (tmp_path / "plain.zarr" / ".chunked_fnet" / "done").iterdir())
