"""A run's job reaches the workers as a dask worker plugin (chunked_fnet/predict/shipping.py): every
worker has it, including one that joins while the run is going, and it leaves with the run, even a
run whose client is killed (chunked_fnet/run_watch.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from distributed import Client, LocalCluster

from chunked_fnet.predict.shipping import JobRef, resolve_run, shipped
from dask_cli import cli_cluster, wait_for

# a run's client in a process of its own: it ships a job, says the plugin's name, and waits to be killed
_CLIENT = """
import sys, time
from distributed import Client
from chunked_fnet.predict.shipping import shipped
with Client(sys.argv[1], timeout=30) as client, shipped(client, [({"frames": list(range(100_000))}, "policy")]) as refs:
    print(refs[0].plugin, flush=True)
    time.sleep(600)
"""


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


def test_a_killed_clients_run_leaves_the_scheduler_and_every_worker_and_a_live_run_stays(tmp_path: Path) -> None:
    # local functions: cloudpickle ships them by value to the CLI processes, which cannot import this module
    def run_names(dask_worker) -> list[str]:
        return sorted(n for n in dask_worker.plugins if n.startswith("chunked_fnet-run"))

    def scheduler_plugins(dask_scheduler) -> tuple[list[str], list[str], bool]:
        """The scheduler's worker plugins, its own plugins, and whether the watcher cost it a torch import."""
        return list(dask_scheduler.worker_plugins), list(dask_scheduler.plugins), "torch" in sys.modules

    with cli_cluster(tmp_path, n_workers=1) as cluster, Client(cluster.address, timeout=30) as client:
        _, baseline, _ = client.run_on_scheduler(scheduler_plugins)
        with (tmp_path / "client.log").open("w") as log, subprocess.Popen(
            [sys.executable, "-c", _CLIENT, cluster.address], stdout=subprocess.PIPE, stderr=log, text=True,
        ) as killed:
            try:
                dead = killed.stdout.readline().strip()
                assert dead.startswith("chunked_fnet-run-"), (tmp_path / "client.log").read_text()
                with shipped(client, [({"job": "live"}, "policy")]) as refs:  # a second run, from a second client, alive throughout
                    live = refs[0].plugin
                    assert all(set(names) == {dead, live} for names in client.run(run_names).values())
                    before, _, _ = client.run_on_scheduler(scheduler_plugins)
                    killed.kill()
                    assert killed.wait(timeout=30) == -signal.SIGKILL
                    killed_at = time.monotonic()
                    wait_for(lambda: dead not in client.run_on_scheduler(scheduler_plugins)[0], "the scheduler to drop the killed run's plugin", timeout=30)
                    wait_for(lambda: all(names == [live] for names in client.run(run_names).values()), "the workers to drop it", timeout=30)
                    gone_after = time.monotonic() - killed_at
                    cluster.add_worker()  # a worker that joins after the kill gets the live run only
                    client.wait_for_workers(2, timeout=120)
                    assert client.run(run_names) == {w: [live] for w in client.scheduler_info()["workers"]}
                    after, plugins, torch_on_scheduler = client.run_on_scheduler(scheduler_plugins)
                    assert client.submit(resolve_run, refs[0], pure=False).result() == ({"job": "live"}, "policy")
                with shipped(client, [({"job": "third"}, "policy")]):
                    pass
            finally:
                killed.kill()
        final, final_plugins, _ = client.run_on_scheduler(scheduler_plugins)
    print(f"scheduler worker plugins: {before} with both runs, {after} after the kill ({gone_after:.2f} s), {final} after all three runs")
    print(f"scheduler plugins: {baseline} before any run, {plugins} after two, {final_plugins} after three")
    assert live in before and dead in before and dead not in after and live in after and not any(n.startswith("chunked_fnet-run-") for n in final)
    assert len(final_plugins) == len(plugins) == len(baseline) + 1  # one watcher, whatever the number of runs
    assert not torch_on_scheduler
