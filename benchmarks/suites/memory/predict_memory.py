"""Chunked prediction of an input larger than the workers' memory, with worker memory limits set.

Starts a LocalCluster of worker processes with ``memory_limit`` each, runs ``predict``, then reads
every worker's peak resident set size (``getrusage`` inside the worker: the peak over the worker
process's whole life, which began with this cluster) and the workers' logs (any pause, spill,
restart or memory warning is reported), and appends a row to BENCHMARKS.md. E.g.

    chunked-fnet synth /tmp/big8.zarr --size 8 48 1024 1024 --config configs/synth_timelapse_2gb.yaml
    python benchmarks/run.py memory predict /tmp/big8.zarr --models dna.ckpt ne.ckpt nucleoli.ckpt \\
        --memory-limit 768MiB --output-grid input
"""

from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, timing as T

SUITE = "memory"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)
from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.io.reader import open_image
from chunked_fnet.predict import PredictOptions, predict

TITLE = "Data generation and prediction memory"
COLUMNS = ["date", "what", "data", "size", "memory", "time", "machine"]
PAUSED = re.compile(r"(?i)pausing worker|paused")
SPILLED = re.compile(r"(?i)spill")
LOST = re.compile(r"(?i)restart|terminat|exceeded|nanny.*kill")
HIGH = re.compile(r"(?i)memory use is high")


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--out", default="/tmp/bench_predict.zarr")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GiB", help="per worker; a worker with torch loaded idles at ~320 MiB")
    parser.add_argument("--chunks", nargs=3, type=int, default=(48, 128, 128), help="output chunk z y x")
    parser.add_argument("--patch", nargs=3, type=int, default=(16, 64, 64))
    # an explicit patch needs an explicit overlap when it is too small for the models' 96 voxels: 0.25 of the patch
    # (4 in z, 16 in y/x, gaussian). The peak memory is the patch's and the batch's; the old capped auto overlap
    # (0 in z, 48 in y/x) cannot be given as one option value
    parser.add_argument("--overlap", type=float, default=0.25, help="fraction of the patch (< 1) or model voxels")
    parser.add_argument("--no-save", action="store_true", help="print only; store no result")
    parser.add_argument("--output-grid", choices=("model", "input"), default="model")
    args = parser.parse_args(argv)
    shutil.rmtree(args.out, ignore_errors=True)
    image = open_image(args.input)
    channel_bytes = image.nbytes // image.sizes.get("c", 1)
    spec = ClusterSpec(n_workers=args.workers, threads_per_worker=1, memory_limit=args.memory_limit)
    options = PredictOptions(chunks=tuple(args.chunks), patch_shape=tuple(args.patch), overlap=args.overlap, batch_size=2,
                             output_grid=args.output_grid)
    with local_client(spec) as client:
        info = client.scheduler_info()["workers"]
        before = set(info)
        limits = [w["memory_limit"] for w in info.values()]
        output, summary = predict(args.input, args.models, args.out, options=options, client=client, progress=True)
        peaks = client.run(T.peak_rss_mib)
        after = set(client.scheduler_info()["workers"])
        logs = client.get_worker_logs()
    lines = [line for entries in logs.values() for _, line in entries]
    counts = {name: sum(bool(rx.search(line)) for line in lines) for name, rx in
              (("pause", PAUSED), ("spill", SPILLED), ("restart/terminate", LOST), ("'memory use is high' warning", HIGH))}
    events = ", ".join(f"{n} {name}" for name, n in counts.items())
    total_limit = sum(limits)
    out_bytes = int(np.prod(output.shape)) * output.dtype.itemsize
    print(summary)
    print(f"input store {_gib(image.nbytes)} ({tuple(image.shape)} {image.dtype}); transmitted-light channel read: {_gib(channel_bytes)}")
    print(f"output {_gib(out_bytes)} ({tuple(output.shape)} {output.dtype}, {args.output_grid} grid)")
    print(f"workers {args.workers} x {args.memory_limit} = {_gib(total_limit)}; input store / limit = {image.nbytes / total_limit:.1f}x, "
          f"(channel read + output written) / limit = {(channel_bytes + out_bytes) / total_limit:.1f}x")
    print(f"peak worker RSS: {', '.join(f'{p:.0f} MiB' for p in peaks.values())}  (limit {args.memory_limit} each)")
    print(f"workers replaced during the run: {len(before ^ after)}; worker log events: {events}")
    cells = [
        R.today(),
        f"predict {Path(args.input).name}, {len(args.models)} models, output on the {args.output_grid} grid, {args.workers} workers x {args.memory_limit}",
        f"input {tuple(image.shape)} {image.dtype}; output {tuple(output.shape)} {output.dtype}",
        f"input store {_gib(image.nbytes)} = {image.nbytes / total_limit:.1f}x the workers' total limit {_gib(total_limit)}; "
        f"{_gib(channel_bytes)} read + {_gib(out_bytes)} written = {(channel_bytes + out_bytes) / total_limit:.1f}x",
        f"peak worker RSS {', '.join(f'{p:.0f}' for p in peaks.values())} MiB; worker logs: {events}; {len(before ^ after)} workers lost",
        f"{summary.seconds:.0f} s, {summary.chunks} chunks",
        M.machine(),
    ]
    figures = {"peak_worker_rss_mib_max": max(peaks.values()), "input_over_limit": image.nbytes / total_limit, "seconds": summary.seconds,
               "workers_lost": len(before ^ after)}
    print(R.save_row(SUITE, TITLE, COLUMNS, cells, figures=figures, save_it=not args.no_save))


if __name__ == "__main__":
    main()
