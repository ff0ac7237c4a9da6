"""Where a task's time goes, stage by stage (``PredictOptions(profile=True)``, ``--profile``).

A task that profiles opens a :func:`clocked` scope; the code it calls marks its stages with
:func:`stage` (``read``, ``normalize``, ``forward``, ...), which costs nothing outside such a scope.
Each stage gets the CPU time of the thread that ran it (``time.thread_time``) and its wall time, both
*exclusive* of the stages nested in it (``normalize`` calls ``read``: its own time is the z-score and
the resampling only). Work handed to another thread (the device thread's forward passes) is timed
there when handed over with :func:`in_this_scope`.

Why not a profiler (cProfile, py-spy, torch.profiler): they time functions, not the pipeline's steps,
cost far more than two clock reads per stage, and do not run inside a batch system's workers by
default; a run's own record of its stages is what tells whether the host side keeps up with a GPU.
The scope lives in a :class:`contextvars.ContextVar`, so concurrent tasks in one worker's threads
keep their own clocks (no state shared between tasks).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["StageClock", "add_stages", "clocked", "in_this_scope", "stage"]

T = TypeVar("T")


class StageClock:
    """Exclusive CPU and wall seconds per stage of one task, from any threads it hands work to."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}
        self._lock = threading.Lock()
        self._threads = threading.local()  # per thread: the stack of open stages' nested time

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        stack = self._threads.__dict__.setdefault("stack", [])
        stack.append([0.0, 0.0])  # cpu, wall of the stages nested in this one
        cpu0, wall0 = time.thread_time(), time.perf_counter()
        try:
            yield
        finally:
            cpu, wall = time.thread_time() - cpu0, time.perf_counter() - wall0
            nested = stack.pop()
            if stack:
                stack[-1][0] += cpu
                stack[-1][1] += wall
            with self._lock:
                self.cpu[name] = self.cpu.get(name, 0.0) + cpu - nested[0]
                self.wall[name] = self.wall.get(name, 0.0) + wall - nested[1]

    def record(self) -> dict[str, list[float]]:
        """``{stage: [cpu_s, wall_s]}`` (JSON), rounded to microseconds."""
        with self._lock:
            return {k: [round(self.cpu[k], 6), round(self.wall[k], 6)] for k in self.cpu}


_CLOCK: contextvars.ContextVar[StageClock | None] = contextvars.ContextVar("chunked_fnet_stage_clock", default=None)


@contextmanager
def clocked(enabled: bool = True) -> Iterator[StageClock | None]:
    """A task's profiling scope (None when not ``enabled``: every :func:`stage` inside is then free);
    the whole scope is itself the stage ``task``, so that ``task`` is the time no named stage took."""
    if not enabled:
        yield None
        return
    clock = StageClock()
    token = _CLOCK.set(clock)
    try:
        with clock.stage("task"):
            yield clock
    finally:
        _CLOCK.reset(token)


@contextmanager
def stage(name: str) -> Iterator[None]:
    """Time the enclosed code as stage ``name`` of the current task's clock, if it has one."""
    clock = _CLOCK.get()
    if clock is None:
        yield
        return
    with clock.stage(name):
        yield


def in_this_scope(fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` to run in another thread (an executor's) with this scope's clock, so its stages are counted."""
    if _CLOCK.get() is None:
        return fn
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.run(fn, *args, **kwargs)


def add_stages(total: dict[str, list[float]], record: Mapping[str, Any]) -> dict[str, list[float]]:
    """Add one task's :meth:`StageClock.record` to ``total`` (in place; returned)."""
    for name, (cpu, wall) in record.items():
        have = total.setdefault(name, [0.0, 0.0])
        have[0] += float(cpu)
        have[1] += float(wall)
    return total
