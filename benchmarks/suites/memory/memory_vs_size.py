"""Peak memory of every worker for datasets of 1x, 4x and 16x a base size: it should stay flat.

    python benchmarks/run.py memory vs-size                           # paper U-Net, base 1 x 32x128x128, 2 workers
    python benchmarks/run.py memory vs-size --arch small --factors 1 4 16 64
    python benchmarks/run.py memory vs-size --base 32 256 256 --chunks 32 256 256 --memory-limit 3GiB
    python benchmarks/run.py memory vs-size --grow yx                 # one frame, 128^2 -> 256^2 -> 512^2 in y/x

Generates synthetic data (chunked_fnet.synth) ``factor`` times ``--base``: with ``--grow t`` (default)
a time-lapse of ``factor`` frames of ``--base`` voxels (every frame has the same z/y/x, so the only
thing that grows is the amount of data); with ``--grow yx`` one frame whose y and x are multiplied by
sqrt(factor), so the number of blocks per frame grows and, with it, the partial sums that blocks hand
to neighbouring chunks (held by dask until the chunk task has run). Then, for each size, starts a fresh LocalCluster of ``--workers`` worker processes
with ``--memory-limit`` each (``ru_maxrss`` is a lifetime peak, so every size gets new processes),
runs ``predict`` and reads each worker's peak resident set size inside the worker. The client
process's own peak is shown too (it plans, computes frame statistics through the workers and
collects results). Appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "memory"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

SECTION = "Peak worker memory vs dataset size (issue 6.3)"
COLUMNS = ["date", "model, patch, batch, chunks", "base size, workers x memory limit", "peak RSS per worker (MiB) by size",
           "max worker peak, change from 1x", "time per size", "command", "machine"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(W.ARCHS), default="default", help="default: the paper's U-Net (depth 4, width 32)")
    parser.add_argument("--models", type=int, default=1)
    parser.add_argument("--base", nargs=3, type=int, default=(32, 128, 128), help="z y x of one time point")
    parser.add_argument("--factors", nargs="+", type=int, default=(1, 4, 16), help="dataset sizes in units of --base")
    parser.add_argument("--grow", choices=["t", "yx"], default="t", help="t: more frames; yx: larger frames (factors must be squares)")
    parser.add_argument("--chunks", nargs=3, type=int, default=(32, 128, 128))
    parser.add_argument("--patch", nargs=3, type=int, default=(32, 64, 64))
    parser.add_argument("--overlap", type=int, default=48,
                        help="model voxels where patches meet (48: what the capped auto overlap gave the 64-voxel y/x patch before an "
                        "explicit patch too small for the models' 96 was refused; z is not cut at the default --base)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--defaults", action="store_true",
                        help="the product's defaults instead of --patch/--batch/--chunks: PredictOptions() (patch, overlap, batch, precision auto)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="2GiB", help="per worker")
    W.add_data_args(parser)
    args = parser.parse_args(argv)

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.io.reader import open_image
    from chunked_fnet.predict import PredictOptions, predict

    data = Path(args.data)
    base = tuple(args.base)
    models = W.make_checkpoints(data / "models", args.arch, args.models)
    def sized(f: int) -> tuple[int, tuple[int, int, int]]:
        if args.grow == "t":
            return f, base
        k = round(f ** 0.5)
        if k * k != f:
            parser.error(f"--grow yx needs square factors, got {f}")
        return 1, (base[0], base[1] * k, base[2] * k)

    images = {f: W.bench_input(data, *sized(f)) for f in args.factors}
    options = PredictOptions(patch_shape=tuple(args.patch), overlap=args.overlap, batch_size=args.batch, chunks=tuple(args.chunks),
                             precision="fp32")
    if args.defaults:
        options = PredictOptions()
    out = data / "memory_out.zarr"
    results = {}
    chosen: dict[int, str] = {}
    for f in args.factors:
        shutil.rmtree(out, ignore_errors=True)
        spec = ClusterSpec(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit)
        with local_client(spec) as client:
            start = time.perf_counter()
            _, summary = predict(images[f], models, out, options=options, client=client, progress=False)
            seconds = time.perf_counter() - start
            peaks = sorted(client.run(T.peak_rss_mib).values())
        nbytes = open_image(images[f]).nbytes
        record = json.loads((out / ".chunked_fnet" / "run.json").read_text())
        chosen[f] = f"window {record['window']['patch']} overlap {record['window']['overlap']}, {record['precision']['chosen']}"
        results[f] = (peaks, seconds, summary.chunks, nbytes)
        print(f"{f:>3}x: input {nbytes / 2**20:.0f} MiB, {summary.chunks} chunk tasks, {seconds:.0f} s; worker peak RSS "
              f"{', '.join(f'{p:.0f}' for p in peaks)} MiB; client {T.peak_rss_mib():.0f} MiB so far; {M.load_note()}", flush=True)
    shutil.rmtree(out, ignore_errors=True)

    first = max(results[args.factors[0]][0])
    print()
    print(f"{args.arch} U-Net x{args.models}, patch {tuple(args.patch)}, batch {args.batch}, chunks {tuple(args.chunks)}, "
          f"{args.workers} workers x {args.memory_limit}, base {base}, growing along {args.grow}")
    print(f"{'size':>6}{'input MiB':>11}{'tasks':>7}{'max worker peak MiB':>21}{'vs 1x':>9}{'all workers':>24}")
    for f, (peaks, seconds, chunks, nbytes) in results.items():
        print(f"{f:>5}x{nbytes / 2**20:>11.0f}{chunks:>7}{max(peaks):>21.0f}{100 * (max(peaks) / first - 1):>+8.1f}%"
              f"{', '.join(f'{p:.0f}' for p in peaks):>24}")
    change = max(abs(max(p) / first - 1) for p, *_ in results.values())
    print(f"largest change of the max worker peak from {args.factors[0]}x: {100 * change:.1f} % (target: within ±10 %)")
    if not args.no_save:
        row = R.save_row(SUITE, SECTION, COLUMNS, [
            R.today(),
            f"{args.arch} U-Net x{args.models}, " + (f"defaults ({'; '.join(f'{f}x: {c}' for f, c in chosen.items())}), chunks {options.chunks}"
                                                      if args.defaults else f"{tuple(args.patch)}, {args.batch}, {tuple(args.chunks)}"),
            f"{base} per time point, {args.workers} x {args.memory_limit}" if args.grow == "t" else
            f"{base}, growing in y/x ({', '.join('x'.join(map(str, sized(f)[1])) for f in args.factors)}), {args.workers} x {args.memory_limit}",
            "; ".join(f"{f}x ({res[3] / 2**20:.0f} MiB in): {', '.join(f'{p:.0f}' for p in res[0])}" for f, res in results.items()),
            f"{', '.join(f'{max(res[0]):.0f}' for res in results.values())} MiB; largest change {100 * change:.1f} %",
            ", ".join(f"{res[1]:.0f} s" for res in results.values()) + f" ({M.load_note()})",
            R.command_line(),
            M.machine(),
        ])
        print(row)


if __name__ == "__main__":
    main()
