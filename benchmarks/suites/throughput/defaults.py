"""predict() at the product's defaults against MONAI's sliding window and against the model's own limit.

    python benchmarks/run.py throughput defaults [--shape 48 384 384] [--frames 1] [--reps 2] [--precision fp32] [--no-save]

Side by side in one run, interleaved (``harness.timing.interleave``), on ``--frames`` time points of the paper's
U-Net (seeded random weights), every method in ``--precision`` (fp32 by default; bf16 autocasts the
convolutions):

- ``predict``: ``chunked_fnet.predict.predict`` with ``PredictOptions(device="cpu")`` (window, precision
  and sizing chosen by the run's policy) on the default local cluster (``ClusterSpec()``: one worker on every
  usable core; ``--workers N``: N workers sharing them), from the OME-Zarr on disk to the OME-Zarr written.
  Two times: the whole call, and the run's executed part
  (``RunSummary.seconds``: the tasks and the pyramids; planning, the statistics pass, the precision check
  and creating the output are outside it, a fixed cost per run that a long time-lapse spreads thin);
- ``monai``: ``harness.peers.monai_sliding_window`` (roi 32x64x64, overlap 0.25, gaussian, sw_batch_size 4);
- ``bare``: ``harness.peers.bare_forward``: the model's forward over each whole z-scored frame, in predict's
  memory layout and precision: the limit no tiling can beat on this machine.

The in-memory peers take the frames one after another (each z-scored on its own, as predict does) on
``--threads`` torch threads (default: every usable core, the cores predict's workers use); predict gets them
all at once, as a time-lapse. Every method first runs ``--warmup`` untimed rounds (a process's first pass at a shape
builds oneDNN's kernels and maps its memory; a long run pays that once per worker).

Reported: output voxels per second of each, predict / MONAI and predict / bare (whole call and executed),
per round as well as of the medians. Issue 29 item 3 asks a time-lapse of >= 4 frames at >= 0.9x the bare
forward in fp32 and in bf16.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from harness import machine as M, peers as P, results as R, timing as T, workloads as W

SUITE = "throughput"
SECTION = "Throughput at the defaults: predict() vs MONAI vs the bare forward (issue 15)"
COLUMNS = ["date", "frame, model, precision", "predict M vox/s (window chosen)", "MONAI M vox/s", "bare forward M vox/s",
           "predict / MONAI", "predict / bare", "noise", "command", "machine"]
METHODS = ("predict", "monai", "bare")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(48, 384, 384), help="z y x of one frame")
    parser.add_argument("--frames", type=int, default=1, help="time points (a time-lapse of this many frames)")
    parser.add_argument("--arch", choices=sorted(W.ARCHS), default="default", help="default: the paper's U-Net (depth 4, width 32)")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (every method): kernels built, memory mapped")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--workers", type=int, default=None, help="predict's local worker processes, the cores shared out between them (default: ClusterSpec's, one on every core)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the in-memory peers (default: every usable core)")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="what runs (a ratio needs predict and the other)")
    W.add_data_args(parser)
    args = parser.parse_args(argv)
    M.refuse_emulated_bf16(args.precision)

    import torch

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.device import usable_cores
    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.predict import PredictOptions, predict

    data = Path(args.data)
    image = W.bench_input(data, args.frames, tuple(args.shape))
    checkpoint = W.make_checkpoints(data / "models", args.arch, 1)[0]
    frames = [W.load_frame(image, t) for t in range(args.frames)]
    voxels = args.frames * W.prod(args.shape)
    threads = args.threads or usable_cores()
    torch.set_num_threads(threads)
    executed: list[float] = []
    windows: list[str] = []
    options = PredictOptions(device="cpu", precision=args.precision)

    with local_client(ClusterSpec(**({"n_workers": args.workers} if args.workers else {}))) as client:
        def run_predict() -> None:
            folder = Path(tempfile.mkdtemp(dir=data))
            try:
                _, summary = predict(image, [checkpoint], folder / "pred.zarr", options=options, client=client, progress=False)
            finally:
                shutil.rmtree(folder)
            executed.append(summary.seconds)
            windows.append(f"{tuple(summary.policy.window.patch_shape)}, recompute {summary.recompute:.2f}")

        peers = {
            "predict": run_predict,
            "monai": P.monai_sliding_window(load_checkpoint(checkpoint)[0], frames, precision=args.precision),
            "bare": P.bare_forward(load_checkpoint(checkpoint)[0], frames, precision=args.precision),
        }
        methods = {m: peers[m] for m in args.methods}
        times = T.interleave(methods, args.reps, args.warmup,
                             on_round=lambda r, name, s: print(f"round {r + 1}: {name} {s:.1f} s", flush=True))
    if "predict" in methods:
        times["predict executed"] = executed[args.warmup:]  # the same calls' executed part (see the docstring)

    nan = float("nan")
    rate = {k: voxels / T.median(v) / 1e6 for k, v in times.items()}
    ratio = {f"{a} / {b}": rate[a] / rate[b] if a in rate and b in rate else nan
             for a in ("predict", "predict executed") for b in ("monai", "bare")}
    rounds = {f"{a} / {b}": T.per_round_ratios(times, a, b) if a in times and b in times else []  # b's seconds / a's: a's rate / b's
              for a in ("predict", "predict executed") for b in ("monai", "bare")}
    window = windows[-1] if windows else ""
    print("M output voxels/s: " + ", ".join(f"{k} {v:.4f}" for k, v in rate.items()))
    for name, value in ratio.items():
        print(f"{name}: {value:.2f} (per round {', '.join(f'{r:.2f}' for r in rounds[name])})")
    print(f"predict's window: {window}")
    if args.no_save:
        return
    per_round = "; ".join(f"{k} per round {', '.join(f'{r:.2f}' for r in v)}" for k, v in rounds.items() if v)
    print(R.save_row(SUITE, SECTION, COLUMNS, [
        R.today(), f"{args.frames} x {tuple(args.shape)}, {W.arch_label(args.arch)}, {args.precision}",
        f"{rate.get('predict', nan):.4f}, executed {rate.get('predict executed', nan):.4f} ({window})",
        f"{rate.get('monai', nan):.4f}", f"{rate.get('bare', nan):.4f}",
        f"{ratio['predict / monai']:.2f} (executed {ratio['predict executed / monai']:.2f})",
        f"{ratio['predict / bare']:.2f} (executed {ratio['predict executed / bare']:.2f})",
        f"median of {args.reps} interleaved rounds after {args.warmup} untimed"
        + (" (first round: " + ", ".join(f"{k} {v[0]:.1f} s" for k, v in times.warmup.items() if v) + ")" if args.warmup else "")
        + f"; {per_round}; spread " + ", ".join(f"{k} {T.fmt_spread(v)}" for k, v in times.items()) + f"; {M.load_note()}",
        R.command_line(), M.machine(),
    ], figures={**{f"{k.replace(' ', '_')}_mvox_s": v for k, v in rate.items()},
                **{k.replace(" / ", "_over_").replace(" ", "_"): v for k, v in ratio.items()}},
       params={"shape": list(args.shape), "frames": args.frames, "arch": args.arch, "precision": args.precision,
               "workers": args.workers, "threads": threads, "reps": args.reps, "warmup": args.warmup}))


if __name__ == "__main__":
    main()
