"""Pipeline efficiency: chunked prediction end to end against the bare model on the same patches, side by side.

    python benchmarks/run.py throughput pipeline-efficiency                      # paper U-Net, 32x128x256, 2 CPU workers
    python benchmarks/run.py throughput pipeline-efficiency --arch small --reps 5 --shape 32 256 256
    python benchmarks/run.py throughput pipeline-efficiency --device cuda --cluster cuda --precision bf16 --batch 16 --shape 64 512 512

One warmed dask cluster runs, interleaved ``--reps`` times (bare, pipeline, bare, pipeline, ...):

* **bare**: ``model(x)`` only, on exactly the batches the pipeline evaluates (as many, of the same
  sizes: every block task's patches in batches of ``--batch``, the last one partial), the block tasks
  shared out among the workers as evenly as dask does, all workers at once; inputs are real patches
  of the volume (z-scored), same precision, device, torch threads and memory format (the runner's
  default: channels_last_3d on the CPU, NCDHW elsewhere). Time = the slowest worker.
* **pipeline**: the wall time of ``chunked_fnet.predict.predict(...)`` with that client: frame
  statistics (dask), checkpoint checks, output creation, every block task (read, z-score, cut
  patches, forward, weighted sums) and chunk task (add the pieces, normalise, write, completion
  marker), with the pieces moved between workers by dask. Not counted: cluster start-up and loading
  the models into the workers (done once before, as a long-running service would).

Throughputs are output voxels x structures per second. The bare model's counts each voxel it
evaluates once (patch voxels / time). Recompute factors (patch voxels evaluated per output voxel),
counted from the patch grid: ``overlap`` for the global sliding window (what any sliding window
with these settings evaluates, MONAI's too) and ``chunked`` for the pipeline's tasks (equal to
``overlap``: each patch is evaluated by one block only; the printout also gives what one task per
chunk evaluating its halo would cost). Efficiencies: ``raw`` = pipeline / bare; ``overlap-corrected``
= raw x overlap factor (any halo recompute and every non-model cost count as overhead); ``halo-corrected``
= raw x chunked factor = bare time / pipeline time on the same batches (only non-model costs count:
reading, normalising, blending, moving pieces, writing, scheduling). The same ratios in CPU seconds
(workers and this process, which runs the LocalCluster's scheduler) are shown too: on a busy machine
they are less noisy than wall time. Appends a row to BENCHMARKS.md (section "Pipeline efficiency").
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "throughput"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

SECTION = "Pipeline efficiency (issue 6.1)"
COLUMNS = [
    "date", "model, patch, batch, overlap, precision", "volume, chunks (tasks), workers x threads", "bare model M vox/s",
    "pipeline M vox/s (wall / tasks only)", "recompute overlap / chunked",
    "efficiency raw / overlap-corr. / halo-corr. (wall; CPU time)", "noise", "command", "machine",
]


def bare_forward(paths: list[str], hashes: list[str], device: str, patches: np.ndarray, sizes: list[int], amp: str | None) -> tuple[float, float]:
    """Wall and CPU seconds (this process) of forward passes of the stacked ensemble on batches of
    ``sizes`` patches (the first ones of ``patches``), after one untimed full batch."""
    import torch

    from chunked_fnet.predict.ensemble import cached_ensemble
    from chunked_fnet.sliding_window.runner import default_channels_last
    W.prepare_like_a_task()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    channels_last = default_channels_last(torch.device(device), dtype)  # what PatchRunner does by default
    model = cached_ensemble(paths, hashes, device, channels_last)  # the tasks' own module, prepared once
    x = torch.from_numpy(patches).to(device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def forward(n: int) -> None:
        if dtype is None:
            model(x[:n])
        else:
            with torch.autocast(device_type=torch.device(device).type, dtype=dtype):
                model(x[:n])

    with torch.inference_mode():
        forward(len(x))
        sync()
        start, cpu0 = time.perf_counter(), T.cpu_seconds()
        for n in sizes:
            forward(n)
        sync()
        result = time.perf_counter() - start, T.cpu_seconds() - cpu0
    return result


def first_patches(job, window, n: int) -> np.ndarray:  # noqa: ANN001
    """The first ``n`` patches the pipeline evaluates with ``window`` (z-scored on the model grid), ``(n, 1, pz, py, px)``."""
    from chunked_fnet.predict.job import model_grid_frame
    from chunked_fnet.sliding_window import padded_reader

    frame = model_grid_frame(job, 0)
    grid = window.grid
    read = padded_reader(frame, window.pad_mode)
    corners = list(grid.corners())
    corners = (corners * n)[:n]  # a volume with fewer patches than a batch: repeat
    return np.stack([read(grid.patch_box(corner).slices) for corner in corners]).astype(np.float32)


def task_batches(graph, batch: int) -> list[list[int]]:  # noqa: ANN001
    """The batch sizes of every block task of the job's ``graph`` (its schedule), in task order (what
    ``predict_block`` evaluates)."""
    out = []
    for block in graph.blocks:
        n = len(graph.patch_grid.patches_owned(block.block))
        out.append([batch] * (n // batch) + ([n % batch] if n % batch else []))
    return out


def recompute_factors(job, window, graph) -> tuple[float, float, float]:  # noqa: ANN001
    """Patch voxels evaluated per output voxel: the global sliding window, the pipeline's tasks, and
    what one task per chunk evaluating every patch touching it (its halo) would cost."""
    from chunked_fnet.sliding_window import partition

    grid = window.grid
    shape = job.grid.shape
    per_voxel = W.prod(grid.patch) / W.prod(shape) / len(job.times)
    chunks = tuple(min(c, n) for c, n in zip(job.options.chunks, shape))
    halo = sum(len(grid.patches_touching(r)) for r in partition(shape, chunks)) * len(job.times)
    return grid.n_patches * len(job.times) * per_voxel, graph.patch_evaluations * per_voxel, halo * per_voxel


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    W.add_workload_args(parser)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads per worker (= torch threads)")
    parser.add_argument("--cluster", choices=["local", "cuda"], default="local", help="cuda: dask-cuda, one worker per GPU")
    args = parser.parse_args(argv)

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.model import UNetConfig, count_flops_per_voxel
    from chunked_fnet.predict import Hardware, plan, predict

    data = Path(args.data)
    shape = tuple(args.shape)
    image, models, hashes, options = W.workload(args)
    cfg = UNetConfig(**W.ARCHS[args.arch])
    amp = None if args.precision == "fp32" or not args.device.startswith("cuda") else args.precision
    job = plan(image, models, "unused", options)
    # explicit patch, overlap (gaussian) and batch: the window and batch are the options', whatever the hardware
    policy = job.resolve_policy(Hardware.here(args.device))
    patches = first_patches(job, policy.window, args.batch)
    graph = job.schedule(policy.window)
    r_overlap, r_chunked, r_halo = recompute_factors(job, policy.window, graph)
    tasks = task_batches(graph, args.batch)
    out = data / "pipeline_out.zarr"
    output_voxels = args.time_points * W.prod(shape) * len(models)
    evaluated = sum(sum(t) for t in tasks) * W.prod(patches.shape[1:]) * len(models)
    assert abs(evaluated / output_voxels - r_chunked) < 1e-9 * r_chunked

    spec = ClusterSpec(kind=args.cluster, n_workers=args.workers, threads_per_worker=args.threads)
    walls: dict[str, list[float]] = {"bare": [], "pipeline": [], "tasks": []}
    cpus: dict[str, list[float]] = {"bare": [], "pipeline": []}
    with local_client(spec) as client:
        info = client.scheduler_info()["workers"]
        workers = list(info)
        threads = sum(w["nthreads"] for w in info.values())
        slots = [w for w in workers for _ in range(info[w]["nthreads"])]
        shares: list[list[int]] = [[] for _ in slots]
        for i, sizes in enumerate(tasks):  # block tasks shared out as dask does with equal tasks: round robin over the thread slots
            shares[i % len(slots)] += sizes

        def bare(shares: list[list[int]] = shares) -> tuple[float, float]:
            futures = [
                client.submit(bare_forward, models, hashes, args.device, patches, share, amp, workers=[w], allow_other_workers=False, pure=False)
                for w, share in zip(slots, shares) if share
            ]
            results = [f.result() for f in futures]
            return max(r[0] for r in results), sum(r[1] for r in results)

        def cluster_cpu() -> float:  # workers + this process (which also runs the LocalCluster's scheduler)
            return T.workers_cpu_seconds(client) + T.cpu_seconds()

        bare([sorted(set(share)) for share in shares])  # warm-up: load the models (once per process), run each batch shape once
        for rep in range(args.reps):
            wall, cpu = bare()
            walls["bare"].append(wall)
            cpus["bare"].append(cpu)
            shutil.rmtree(out, ignore_errors=True)
            cpu0 = cluster_cpu()
            start = time.perf_counter()
            _, summary = predict(image, models, out, options=options, client=client, progress=False)
            walls["pipeline"].append(time.perf_counter() - start)
            cpus["pipeline"].append(cluster_cpu() - cpu0)
            walls["tasks"].append(summary.seconds)
            assert summary.voxels == output_voxels, (summary.voxels, output_voxels)
            print(f"rep {rep + 1}/{args.reps}: bare {wall:.1f} s ({cpu:.1f} CPU s), pipeline {walls['pipeline'][-1]:.1f} s "
                  f"({cpus['pipeline'][-1]:.1f} CPU s; tasks {summary.seconds:.1f} s, {summary.chunks} chunks); {M.load_note()}", flush=True)
    shutil.rmtree(out, ignore_errors=True)

    # per-rep ratios (bare and pipeline ran back to back, so saw similar load), then medians
    halo = [b / p for b, p in zip(walls["bare"], walls["pipeline"])]
    halo_cpu = [b / p for b, p in zip(cpus["bare"], cpus["pipeline"])]
    eff = T.median(halo)
    eff_cpu = T.median(halo_cpu)
    effs = [eff / r_chunked, eff / r_chunked * r_overlap, eff]
    cpu_effs = [eff_cpu / r_chunked, eff_cpu / r_chunked * r_overlap, eff_cpu]
    bare_rate = evaluated / T.median(walls["bare"])
    pipe_rate = output_voxels / T.median(walls["pipeline"])
    task_rate = output_voxels / T.median(walls["tasks"])
    gflops = bare_rate / len(models) * count_flops_per_voxel(cfg) / 1e9
    arch = f"{args.arch} U-Net (depth {cfg.depth}, width {cfg.width}) x{len(models)}"
    print()
    print(f"{arch}, patch {tuple(args.patch)}, batch {args.batch}, overlap {args.overlap}, gaussian, {args.precision}, {args.device}")
    print(f"volume {args.time_points} x {shape}, chunks {tuple(args.chunks)} ({len(tasks)} tasks), {len(workers)} workers, "
          f"{threads} threads in all; medians of {args.reps}")
    print(f"{'':<34}{'M vox/s':>10}{'spread':>10}")
    print(f"{'bare model forward':<34}{bare_rate / 1e6:>10.4f}{T.fmt_spread(walls['bare']):>10}   ({gflops:.1f} GFLOP/s)")
    print(f"{'pipeline, predict() wall':<34}{pipe_rate / 1e6:>10.4f}{T.fmt_spread(walls['pipeline']):>10}")
    print(f"{'pipeline, chunk tasks only':<34}{task_rate / 1e6:>10.4f}{T.fmt_spread(walls['tasks']):>10}")
    print(f"recompute factor: overlap {r_overlap:.3f}, pipeline tasks {r_chunked:.3f} "
          f"(one task per chunk evaluating its halo would be {r_halo:.3f})")
    print(f"efficiency (wall):     raw {effs[0]:.3f}, overlap-corrected {effs[1]:.3f}, halo-corrected {effs[2]:.3f}"
          f"   (per rep: {', '.join(f'{h:.3f}' for h in halo)})")
    print(f"efficiency (CPU time): raw {cpu_effs[0]:.3f}, overlap-corrected {cpu_effs[1]:.3f}, halo-corrected {cpu_effs[2]:.3f}"
          f"   (per rep: {', '.join(f'{h:.3f}' for h in halo_cpu)})")
    if not args.no_save:
        row = R.save_row(SUITE, SECTION, COLUMNS, [
            R.today(),
            f"{arch}, {tuple(args.patch)}, {args.batch}, {args.overlap} gaussian, {args.precision} {args.device}",
            f"{args.time_points} x {shape}, {tuple(args.chunks)} ({len(tasks)}), {len(workers)} x {args.threads}",
            f"{bare_rate / 1e6:.4f} ({gflops:.0f} GFLOP/s)",
            f"{pipe_rate / 1e6:.4f} / {task_rate / 1e6:.4f}",
            f"{r_overlap:.2f} / {r_chunked:.2f}",
            " / ".join(f"{e:.2f}" for e in effs) + "; " + " / ".join(f"{e:.2f}" for e in cpu_effs),
            f"median of {args.reps} interleaved; halo-corr. per rep {', '.join(f'{h:.2f}' for h in halo)} (CPU "
            f"{', '.join(f'{h:.2f}' for h in halo_cpu)}); {M.load_note()}",
            R.command_line(),
            M.machine(),
        ])
        print(row)


if __name__ == "__main__":
    main()
