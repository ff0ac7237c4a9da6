"""A worker's heap: bounded by the first task (large freed arrays returned to the system), unless the worker's
environment sets the allocator itself, whose choice the task then keeps and says so in the worker's log."""

from __future__ import annotations

from pathlib import Path

import dask
import pytest

from chunked_fnet.memory import allocator_set_by_user


@pytest.mark.parametrize(("env", "chosen"), [
    ({}, None),
    ({"MALLOC_TRIM_THRESHOLD_": "65536"}, None),  # dask's own worker default: not a person's choice
    ({"MALLOC_ARENA_MAX": "1"}, "MALLOC_ARENA_MAX"),
    ({"MALLOC_MMAP_THRESHOLD_": str(2**34)}, "MALLOC_MMAP_THRESHOLD_"),
    ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=1"}, "GLIBC_TUNABLES"),
    ({"GLIBC_TUNABLES": "glibc.cpu.hwcaps=-AVX2"}, None),
    ({"LD_PRELOAD": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"}, "LD_PRELOAD"),
    ({"LD_PRELOAD": "/opt/libfoo.so"}, None),
])
def test_the_allocator_settings_that_are_the_users(env: dict[str, str], chosen: str | None) -> None:
    assert allocator_set_by_user(env) == chosen


def _heap_lines(client) -> list[str]:  # noqa: ANN001
    logs = client.get_worker_logs()
    return [msg for lines in logs.values() for _, msg in lines if "chunked_fnet worker heap" in msg]


def test_a_worker_keeps_the_allocator_its_environment_sets_and_says_so(tmp_path: Path) -> None:
    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import PredictOptions, predict
    from factories import prediction_case

    options = PredictOptions(device="cpu", precision="fp32", patch_shape=(8, 16, 16), overlap=0.25, blend="gaussian")
    image, models, reference = prediction_case(tmp_path, options, size_t=1)
    outputs = {}
    for name, env in {"default": {}, "user's": {"MALLOC_ARENA_MAX": "1"}}.items():
        with dask.config.set({f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}):
            with local_client(ClusterSpec(n_workers=1, threads_per_worker=1)) as client:
                out, _ = predict(image, models, tmp_path / f"{name}.zarr", options=options, client=client, progress=False)
                outputs[name] = out.values
                lines = _heap_lines(client)
        expected = "as the environment sets it (MALLOC_ARENA_MAX)" if env else "large freed arrays returned to the system"
        assert lines and all(line.endswith(expected) for line in lines), (name, lines)
    assert (outputs["default"] == reference).all() and (outputs["user's"] == reference).all()


@pytest.mark.parametrize(("env", "trims"), [({}, True), ({"MALLOC_ARENA_MAX": "1"}, False)])
def test_tasks_trim_the_heap_only_where_the_run_bounds_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str],
                                                          trims: bool) -> None:
    """A heap the environment set (to keep freed memory for reuse, say) is not emptied after every task; the
    bounded one is. An in-process worker, so that the count of trims is this process's."""
    from distributed import Client, LocalCluster

    from chunked_fnet.predict import PredictOptions, job, predict
    from factories import prediction_case

    for name in ("MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES", "LD_PRELOAD"):
        monkeypatch.delenv(name, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(job, "_WORKER_READY", False)  # this process is the worker: its first task decides again
    monkeypatch.setattr(job, "_TRIM_AFTER_TASK", True)
    monkeypatch.setattr(job, "bound_heap_growth", lambda: True)  # leave the test process's own allocator alone
    calls = []
    monkeypatch.setattr(job, "trim_heap", lambda: calls.append(1))
    options = PredictOptions(device="cpu", precision="fp32", patch_shape=(8, 16, 16), overlap=0.25, blend="gaussian")
    image, models, reference = prediction_case(tmp_path, options, size_t=1)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, Client(cluster) as client:
        out, _ = predict(image, models, tmp_path / "out.zarr", options=options, client=client, progress=False)
    assert (out.values == reference).all()
    assert bool(calls) is trims, len(calls)
