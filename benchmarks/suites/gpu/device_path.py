"""Device path: the U-Net's achieved FLOP/s against the device's measured bf16 matrix-multiply rate.

    python benchmarks/run.py gpu device-path                       # CUDA if present, else the CPU
    python benchmarks/run.py gpu device-path --device cuda --batch 16 --compile --volume 64 512 512
    python benchmarks/run.py gpu device-path --device cpu --batch 4 --volume 32 128 128 --reps 2
    python benchmarks/run.py gpu device-path --device cpu --batch 1 --patch 16 32 32 --volume 16 64 64 \\
        --host-shape 16 64 64 --matmul-n 512 --precisions fp32 bf16 --reps 1 --no-save   # does it run (a minute on 2 cores)

1. **Reference rate**: ``torch.matmul`` of two ``--matmul-n`` square bf16 matrices (dense FLOPs
   2 n^3 per product), the best of ``--reps`` timed runs: what this device can do in bf16 (fp32 too).
2. **Model variants** (bare ``model(x)`` on ``--batch`` patches of ``--patch``, inference mode):
   precision fp32 / bf16 autocast / fp16 autocast, NCDHW or ``channels_last_3d``, with
   ``torch.backends.cudnn.benchmark`` on (and once off, to show its effect), optionally
   ``torch.compile`` (``--compile``). Achieved FLOP/s = FLOPs per output voxel (counted from the
   model by ``count_flops_per_voxel``) x output voxels/s; the fraction is of the bf16 matmul rate.
3. **Sliding window on the device**: ``predict_volume`` of an in-memory ``--volume`` with the fastest
   variant (patches cut, blended and summed on the device; one copy in and one out), against the bare
   model at that variant: efficiency raw and corrected for the overlap recompute factor.
4. **Host side of the tasks**: ``run_in_process`` (the pipeline's tasks: read the OME-Zarr around a
   block's patches, z-score, copy to the device, cut patches, weighted sums, copy back; add the pieces
   of each chunk, normalise, write the output chunk) with a model that returns zeros at once, one
   thread: the output voxels/s one task thread can feed the device, and the model FLOP/s that
   corresponds to. On the dask pipeline, storage reads overlap device compute when a GPU worker runs
   several threads (one task reads and normalises its block while another's patches run); see
   ``run.py throughput scaling --configs cuda``.

Every rate is the best of ``--reps`` synchronised runs after untimed warm-up calls
(``harness.timing.best_time``: a device rate, the least disturbed run). Stores a row (question ``gpu``)
unless ``--no-save``.
"""

from __future__ import annotations

import argparse
import itertools
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "gpu"
SECTION = "Device path: model FLOP/s vs bf16 matmul (issue 6.5)"
COLUMNS = ["date", "device", "bf16 matmul TFLOP/s", "model: patch, batch", "variants: TFLOP/s (fraction of bf16 matmul)",
           "best", "sliding window on device", "host side of a chunk task", "command", "machine"]
DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}
LAYOUTS = ("NCDHW", "channels_last_3d")


def figure_key(label: str) -> str:
    """``"fp32, channels_last_3d"`` -> ``"fp32_channels_last_3d"``: a variant's label as a figure's name."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def matmul_tflops(device: Any, n: int, dtype: Any, reps: int, sync: Callable[[], None]) -> float:
    """Dense TFLOP/s of one ``n`` x ``n`` matrix product in ``dtype`` on ``device``: the reference rate."""
    import torch

    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / T.best_time(lambda: torch.matmul(a, b), reps, 1, sync) / 1e12


def forward_seconds(model: Any, x: Any, precision: str, channels_last: bool, reps: int, sync: Callable[[], None]) -> float:
    """Best seconds of one bare ``model(x)`` in inference mode, ``precision``'s autocast, the given layout."""
    import torch

    inp = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
    dtype = getattr(torch, DTYPES[precision]) if DTYPES[precision] else None

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device_type=x.device.type, dtype=dtype, enabled=dtype is not None):
            model(inp)

    return T.best_time(step, reps, 2, sync)


def forward_variants(args: argparse.Namespace, base: Any, x: Any, flops: float, mm: float, mm32: float,
                     sync: Callable[[], None]) -> dict[str, float]:
    """TFLOP/s of every precision x layout (on CUDA the first precision's NCDHW also with
    ``cudnn.benchmark`` off), and of ``torch.compile`` of the fastest with ``--compile``."""
    import time

    import torch

    cuda = x.device.type == "cuda"
    results: dict[str, float] = {}

    def run(label: str, model: Any, precision: str, channels_last: bool) -> None:
        seconds = forward_seconds(model, x, precision, channels_last, args.reps, sync)
        results[label] = tflops = flops * x.numel() / seconds / 1e12
        print(f"  {label:<38} {x.numel() / seconds / 1e6:10.3f} M vox/s  {tflops:8.3f} TFLOP/s  {100 * tflops / mm:6.1f} % of bf16 matmul, "
              f"{100 * tflops / mm32:6.1f} % of fp32 matmul ({seconds:.2f} s a pass)", flush=True)

    def layout(channels_last: bool) -> Any:
        return base.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)

    cudnn = [True, False] if cuda else [None]
    for precision, channels_last in itertools.product(args.precisions, [name == "channels_last_3d" for name in args.layouts]):
        model = layout(channels_last)
        for bench in cudnn if (precision == args.precisions[0] and not channels_last) else cudnn[:1]:
            if bench is not None:
                torch.backends.cudnn.benchmark = bench
            label = f"{precision}, {LAYOUTS[channels_last]}" + ("" if bench is None else f", cudnn.benchmark {'on' if bench else 'off'}")
            run(label, model, precision, channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True
    if args.compile:
        best = max(results, key=results.get)
        channels_last = "channels_last_3d" in best
        start = time.perf_counter()
        run(best + ", torch.compile", torch.compile(layout(channels_last)), best.split(",")[0], channels_last)
        print(f"  (torch.compile: {time.perf_counter() - start:.1f} s in all, compiling and the timed passes)", flush=True)
    return results


def sliding_window(args: argparse.Namespace, base: Any, multiple: int, results: dict[str, float], flops: float, batch: int,
                   volume_shape: tuple[int, ...], sync: Callable[[], None]) -> dict[str, Any]:
    """``predict_volume`` of an in-memory volume at the best eager variant, against the bare model at it."""
    import numpy as np
    import torch

    from chunked_fnet.sliding_window import SlidingWindow, predict_volume

    eager = {k: v for k, v in results.items() if "torch.compile" not in k}
    best = max(eager, key=eager.get)
    precision, channels_last = best.split(",")[0], "channels_last_3d" in best
    model = base.to(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    amp = getattr(torch, DTYPES[precision]) if DTYPES[precision] else None
    grid = SlidingWindow(volume_shape, args.patch, args.overlap, multiple, "gaussian").grid
    vol = np.random.default_rng(0).standard_normal((1, *volume_shape)).astype(np.float32)
    # patch, overlap, blend and batch all given: exactly this SlidingWindow (gaussian), not the run policy's
    opts = {"patch": tuple(args.patch), "overlap": args.overlap, "blend": "gaussian", "batch_size": batch,
            "device": next(base.parameters()).device, "multiple": multiple, "amp_dtype": amp, "channels_last": channels_last}
    seconds = T.best_time(lambda: predict_volume(model, vol, **opts), max(1, args.reps - 1), 1, sync)
    rate = W.prod(volume_shape) / seconds
    bare = results[next(k for k in eager if k.startswith(f"{precision}, {LAYOUTS[channels_last]}"))] * 1e12 / flops
    return {"variant": best, "rate": rate, "recompute": grid.recompute_factor, "raw": rate / bare}


@contextmanager
def free_model(job: Any, policy: Any) -> Iterator[None]:
    """The tasks' ensemble with members that return zeros at once, the real ones put back after.

    The tasks run one cached ensemble per process (``chunked_fnet.predict.job.ensemble_runner``: the
    module every block runs); its ``members`` are swapped in place, so the tasks read, z-score, cut,
    blend and write as ever while the model costs nothing."""
    import torch

    from chunked_fnet.predict.job import ensemble_runner

    class Free(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(x)

    ensemble = ensemble_runner(job, policy).models[0]
    real = list(ensemble.members)
    try:
        for i in range(len(real)):
            ensemble.members[i] = Free()
        yield
    finally:
        for i, member in enumerate(real):
            ensemble.members[i] = member


def host_side(args: argparse.Namespace, device: Any, batch: int) -> tuple[float, float, str]:
    """Output voxels/s of the pipeline's tasks (``run_in_process``, one thread, in this process) on a
    synthetic OME-Zarr with a model that returns zeros at once: what one task thread can feed the
    device, whatever the model. Returns (voxels/s, recompute factor, the case)."""
    import dask

    from chunked_fnet.predict import Hardware, PredictOptions, create_output, plan
    from chunked_fnet.predict.job import run_in_process

    data = Path(args.data)
    shape = tuple(args.host_shape)
    image = W.bench_input(data, 1, shape)
    checkpoint = W.make_checkpoints(data / "models", "tiny", 1)[0]  # for planning: the tasks run the free model
    out = data / "device_path_host_side.zarr"
    shutil.rmtree(out, ignore_errors=True)
    options = PredictOptions(patch_shape=tuple(args.patch), overlap=args.overlap, batch_size=batch, device=str(device), precision="fp32")
    with dask.config.set(scheduler="synchronous"):
        job = plan(image, [checkpoint], str(out), options)
    policy = job.resolve_policy(Hardware.here(str(device)))  # explicit patch and overlap: the window is the options'
    create_output(job, policy, overwrite=True)
    try:
        with free_model(job, policy):
            seconds = T.best_time(lambda: run_in_process(job, policy), max(1, args.reps - 1), 1)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    chunks = tuple(min(c, n) for c, n in zip(options.chunks, shape))
    recompute = job.schedule(policy.window).patch_evaluations * W.prod(policy.window.patch_shape) / W.prod(shape)
    return W.prod(shape) / seconds, recompute, f"{shape}, chunks {chunks}, batch {batch}"


def parser(cuda: bool) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if cuda else "cpu")
    p.add_argument("--arch", choices=sorted(W.ARCHS), default="default", help="default: the paper's U-Net (depth 4, width 32)")
    p.add_argument("--patch", nargs=3, type=int, default=(32, 64, 64))
    p.add_argument("--batch", type=int, default=None, help="default 16 on CUDA, 4 on the CPU")
    p.add_argument("--volume", nargs=3, type=int, default=None, help="in-memory volume for step 3 (default 64 512 512 on CUDA, 32 128 128 on the CPU)")
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--host-shape", nargs=3, type=int, default=(32, 256, 256), help="synthetic input of step 4 (z y x)")
    p.add_argument("--matmul-n", type=int, default=None, help="default 8192 on CUDA, 2048 on the CPU")
    p.add_argument("--precisions", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16", "fp16"])
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the fastest variant")
    p.add_argument("--threads", type=int, default=M.cores(), help="torch threads (CPU)")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS))
    p.add_argument("--forward-only", action="store_true", help="steps 1 and 2 only (the matmul rates and the bare forward variants)")
    W.add_data_args(p)  # --data: step 4's input and model; --no-save (alias --no-append)
    return p


def main(argv: list[str] | None = None) -> None:
    import torch

    args = parser(torch.cuda.is_available()).parse_args(argv)

    from chunked_fnet.model import UNetConfig, count_flops_per_voxel

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    batch = args.batch or (16 if cuda else 4)
    volume_shape = tuple(args.volume or ((64, 512, 512) if cuda else (32, 128, 128)))
    n = args.matmul_n or (8192 if cuda else 2048)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = M.gpu_name() if cuda else f"CPU: {M.cpu_model()}, {args.threads} threads"

    # 1. the device's matmul rates
    mm = matmul_tflops(device, n, torch.bfloat16, args.reps, sync)
    mm32 = matmul_tflops(device, n, torch.float32, args.reps, sync)
    print(f"{name}: bf16 matmul {n}x{n}: {mm:.3g} TFLOP/s; fp32 matmul {mm32:.3g} TFLOP/s")

    # 2. the model variants
    cfg = UNetConfig(**W.ARCHS[args.arch])
    flops = count_flops_per_voxel(cfg)
    base = W.seeded_model(args.arch, 0).eval().to(device)
    x = torch.randn(batch, 1, *args.patch, device=device)
    print(f"{W.arch_label(args.arch)}: {flops / 1e6:.3f} MFLOP per output voxel (counted from the model); batch {batch} x {tuple(args.patch)}")
    results = forward_variants(args, base, x, flops, mm, mm32, sync)
    best = max(results, key=results.get)
    print(f"best: {best}: {results[best]:.3f} TFLOP/s = {100 * results[best] / mm:.0f} % of bf16 matmul, {100 * results[best] / mm32:.0f} % of fp32 matmul")
    figures: dict[str, float] = {
        "bf16_matmul_tflops": mm, "fp32_matmul_tflops": mm32, "flops_per_voxel": flops,
        **{f"tflops_{figure_key(k)}": v for k, v in results.items()},
        "best_tflops": results[best], "best_fraction_of_bf16_matmul": results[best] / mm, "best_fraction_of_fp32_matmul": results[best] / mm32,
    }
    sw = host = "not run (--forward-only)"
    if not args.forward_only:
        # 3. the sliding window on the device, at the best eager variant
        s = sliding_window(args, base, cfg.multiple, results, flops, batch, volume_shape, sync)
        sw = (f"{volume_shape}: {s['rate'] / 1e6:.3f} M vox/s; recompute {s['recompute']:.2f}; efficiency raw {s['raw']:.2f}, "
              f"overlap-corrected {s['raw'] * s['recompute']:.2f}")
        print(f"sliding window on the device, {s['variant']}: {sw}")
        # 4. the host side of a chunk task, with a model that costs nothing
        host_rate, host_recompute, host_case = host_side(args, device, batch)
        fed = host_rate * host_recompute * flops / 1e12
        host = (f"{host_case}: {host_rate / 1e6:.2f} M output vox/s per task thread = enough for {fed:.1f} TFLOP/s of this model "
                f"(recompute {host_recompute:.2f})")
        print(f"host side of a chunk task (read, z-score, copy in, cut, blend, copy out, write; free model): {host}")
        figures.update({
            "sliding_window_mvox_s": s["rate"] / 1e6, "sliding_window_recompute": s["recompute"], "sliding_window_efficiency_raw": s["raw"],
            "sliding_window_efficiency_overlap_corrected": s["raw"] * s["recompute"],
            "host_side_mvox_s_per_thread": host_rate / 1e6, "host_side_recompute": host_recompute, "host_side_feeds_tflops": fed,
        })
    if not args.no_save:
        params = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(args).items() if k not in ("data", "no_save")}
        print(R.save_row(SUITE, SECTION, COLUMNS, [
            R.today(), name, f"{mm:.3g} ({n}x{n}; fp32 {mm32:.3g})", f"{args.arch} U-Net ({flops / 1e6:.3f} MFLOP/voxel), {tuple(args.patch)}, {batch}",
            "; ".join(f"{k}: {v:.3f} ({100 * v / mm:.0f} % bf16, {100 * v / mm32:.0f} % fp32 matmul)" for k, v in results.items()),
            f"{best}: {results[best]:.3f} TFLOP/s = {100 * results[best] / mm:.0f} % of bf16 matmul", sw, host, R.command_line(), M.machine(),
        ], figures=figures, params={**params, "batch": batch, "volume": list(volume_shape), "matmul_n": n}))


if __name__ == "__main__":
    main()
