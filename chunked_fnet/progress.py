"""Progress bars for dask work, whichever scheduler runs it: tqdm's dask callback on the local scheduler,
distributed's progress bar on a cluster."""

from __future__ import annotations

from typing import Any

import dask
from tqdm.dask import TqdmCallback


def _distributed_client() -> Any | None:
    try:
        from distributed import default_client
    except ImportError:  # pragma: no cover - distributed is a dependency
        return None
    try:
        return default_client()
    except ValueError:
        return None


def compute_with_progress(obj: Any, desc: str = "computing", enabled: bool = True) -> Any:
    """``dask.compute(obj)`` with a progress bar, on a distributed client when one is active."""
    client = _distributed_client()
    if client is not None:
        from distributed import progress

        future = client.compute(obj)
        if enabled:
            progress(future, notebook=False)
        return future.result()
    if not enabled:
        return dask.compute(obj)[0]
    with local_progress(desc):
        return dask.compute(obj)[0]


def local_progress(desc: str) -> TqdmCallback:
    """A tqdm bar over the tasks of a local (threaded/sync) dask computation, gone when it is done."""
    return TqdmCallback(desc=desc, unit="task", leave=False)
