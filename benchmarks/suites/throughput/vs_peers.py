"""Peers: chunked_fnet's sliding window against MONAI's and against pytorch_fnet's one-patch-at-a-time way.

Needs MONAI, a benchmark-only dependency: ``pip install -e '.[bench]'`` (or ``pip install monai``).

    python benchmarks/run.py throughput peers                                  # paper U-Net, 32x128x192, 3 rounds
    python benchmarks/run.py throughput peers --arch small --shape 32 256 256 --reps 5
    python benchmarks/run.py throughput peers --device cuda --batch 16 --shape 64 512 512

All three predict the same in-memory volume (time point 0 of the synthetic bright-field channel,
z-scored) with the same model (seeded random init), patch, overlap and Gaussian blending (sigma =
0.125 x patch), in float32, on one device with the same torch threads:

* ``chunked_fnet``: ``chunked_fnet.sliding_window.predict_volume`` (``--batch`` patches per forward);
* ``monai``: ``monai.inferers.sliding_window_inference(..., overlap, mode="gaussian", sw_batch_size=--batch)``;
* ``monai_cl``: the same with the model converted to ``torch.channels_last_3d`` first (what
  chunked_fnet does by default on the CPU), so the memory-format gain is not credited to the tiling;
* ``chunked_fnet_tasks``: the pipeline's tasks (``run_in_process``: block tasks, then chunk tasks,
  output chunks ``--chunks``) in the same process without dask: each block reads its patches from the
  OME-Zarr, z-scores them with the frame statistics and predicts them; each chunk adds its pieces,
  normalises and writes its chunk of an output OME-Zarr; the input volume is never held in memory
  (throughput includes the reading and writing; every patch runs once, as in the global window). The
  model is what a pipeline worker runs: the checkpoint's inference copy, batch norm folded into the
  convolutions (``FnetUNet.inference_copy``; same function up to float rounding, see the max|diff|);
* ``pytorch_fnet``: what pytorch_fnet's piecewise prediction does: one patch per forward pass (no
  batching) under ``torch.no_grad``, weighted sums into whole-volume float32 buffers (here on the same
  patch grid and with the same Gaussian window, so only batching and bookkeeping differ).

Each model has the same weights (seed 0; the chunk tasks load them from a checkpoint saved with
them). Each run is a fresh subprocess (so peak memory is that method's own: ``ru_maxrss``), rounds
interleave the methods (A B C A B C ...), and the table reports medians. Time counts the prediction
only (model and volume in memory, libraries imported, one warm-up forward of one patch done). Outputs of the first round
are compared: chunked_fnet vs MONAI must agree to float32 rounding. Appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, timing as T, workloads as W
from harness.peers import monai_sliding_window, pytorch_fnet_predict

RUN = Path(__file__).resolve().parents[2] / "run.py"  # the child runs through it (benchmarks/ on the path)
SUITE = "throughput"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

SECTION = "Sliding window vs MONAI and pytorch_fnet (issue 6.2)"
COLUMNS = [
    "date", "model, patch, batch, overlap, precision, device", "volume", "chunked_fnet M vox/s, peak RSS (+ inference)",
    "chunked_fnet chunk tasks from OME-Zarr", "MONAI M vox/s, peak RSS (+ inference)", "MONAI, channels_last model",
    "pytorch_fnet way M vox/s, peak RSS (+ inference)",
    "chunked_fnet / MONAI (/ MONAI channels_last)", "max abs diff vs MONAI", "noise", "command", "machine",
]
METHODS = ("chunked_fnet", "chunked_fnet_tasks", "monai", "monai_cl", "pytorch_fnet")


# ------------------------------------------------------------------------------------ one method
def chunk_tasks(args: argparse.Namespace, device: str) -> tuple[object, int]:
    """The pipeline's tasks (``run_in_process``: read from the OME-Zarr, z-score, predict, blend,
    write each chunk of the output OME-Zarr) in this process, one after the other, without dask.
    Returns (a callable running them all and returning the output volume's path, output voxels)."""
    import shutil

    import dask

    from chunked_fnet.predict import Hardware, PredictOptions, create_output, plan
    from chunked_fnet.predict.job import ensemble_runner, run_in_process

    out = tempfile.mkdtemp(suffix=".zarr")
    shutil.rmtree(out)
    options = PredictOptions(patch_shape=tuple(args.patch), overlap=args.overlap, batch_size=args.batch, chunks=tuple(args.chunks),
                             device=device, precision="fp32")
    with dask.config.set(scheduler="synchronous"):  # frame statistics in this process
        job = plan(args.image, [args.checkpoint], out, options)
    policy = job.resolve_policy(Hardware.here(device))  # explicit patch, overlap (gaussian) and batch: the options' window
    create_output(job, policy, overwrite=True)
    ensemble_runner(job, policy)  # the tasks' ensemble loaded and prepared before the clock starts

    def run() -> str:
        run_in_process(job, policy)
        return out

    return run, len(job.times) * W.prod(job.spatial_shape)


def run_one(args: argparse.Namespace) -> None:
    """Child process: one method, one run; prints one JSON line."""
    import torch

    from chunked_fnet.sliding_window import predict_volume

    torch.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    patch = tuple(args.patch)
    if args.method == "chunked_fnet_tasks":  # reads the store chunk by chunk: no volume in memory
        run, voxels = chunk_tasks(args, args.device)
        volume = None
        model = None
    else:
        volume = W.load_frame(args.image)
        voxels = int(volume.size)
        model = W.seeded_model(args.arch, 0).eval().to(args.device)  # the weights make_checkpoints saves for the chunk tasks
        if args.method == "monai_cl":  # the user converts the model, as chunked_fnet does on the CPU
            model.to(memory_format=torch.channels_last_3d)
        with torch.inference_mode():  # warm-up, one patch: library initialisation, not the method's memory
            model(torch.zeros((1, 1, *patch), device=args.device))
    sync()
    base = T.current_rss_mib()
    start = time.perf_counter()
    if args.method == "chunked_fnet":
        pred = predict_volume(model, volume[None], patch=patch, overlap=args.overlap, blend="gaussian",
                              batch_size=args.batch, device=args.device, multiple=model.multiple)[0]
    elif args.method in ("monai", "monai_cl"):
        pred = monai_sliding_window(model, [volume], args.device, "fp32", roi_size=patch, sw_batch_size=args.batch,
                                    overlap=args.overlap, sigma_scale=0.125)()[0][0, 0].cpu().numpy()
    elif args.method == "pytorch_fnet":
        pred = pytorch_fnet_predict(model, volume, patch, args.overlap, model.multiple, args.device)
    else:
        pred = run()  # the output's path
    sync()
    seconds = time.perf_counter() - start
    peak = T.peak_rss_mib()
    gpu_peak = torch.cuda.max_memory_allocated() / 2**20 if args.device.startswith("cuda") else None
    if args.method == "chunked_fnet_tasks":
        from chunked_fnet.io.reader import open_image

        import shutil

        path = pred
        pred = open_image(path).values[0, 0] if args.save else None
        shutil.rmtree(path, ignore_errors=True)
    if args.save:
        np.save(args.save, np.asarray(pred, dtype=np.float32))
    print(json.dumps({"seconds": seconds, "peak_mib": peak, "base_mib": base, "gpu_peak_mib": gpu_peak, "voxels": voxels}))


# ---------------------------------------------------------------------------------------- parent
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(W.ARCHS), default="default", help="default: the paper's U-Net (depth 4, width 32)")
    parser.add_argument("--shape", nargs=3, type=int, default=(32, 128, 192), help="z y x of the in-memory volume")
    parser.add_argument("--patch", nargs=3, type=int, default=(32, 64, 64))
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--chunks", nargs=3, type=int, default=(32, 256, 256), help="output chunks of chunked_fnet_tasks (predict's default)")
    parser.add_argument("--batch", type=int, default=4, help="patches per forward (chunked_fnet, MONAI); pytorch_fnet uses 1")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as each pipeline worker; multi-threaded OpenMP suffers most on a shared machine)")
    parser.add_argument("--reps", type=int, default=3, help="rounds; each round runs every method once")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--device", default="cpu")
    W.add_data_args(parser)
    parser.add_argument("--method", help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--image", help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    parser.add_argument("--save", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.method:
        run_one(args)
        return
    import monai  # noqa: F401  (fail early, and put its version in the machine line)

    data = Path(args.data)
    shape = tuple(args.shape)
    image = W.bench_input(data, 1, shape)
    checkpoint = W.make_checkpoints(data / "models", args.arch, 1)[0]  # the weights every method's model gets (seed 0)
    common = [sys.executable, str(RUN), "throughput", "peers", "--arch", args.arch, "--patch", *map(str, args.patch), "--overlap", str(args.overlap),
              "--batch", str(args.batch), "--threads", str(args.threads), "--device", args.device, "--image", image,
              "--checkpoint", checkpoint, "--chunks", *map(str, args.chunks)]
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    saved = {}
    for rep in range(args.reps):
        for method in args.methods:
            cmd = [*common, "--method", method]
            if rep == 0:
                saved[method] = str(data / f"peers_{method}.npy")
                cmd += ["--save", saved[method]]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
            if proc.returncode:
                sys.exit(f"{method} failed:\n{proc.stderr[-3000:]}")
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            results[method].append(r)
            print(f"round {rep + 1}/{args.reps} {method:<19} {r['seconds']:7.1f} s  {r['voxels'] / r['seconds'] / 1e6:.4f} M vox/s  "
                  f"peak RSS {r['peak_mib']:.0f} MiB (before inference {r['base_mib']:.0f}); {M.load_note()}", flush=True)
    diffs = {}
    ref = np.load(saved["monai"]) if "monai" in saved else None
    for method, path in saved.items():
        if ref is not None and method != "monai":
            diffs[method] = float(np.abs(np.load(path) - ref).max())
        os.remove(path)

    from chunked_fnet.model import UNetConfig

    cfg = UNetConfig(**W.ARCHS[args.arch])
    summary = {}
    print()
    print(f"{args.arch} U-Net (depth {cfg.depth}, width {cfg.width}), volume {shape}, patch {tuple(args.patch)}, overlap {args.overlap}, "
          f"gaussian, float32, batch {args.batch}, {args.device}, {args.threads} torch threads; medians of {args.reps}")
    print(f"{'method':<20}{'M vox/s':>10}{'spread':>9}{'peak RSS MiB':>14}{'+inference':>12}{'max|diff| vs MONAI':>20}")
    for method, runs in results.items():
        rates = [r["voxels"] / r["seconds"] for r in runs]
        peak = T.median([r["peak_mib"] for r in runs])
        extra = T.median([r["peak_mib"] - r["base_mib"] for r in runs])
        gpu = T.median([r["gpu_peak_mib"] for r in runs]) if runs[0]["gpu_peak_mib"] is not None else None
        summary[method] = (T.median(rates), rates, peak, extra, gpu)
        diff = f"{diffs[method]:.2e}" if method in diffs else "-"
        print(f"{method:<20}{T.median(rates) / 1e6:>10.4f}{T.fmt_spread(rates):>9}{peak:>14.0f}{extra:>12.0f}{diff:>20}"
              + (f"   GPU peak {gpu:.0f} MiB" if gpu is not None else ""))
    ratios = {}
    for peer in ("monai", "monai_cl", "pytorch_fnet", "chunked_fnet_tasks"):
        if "chunked_fnet" in summary and peer in summary:
            # per-round ratios: the methods of a round ran back to back, so saw similar load
            per_round = [b["seconds"] / a["seconds"] for a, b in zip(results["chunked_fnet"], results[peer])]
            ratios[peer] = T.median(per_round)
            print(f"throughput chunked_fnet / {peer}: {ratios[peer]:.3f} (median of per-round ratios {', '.join(f'{r:.3f}' for r in per_round)})")

    def cell(method: str) -> str:
        if method not in summary:
            return "-"
        rate, _, peak, extra, gpu = summary[method]
        return f"{rate / 1e6:.4f}, {peak:.0f} MiB (+{extra:.0f})" + (f", GPU {gpu:.0f} MiB" if gpu is not None else "")

    if not args.no_save:
        row = R.save_row(SUITE, SECTION, COLUMNS, [
            R.today(),
            f"{args.arch} U-Net (depth {cfg.depth}, width {cfg.width}), {tuple(args.patch)}, {args.batch}, {args.overlap} gaussian, fp32, "
            f"{args.device} ({args.threads} threads)",
            f"{shape}",
            cell("chunked_fnet"), cell("chunked_fnet_tasks"), cell("monai"), cell("monai_cl"), cell("pytorch_fnet"),
            " / ".join(f"{ratios[p]:.2f}" for p in ("monai", "monai_cl") if p in ratios) or "-",
            f"{diffs.get('chunked_fnet', float('nan')):.1e}",
            f"median of {args.reps} interleaved rounds; spread " + ", ".join(f"{m} {T.fmt_spread(s[1])}" for m, s in summary.items())
            + f"; {M.load_note()}",
            R.command_line(),
            M.machine(),
        ])
        print(row)


if __name__ == "__main__":
    main()
