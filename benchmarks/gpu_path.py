"""Device path: the U-Net's achieved FLOP/s against the device's measured bf16 matrix-multiply rate.

    python benchmarks/gpu_path.py                                  # CUDA if present, else the CPU
    python benchmarks/gpu_path.py --device cuda --batch 16 --compile --volume 64 512 512
    python benchmarks/gpu_path.py --device cpu --batch 4 --volume 32 128 128 --reps 2

1. **Reference rate**: ``torch.matmul`` of two ``--matmul-n`` square bf16 matrices (dense FLOPs
   2 n^3 per product), the best of ``--reps`` timed runs: what this device can do in bf16.
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
   of each chunk, normalise, write the output chunk) with a model
   that returns zeros at once, one thread: the output voxels/s one task thread can feed the device,
   and the model FLOP/s that corresponds to. On the dask pipeline, storage reads overlap device
   compute when a GPU worker runs several threads (one task reads and normalises its block while
   another's patches run); see ``scaling.py --configs cuda``.
Appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import itertools
import time

import _common as C

SECTION = "Device path: model FLOP/s vs bf16 matmul (issue 6.5)"
COLUMNS = ["date", "device", "bf16 matmul TFLOP/s", "model: patch, batch", "variants: TFLOP/s (fraction of bf16 matmul)",
           "best", "sliding window on device", "host side of a chunk task", "command", "machine"]
DTYPES = {"fp32": None, "bf16": "bfloat16", "fp16": "float16"}


def timed(fn, sync, reps: int, warm: int = 1) -> float:  # noqa: ANN001
    """Best of ``reps`` wall times of ``fn()`` after ``warm`` untimed calls."""
    for _ in range(warm):
        fn()
    sync()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def host_side(args: argparse.Namespace, device) -> tuple[float, float, str]:  # noqa: ANN001
    """Output voxels/s of the pipeline's tasks (``run_in_process``, one thread, in this process) on a synthetic OME-Zarr with a
    model that returns zeros at once: what one task thread can feed the device, whatever the model."""
    import shutil
    import tempfile
    from pathlib import Path

    import dask
    import torch

    import chunked_fnet.predict.job as job_module
    from chunked_fnet.predict import Hardware, PredictOptions, create_output, plan

    class Free(torch.nn.Module):
        multiple = 16

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(x)

    data = Path(tempfile.gettempdir()) / "chunked_fnet_bench"
    shape = tuple(args.host_shape)
    image = C.bench_input(data, 1, shape)
    checkpoint = C.make_checkpoints(data / "models", "tiny", 1)[0]  # for planning only: the task gets the free model
    out = data / "host_side.zarr"
    shutil.rmtree(out, ignore_errors=True)
    batch = args.batch or (16 if device.type == "cuda" else 4)
    options = PredictOptions(patch_shape=tuple(args.patch), overlap=args.overlap, batch_size=batch, device=str(device), precision="fp32")
    with dask.config.set(scheduler="synchronous"):
        job = plan(image, [checkpoint], str(out), options)
    policy = job.resolve_policy(Hardware.here(str(device)))  # explicit patch and overlap: the window is the options'
    create_output(job, policy, overwrite=True)
    from chunked_fnet.predict import ensemble as ensemble_module

    real = ensemble_module._load
    ensemble_module._load = lambda path, dev: Free().to(dev)  # loaded (and cached) as any model is
    ensemble_module._CACHE.clear(), ensemble_module._ENSEMBLES.clear()
    try:
        job_module.run_in_process(job, policy)  # warm-up
        seconds = []
        for _ in range(max(1, args.reps - 1)):
            start = time.perf_counter()
            job_module.run_in_process(job, policy)
            seconds.append(time.perf_counter() - start)
    finally:
        ensemble_module._load = real
        ensemble_module._CACHE.clear(), ensemble_module._ENSEMBLES.clear()  # no free model left for a real run
        shutil.rmtree(out, ignore_errors=True)
    chunks = tuple(min(c, n) for c, n in zip(options.chunks, shape))
    recompute = job.schedule(policy.window).patch_evaluations * C.prod(policy.window.patch_shape) / C.prod(shape)
    return C.prod(shape) / min(seconds), recompute, f"{shape}, chunks {chunks}, batch {batch}"


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", choices=sorted(C.ARCHS), default="default", help="default: the paper's U-Net (depth 4, width 32)")
    parser.add_argument("--patch", nargs=3, type=int, default=(32, 64, 64))
    parser.add_argument("--batch", type=int, default=None, help="default 16 on CUDA, 4 on the CPU")
    parser.add_argument("--volume", nargs=3, type=int, default=None, help="in-memory volume for step 3 (default 64 512 512 on CUDA, 32 128 128 on the CPU)")
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--host-shape", nargs=3, type=int, default=(32, 256, 256), help="synthetic input of step 4 (z y x)")
    parser.add_argument("--matmul-n", type=int, default=None, help="default 8192 on CUDA, 2048 on the CPU")
    parser.add_argument("--precisions", nargs="+", choices=sorted(DTYPES), default=["fp32", "bf16", "fp16"])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the fastest variant")
    parser.add_argument("--threads", type=int, default=C.cores(), help="torch threads (CPU)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--layouts", nargs="+", choices=["NCDHW", "channels_last_3d"], default=["NCDHW", "channels_last_3d"])
    parser.add_argument("--forward-only", action="store_true", help="steps 1 and 2 only (the matmul rates and the bare forward variants)")
    parser.add_argument("--no-append", action="store_true", help="print only; do not add a row to BENCHMARKS.md")
    args = parser.parse_args()

    import numpy as np

    from chunked_fnet.sliding_window import SlidingWindow, predict_volume
    from chunked_fnet.model import FnetUNet, UNetConfig, count_flops_per_voxel

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    batch = args.batch or (16 if cuda else 4)
    volume_shape = tuple(args.volume or ((64, 512, 512) if cuda else (32, 128, 128)))
    n = args.matmul_n or (8192 if cuda else 2048)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = C.gpu_name() if cuda else f"CPU: {C.cpu_model()}, {args.threads} threads"

    # 1. the device's bf16 matmul rate
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    mm = 2 * n**3 / timed(lambda a=a, b=b: torch.matmul(a, b), sync, args.reps) / 1e12
    a, b = a.float(), b.float()
    mm32 = 2 * n**3 / timed(lambda a=a, b=b: torch.matmul(a, b), sync, args.reps) / 1e12
    del a, b
    print(f"{name}: bf16 matmul {n}x{n}: {mm:.3g} TFLOP/s; fp32 matmul {mm32:.3g} TFLOP/s")

    # 2. model variants
    cfg = UNetConfig(**C.ARCHS[args.arch])
    flops = count_flops_per_voxel(cfg)
    torch.manual_seed(0)
    base = FnetUNet(cfg).eval().to(device)
    x = torch.randn(batch, 1, *args.patch, device=device)
    voxels = x.numel()
    print(f"{args.arch} U-Net (depth {cfg.depth}, width {cfg.width}): {flops / 1e6:.3f} MFLOP per output voxel (counted from the model); "
          f"batch {batch} x {tuple(args.patch)}")
    results: dict[str, float] = {}

    def run_variant(label: str, model: torch.nn.Module, precision: str, channels_last: bool) -> float:
        inp = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
        dtype = getattr(torch, DTYPES[precision]) if DTYPES[precision] else None

        def step() -> None:
            with torch.inference_mode():
                if dtype is None:
                    model(inp)
                else:
                    with torch.autocast(device_type=device.type, dtype=dtype):
                        model(inp)

        seconds = timed(step, sync, args.reps, warm=2)
        tflops = flops * voxels / seconds / 1e12
        results[label] = tflops
        print(f"  {label:<38} {voxels / seconds / 1e6:10.3f} M vox/s  {tflops:8.3f} TFLOP/s  {100 * tflops / mm:6.1f} % of bf16 matmul, "
              f"{100 * tflops / mm32:6.1f} % of fp32 matmul ({seconds:.2f} s a pass)", flush=True)
        return tflops

    cudnn = [True, False] if cuda else [None]
    for precision, channels_last in itertools.product(args.precisions, [layout == "channels_last_3d" for layout in args.layouts]):
        model = base.to(memory_format=torch.channels_last_3d) if channels_last else base.to(memory_format=torch.contiguous_format)
        for bench in cudnn if (precision == args.precisions[0] and not channels_last) else cudnn[:1]:
            if bench is not None:
                torch.backends.cudnn.benchmark = bench
            label = f"{precision}, {'channels_last_3d' if channels_last else 'NCDHW'}" + (f", cudnn.benchmark {'on' if bench else 'off'}" if bench is not None else "")
            run_variant(label, model, precision, channels_last)
    if cuda:
        torch.backends.cudnn.benchmark = True
    best = max(results, key=results.get)
    best_precision = best.split(",")[0]
    best_cl = "channels_last_3d" in best
    if args.compile:
        model = base.to(memory_format=torch.channels_last_3d if best_cl else torch.contiguous_format)
        compiled = torch.compile(model)
        start = time.perf_counter()
        run_variant(best + ", torch.compile", compiled, best_precision, best_cl)
        print(f"  (torch.compile: {time.perf_counter() - start:.1f} s in all, compiling and the timed passes)", flush=True)
        best = max(results, key=results.get)
    if args.forward_only:
        print(f"best: {best}: {results[best]:.3f} TFLOP/s = {100 * results[best] / mm:.0f} % of bf16 matmul, {100 * results[best] / mm32:.0f} % of fp32 matmul")
        if not args.no_append:
            print(C.append_row(SECTION, COLUMNS, [
                C.today(), name, f"{mm:.3g} ({n}x{n}; fp32 {mm32:.3g})", f"{args.arch} U-Net ({flops / 1e6:.3f} MFLOP/voxel), {tuple(args.patch)}, {batch}",
                "; ".join(f"{k}: {v:.3f} ({100 * v / mm:.0f} % bf16, {100 * v / mm32:.0f} % fp32 matmul)" for k, v in results.items()),
                f"{best}: {results[best]:.3f} TFLOP/s = {100 * results[best] / mm:.0f} % of bf16 matmul", "not run (--forward-only)",
                "not run (--forward-only)", C.command_line(), C.machine(),
            ]))
        return

    # 3. the sliding window on the device, at the best eager variant
    model = base.to(memory_format=torch.channels_last_3d if best_cl else torch.contiguous_format)
    amp = getattr(torch, DTYPES[best_precision]) if DTYPES[best_precision] else None
    grid = SlidingWindow(volume_shape, args.patch, args.overlap, cfg.multiple, "gaussian").grid
    vol = np.random.default_rng(0).standard_normal((1, *volume_shape)).astype(np.float32)
    # patch, overlap, blend and batch all given: exactly this SlidingWindow (gaussian, as before), not the run policy's
    opts = dict(patch=tuple(args.patch), overlap=args.overlap, blend="gaussian", batch_size=batch, device=device, multiple=cfg.multiple,
                amp_dtype=amp, channels_last=best_cl)
    seconds = timed(lambda: predict_volume(model, vol, **opts), sync, max(1, args.reps - 1))
    sw_rate = C.prod(volume_shape) / seconds
    bare_rate = results[[k for k in results if k.startswith(f"{best_precision}, {'channels_last_3d' if best_cl else 'NCDHW'}")][0]] * 1e12 / flops
    raw = sw_rate / bare_rate
    sw = (f"{volume_shape}: {sw_rate / 1e6:.3f} M vox/s; recompute {grid.recompute_factor:.2f}; efficiency raw {raw:.2f}, "
          f"overlap-corrected {raw * grid.recompute_factor:.2f}")
    print(f"sliding window on the device, {best_precision}{', channels_last_3d' if best_cl else ''}: {sw}")

    # 4. the host side of a chunk task, with a model that costs nothing
    host_rate, host_recompute, host_line = host_side(args, device)
    fed = host_rate * host_recompute * flops / 1e12
    host = (f"{host_line}: {host_rate / 1e6:.2f} M output vox/s per task thread = enough for {fed:.1f} TFLOP/s of this model "
            f"(recompute {host_recompute:.2f})")
    print(f"host side of a chunk task (read, z-score, copy in, cut, blend, copy out, write; free model): {host}")
    if not args.no_append:
        row = C.append_row(SECTION, COLUMNS, [
            C.today(), name, f"{mm:.2f} ({n}x{n})", f"{args.arch} U-Net ({flops / 1e6:.3f} MFLOP/voxel), {tuple(args.patch)}, {batch}",
            "; ".join(f"{k}: {v:.3f} ({100 * v / mm:.0f} %)" for k, v in results.items()),
            f"{best}: {results[best]:.3f} TFLOP/s = {100 * results[best] / mm:.0f} % of bf16 matmul",
            sw, host, C.command_line(), C.machine(),
        ])
        print(row)


if __name__ == "__main__":
    main()
