"""On the scheduler: a run's worker plugin leaves the cluster when the client that registered it is gone.

A run unregisters its plugin (:func:`chunked_fnet.predict.shipping.shipped`) in a ``finally`` that a
killed client (kill -9, a lost node) never runs; the scheduler would keep the plugin, and send it to
every worker that joins, for as long as a shared cluster lives. The scheduler is told nothing about
which client registered a worker plugin, so the plugin's name carries the client's id, and
:class:`RunWatch` drops a client's run plugins when dask removes that client (its comm closed).

A module of its own, not part of ``chunked_fnet.predict``: the scheduler imports it to unpickle the
watcher, and ``chunked_fnet.predict`` would load torch into a scheduler that never needs it.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from distributed.diagnostics.plugin import SchedulerPlugin

if TYPE_CHECKING:
    from distributed import Client
    from distributed.scheduler import Scheduler

__all__ = ["RunWatch", "run_plugin_name", "watch_runs"]

_PREFIX = "chunked_fnet-run-"
_OF = "-of-"  # neither the prefix nor the hex run id contains it: the rest of the name is the client id


def run_plugin_name(client_id: str) -> str:
    """A fresh worker plugin name for a run of client ``client_id``."""
    return f"{_PREFIX}{uuid.uuid4().hex[:8]}{_OF}{client_id}"


def _owner(name: str) -> str | None:
    """The id of the client whose run registered worker plugin ``name``; None for any other plugin."""
    if not name.startswith(_PREFIX):
        return None
    return name.partition(_OF)[2] or None


class RunWatch(SchedulerPlugin):
    """Unregisters the run plugins of a client that the scheduler removes; one per scheduler (by name)."""

    name = "chunked_fnet-watch"  # not the run prefix: it is no run
    idempotent = True  # a second registration, by any later run, leaves the first watcher in place

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        for name in [n for n in scheduler.worker_plugins if _owner(n) == client]:
            # remove_client is synchronous; the handler a client would call is a coroutine, which
            # tornado's add_callback runs on the scheduler's loop (and logs if it fails)
            scheduler.loop.add_callback(scheduler.unregister_worker_plugin, None, name)


def watch_runs(client: Client) -> None:
    """Make sure the scheduler of ``client`` has a :class:`RunWatch` (a no-op after the first run)."""
    client.register_plugin(RunWatch())
