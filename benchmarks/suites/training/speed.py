"""Training speed: train() in fp32 and bf16 against pytorch_fnet's training loop, at the paper's settings.

    python benchmarks/run.py training speed                     # paper settings, 4 iterations (3 timed), 2 rounds
    python benchmarks/run.py training speed --threads 1         # one torch thread each (the fair figure on a shared CPU)
    python benchmarks/run.py training speed --compile           # also torch.compile'd bf16
    python benchmarks/run.py training speed --device cuda --iterations 30   # on a GPU
    python benchmarks/run.py training speed --tiny --iterations 3 --rounds 1 --no-save   # smoke test

The paper's settings (``harness.peers.PAPER_TRAINING``: paper U-Net, batch 24, 32x64x64 patches, Adam lr 1e-3,
MSE) on paired synthetic images (4 fields of view of 40x256x256), three ways, each a fresh subprocess (this
module run through ``benchmarks/run.py`` with ``--method``), rounds interleaved (A B C A B C):

* ``pytorch_fnet``: its training loop rebuilt (``harness.peers.run_pytorch_fnet_training``: its recursive U-Net
  with BN and ReLU modules, its N(0, 0.02) initialisation, ``Model.train_on_batch``; float32, default memory
  layout, torch's default Adam) fed by a ``BufferedPatchDataset``-like buffer: whole z-scored images in
  memory, random patches sliced and stacked in the main process between steps;
* ``chunked_fnet fp32`` and ``chunked_fnet bf16``: ``chunked_fnet.train.trainer.train`` itself
  (``harness.workloads.run_chunked_fnet_training``: loader workers reading patches from the OME-Zarr store
  while the step runs), precision pinned.

An iteration's time is the median over the iterations after the first (which builds kernels); projected
hours = 50,000 x that. A fresh process per run keeps one method's allocator and thread pools from the next's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import machine as M, results as R, timing as T, workloads as W
from harness.peers import PAPER_TRAINING, run_pytorch_fnet_training
from suites.training import common as C

RUN = Path(__file__).resolve().parents[2] / "run.py"  # the child runs through it (benchmarks/ on the path)
SECTION = "Training speed (issue 17)"
COLUMNS = [
    "date", "settings", "device", "pytorch_fnet loop s/it", "chunked_fnet fp32 s/it", "chunked_fnet bf16 s/it",
    "bf16 / pytorch_fnet speed-up", "bf16 / fp32 speed-up", "data wait (bf16)", "projected h for 50,000 it (pytorch_fnet, fp32, bf16)",
    "noise", "command", "machine",
]
METHODS = ("pytorch_fnet", "chunked_fnet_fp32", "chunked_fnet_bf16")
COMPILED = "chunked_fnet_bf16_compiled"  # --compile: also torch.compile'd (its first iteration compiles)
FOVS, SHAPE = 4, (40, 256, 256)  # the synthetic images (z y x)


def settings_for(tiny: bool) -> dict:
    return W.TINY_TRAINING if tiny else PAPER_TRAINING


def run_one(args: argparse.Namespace) -> None:
    """Child process: one method, one measurement, a ``RESULT`` JSON line on stdout."""
    data, settings = Path(args.data), settings_for(args.tiny)
    if args.method == "pytorch_fnet":
        result = run_pytorch_fnet_training(data, args.iterations, args.device, args.threads, settings=settings)
    else:
        precision = args.method.split("_")[2]
        with tempfile.TemporaryDirectory() as tmp:
            result = W.run_chunked_fnet_training(data, args.iterations, args.device, precision, Path(tmp) / "run",
                                                 compile=args.method == COMPILED, threads=args.threads, settings=settings)
    print("RESULT " + json.dumps(result))


def run_child(args: argparse.Namespace, method: str, data: Path) -> dict:
    """One method in a fresh process (through ``benchmarks/run.py``, from the repository root)."""
    cmd = [sys.executable, str(RUN), "training", "speed", "--method", method, "--data", str(data), "--iterations", str(args.iterations),
           "--device", args.device]
    cmd += ["--threads", str(args.threads)] if args.threads else []
    cmd += ["--tiny"] if args.tiny else []
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=R.ROOT)
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not line:
        sys.exit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(line[0][len("RESULT "):])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4, help="iterations per run; the first (building kernels) is not timed")
    parser.add_argument("--rounds", type=int, default=2, help="rounds; each runs every method once, in a fresh process")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile (bf16)")
    parser.add_argument("--threads", type=int, help="torch threads of every method (default: all cores)")
    C.add_args(parser)
    parser.add_argument("--method", choices=(*METHODS, COMPILED), help=argparse.SUPPRESS)  # child mode
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.method:
        run_one(args)
        return

    shape = C.TINY_SHAPE if args.tiny else SHAPE
    data = W.paired_data(C.workdir(args) / "speed", fovs=FOVS, shape=shape)
    methods = METHODS + ((COMPILED,) if args.compile else ())
    results: dict[str, list[dict]] = {m: [] for m in methods}
    for r in range(args.rounds):
        for method in methods:
            results[method].append(run_child(args, method, data))
            print(f"round {r + 1} {method}: {results[method][-1]['iteration_s']:.3f} s/it ({M.load_note()})", flush=True)

    s = {m: T.median([x["iteration_s"] for x in results[m]]) for m in methods}
    pf, f32, b16 = s["pytorch_fnet"], s["chunked_fnet_fp32"], s["chunked_fnet_bf16"]
    wait = T.median([x["data_wait"] for x in results["chunked_fnet_bf16"]])
    noise = ", ".join(f"{m} ±{T.spread([x['iteration_s'] for x in results[m]]):.0%}" for m in METHODS) + f"; {M.load_note()}"
    hours = {m: 50_000 * s[m] / 3600 for m in methods}
    if args.tiny:
        settings = (f"tiny U-Net (depth 2, width 4, smoke test), batch 2, 16x32x32, images {'x'.join(map(str, shape))}, "
                    f"{args.iterations} it ({args.iterations - 1} timed) x {args.rounds} rounds")
    else:
        settings = f"paper U-Net, batch 24, 32x64x64, {args.iterations} it ({args.iterations - 1} timed) x {args.rounds} rounds"
    settings += f", torch threads {args.threads}" if args.threads else ", torch threads: all cores"
    figures = {f"{m}_s_per_it": v for m, v in s.items()} | {f"{m}_projected_h_50k": v for m, v in hours.items()}
    figures |= {"bf16_over_pytorch_fnet_speedup": pf / b16, "bf16_over_fp32_speedup": f32 / b16, "data_wait_bf16": wait}
    figures |= {f"{m}_round{i + 1}_s_per_it": x["iteration_s"] for m in methods for i, x in enumerate(results[m])}
    if args.compile:
        compiled = s[COMPILED]
        first = T.median([x["record"]["first_iteration_s"] for x in results[COMPILED]])
        noise += f"; torch.compile: {compiled:.2f} s/it ({b16 / compiled:.2f}x eager bf16), first iteration (compiling) {first:.0f} s"
        figures |= {"compiled_first_iteration_s": first, "compiled_over_eager_bf16_speedup": b16 / compiled}
    print(R.save_row(C.SUITE, SECTION, COLUMNS, [
        R.today(), settings, args.device, f"{pf:.2f}", f"{f32:.2f}", f"{b16:.2f}", f"**{pf / b16:.2f}x**", f"{f32 / b16:.2f}x",
        f"{wait:.1%}", ", ".join(f"{hours[m]:.1f}" for m in METHODS), noise, R.command_line(), M.machine(),
    ], figures=figures, params={
        "settings": settings_for(args.tiny), "images": {"fovs": FOVS, "shape": list(shape)}, "iterations": args.iterations,
        "rounds": args.rounds, "device": args.device, "threads": args.threads, "compile": args.compile, "tiny": args.tiny,
        # each train() run's throughput.json: its precision, memory format, optimizer and timings
        "trainer_records": {m: [x["record"] for x in results[m]] for m in methods if m != "pytorch_fnet"},
    }, save_it=not args.no_save))


if __name__ == "__main__":
    main()
