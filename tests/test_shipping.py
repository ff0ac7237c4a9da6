"""A run's job reaches the workers as a dask worker plugin (chunked_fnet/predict/shipping.py): every
worker has it, including one that joins while the run is going, and it leaves with the run."""

from __future__ import annotations

import pytest
from distributed import Client, LocalCluster

from chunked_fnet.predict.shipping import JobRef, resolve_run, shipped


def _names(dask_worker) -> list[str]:  # noqa: ANN001
    return sorted(n for n in dask_worker.plugins if n.startswith("chunked_fnet-run"))


def test_a_worker_that_joins_mid_run_gets_the_job_and_every_worker_loses_it_after() -> None:
    jobs = [({"job": "first"}, "policy 1"), ({"job": "second", "frames": list(range(1000))}, "policy 2")]
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        with shipped(client, jobs) as refs:
            assert [r.index for r in refs] == [0, 1]
            cluster.scale(2)  # a worker joins after the run started (a replacement SLURM job, an adaptive cluster)
            client.wait_for_workers(2)
            workers = list(client.scheduler_info()["workers"])
            for worker in workers:  # each worker answers from its own copy
                assert client.submit(resolve_run, refs[1], workers=[worker], pure=False).result() == jobs[1]
            assert client.submit(resolve_run, refs[0], workers=[workers[-1]], pure=False).result() == jobs[0]
        assert all(names == [] for names in client.run(_names).values())
        with pytest.raises(RuntimeError, match="the run that submitted this task has ended"):
            client.submit(resolve_run, refs[0], pure=False).result()


def test_a_job_itself_passes_through() -> None:
    run = (object(), object())
    assert resolve_run(run) is run  # run_in_process and the benchmarks call the task functions with (job, policy)
    assert JobRef("x", 0) == JobRef("x", 0)  # a plain value: dask may hash and compare it
