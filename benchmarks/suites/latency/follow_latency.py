"""Latency of ``predict --follow``: from a frame's last input chunk written (by a writer process) to its
prediction's last chunk recorded, against the frame's own predict time, side by side on one warm cluster.

    python benchmarks/run.py latency follow --arch tiny --shape 32 256 256
    python benchmarks/run.py latency follow --arch default --shape 32 192 192   # the paper's U-Net
    python benchmarks/run.py latency follow --shape 16 64 64 --frames 2 --no-save   # does it run (tiny)

1. The frame's own predict time: ``predict()`` of one frame (``time=(t, t+1)``) on the warm cluster,
   for each of two frames after one warm-up (the models are then loaded on the workers).
2. A writer process (examples/live_timelapse_writer.py) writes ``--frames`` frames at an interval of
   twice that time (so a follower that keeps up is never behind), growing the t axis, and marks the
   acquisition complete; ``follow()`` predicts them on the same cluster, at the defaults.
3. Per frame, from the files' own times: the latest modification of the frame's bright-field chunk
   files, and the latest of its ledger markers (each written once its chunk is stored).

Goal (issue "Live time-lapses"): median latency <= 1.5x the frame's own predict time.

``follow`` waits for its input as long as it is not told otherwise (that is its job), so the follow runs
with an ``idle_timeout`` (``--idle-timeout``, default 10x the writer's interval and at least 60 s): a
writer that dies or never starts ends the measurement with its exit status, rather than a follow that
waits for ever; a measurement that did not predict every frame is refused, not stored.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import machine as M, results as R, workloads as W

SUITE = "latency"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

WRITER = R.ROOT / "examples" / "live_timelapse_writer.py"


def _frame_written(live: Path, t: int) -> float:
    """When the writer stored the last bright-field chunk of frame ``t`` (zarr v3 keys: 0/c/t/c/z/y/x)."""
    return max(p.stat().st_mtime for p in (live / "0" / "c" / str(t) / "0").rglob("*") if p.is_file())


def _frame_predicted(out: Path, t: int) -> float:
    return max(p.stat().st_mtime for p in (out / ".chunked_fnet" / "done").glob(f"t{t}-*"))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    W.add_data_args(parser)
    parser.add_argument("--arch", choices=sorted(W.ARCHS), default="tiny")
    parser.add_argument("--shape", type=int, nargs=3, default=(32, 256, 256), metavar=("Z", "Y", "X"))
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="seconds the follow waits for a new frame (default: 10x the writer's interval, at least 60)")
    args = parser.parse_args(argv)
    if not WRITER.is_file():
        raise SystemExit(f"{WRITER}: the writer process's script is missing")

    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import PredictOptions, predict
    from chunked_fnet.predict.follow import follow

    data = Path(args.data)
    source = W.bench_input(data, args.frames, args.shape)
    models = W.make_checkpoints(data / "models", args.arch, 1)
    work = Path(tempfile.mkdtemp(prefix="follow_latency_"))
    try:
        with local_client(ClusterSpec()) as client:
            own = []
            for i in range(3):  # the first loads the models on the workers; frames reused when there are fewer than 3
                t = i % args.frames
                _, summary = predict(source, models, work / f"frame{i}.zarr", options=PredictOptions(time=(t, t + 1)),
                                     client=client, progress=False)
                own.append(summary.seconds)
            frame_s = statistics.median(own[1:])
            interval = 2 * frame_s
            live, out = work / "live.zarr", work / "pred.zarr"
            idle = args.idle_timeout if args.idle_timeout is not None else max(60.0, 10 * interval)
            writer = subprocess.Popen([sys.executable, str(WRITER), source, str(live), "--mode", "grow", "--interval", f"{interval:.2f}",
                                       "--mark-complete"], stdout=subprocess.DEVNULL)
            start = time.monotonic()
            try:
                result = follow(live, models, out, client=client, progress=False, idle_timeout=idle)
            except BaseException as exc:
                code = writer.poll()
                writer.kill()
                writer.wait()
                if code:  # the writer died first: that is why the follow found no (new) frame
                    raise SystemExit(f"the writer ({WRITER.name}) exited with status {code}; the follow: {exc}") from exc
                raise
            wall = time.monotonic() - start
            try:
                code = writer.wait(timeout=60)  # it marked the input complete, so it is done or about to be
            except subprocess.TimeoutExpired:
                writer.kill()
                code = writer.wait()
        if code != 0:
            raise SystemExit(f"the writer ({WRITER.name}) exited with status {code}; the follow stopped: {result.stopped}")
        if result.total_frames != args.frames:
            raise SystemExit(f"the follow predicted {result.total_frames} of {args.frames} frames ({result.stopped}); nothing stored")
        latencies = [_frame_predicted(out, t) - _frame_written(live, t) for t in range(args.frames)]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    lat = statistics.median(latencies)
    print(result)
    print(f"frame's own predict time {frame_s:.2f} s ({', '.join(f'{s:.2f}' for s in own[1:])}); writer interval {interval:.2f} s; "
          f"latency per frame {', '.join(f'{s:.2f}' for s in latencies)} s; median {lat:.2f} s = {lat / frame_s:.2f}x; "
          f"follow wall {wall:.1f} s")
    if not args.no_save:
        row = R.save_row(SUITE, 
            "Live time-lapses: latency of predict --follow",
            ["date", "machine", "model", "frame", "frames", "frame's own predict (s)", "latency per frame (s)", "median latency / own",
             "command"],
            [R.today(), M.machine(), args.arch, "x".join(map(str, args.shape)), args.frames, f"{frame_s:.2f}",
             ", ".join(f"{s:.2f}" for s in latencies), f"{lat / frame_s:.2f}x", R.command_line()],
        )
        print(row)


if __name__ == "__main__":
    main()
