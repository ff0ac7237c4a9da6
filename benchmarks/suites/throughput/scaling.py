"""Scaling: end-to-end throughput with 1 and 2 CPU worker processes (or 1 GPU worker via dask-cuda).

    python benchmarks/run.py throughput scaling                                   # 1x1 vs 2x1 vs 1x2 (workers x threads)
    python benchmarks/run.py throughput scaling --configs 1x1 2x1 --reps 5 --arch small
    python benchmarks/run.py throughput scaling --configs cuda --device cuda --precision bf16 --batch 16 --shape 64 512 512

Every configuration's cluster is started and warmed first (each worker loads the models and runs one
forward pass of the real batch shape), then rounds run ``predict`` once per configuration, in turn,
on the same input (interleaved: A B C A B C ...). Throughput = output voxels x structures / wall time
of ``predict()`` (planning, frame statistics, every chunk task; not cluster start-up or model loading).
Speed-ups are the median of per-round ratios to the first configuration (runs of one round saw
similar load). ``WxT`` = W worker processes with T threads each (torch uses T threads per worker);
``cuda`` = dask-cuda's LocalCUDACluster, one worker per GPU. Appends a row to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from pathlib import Path

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "throughput"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

SECTION = "Scaling (issue 6.4)"
COLUMNS = ["date", "model, patch, batch, precision", "volume, chunks (tasks)", "M vox/s by workers x threads", "speed-up vs first",
           "noise", "command", "machine"]


def warm(paths: list[str], hashes: list[str], device: str, shape: tuple[int, ...], precision: str = "fp32") -> int:
    """Load the models into this worker as its tasks will (the cached ensemble of ``precision``'s memory
    format) and run one forward pass of ``shape`` (torch threads as a task would)."""
    import torch

    from chunked_fnet.device import autocast_dtype
    from chunked_fnet.predict.ensemble import cached_ensemble
    from chunked_fnet.sliding_window.runner import default_channels_last
    W.prepare_like_a_task()
    dev = torch.device(device)
    model = cached_ensemble(paths, hashes, device, default_channels_last(dev, autocast_dtype(precision, dev)))
    with torch.inference_mode():
        model(torch.zeros(shape, device=device))
    return torch.get_num_threads()


def spec_for(config: str):  # noqa: ANN201
    from chunked_fnet.cluster import ClusterSpec

    if config == "cuda":
        return ClusterSpec(kind="cuda")
    workers, threads = (int(v) for v in config.split("x"))
    return ClusterSpec(n_workers=workers, threads_per_worker=threads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=["1x1", "2x1", "1x2"], help="WxT (workers x threads) or cuda")
    W.add_workload_args(parser)
    args = parser.parse_args(argv)

    from chunked_fnet.cluster import local_client
    from chunked_fnet.model import UNetConfig
    from chunked_fnet.predict import predict

    data = Path(args.data)
    shape = tuple(args.shape)
    image, models, hashes, options = W.workload(args)
    voxels = args.time_points * W.prod(shape) * len(models)
    batch_shape = (args.batch, 1, *args.patch)
    rates: dict[str, list[float]] = {c: [] for c in args.configs}
    tasks = 0
    with contextlib.ExitStack() as stack:
        clients = {}
        for config in args.configs:
            client = stack.enter_context(local_client(spec_for(config)))
            workers = list(client.scheduler_info()["workers"])
            threads = [client.submit(warm, models, hashes, args.device, batch_shape, args.precision, workers=[w], allow_other_workers=False,
                                     pure=False) for w in workers]
            print(f"{config}: {len(workers)} workers ready, torch threads {[t.result() for t in threads]}", flush=True)
            clients[config] = client
        for rep in range(args.reps):
            for config, client in clients.items():
                out = data / f"scaling_{config}.zarr"
                shutil.rmtree(out, ignore_errors=True)
                start = time.perf_counter()
                _, summary = predict(image, models, out, options=options, client=client, progress=False)
                seconds = time.perf_counter() - start
                shutil.rmtree(out, ignore_errors=True)
                tasks = summary.chunks
                rates[config].append(voxels / seconds)
                print(f"round {rep + 1}/{args.reps} {config:>5}: {seconds:6.1f} s, {voxels / seconds / 1e6:.4f} M vox/s; {M.load_note()}", flush=True)

    first = args.configs[0]
    speedups = {c: T.median([r / r0 for r, r0 in zip(rates[c], rates[first])]) for c in args.configs}
    cfg = UNetConfig(**W.ARCHS[args.arch])
    print()
    print(f"{args.arch} U-Net (depth {cfg.depth}, width {cfg.width}) x{len(models)}, patch {tuple(args.patch)}, batch {args.batch}, "
          f"{args.precision}, volume {args.time_points} x {shape}, chunks {tuple(args.chunks)} ({tasks} tasks); medians of {args.reps}")
    print(f"{'workers x threads':<20}{'M vox/s':>10}{'spread':>9}{'speed-up':>10}")
    for c in args.configs:
        print(f"{c:<20}{T.median(rates[c]) / 1e6:>10.4f}{T.fmt_spread(rates[c]):>9}{speedups[c]:>10.2f}")
    if not args.no_save:
        row = R.save_row(SUITE, SECTION, COLUMNS, [
            R.today(),
            f"{args.arch} U-Net (depth {cfg.depth}, width {cfg.width}) x{len(models)}, {tuple(args.patch)}, {args.batch}, {args.precision} {args.device}",
            f"{args.time_points} x {shape}, {tuple(args.chunks)} ({tasks})",
            ", ".join(f"{c}: {T.median(rates[c]) / 1e6:.4f}" for c in args.configs),
            ", ".join(f"{c}: {speedups[c]:.2f}" for c in args.configs),
            f"median of {args.reps} interleaved rounds; spread " + ", ".join(f"{c} {T.fmt_spread(rates[c])}" for c in args.configs)
            + f"; {M.load_note()}",
            R.command_line(),
            M.machine(),
        ])
        print(row)


if __name__ == "__main__":
    main()
