"""``precision: auto``: bf16 where a measurement on the run's own workers shows it faster, else fp32.

bf16 autocast changes a prediction by ~1e-5 in Pearson r (benchmarks/bf16_accuracy.py, and the GPU
acceptance run); it pays only where the hardware has fast bf16 (AVX512-BF16/AMX CPUs, GPUs). Rather
than guess from CPU flags, the client times the ensemble's forward pass in both precisions on one
worker, once per run, and records the choice and the timings in the run record: every task, retry
and resume of the run then computes in the same precision.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from chunked_fnet.device import resolve_device

__all__ = ["BF16_MARGIN", "choose_precision", "time_precisions"]

#: bf16 is chosen when its forward pass takes at most this fraction of fp32's: a clear margin, so
#: that timing noise on a machine where the two are close never flips the choice from run to run.
BF16_MARGIN = 0.8

#: The patch the measurement runs (z, y, x; capped by the run's own patch): large enough for the
#: convolutions to reach their steady speed, small enough to cost seconds, not minutes, on a CPU.
MEASURE_PATCH = {"cpu": (16, 64, 64), "cuda": (64, 256, 256)}


def time_precisions(job: Any, repeats: int = 3) -> dict[str, Any]:
    """Seconds of one forward pass of the job's ensemble in fp32 and in bf16 (the best of ``repeats``
    after a warm-up each, interleaved), on this process's device, as its tasks would run it."""
    from chunked_fnet.predict.job import _prepare_worker_process, _runner

    _prepare_worker_process()
    device = resolve_device(job.options.device)
    cap = MEASURE_PATCH.get(device.type, MEASURE_PATCH["cuda"])
    m = job.window.multiple
    low = job.window.min_patch  # a bioimage.io package may take nothing smaller
    shape = tuple(max(m, lo, min(p, c) // m * m) for p, c, lo in zip(job.window.patch_shape, cap, low, strict=True))
    x = torch.randn(1, 1, *shape, device=device)
    runners = {p: _runner(job, precision=p) for p in ("fp32", "bf16")}
    best = {p: float("inf") for p in runners}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for p, runner in runners.items():  # warm-up: weights converted, kernels chosen
        with runner.session():
            runner.forward(x)
    for _ in range(repeats):
        for p, runner in runners.items():
            with runner.session():
                sync()
                start = time.perf_counter()
                runner.forward(x)
                sync()
                best[p] = min(best[p], time.perf_counter() - start)
    return {"patch": list(shape), "device": str(device), "seconds": best}


def choose_precision(job: Any, client: Any) -> dict[str, Any]:
    """The run's precision: as configured, or for ``auto`` measured on one worker (see module doc)."""
    if job.options.precision != "auto":
        return {"chosen": job.options.precision}
    workers = sorted(client.scheduler_info().get("workers", {}))
    if not workers:  # nothing to measure on yet (e.g. batch-system workers still queued): the safe choice
        return {"chosen": "fp32", "why": "no worker to measure on when the run started"}
    measured = client.submit(time_precisions, job, workers=workers[:1], allow_other_workers=False, pure=False).result()
    seconds = measured["seconds"]
    chosen = "bf16" if seconds["bf16"] <= BF16_MARGIN * seconds["fp32"] else "fp32"
    return {"chosen": chosen, "measured": measured, "rule": f"bf16 if its forward pass takes <= {BF16_MARGIN} x fp32's"}
