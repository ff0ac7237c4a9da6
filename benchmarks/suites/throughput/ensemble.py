"""A 13-structure ensemble against one model: time per model, side by side in one run.

    python benchmarks/run.py throughput ensemble [--shape 32 128 128] [--frames 2] [--models 13] [--reps 2] [--no-save]

The paper's U-Net (seeded random weights, one seed per structure) predicts the same ``--frames`` x ``--shape``
time-lapse through ``chunked_fnet.predict.predict`` at the defaults (``PredictOptions(device="cpu")``: window,
precision and sizing chosen by the run's policy) on one local cluster (2 worker processes, 1 thread each), once with
the first model alone and once with all ``--models``, interleaved over ``--reps`` rounds after one untimed
round. An ensemble reads, z-scores and resamples a block once and keeps it in memory (on the device) while every
member runs (``predict/ensemble.py``: one stacked module, one forward per patch); what grows with the models is
the forward passes and the output channels blended and written.

Timed: each run's ``RunSummary.seconds`` (executing the tasks and writing the pyramids; planning, the
statistics pass and creating the output are outside, and the same for both), and the CPU seconds the worker
processes spent over each whole call (``harness.timing.workers_cpu_seconds``, user + system): on a machine shared with other jobs, wall time
follows their load while CPU time mostly does not. Reported: seconds per model of
the ensemble / seconds of the one-model run (goal <= 1.05), the whole call's ratio too, and the windows the
policy chose for both (a window chosen smaller for the ensemble's larger output would show here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "throughput"
SECTION = "A 13-model ensemble: time per model against one model (issue 29)"
COLUMNS = ["date", "case", "1 model: executed s (whole call s; workers' CPU s)", "ensemble: executed s (whole call s; workers' CPU s)",
           "per model / 1 model: executed (whole call; workers' CPU); executed per round", "windows (1 model; ensemble)", "noise", "command", "machine"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", nargs=3, type=int, default=(32, 128, 128), help="z y x of one frame")
    parser.add_argument("--frames", type=int, default=2, help="time points")
    parser.add_argument("--models", type=int, default=13, help="structures in the ensemble")
    parser.add_argument("--arch", choices=sorted(W.ARCHS), default="default", help="default: the paper's U-Net (depth 4, width 32)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="fp32")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--workers", type=int, default=2)
    W.add_data_args(parser)
    args = parser.parse_args(argv)
    M.refuse_emulated_bf16(args.precision)

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import PredictOptions, predict

    data = Path(args.data)
    image = W.bench_input(data, args.frames, tuple(args.shape))
    models = W.make_checkpoints(data / "models", args.arch, args.models)
    runs = {"1 model": models[:1], f"{args.models} models": models}
    executed: dict[str, list[float]] = {k: [] for k in runs}
    whole: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    windows: dict[str, object] = {}
    options = PredictOptions(device="cpu", precision=args.precision)
    with local_client(ClusterSpec(n_workers=args.workers, threads_per_worker=1)) as client:
        for rep in range(-1, args.reps):
            for name, members in runs.items():
                folder = Path(tempfile.mkdtemp(dir=data))
                try:
                    before = T.workers_cpu_seconds(client)
                    start = time.perf_counter()
                    _, summary = predict(image, members, folder / "pred.zarr", options=options, client=client, progress=False)
                    call = time.perf_counter() - start
                    spent = T.workers_cpu_seconds(client) - before
                    windows[name] = json.loads((folder / "pred.zarr" / ".chunked_fnet" / "run.json").read_text())["window"]
                finally:
                    shutil.rmtree(folder)
                if rep >= 0:
                    executed[name].append(summary.seconds)
                    whole[name].append(call)
                    cpu[name].append(spent)
                print(f"{'warm-up' if rep < 0 else f'rep {rep + 1}'}: {name}: executed {summary.seconds:.1f} s, whole call {call:.1f} s, "
                      f"workers' CPU {spent:.1f} s, "
                      f"{summary.patch_evaluations} patches, window {windows[name]}", flush=True)
    one, many = runs
    per_model = T.median(executed[many]) / args.models / T.median(executed[one])
    per_model_call = T.median(whole[many]) / args.models / T.median(whole[one])
    per_model_cpu = T.median(cpu[many]) / args.models / T.median(cpu[one])
    rounds = [r / args.models for r in T.per_round_ratios(executed, one, many)]
    print(f"time per model, {args.models} models / 1 model: {per_model:.3f} executed, {per_model_call:.3f} whole call, "
          f"{per_model_cpu:.3f} workers' CPU (goal <= 1.05); executed per round {', '.join(f'{r:.2f}' for r in rounds)}")
    if not args.no_save:
        print(R.save_row(SUITE, SECTION, COLUMNS, [
            R.today(), f"{args.frames} x {tuple(args.shape)}, {W.arch_label(args.arch)}, {args.models} structures, {args.precision}, "
            f"{args.workers} workers x 1 thread",
            f"{T.median(executed[one]):.1f} ({T.median(whole[one]):.1f}; {T.median(cpu[one]):.1f})",
            f"{T.median(executed[many]):.1f} ({T.median(whole[many]):.1f}; {T.median(cpu[many]):.1f})",
            f"{per_model:.3f} ({per_model_call:.3f}; {per_model_cpu:.3f}); " + ", ".join(f"{r:.2f}" for r in rounds), f"{windows[one]}; {windows[many]}",
            f"median of {args.reps} interleaved rounds after 1 untimed; spread " + ", ".join(f"{k} {T.fmt_spread(v)}" for k, v in executed.items())
            + f"; {M.load_note()}", R.command_line(), M.machine(),
        ], figures={"per_model_ratio": per_model, "per_model_ratio_whole_call": per_model_call, "per_model_ratio_cpu": per_model_cpu,
                    "one_model_s": T.median(executed[one]), "ensemble_s": T.median(executed[many])},
           params={"shape": list(args.shape), "frames": args.frames, "models": args.models, "arch": args.arch, "precision": args.precision}))

if __name__ == "__main__":
    main()
