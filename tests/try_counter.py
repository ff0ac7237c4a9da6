"""A dask worker preload (``distributed.worker.preload``) that counts the failed tries of a run's tasks:
one line per failed try, appended to the file named by ``$CFNET_TRY_LOG``: the task's key, the state it
failed from and its exception, tab-separated. Given to the workers of a ``chunked-fnet`` subprocess as
``DASK_DISTRIBUTED__WORKER__PRELOAD``.

A try is a run of the task's function (it failed from "executing" or "long-running"). A worker also
marks a task erred when fetching its result from another worker fails ("flight"): that line is written
too, with its state, so that a test can show it, but it is no try (:func:`tries`). A task the client
released while it ran or was fetched is "cancelled" (or "resumed") first; its line names the state it
was cancelled from (``cancelled:flight`` is a failed fetch, ``cancelled:executing`` a try)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

RAN = frozenset({"executing", "long-running", *(f"{s}:{p}" for s in ("cancelled", "resumed") for p in ("executing", "long-running"))})


class FailedTries(WorkerPlugin):
    def setup(self, worker: Any) -> None:
        self.worker = worker
        self.cancelled_from: dict[Any, str] = {}  # key -> the state a cancelled/resumed task was in before

    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if not str(key).startswith("cfnet-"):
            return
        ts = self.worker.state.tasks.get(key)
        if finish in ("cancelled", "resumed") and ts is not None and ts.previous:
            self.cancelled_from[key] = ts.previous
        if start in ("cancelled", "resumed"):
            start = f"{start}:{self.cancelled_from.get(key, '?')}"
        if finish not in ("cancelled", "resumed"):
            self.cancelled_from.pop(key, None)
        if finish == "error":
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
