"""A dask worker preload (``distributed.worker.preload``) that counts the failed tries of a run's tasks:
one line per failed try, appended to the file named by ``$CFNET_TRY_LOG``: the task's key, the state it
failed from and its exception, tab-separated. Given to the workers of a ``chunked-fnet`` subprocess as
``DASK_DISTRIBUTED__WORKER__PRELOAD``.

A try is a run of the task's function (it failed from "executing" or "long-running"). A worker also
marks a task erred when fetching its result from another worker fails ("flight"): that line is written
too, with its state, so that a test can show it, but it is no try (:func:`tries`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

RAN = frozenset({"executing", "long-running", "cancelled", "resumed"})


class FailedTries(WorkerPlugin):
    def setup(self, worker: Any) -> None:
        self.worker = worker

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish == "error" and str(key).startswith("cfnet-"):
            ts = self.worker.state.tasks.get(key)
            text = " ".join(str(getattr(ts, "exception_text", "") or "").split())[:300]
            with open(os.environ["CFNET_TRY_LOG"], "a") as log:
                log.write(f"{key}\t{start}\t{text}\n")


def lines(log: Path) -> list[list[str]]:
    """Every line of ``log`` as (key, state it failed from, exception)."""
    return [line.split("\t") for line in log.read_text().splitlines() if line] if log.exists() else []


def tries(log: Path) -> list[str]:
    """The keys of the failed tries in ``log`` (one per failed run of a task's function)."""
    return [key for key, start, _ in lines(log) if start in RAN]


async def dask_setup(worker: Any) -> None:
    await worker.plugin_add(FailedTries(), name="failed-tries")
