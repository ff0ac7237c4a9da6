"""predict() at the product's defaults against MONAI's sliding window and against the model's own limit.

    python benchmarks/throughput.py [--shape 48 384 384] [--frames 1] [--reps 2] [--precision fp32] [--no-append]

Side by side in one run, interleaved, on ``--frames`` time points (default one frame) of the paper's U-Net (seeded random weights), all
fp32 by default (``--precision bf16`` for every method; the CPU autocasts convolutions to bf16):

- ``predict``: ``chunked_fnet.predict.predict`` with ``PredictOptions()`` (patch ``auto``: chosen
  from the workers' memory) on a 2-worker LocalCluster (1 thread each), from the OME-Zarr on disk
  to the OME-Zarr written (statistics, resampling identity, blending, writing included);
- ``monai``: ``monai.inferers.sliding_window_inference`` at its common settings (roi = the training
  patch 32x64x64, overlap 0.25, gaussian, sw_batch_size 4), same model, torch threads = 2, on the
  z-scored frame in memory;
- ``bare``: the model's own forward pass over the whole (z-scored) frame at once, torch threads = 2:
  the limit no tiling can beat on this machine.

Every method first runs ``--warmup`` untimed rounds (a process's first pass at a shape builds oneDNN's
kernels and maps its memory; a long run pays that once per worker). MONAI and the bare forward take the frames one after the other (each frame z-scored on its own, as
predict does); predict gets them all at once, as a time-lapse.

Reports output voxels per second of each, and predict's ratios to MONAI and to the bare forward.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import _common as C


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(48, 384, 384))
    parser.add_argument("--frames", type=int, default=1, help="time points (a time-lapse of this many frames)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (every method): kernels built, memory mapped")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--methods", nargs="+", choices=["predict", "monai", "bare"], default=["predict", "monai", "bare"],
                        help="what runs (the ratios need predict and the other)")
    C.add_data_args(parser)
    args = parser.parse_args()

    import torch
    from monai.inferers import sliding_window_inference

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.io.reader import open_image, select_channels
    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.predict import PredictOptions, predict

    data = Path(args.data)
    image = C.bench_input(data, args.frames, tuple(args.shape))
    checkpoint = C.make_checkpoints(data / "models", "default", 1)[0]
    frames = []
    for t in range(args.frames):
        bf = select_channels(open_image(image), "brightfield").isel(t=t).values.astype(np.float32)
        frames.append(torch.from_numpy(((bf - bf.mean()) / bf.std()).astype(np.float32))[None, None])
    voxels = args.frames * int(np.prod(args.shape))
    bf16 = args.precision == "bf16"
    model = load_checkpoint(checkpoint)[0].inference_copy().eval().to(memory_format=torch.channels_last_3d)
    x_cl = [frame.contiguous(memory_format=torch.channels_last_3d) for frame in frames]
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else (lambda: torch.autocast("cpu", enabled=False))
    times: dict[str, list[float]] = {m: [] for m in args.methods}
    window = None
    with local_client(ClusterSpec(n_workers=args.workers, threads_per_worker=1)) as client:
        options = PredictOptions(precision=args.precision, device="cpu")
        cold: dict[str, float] = {}
        for rep in range(-args.warmup, args.reps):
            for method in args.methods:
                torch.set_num_threads(2)
                start = time.perf_counter()
                if method == "predict":
                    out = Path(tempfile.mkdtemp()) / "pred.zarr"
                    predict(image, [checkpoint], out, options=options, client=client, progress=False)
                    import json

                    window = json.loads((out / ".chunked_fnet" / "run.json").read_text())["window"]
                    shutil.rmtree(out.parent)
                elif method == "monai":
                    plain = load_checkpoint(checkpoint)[0].eval()
                    with torch.inference_mode(), autocast():
                        for frame in frames:
                            sliding_window_inference(frame, roi_size=(32, 64, 64), sw_batch_size=4, predictor=plain, overlap=0.25, mode="gaussian")
                else:
                    with torch.inference_mode(), autocast():
                        for x in x_cl:
                            model(x)
                seconds = time.perf_counter() - start
                if rep < 0:
                    cold.setdefault(method, seconds)
                else:
                    times[method].append(seconds)
                print(f"{'warm-up' if rep < 0 else 'rep'} {rep + 1}: {method} {seconds:.1f} s", flush=True)
    rate = {k: voxels / C.median(v) / 1e6 for k, v in times.items()}
    nan = float("nan")
    vs_monai, vs_bare = rate.get("predict", nan) / rate.get("monai", nan), rate.get("predict", nan) / rate.get("bare", nan)
    print("M output voxels/s: " + ", ".join(f"{k} {v:.4f}" for k, v in rate.items()))
    print(f"predict / MONAI {vs_monai:.2f}, predict / bare forward {vs_bare:.2f}; predict's window {window}")
    if not args.no_save:
        C.append_row(
            "Throughput at the defaults: predict() vs MONAI vs the bare forward (issue 15)",
            ["date", "frame, model, precision", "predict M vox/s (window chosen)", "MONAI M vox/s", "bare forward M vox/s",
             "predict / MONAI", "predict / bare", "noise", "command", "machine"],
            [C.today(), f"{args.frames} x {tuple(args.shape)}, paper U-Net, {args.precision}", f"{rate.get('predict', nan):.4f} ({window})",
             f"{rate.get('monai', nan):.4f}", f"{rate.get('bare', nan):.4f}", f"{vs_monai:.2f}", f"{vs_bare:.2f}",
             f"median of {args.reps} interleaved rounds after {args.warmup} untimed"
             + (" (first round: " + ", ".join(f"{k} {v:.1f} s" for k, v in cold.items()) + ")" if cold else "")
             + "; spread " + ", ".join(f"{k} {C.fmt_spread(v)}" for k, v in times.items()) + f"; {C.load_note()}",
             C.command_line(), C.machine()],
        )


if __name__ == "__main__":
    main()
