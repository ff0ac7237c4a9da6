"""A dask worker preload (``distributed.worker.preload``) that counts the failed tries of a run's tasks:
one line per failed try, the task's key, appended to the file named by ``$CFNET_TRY_LOG``. Given to the
workers of a ``chunked-fnet`` subprocess as ``DASK_DISTRIBUTED__WORKER__PRELOAD``."""

from __future__ import annotations

import os
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin


class FailedTries(WorkerPlugin):
    def transition(self, key: Any, start: str, finish: str, **kwargs: Any) -> None:
        if finish == "error" and str(key).startswith("cfnet-"):
            with open(os.environ["CFNET_TRY_LOG"], "a") as log:
                log.write(f"{key}\n")


async def dask_setup(worker: Any) -> None:
    await worker.plugin_add(FailedTries(), name="failed-tries")
