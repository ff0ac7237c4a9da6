"""What planning and submitting cost as a run grows to many output chunks (issue 18 item 3).

    python benchmarks/run.py throughput many-chunks [--frames 1 10 100 1000] [--frame 8 80 80] [--chunks 8 8 8]

A tiny U-Net (depth 2, width 4) on a synthetic time-lapse of ``--frames`` frames of ``--frame``
voxels, written with ``--chunks`` output chunks (so frames x chunks-per-frame chunk tasks, plus as
many block tasks), so that the model does not dominate and what is measured is the pipeline:

- plan: ``plan()`` (reading the input's metadata and every frame's statistics) and the schedule;
- the client's memory growth during the run (RSS, sampled every 50 ms);
- first chunk: seconds from the start of ``execute()`` (the product's submission, a batch of frames at
  a time) to the first chunk's ledger marker;
- total, tasks/s (block + chunk tasks per second of the run), the scheduler's RSS after the run.

The input is made cheaply: one synthetic frame (chunked_fnet.synth), rolled along x by a few voxels
per time point. One fresh 2-worker LocalCluster per size. Appends a row per size to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, workloads as W

SUITE = "throughput"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)


def _rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def timelapse(data: Path, frames: int, shape: tuple[int, int, int]) -> str:
    import zarr

    from chunked_fnet.io.reader import open_image, select_channels
    from chunked_fnet.io.writer import create_image, write_region

    path = data / f"many_{frames}x{'x'.join(map(str, shape))}.zarr"
    if path.exists():
        return str(path)
    base = select_channels(open_image(W.bench_input(data, 1, shape)), "brightfield").isel(t=0).values
    create_image(path, shape=(frames, 1, *shape), chunks=(1, 1, *shape), dtype=base.dtype,
                 scale={"t": 1.0, "c": 1.0, "z": 0.4, "y": 0.4, "x": 0.4}, channel_names=["brightfield"])
    group = zarr.open_group(str(path), mode="r+")
    for t in range(frames):
        write_region(group, (slice(t, t + 1), slice(None), slice(None), slice(None), slice(None)), np.roll(base, 3 * t, axis=2)[None, None])
    return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", nargs="+", type=int, default=(1, 10, 100, 1000))
    parser.add_argument("--frame", nargs=3, type=int, default=(8, 80, 80))
    parser.add_argument("--chunks", nargs=3, type=int, default=(8, 8, 8))
    parser.add_argument("--workers", type=int, default=2)
    W.add_data_args(parser)
    args = parser.parse_args(argv)

    import dask

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.model import FnetUNet, ModelCard, UNetConfig, save_checkpoint
    from chunked_fnet.predict import PredictOptions, create_output, execute, plan
    from chunked_fnet.predict.prepare import cluster_hardware

    data = Path(args.data)
    data.mkdir(parents=True, exist_ok=True)
    import torch

    torch.manual_seed(0)
    model = FnetUNet(UNetConfig(depth=2, width=4))
    card = ModelCard(structure="dna", architecture=model.config, voxel_size=(0.4, 0.4, 0.4),
                     input={"modality": "brightfield", "channel": "brightfield"}, training={"dataset": "random init (benchmark)"})
    checkpoint = str(save_checkpoint(data / "many_tiny.ckpt", model, card, overwrite=True))
    frame = tuple(args.frame)
    options = PredictOptions(patch_shape=(8, 16, 16), overlap=0.25, chunks=tuple(args.chunks), precision="fp32", device="cpu")
    rows = []
    for frames in args.frames:
        image = timelapse(data, frames, frame)
        out = data / "many_out.zarr"
        shutil.rmtree(out, ignore_errors=True)
        with local_client(ClusterSpec(n_workers=args.workers)) as client:
            hardware = cluster_hardware(client, "cpu")  # the workers' facts (imports torch there): not what this measures
            rss0 = _rss_mib()
            start = time.perf_counter()
            with dask.config.set(scheduler="synchronous"):
                job = plan(image, [checkpoint], str(out), options)
            policy = job.resolve_policy(hardware)  # as predict() resolves it for this cluster
            graph = job.schedule(policy.window)
            planned = time.perf_counter() - start
            create_output(job, policy, overwrite=True)
            # the product's own execute(), in a thread; this thread watches the ledger and its own memory
            import threading

            done_dir = out / ".chunked_fnet" / "done"
            result: dict = {}
            start = time.perf_counter()
            runner = threading.Thread(target=lambda: result.update(summary=execute(job, policy, client, progress=False)))
            runner.start()
            first, peak = None, 0.0
            while runner.is_alive():
                peak = max(peak, _rss_mib() - rss0)
                if first is None and done_dir.exists() and any(done_dir.iterdir()):
                    first = time.perf_counter() - start
                time.sleep(0.05)
            runner.join()
            total = time.perf_counter() - start
            assert result["summary"].chunks == len(graph.chunks)
            scheduler_mib = client.run_on_scheduler(_rss_mib)
            submitted, rss_submit = float("nan"), peak
        n_tasks = len(graph.blocks) + len(graph.chunks)
        row = dict(frames=frames, chunks=len(graph.chunks), tasks=n_tasks, plan_s=planned, submit_s=submitted, client_MiB=rss_submit,
                   first_chunk_s=first, total_s=total, tasks_per_s=n_tasks / total, scheduler_MiB=scheduler_mib)
        rows.append(row)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    if not args.no_save:
        for row in rows:
            R.save_row(SUITE, 
                "Many chunks: planning and submitting (issue 18 item 3)",
                ["date", "frames x frame, chunks", "chunk tasks (all tasks)", "plan s", "client RSS growth MiB", "first chunk s",
                 "total s, tasks/s", "scheduler RSS MiB", "command", "machine"],
                [R.today(), f"{row['frames']} x {frame}, {tuple(args.chunks)}", f"{row['chunks']} ({row['tasks']})", f"{row['plan_s']:.1f}",
                 f"+{row['client_MiB']:.0f}", f"{row['first_chunk_s']:.1f}",
                 f"{row['total_s']:.0f}, {row['tasks_per_s']:.0f}", f"{row['scheduler_MiB']:.0f}", R.command_line(), M.machine()],
            )


if __name__ == "__main__":
    main()
