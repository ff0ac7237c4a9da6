"""Block profile: where the GPU time of one block task goes, in this process and inside a dask-cuda worker.

    python benchmarks/run.py gpu block-profile                      # the paper's U-Net, one 64x512x512 frame, fp32 and bf16
    python benchmarks/run.py gpu block-profile --shape 32 256 256 --precisions bf16 --profile bf16 --no-save

Needs CUDA and dask-cuda (``pip install 'chunked_fnet[cuda]'``); without them it stops at once, saying so.
For each ``--precisions`` (a seeded random-weight U-Net, a synthetic frame of ``--shape``):

* **bare forward**: the checkpoint's inference copy (NCDHW) on the whole frame, ``cudnn.benchmark`` on,
  after two untimed passes; in this process and inside the worker (``client.run``);
* **one block task**: a job planned at the defaults (``PredictOptions(device="cuda", precision=...)``),
  its window sized for the dask-cuda cluster as ``predict()`` sizes it (``cluster_hardware`` +
  ``PredictJob.resolve_policy``); its first block (``predict_block``: read the zarr, z-score, copy in,
  forward passes, weighted sums, copy out) after one untimed call, in this process and as a worker task
  (``client.submit``). With ``--profile PRECISION ...`` (default fp32) the torch profiler's top CUDA ops
  of one more call are printed, and the three with the most self device time kept in the row.

Task against bare shows what a block costs beyond its forward passes; worker against this process, what
the worker's set-up changes (the row keeps each side's cuDNN flags, torch threads and the task's thread).
On the 2026-11-26 H100 this is how the per-thread cuDNN benchmarking of the GPU workers was found
(BENCHMARKS.md, GPU acceptance). Times are the best of ``--reps`` synchronised calls
(``harness.timing.best_time``). Stores one row per precision (question ``gpu``) unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import importlib.util
import threading
from pathlib import Path
from typing import Any

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "gpu"
SECTION = "Block task profile: one block's GPU time in this process and in a dask-cuda worker"
COLUMNS = ["date", "case", "precision", "window", "bare forward s (this process; worker)", "block task s (this process; worker)",
           "block / bare (this process; worker)", "top CUDA ops of a block (ms)", "set-up (this process; worker)", "command", "machine"]
TOP_OPS = 3


def sync_for(device: str) -> Any:
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def bare(checkpoint: str, frame: tuple[int, ...], precision: str, device: str = "cuda", reps: int = 1) -> float:
    """Best seconds of the checkpoint's inference copy on one whole ``frame`` (NCDHW, ``precision``'s autocast),
    after two untimed passes; sets ``cudnn.benchmark`` on in the calling process (as a GPU worker does)."""
    import torch

    from chunked_fnet.model import load_checkpoint

    torch.backends.cudnn.benchmark = True
    model = load_checkpoint(checkpoint)[0].inference_copy().eval().to(device)
    x = torch.randn(1, 1, *frame, device=device)
    kind = torch.device(device).type

    def step() -> None:
        with torch.inference_mode(), torch.autocast(kind, dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(x)

    return T.best_time(step, reps, 2, sync_for(device))


def timed_block(run: tuple[Any, Any], task: Any, profile: bool = False, device: str = "cuda", reps: int = 1) -> dict[str, Any]:
    """Best seconds of the block task ``task`` of ``run`` (the ``(job, policy)`` pair a block task gets)
    after one untimed call, the process's torch and cuDNN set-up, and with ``profile`` the torch
    profiler's table of one more call and its top ops by their own (self) device time: the kernels."""
    import torch

    from chunked_fnet.predict.job import predict_block

    sync = sync_for(device)
    seconds = T.best_time(lambda: predict_block(run, task), reps, 1, sync)
    table, top = "", []
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as profiler

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
        with profiler(activities=activities) as p:
            predict_block(run, task)
            sync()
        events = p.key_averages()
        sort = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
        table = events.table(sort_by=sort, row_limit=10, max_name_column_width=60)
        time_of = (lambda e: e.self_device_time_total) if device.startswith("cuda") else (lambda e: e.self_cpu_time_total)
        top = [(e.key, time_of(e) / 1e3) for e in sorted(events, key=time_of, reverse=True)[:TOP_OPS]]
    return {"seconds": seconds, "thread": threading.current_thread().name, "tf32": torch.backends.cudnn.allow_tf32,
            "benchmark": torch.backends.cudnn.benchmark, "cudnn": torch.backends.cudnn.enabled, "cudnn_version": torch.backends.cudnn.version(),
            "threads": torch.get_num_threads(), "table": table, "top": top}


def setup(r: dict[str, Any]) -> str:
    """A side's set-up in a few words: what differed between this process and the worker on the H100."""
    return f"tf32 {r['tf32']}, cudnn.benchmark {r['benchmark']}, cuDNN {r['cudnn_version']}, {r['threads']} torch threads, thread {r['thread']}"


def top_ops(r: dict[str, Any]) -> str:
    return ", ".join(f"{name} {ms:.1f}" for name, ms in r["top"])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", nargs=3, type=int, default=(64, 512, 512), help="z y x of the one frame")
    p.add_argument("--arch", choices=sorted(W.ARCHS), default="default", help="default: the paper's U-Net (depth 4, width 32)")
    p.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--profile", nargs="*", choices=["fp32", "bf16"], default=["fp32"],
                   help="precisions whose block is also profiled (default fp32; none: --profile alone)")
    p.add_argument("--reps", type=int, default=1, help="timed calls of each (the best is kept)")
    W.add_data_args(p)
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gpu block-profile needs CUDA: torch.cuda.is_available() is False on this machine (run it on a GPU host)")
    if importlib.util.find_spec("dask_cuda") is None:
        raise SystemExit("gpu block-profile needs CUDA workers from dask-cuda, which is not installed: pip install 'chunked_fnet[cuda]'")

    import dask

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import PredictOptions, plan
    from chunked_fnet.predict.prepare import cluster_hardware

    data = Path(args.data)
    frame = tuple(args.shape)
    image = W.bench_input(data, 1, frame)
    checkpoint = W.make_checkpoints(data / "models", args.arch, 1)[0]
    here_bare = {p: bare(checkpoint, frame, p, "cuda", args.reps) for p in args.precisions}
    for precision, seconds in here_bare.items():
        print(f"{precision}: bare forward in this process: {seconds:.3f} s", flush=True)
    with local_client(ClusterSpec(kind="cuda")) as client:
        for precision in args.precisions:
            with dask.config.set(scheduler="synchronous"):
                job = plan(image, [checkpoint], str(data / f"block_profile_{precision}.zarr"), PredictOptions(device="cuda", precision=precision))
            policy = job.resolve_policy(cluster_hardware(client, "cuda"))  # as predict() sizes the window for this cluster
            task = job.schedule(policy.window).blocks[0]
            profile = precision in args.profile
            print(f"{precision}: window {policy.window.patch_shape}", flush=True)
            here = timed_block((job, policy), task, profile, "cuda", args.reps)
            print(f"{precision}: block task in this process: {here['seconds']:.3f} s; {setup(here)}\n{here['table']}", flush=True)
            there_bare = max(client.run(bare, checkpoint, frame, precision, "cuda", args.reps).values())
            print(f"{precision}: bare forward in the worker (client.run): {there_bare:.3f} s", flush=True)
            there = client.submit(timed_block, (job, policy), task, profile, "cuda", args.reps, pure=False).result()
            print(f"{precision}: block as a worker task: {there['seconds']:.3f} s; {setup(there)}\n{there['table']}", flush=True)
            if not args.no_save:
                top = f"this process: {top_ops(here)}; worker: {top_ops(there)}" if profile else "not profiled"
                print(R.save_row(SUITE, SECTION, COLUMNS, [
                    R.today(), f"{W.arch_label(args.arch)}, one {frame} frame", precision, str(policy.window.patch_shape),
                    f"{here_bare[precision]:.3f}; {there_bare:.3f}", f"{here['seconds']:.3f}; {there['seconds']:.3f}",
                    f"{here['seconds'] / here_bare[precision]:.2f}; {there['seconds'] / there_bare:.2f}", top,
                    f"{setup(here)}; {setup(there)}", R.command_line(), M.machine(),
                ], figures={"bare_s": here_bare[precision], "bare_worker_s": there_bare, "block_s": here["seconds"],
                            "block_worker_s": there["seconds"], "block_over_bare": here["seconds"] / here_bare[precision],
                            "block_over_bare_worker": there["seconds"] / there_bare},
                   params={"shape": list(frame), "arch": args.arch, "precision": precision, "reps": args.reps,
                           "window": list(policy.window.patch_shape), "profiled": profile}))


if __name__ == "__main__":
    main()
