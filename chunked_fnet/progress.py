"""Progress bars for dask work, whichever scheduler runs it (tqdm on the local scheduler or a cluster)."""

from __future__ import annotations

from typing import Any

import dask
from dask.callbacks import Callback
from tqdm.auto import tqdm


class TqdmCallback(Callback):
    """Advance a tqdm bar as tasks of a local (threaded/sync) dask graph finish."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        self._desc = desc
        self._bar: tqdm | None = None

    def _start_state(self, dsk: Any, state: Any) -> None:
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._bar = tqdm(total=total, desc=self._desc, unit="task", leave=False)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def _finish(self, dsk: Any, state: Any, errored: bool) -> None:
        if self._bar is not None:
            self._bar.close()


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
    with TqdmCallback(desc):
        return dask.compute(obj)[0]
