"""Start or join a dask.distributed cluster from a small spec (see ``cluster/*.yaml``).

Never a home-made scheduler: a ``LocalCluster`` of worker processes (the default), an existing
scheduler address, dask-cuda's ``LocalCUDACluster`` (one worker per GPU), or a SLURM allocation via
dask-jobqueue. Local clusters listen on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from distributed import Client, LocalCluster
from pydantic import BaseModel, ConfigDict, Field

from chunked_fnet.config import load_yaml_config
from chunked_fnet.device import usable_cores
from chunked_fnet.errors import InputError


class ClusterSpec(BaseModel):
    """Where chunk tasks run."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: Literal["local", "scheduler", "cuda", "slurm"] = "local"
    n_workers: int = Field(1, ge=1, description="local worker processes")
    threads_per_worker: int | None = Field(
        None, ge=1,
        description="task threads per worker; default: on local CPU workers the usable cores shared out between them "
        "(a worker runs one block's forward pass at a time on all its threads while its other task threads read, z-score, "
        "blend and write: RunPolicy.compute_lane); on GPU workers the machine's cores per GPU, 2 to 8 (tasks read, z-score "
        "and copy in their blocks and blend and write their chunks while one block's patches run on the GPU)",
    )
    memory_limit: str | None = Field(None, description="per worker, e.g. '4GiB' (local/cuda)")
    address: str | None = Field(None, description="tcp://host:port of a running scheduler (kind: scheduler)")
    timeout: float = Field(10.0, gt=0, description="seconds to wait for a scheduler")
    jobqueue: dict[str, Any] = Field(default_factory=dict, description="dask_jobqueue.SLURMCluster keyword arguments")
    jobs: int = Field(1, ge=1, description="SLURM jobs to request")
    worker_timeout: float = Field(
        600.0, gt=0,
        description="SLURM: seconds to wait for the first worker job to join before the run stops (a job that sbatch "
        "rejected, or one still queued); the patch is then sized for the workers that joined",
    )


def _threads_per_gpu() -> int:
    import torch

    return min(8, max(2, (os.cpu_count() or 2) // max(1, torch.cuda.device_count())))


def _wait_for_a_worker(client: Client, spec: ClusterSpec) -> None:
    """Wait until a SLURM worker job has joined: until then nothing can run, and the automatic patch
    would be sized without knowing the workers' memory. A job sbatch refused never joins: say so
    instead of waiting for the run's stall timeout."""
    try:
        client.wait_for_workers(1, timeout=spec.worker_timeout)
    except TimeoutError:
        queue = spec.jobqueue.get("queue") or spec.jobqueue.get("partition") or "the default partition"
        raise InputError(
            f"no SLURM worker job joined within {spec.worker_timeout:g} s ({spec.jobs} job(s) asked of {queue}): sbatch may "
            "have refused them (wrong partition, account or resources: dask-jobqueue's message above says why) or they are "
            "still queued (squeue --me); fix the spec, or raise worker_timeout for a busy queue"
        ) from None


def load_cluster_spec(path: str | Path) -> ClusterSpec:
    return load_yaml_config(ClusterSpec, path)


#: The level below which a local cluster's processes log nothing: their task failures (with tracebacks, on
#: every try), heartbeats lost while closing and memory notes reached the user's terminal as thousands of lines.
WORKER_LOGS = logging.CRITICAL


@contextlib.contextmanager
def _own_cluster(cluster: Any) -> Iterator[Client]:
    """A client of a cluster started here, whose worker processes write to this terminal: they are started
    with their logs silenced (``WORKER_LOGS``: the run reports every failure itself, in one line, and a
    crash mid-run ends it with its own line), and the chatter of closing it (also mid-run, after a run
    stopped: a busy worker killed) is dropped in this process too."""
    nanny = logging.getLogger("distributed.nanny")
    level = nanny.level
    try:
        with cluster, Client(cluster) as client:
            try:
                yield client
            finally:
                nanny.setLevel(logging.ERROR)
    finally:
        nanny.setLevel(level)


@contextlib.contextmanager
def local_client(spec: ClusterSpec) -> Iterator[Client]:
    """A client for ``spec``; clusters started here are closed on exit, a remote one is left running."""
    if spec.kind == "scheduler":
        if not spec.address:
            raise InputError("cluster kind 'scheduler' needs an address, e.g. tcp://127.0.0.1:8786")
        try:
            client = Client(spec.address, timeout=spec.timeout)
        except (OSError, TimeoutError) as exc:
            raise InputError(f"no dask scheduler answered at {spec.address} within {spec.timeout:g} s ({exc})") from None
        with client:
            yield client
        return
    if spec.kind == "cuda":
        try:
            from dask_cuda import LocalCUDACluster
        except ImportError as exc:
            raise InputError("cluster kind 'cuda' needs dask-cuda: pip install 'chunked_fnet[cuda]'") from exc
        cluster: Any = LocalCUDACluster(
            ip="127.0.0.1", dashboard_address="127.0.0.1:0", memory_limit=spec.memory_limit or "auto", silence_logs=WORKER_LOGS,
            threads_per_worker=spec.threads_per_worker or _threads_per_gpu(),
        )
    elif spec.kind == "slurm":
        try:
            from dask_jobqueue import SLURMCluster
        except ImportError as exc:
            raise InputError("cluster kind 'slurm' needs dask-jobqueue: pip install 'chunked_fnet[cluster]'") from exc
        cluster = SLURMCluster(**spec.jobqueue)
        cluster.scale(jobs=spec.jobs)
        with cluster, Client(cluster) as client:
            _wait_for_a_worker(client, spec)
            yield client
        return
    else:
        cluster = LocalCluster(
            n_workers=spec.n_workers,
            threads_per_worker=spec.threads_per_worker or max(1, usable_cores() // spec.n_workers),
            processes=True,
            host="127.0.0.1",
            # the scheduler's HTTP endpoint (health, metrics) starts even without a dashboard: loopback, any free port
            dashboard_address="127.0.0.1:0",
            memory_limit=spec.memory_limit or "auto",
            silence_logs=WORKER_LOGS,
        )
    with _own_cluster(cluster) as client:
        yield client
