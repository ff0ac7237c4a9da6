"""Getting a run's job to the workers: once to each worker, as a dask worker plugin.

Every task of a run needs the :class:`~chunked_fnet.predict.job.PredictJob` (the models, the window,
every frame's statistics: 37 KB at 1,000 frames). Pickled into every task it cost 1.1 ms per task;
as one key of the graph that the tasks depend on, the scheduler placed every task with no other input
(the block tasks) on the one worker that held that key, and the other workers got theirs only when
work stealing moved them: a one-frame run waited 0.4-1.9 s with one of two workers idle
(benchmarks/throughput.py). A worker plugin is dask's own way to give every worker, including one
that joins or restarts mid-run, the same object: the tasks carry only a :class:`JobRef`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import WorkerPlugin

if TYPE_CHECKING:
    from distributed import Client

    from chunked_fnet.predict.job import PredictJob

__all__ = ["JobRef", "resolve_job", "shipped"]


@dataclass(frozen=True)
class JobRef:
    """Stands for job ``index`` of the run whose plugin is ``plugin`` on the worker that runs the task."""

    plugin: str
    index: int


class _RunJobs(WorkerPlugin):
    """Holds a run's jobs on every worker (dask sends it to workers that join later, too)."""

    idempotent = True

    def __init__(self, name: str, jobs: Sequence[PredictJob]) -> None:
        self.name = name
        self.jobs = list(jobs)


def resolve_job(job: PredictJob | JobRef) -> PredictJob:
    """The job itself: ``job`` unless it is a :class:`JobRef`, then the one its plugin holds on this worker."""
    if not isinstance(job, JobRef):
        return job
    from distributed import get_worker

    worker = get_worker()
    plugin = worker.plugins.get(job.plugin)
    if plugin is None:
        raise RuntimeError(f"worker {worker.address} has no plugin {job.plugin!r}: the run that submitted this task has ended")
    return plugin.jobs[job.index]


@contextmanager
def shipped(client: Client, jobs: Sequence[PredictJob]) -> Iterator[list[JobRef]]:
    """Register the jobs on every worker for the duration of a run; yields their references."""
    name = f"chunked_fnet-run-{uuid.uuid4().hex[:8]}"
    client.register_plugin(_RunJobs(name, jobs), name=name)
    try:
        yield [JobRef(name, i) for i in range(len(jobs))]
    finally:
        if client.status == "running":  # a lost scheduler would make this wait for it; its error is the one to report
            try:
                client.unregister_worker_plugin(name)
            except Exception:  # noqa: BLE001
                pass
