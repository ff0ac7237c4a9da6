"""A real dask cluster started with the ``dask scheduler`` / ``dask worker`` command lines on 127.0.0.1.

Used by tests that must run against separately started processes, as a user's cluster would be: the
client (often a ``chunked-fnet`` subprocess) only knows the scheduler's address.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from distributed import Client

DASK = str(Path(sys.executable).with_name("dask"))


@dataclass
class CliCluster:
    address: str
    scheduler: subprocess.Popen
    tmp: Path
    memory_limit: str
    workers: list[subprocess.Popen] = field(default_factory=list)

    def add_worker(self) -> subprocess.Popen:
        """Start one more ``dask worker`` (one thread), stopped with the cluster; it joins in the background."""
        i = len(self.workers)
        log = (self.tmp / f"worker{i}.log").open("w")
        self.workers.append(
            subprocess.Popen(
                [DASK, "worker", self.address, "--host", "127.0.0.1", "--nthreads", "1", "--dashboard-address", "127.0.0.1:0", "--no-dashboard",
                 "--memory-limit", self.memory_limit, "--name", f"w{i}"],
                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        )
        return self.workers[-1]

    def worker_pids(self) -> dict[str, int]:
        """Worker address -> pid of the worker process (the child of its nanny)."""
        with Client(self.address, timeout=10) as client:
            return client.run(os.getpid)


def wait_for(predicate, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


@contextlib.contextmanager
def cli_cluster(tmp: Path, n_workers: int = 2, memory_limit: str = "3GiB") -> Iterator[CliCluster]:
    """``dask scheduler`` plus ``n_workers`` ``dask worker`` processes (one thread each), loopback only."""
    scheduler_file = tmp / "scheduler.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    logs = (tmp / "scheduler.log").open("w")
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--dashboard-address", "127.0.0.1:0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        stdout=logs, stderr=subprocess.STDOUT, env=env,
    )
    cluster = CliCluster(address="", scheduler=scheduler, tmp=tmp, memory_limit=memory_limit)
    try:
        wait_for(lambda: scheduler_file.exists() and scheduler_file.stat().st_size > 0, "the scheduler file")
        cluster.address = json.loads(scheduler_file.read_text())["address"]
        assert cluster.address.startswith("tcp://127.0.0.1:"), cluster.address
        for _ in range(n_workers):
            cluster.add_worker()
        with Client(cluster.address, timeout=30) as client:
            client.wait_for_workers(n_workers, timeout=120)
        yield cluster
    finally:
        for proc in [*cluster.workers, scheduler]:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in [*cluster.workers, scheduler]:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
