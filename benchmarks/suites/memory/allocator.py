"""CPU workers: what glibc's allocator costs the U-Net, as predict sets it up and with freed memory reused.

    python benchmarks/run.py memory allocator                 # paper U-Net, 32x128x256, 2 workers each
    python benchmarks/run.py memory allocator --arch small --reps 5

Eager PyTorch allocates and frees every activation of every forward pass (the paper's U-Net: ~0.5 GB
per batch of 4 patches of 32x64x64). When glibc serves such blocks with fresh ``mmap``s (or from
per-thread arena heaps that are unmapped once empty), every forward pass page-faults its activations
in again and the kernel zeroes each page: system time, not convolution. Two set-ups, side by side:

* ``as predict runs``: dask's worker environment (``MALLOC_TRIM_THRESHOLD_=65536``, which also pins
  the mmap threshold) plus whatever the chunk task sets up in its worker process (this version:
  ``chunked_fnet.predict.job`` bounds the heap on the first task: mmap threshold 1 MiB, 2 arenas), so
  that freed window buffers go back to the system and peak memory stays flat;
* ``reuse freed memory``: ``MALLOC_ARENA_MAX=1`` (the task threads share the main heap),
  ``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` = 16 GiB set before the worker starts, which
  the task keeps (an allocator set in the worker's environment is the user's:
  ``chunked_fnet.memory.allocator_set_by_user``): freed blocks are reused, peak RSS keeps the largest
  forward pass's blocks.

Two LocalClusters (same workers x threads) are warmed, then rounds run ``predict`` on each in turn.
Reported per set-up: throughput (output voxels / predict wall), worker CPU seconds per M output voxels
split into user and system, minor page faults, peak worker RSS; the worker log line that says which heap
each set-up's tasks kept.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import time
from pathlib import Path

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "memory"

SECTION = "CPU workers: allocator environment (issue 6, CPU overhead)"
COLUMNS = ["date", "model, patch, batch", "volume, chunks, workers x threads",
           "as predict runs: M vox/s; worker CPU s/Mvox user+sys; faults/Mvox; peak worker RSS", "reuse freed memory: same",
           "speed-up (wall, per-round median)", "noise", "command", "machine"]
REUSE = W.REUSE_FREED_MEMORY
PREDICT, TUNED = "as predict runs", "reuse freed memory"


def usage() -> tuple[float, float, int, float]:
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime, r.ru_minflt, r.ru_maxrss / 1024


def heap_lines(client) -> list[str]:  # noqa: ANN001
    """What the workers' first tasks did with the heap (their log line)."""
    return sorted({msg.split("chunked_fnet worker heap: ")[1] for lines in client.get_worker_logs().values() for _, msg in lines
                   if "chunked_fnet worker heap: " in msg})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(W.ARCHS), default="default", help="default: the paper's U-Net (depth 4, width 32)")
    parser.add_argument("--shape", nargs=3, type=int, default=(32, 128, 256))
    parser.add_argument("--chunks", nargs=3, type=int, default=(32, 128, 128))
    parser.add_argument("--patch", nargs=3, type=int, default=(32, 64, 64))
    parser.add_argument("--overlap", type=int, default=48,
                        help="model voxels where patches meet (48: what the capped auto overlap gave the 64-voxel y/x patch before an "
                        "explicit patch too small for the models' 96 was refused; z is not cut at the default --shape)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    W.add_data_args(parser)
    args = parser.parse_args(argv)

    import dask

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.model import checkpoint_hash
    from chunked_fnet.predict import PredictOptions, predict
    from suites.throughput.scaling import warm

    data = Path(args.data)
    shape = tuple(args.shape)
    image = W.bench_input(data, 1, shape)
    models = W.make_checkpoints(data / "models", args.arch, 1)
    hashes = [checkpoint_hash(p) for p in models]
    options = PredictOptions(patch_shape=tuple(args.patch), overlap=args.overlap, batch_size=args.batch, chunks=tuple(args.chunks),
                             precision="fp32")
    voxels = W.prod(shape)
    spec = ClusterSpec(n_workers=args.workers, threads_per_worker=args.threads)
    envs = {PREDICT: {}, TUNED: REUSE}
    stats: dict[str, dict[str, list[float]]] = {e: {"rate": [], "user": [], "sys": [], "faults": []} for e in envs}
    peaks = {}
    with contextlib.ExitStack() as stack:
        clients = {}
        for name, env in envs.items():
            with dask.config.set(W.worker_environment(env)):
                clients[name] = stack.enter_context(local_client(spec))
            workers = list(clients[name].scheduler_info()["workers"])
            for f in [clients[name].submit(warm, models, hashes, "cpu", (args.batch, 1, *args.patch), workers=[w],
                                           allow_other_workers=False, pure=False) for w in workers]:
                f.result()
        for rep in range(args.reps):
            for name, client in clients.items():
                out = data / "malloc_out.zarr"
                shutil.rmtree(out, ignore_errors=True)
                before = client.run(usage)
                start = time.perf_counter()
                predict(image, models, out, options=options, client=client, progress=False)
                seconds = time.perf_counter() - start
                after = client.run(usage)
                shutil.rmtree(out, ignore_errors=True)
                s = stats[name]
                s["rate"].append(voxels / seconds)
                s["user"].append(sum(after[w][0] - before[w][0] for w in after) / voxels * 1e6)
                s["sys"].append(sum(after[w][1] - before[w][1] for w in after) / voxels * 1e6)
                s["faults"].append(sum(after[w][2] - before[w][2] for w in after) / voxels * 1e6)
                peaks[name] = max(a[3] for a in after.values())
                print(f"round {rep + 1}/{args.reps} {name:<19} {seconds:6.1f} s  {voxels / seconds / 1e6:.4f} M vox/s  CPU s/Mvox user "
                      f"{s['user'][-1]:.1f} sys {s['sys'][-1]:.1f}  faults/Mvox {s['faults'][-1]:.0f}; {M.load_note()}", flush=True)
        heaps = {name: heap_lines(client) for name, client in clients.items()}  # logged by each worker's first task
    speedup = T.median([t / d for t, d in zip(stats[TUNED]["rate"], stats[PREDICT]["rate"])])

    def cell(name: str) -> str:
        s = stats[name]
        return (f"{T.median(s['rate']) / 1e6:.4f}; {T.median(s['user']):.1f}+{T.median(s['sys']):.1f}; "
                f"{T.median(s['faults']):.0f}; {peaks[name]:.0f} MiB")

    print()
    print(f"{'set-up':<20}{'M vox/s':>10}{'user s/Mvox':>13}{'sys s/Mvox':>12}{'faults/Mvox':>13}{'peak RSS MiB':>14}")
    for name in envs:
        s = stats[name]
        print(f"{name:<20}{T.median(s['rate']) / 1e6:>10.4f}{T.median(s['user']):>13.1f}{T.median(s['sys']):>12.1f}"
              f"{T.median(s['faults']):>13.0f}{peaks[name]:>14.0f}")
    print(f"speed-up of reusing freed memory (median of per-round ratios): {speedup:.2f}")
    print("heap kept by the tasks: " + "; ".join(f"{n}: {', '.join(h)}" for n, h in heaps.items()))
    if not args.no_save:
        row = R.save_row(SUITE, SECTION, COLUMNS, [
            R.today(), f"{args.arch} U-Net, {tuple(args.patch)}, {args.batch}",
            f"{shape}, {tuple(args.chunks)}, {args.workers} x {args.threads}", cell(PREDICT), cell(TUNED), f"{speedup:.2f}",
            f"median of {args.reps} interleaved rounds; spread " + ", ".join(f"{n} {T.fmt_spread(stats[n]['rate'])}" for n in envs)
            + "; heap kept: " + "; ".join(f"{n}: {', '.join(h)}" for n, h in heaps.items()) + f"; {M.load_note()}",
            R.command_line(), M.machine(),
        ], figures={"speedup": speedup, **{f"{k}_{n.replace(' ', '_')}": T.median(v) for n, s in stats.items() for k, v in s.items()},
                    **{f"peak_rss_mib_{n.replace(' ', '_')}": v for n, v in peaks.items()}},
           params={"arch": args.arch, "shape": list(args.shape), "chunks": list(args.chunks), "patch": list(args.patch),
                   "overlap": args.overlap, "batch": args.batch, "workers": args.workers, "threads": args.threads, "reps": args.reps})
        print(row)


if __name__ == "__main__":
    main()
