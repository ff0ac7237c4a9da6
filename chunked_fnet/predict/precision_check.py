"""The precision check: a run that computes in a reduced precision (bf16, fp16) first compares it with
fp32 on one real patch, and is refused in one line outside the measured bound.

Why: cuDNN releases exist that compute bf16 3-D convolutions silently wrong on large inputs
(:func:`~chunked_fnet.predict.policy.bf16_conv3d_hazard` names the known ones); an unknown one would
write a whole run of plausible-looking garbage. So before its first block one worker of the cluster
evaluates the patch at the frame's origin (the first block's first patch), read, z-scored and
resampled by the block tasks' own reader (:func:`~chunked_fnet.predict.job.model_grid_frame`,
:func:`~chunked_fnet.sliding_window.padded_reader`), at the run's patch shape, through the run's
ensemble (its flips, memory format and device thread), once in the run's precision and once in fp32;
per output channel it measures Pearson r and ``max |reduced - fp32| / std(fp32)``, and the worst
channel is held against :data:`~chunked_fnet.predict.policy.REDUCED_MIN_R` and
:data:`~chunked_fnet.predict.policy.REDUCED_MAX_OVER_STD`. The result (and its cost in seconds) goes
into the run record's ``precision.check`` and the output's attributes. fp32 runs are not checked
(nothing is computed), and a resume keeps its interrupted run's check: the run that creates an output
checks it.

The check costs two forwards of the run's whole patch, one of them in fp32: on a CPU, at a whole-frame
patch, more than a bf16 frame's block (``benchmarks/run.py throughput defaults --precision bf16``: 78-95 s
of a 4-frame time-lapse's 142-161 s call on a 2-core CPU, one thread). Two things keep it from costing
that every run: it runs on every core its worker may use (the cluster computes nothing else before the
check), and a worker keeps its verdict for the rest of its life, keyed by what the verdict depends on (the
models' contents, the patch shape, the precision, the flips, the device, torch and cuDNN): a later run
on the same worker with the same key takes the kept record, marked ``reused`` and naming the input it
was measured on, instead of measuring again. A wrong reduced precision is a property of the libraries
and the device at a shape (the known cuDNN faults are), not of one patch's values.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from chunked_fnet.device import autocast_dtype, cudnn_release, describe_device, usable_cores
from chunked_fnet.errors import ChunkedFnetError, one_line
from chunked_fnet.io.store import redact
from chunked_fnet.moments import is_constant, moments
from chunked_fnet.predict.policy import REDUCED_MAX_OVER_STD, REDUCED_MIN_R, RunPolicy
from chunked_fnet.preprocess.frame import ModelGridFrame
from chunked_fnet.sliding_window import PatchRunner, padded_reader

__all__ = ["PrecisionError", "check_runs", "compare", "measure", "measure_job", "needs_check", "refuse_outside_bound", "within_bound"]


class PrecisionError(ChunkedFnetError, RuntimeError):
    """The run's reduced precision gave results outside the measured bound against fp32 on this machine."""


def needs_check(policy: RunPolicy, device_type: str) -> bool:
    """Whether ``policy`` computes in a reduced precision (autocast on) on workers of ``device_type``
    (``cpu``, ``cuda``; ``unknown``, no worker up yet: whenever the precision is not fp32 somewhere)."""
    return autocast_dtype(policy.precision, "cuda" if device_type == "unknown" else device_type) is not None


def compare(reference: np.ndarray, reduced: np.ndarray) -> list[tuple[float, float]]:
    """Per output channel of ``(C, ...)`` outputs: (Pearson r, ``max |reduced - reference| / std(reference)``).

    A non-finite reduced output gives (nan, inf): garbage, never within a bound. A constant reference
    (r undefined) counts as r 1 when the reduced output is the same constant to float32 rounding of
    its magnitude, else as r 0; its spread is then its magnitude (at least 1)."""
    out = []
    for ref, red in zip(np.asarray(reference, np.float64), np.asarray(reduced, np.float64), strict=True):
        if not np.isfinite(red).all():
            out.append((math.nan, math.inf))
            continue
        m = moments(ref, red)
        diff = float(np.abs(red - ref).max())
        if is_constant(m.mean_a, m.std_a):
            scale = max(1.0, abs(m.mean_a))
            out.append((1.0 if diff <= 1e-6 * scale else 0.0, diff / scale))
        elif is_constant(m.mean_b, m.std_b):
            out.append((0.0, diff / m.std_a))
        else:
            out.append((float(np.clip(m.c_ab / math.sqrt(m.m2_a * m.m2_b), -1.0, 1.0)), diff / m.std_a))
    return out


def _runner(run: PatchRunner, amp: torch.dtype | None, flips: Any, device_thread: bool | None) -> PatchRunner:
    """``run``'s ensemble, device and memory format computing in ``amp`` (None: fp32), one patch per pass."""
    thread = run.device_thread if device_thread is None else device_thread
    return PatchRunner(run.models, run.device, flips, amp, channels_last=run.channels_last, batch_size=1, device_thread=thread,
                       threads=run.threads)


def measure(
    run: PatchRunner, frame: ModelGridFrame, policy: RunPolicy, tta_flips: Any, structures: Sequence[str] = (),
    *, device_thread: bool | None = None,
) -> dict[str, Any]:
    """The check's measurement (the ``precision.check`` record, less its verdict): the patch at the
    frame's origin, read as a block task reads it, through ``run`` (the run's runner) in its precision
    and in fp32. ``device_thread`` overrides the runner's own choice (None: the run's)."""
    start = time.perf_counter()
    window = policy.window
    corner = next(iter(window.grid.corners()))
    box = window.grid.patch_box(corner)
    batch = np.asarray(padded_reader(frame, window.pad_mode)(box.slices), dtype=np.float32)[None]
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:  # the run's precision first, as its blocks will run; fp32's exact-math flags are put back after
        reduced = _runner(run, run.amp_dtype, tta_flips, device_thread).outputs(batch)[0]
        reference = _runner(run, None, tta_flips, device_thread).outputs(batch)[0]
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    channels = compare(reference, reduced)
    names = list(structures) or [str(i) for i in range(len(channels))]
    worst = max(range(len(channels)), key=lambda i: _badness(*channels[i]))
    r, spread = channels[worst]
    device = run.device
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    return {
        "r": _json_float(r), "max_over_std": _json_float(spread), "worst": names[worst],
        "channels": {n: {"r": _json_float(a), "max_over_std": _json_float(b)} for n, (a, b) in zip(names, channels, strict=True)},
        "bound": {"min_r": REDUCED_MIN_R, "max_over_std": REDUCED_MAX_OVER_STD},
        "patch": list(window.patch_shape), "corner": list(corner),
        "device": describe_device(device), "torch": torch.__version__,
        "cudnn": ".".join(map(str, cudnn_release(cudnn))) if cudnn is not None else None,
        "device_thread": run.device_thread if device_thread is None else device_thread,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _badness(r: float, spread: float) -> tuple[bool, float]:
    """Order channels worst first: outside the bound, then by how far (r below its bound counted in units of it)."""
    if not math.isfinite(r):
        return (True, math.inf)
    return (not within_bound(r, spread), max((1.0 - r) / (1.0 - REDUCED_MIN_R), spread / REDUCED_MAX_OVER_STD))


def _json_float(v: float) -> float | str:
    """A float for the JSON record: rounded, and non-finite ones as text (strict JSON has no NaN)."""
    return round(float(v), 8) if math.isfinite(v) else str(v)


def within_bound(r: float | str, spread: float | str) -> bool:
    """Whether a measurement is rounding, not a wrong result (NaN is never within)."""
    r, spread = float(r), float(spread)
    return r >= REDUCED_MIN_R and spread <= REDUCED_MAX_OVER_STD


#: The verdicts this worker process measured, by :func:`_verdict_key` (see the module docstring).
_VERDICTS: dict[tuple, dict[str, Any]] = {}
_VERDICTS_LOCK = threading.Lock()


def _check_key(job: Any, policy: RunPolicy) -> tuple:
    """What a run's check measures: its models, patch shape, precision and flips (one check per key in a call)."""
    return (tuple(job.hashes), tuple(policy.window.patch_shape), policy.precision, str(job.options.tta_flips))


def _verdict_key(job: Any, policy: RunPolicy, run: PatchRunner) -> tuple:
    """What a check's verdict depends on: :func:`_check_key`, and how and where it computes."""
    cudnn = torch.backends.cudnn.version() if run.device.type == "cuda" else None
    return (*_check_key(job, policy), describe_device(run.device), run.channels_last, torch.__version__, cudnn)


def measure_job(job: Any, policy: RunPolicy, device_thread: bool | None = None) -> dict[str, Any]:
    """On a worker: :func:`measure` for ``job``'s first frame, through the runner its block tasks use; on a
    CPU on every core the worker may use (nothing else computes before the check), and once per worker for
    each :func:`_verdict_key` (a later run's check is the kept record, marked ``reused``)."""
    from chunked_fnet.predict.job import _prepare_worker_process, _torch_threads, ensemble_runner, model_grid_frame

    _prepare_worker_process(_torch_threads(job, policy), job.options.device)
    run = ensemble_runner(job, policy)
    key = (*_verdict_key(job, policy, run), device_thread)
    with _VERDICTS_LOCK:
        kept = _VERDICTS.get(key)
    if kept is not None:
        return {**kept, "reused": True}
    frame = model_grid_frame(job, job.time_offset)
    threads = torch.get_num_threads()
    check_threads = max(threads, run.threads or 1, usable_cores()) if run.device.type == "cpu" else threads
    if run.threads is not None:  # the worker's compute lane runs the check's forward passes, as its blocks'
        run.threads = check_threads
    elif check_threads != threads:
        torch.set_num_threads(check_threads)
    try:
        record = measure(run, frame, policy, job.options.tta_flips, job.structures, device_thread=device_thread)
    finally:
        if run.threads is None and check_threads != threads:
            torch.set_num_threads(threads)
    record = {**record, "threads": check_threads, "measured_on": redact(job.input_path), "reused": False}
    with _VERDICTS_LOCK:
        _VERDICTS[key] = record
    return record


def refuse_outside_bound(check: Mapping[str, Any], precision: str, where: str) -> None:
    """Raise :class:`PrecisionError` in one line when ``check`` (a :func:`measure` record) is outside the bound."""
    if within_bound(check["r"], check["max_over_std"]):
        return
    stack = f"torch {check['torch']}" + (f", cuDNN {check['cudnn']}" if check.get("cudnn") else "")
    raise PrecisionError(one_line(
        f"precision {precision} computes wrong on {check['device']} ({stack}): on a {'x'.join(map(str, check['patch']))} patch "
        f"of {where} ({check['worst']}) it gave Pearson r {float(check['r']):.6f} and max |{precision} - fp32| "
        f"{float(check['max_over_std']):.4g} x std of the fp32 output, outside the bound r >= {REDUCED_MIN_R} and max <= "
        f"{REDUCED_MAX_OVER_STD} x std; nothing was written: rerun with --precision fp32"
    ))


def check_runs(
    jobs: Sequence[Any], policies: Sequence[RunPolicy], client: Any, device_type: str, new: Sequence[bool],
) -> list[RunPolicy]:
    """The policies of ``jobs``, those of new outputs (``new``) that compute in a reduced precision on
    workers of ``device_type`` checked on one worker of ``client`` (once per models, patch, precision and
    flips) and carrying the check; refuses (:class:`PrecisionError`) outside the bound, before anything is written."""
    done: dict[tuple, dict[str, Any]] = {}
    out = []
    for job, policy, fresh in zip(jobs, policies, new, strict=True):
        if not fresh or policy.check is not None or not needs_check(policy, device_type):
            out.append(policy)
            continue
        key = _check_key(job, policy)
        if key not in done:
            done[key] = client.submit(measure_job, job, policy, pure=False, workers=_first_worker(client), allow_other_workers=True).result()
            refuse_outside_bound(done[key], policy.precision, redact(job.input_path))
        out.append(replace(policy, check=done[key]))
    return out


def _first_worker(client: Any) -> list[str] | None:
    """The cluster's first worker by address: checks go to one worker, so a long-lived cluster's later
    runs find the verdict it keeps (any other worker takes the check when that one is gone)."""
    workers = sorted(client.scheduler_info().get("workers", {}))
    return workers[:1] or None
