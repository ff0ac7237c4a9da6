"""Getting a run's job to the workers: once to each worker, as a dask worker plugin.

Every task of a run needs the :class:`~chunked_fnet.predict.job.PredictJob` (the models, every frame's
statistics: 37 KB at 1,000 frames) and the run's :class:`~chunked_fnet.predict.policy.RunPolicy`. Pickled into every task it cost 1.1 ms per task;
as one key of the graph that the tasks depend on, the scheduler placed every task with no other input
(the block tasks) on the one worker that held that key, and the other workers got theirs only when
work stealing moved them: a one-frame run waited 0.4-1.9 s with one of two workers idle
(`benchmarks/run.py throughput defaults`). A worker plugin is dask's own way to give every worker, including one
that joins or restarts mid-run, the same object: the tasks carry only a :class:`JobRef`. A run whose
client dies without unregistering it loses its plugin on the scheduler's side (:mod:`chunked_fnet.run_watch`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import WorkerPlugin

from chunked_fnet.run_watch import run_plugin_name, watch_runs

if TYPE_CHECKING:
    from distributed import Client

    from chunked_fnet.predict.job import PredictJob
    from chunked_fnet.predict.policy import RunPolicy

__all__ = ["JobRef", "resolve_run", "shipped"]


@dataclass(frozen=True)
class JobRef:
    """Stands for job ``index`` (and its policy) of the run whose plugin is ``plugin`` on the worker that runs the task."""

    plugin: str
    index: int


class _RunJobs(WorkerPlugin):
    """Holds a run's jobs and their policies on every worker (dask sends it to workers that join later, too)."""

    idempotent = True

    def __init__(self, name: str, runs: Sequence[tuple[PredictJob, RunPolicy]]) -> None:
        self.name = name
        self.runs = list(runs)


def resolve_run(job: tuple[PredictJob, RunPolicy] | JobRef) -> tuple[PredictJob, RunPolicy]:
    """The job and its policy: ``job`` unless it is a :class:`JobRef`, then the pair its plugin holds on this worker."""
    if not isinstance(job, JobRef):
        return job
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(job.plugin)
    if plugin is None:
        raise RuntimeError(f"worker {worker.address} has no plugin {job.plugin!r}: the run that submitted this task has ended")
    return plugin.runs[job.index]


@contextmanager
def shipped(client: Client, runs: Sequence[tuple[PredictJob, RunPolicy]]) -> Iterator[list[JobRef]]:
    """Register the jobs and their policies on every worker for the duration of a run; yields their references."""
    watch_runs(client)  # before the plugin: a client killed right after registering it still loses it
    name = run_plugin_name(client.id)
    client.register_plugin(_RunJobs(name, runs), name=name)
    try:
        yield [JobRef(name, i) for i in range(len(runs))]
    finally:
        if client.status == "running":  # a lost scheduler would make this wait for it; its error is the one to report
            try:
                client.unregister_worker_plugin(name)
            except Exception:  # noqa: BLE001
                pass
