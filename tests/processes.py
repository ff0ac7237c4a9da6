"""Helpers for the tests that start real servers (Chromium, SLURM, moto's S3) or commands as child processes."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the servers are told to listen on loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen, timeout: float) -> None:
    """Terminate ``process`` if it still runs; kill it if it has not ended after ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=timeout)


def kill_when(args: list[str], *ready: Path, timeout: float = 240) -> None:
    """Run ``python -m chunked_fnet ARGS`` and SIGKILL it as soon as every ``ready`` path exists: a job preempted there."""
    proc = subprocess.Popen([sys.executable, "-m", "chunked_fnet", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        while not all(p.exists() for p in ready):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, f"no {[str(p) for p in ready]} after {timeout} s"
            time.sleep(0.005)
    finally:
        proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL  # not ended by itself first
