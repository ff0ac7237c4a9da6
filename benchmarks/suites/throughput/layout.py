"""The bare forward in two layouts: one process with every thread, or a process per core (issue 29).

    python benchmarks/run.py throughput layout [--shape 48 384 384] [--frames 2] [--precision bf16] [--reps 3] [--no-save]

What the CPU run policy's compute lane (``RunPolicy.compute_lane``) rests on: a time-lapse's frames on a
host of N cores either run one after another in one process on N torch threads (a worker's compute lane),
or side by side in N processes of one thread each (N one-thread workers, the old default). Each layout runs
the paper U-Net's whole-frame forward (``harness.peers.bare_forward``: predict's inference copy, memory
layout and precision) in fresh processes, started together, each timing its own frames after one untimed
forward; the layouts alternate round by round (A B A B ...). Reported: frames per second of each layout,
and their ratio per round (N processes / one process; below 1 means the lane is faster).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "throughput"
SECTION = "The bare forward in two layouts: one process with every thread, or a process per core (issue 29)"
COLUMNS = ["date", "frame, model, precision", "one process x N threads (frames/s)", "N processes x 1 thread (frames/s)",
           "N processes / one process", "noise", "command", "machine"]


def child(threads: int, frames: int, shape: tuple[int, int, int], precision: str, arch: str) -> None:
    """In a fresh process: ``frames`` whole-frame forwards on ``threads`` torch threads; prints the seconds."""
    import numpy as np
    import torch

    from harness import peers as P

    torch.set_num_threads(threads)
    frame = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    model = W.seeded_model(arch)
    run = P.bare_forward(model, [frame] * frames, precision=precision)
    P.bare_forward(model, [frame], precision=precision)()  # untimed: oneDNN's kernels built, memory mapped
    start = time.perf_counter()
    run()
    print(json.dumps({"seconds": time.perf_counter() - start, "frames": frames}), flush=True)


def layout(processes: int, threads: int, frames: int, args: argparse.Namespace) -> float:
    """Frames per second of ``processes`` processes of ``threads`` threads, each taking ``frames`` frames, side by side."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(threads), str(frames), *map(str, args.shape), args.precision, args.arch]
    benchmarks = str(Path(__file__).resolve().parents[2])  # where ``harness`` lives
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [benchmarks, os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) for _ in range(processes)]
    results = []
    for p in procs:
        out, _ = p.communicate()
        if p.returncode:
            sys.exit(f"layout: a child process failed ({p.returncode})")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return sum(r["frames"] / r["seconds"] for r in results)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs=3, type=int, default=(48, 384, 384))
    parser.add_argument("--frames", type=int, default=2, help="frames each process of the N-process layout takes (the lane takes N times as many)")
    parser.add_argument("--arch", choices=sorted(W.ARCHS), default="default")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument("--cores", type=int, default=None, help="N (default: every usable core)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    M.refuse_emulated_bf16(args.precision)
    from chunked_fnet.device import usable_cores

    n = args.cores or usable_cores()
    rates: dict[str, list[float]] = {"lane": [], "split": []}
    for r in range(args.reps):
        rates["lane"].append(layout(1, n, n * args.frames, args))
        rates["split"].append(layout(n, 1, args.frames, args))
        print(f"round {r + 1}: one process x {n} threads {rates['lane'][-1]:.4f} frames/s, {n} processes x 1 thread "
              f"{rates['split'][-1]:.4f} frames/s", flush=True)
    ratios = [s / lane for s, lane in zip(rates["split"], rates["lane"], strict=True)]
    lane, split = T.median(rates["lane"]), T.median(rates["split"])
    print(f"{n} processes / one process: {split / lane:.2f} (per round {', '.join(f'{x:.2f}' for x in ratios)})")
    if args.no_save:
        return
    print(R.save_row(SUITE, SECTION, COLUMNS, [
        R.today(), f"{tuple(args.shape)}, {W.arch_label(args.arch)}, {args.precision}", f"{lane:.4f}", f"{split:.4f}",
        f"{split / lane:.2f} (per round {', '.join(f'{x:.2f}' for x in ratios)})",
        f"median of {args.reps} alternating rounds, fresh processes each, one untimed forward first; spread lane "
        f"{T.fmt_spread(rates['lane'])}, split {T.fmt_spread(rates['split'])}; N = {n}; {M.load_note()}",
        R.command_line(), M.machine(),
    ], question="throughput", figures={"lane_frames_s": lane, "split_frames_s": split, "split_over_lane": split / lane},
       params={"shape": list(args.shape), "frames": args.frames, "precision": args.precision, "cores": n, "reps": args.reps}))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _, _, threads, frames, z, y, x, precision, arch = sys.argv
        child(int(threads), int(frames), (int(z), int(y), int(x)), precision, arch)
    else:
        main()
