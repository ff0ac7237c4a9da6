"""Chunked prediction of an input larger than the workers' memory, with worker memory limits set.

Runs ``predict`` on a LocalCluster of worker processes with ``memory_limit`` per worker, then
reads each worker's peak resident set size (``getrusage`` inside the worker) and appends a row to
BENCHMARKS.md. Input and models are given on the command line, e.g.

    python benchmarks/synth_memory.py                       # writes /tmp/bench_synth.zarr (2.1 GB)
    python benchmarks/predict_memory.py /tmp/bench_synth.zarr --models a.ckpt b.ckpt --memory-limit 1GiB
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
from datetime import date
from pathlib import Path

import dask
import torch

from chunked_fnet.cluster import ClusterSpec, local_client
from chunked_fnet.io.reader import open_image
from chunked_fnet.predict import PredictOptions, predict

ROOT = Path(__file__).resolve().parents[1]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--out", default="/tmp/bench_predict.zarr")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--memory-limit", default="1GiB", help="per worker; a worker with torch loaded idles at ~320 MiB")
    parser.add_argument("--chunks", nargs=3, type=int, default=(48, 128, 128))
    parser.add_argument("--patch", nargs=3, type=int, default=(16, 64, 64))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    image = open_image(args.input)
    spec = ClusterSpec(n_workers=args.workers, memory_limit=args.memory_limit)
    options = PredictOptions(chunks=tuple(args.chunks), patch_shape=tuple(args.patch), batch_size=2)
    with local_client(spec) as client:
        limits = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
        _, summary = predict(args.input, args.models, args.out, options=options, client=client, progress=False)
        peaks = client.run(_peak_rss_mib)
    total_limit = sum(limits)
    row = (
        f"| {date.today()} | predict {Path(args.input).name} ({len(args.models)} models) | input {tuple(image.shape)} "
        f"{image.dtype}, {image.nbytes / 1e9:.2f} GB = {image.nbytes / total_limit:.1f}x the workers' total memory limit "
        f"({args.workers} x {args.memory_limit}) | peak worker RSS {', '.join(f'{p:.0f}' for p in peaks.values())} MiB | "
        f"{summary.seconds:.0f} s, {summary.chunks} chunks | {platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}, "
        f"dask {dask.__version__} |"
    )
    print(summary)
    print(row)
    with (ROOT / "BENCHMARKS.md").open("a") as f:
        f.write(row + "\n")


if __name__ == "__main__":
    main()
