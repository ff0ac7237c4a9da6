"""Kill a whole dask worker for good (its nanny and its worker process) mid-run, many times, under CPU
load, and count the runs that hang.

    python benchmarks/run.py reliability worker-kill [--runs 200] [--load 2] [--stall 60] [--no-append]

One ``dask scheduler`` (command line, 127.0.0.1) lives for the whole script. Each run: two
``dask worker`` processes (command line, each with its nanny, in its own process group), then
``predict()`` from this process on a small synthetic time-lapse (150 output chunks); once a random
number of chunks is recorded, SIGKILL of one worker's whole process group (no nanny restarts it),
then the run is given ``--stall`` + 60 s to end. Outcomes per run:

- ``ok``: it finished on the surviving worker, output equal to an uninterrupted run (1e-5);
- ``stopped``: it ended with the bounded-wait error (``stall_timeout``) and a ``--resume`` run on the
  surviving worker finished it, output equal;
- ``hang``: it had not ended by the deadline (the failure the issue saw in 2 of ~50 runs);
- ``wrong``: it ended but the output differs.

``--load N`` runs N busy-looping processes the whole time (the hang was seen "under CPU load").
Prints one line per run and a summary, and appends the counts to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from harness import machine as M, results as R, workloads as W

SUITE = "reliability"  # a result lands under benchmarks/results/<its title's question>/ (questions.yaml)

DASK = str(Path(sys.executable).with_name("dask"))


def _burn() -> None:
    while True:
        pass


def _start_worker(address: str, name: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [DASK, "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard", "--memory-limit", "2GiB", "--name", name],
        stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)


def _done(out: Path) -> int:
    folder = out / ".chunked_fnet" / "done"
    return sum(1 for p in folder.iterdir() if not p.name.startswith(".")) if folder.exists() else 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--load", type=int, default=2, help="busy-looping processes during the runs")
    parser.add_argument("--stall", type=float, default=60.0, help="the runs' stall_timeout (s)")
    parser.add_argument("--seed", type=int, default=0)
    W.add_data_args(parser)
    args = parser.parse_args(argv)

    from distributed import Client

    from chunked_fnet.predict import PredictOptions, predict
    from chunked_fnet.predict.submit import RunInterruptedError

    work = Path(tempfile.mkdtemp(prefix="kill_stress_"))
    image = W.synth_input(Path(args.data) / "kill_stress_input.zarr", 2, (9, 40, 36), voxel=0.4)
    models = W.make_checkpoints(Path(args.data) / "kill_stress_models", "tiny", 2, voxel=0.4)
    options = PredictOptions(patch_shape=(8, 16, 16), chunks=(4, 8, 8), overlap=0.25, stall_timeout=args.stall)
    reference, _ = predict(image, models, work / "reference.zarr", options=options, progress=False)
    reference = reference.values
    total = 2 * 3 * 5 * 5

    scheduler_file = work / "scheduler.json"
    scheduler = subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard", "--scheduler-file", str(scheduler_file)],
        stdout=(work / "scheduler.log").open("w"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.load)]
    for b in burners:
        b.start()
    rng = random.Random(args.seed)
    counts = {"ok": 0, "stopped": 0, "hang": 0, "wrong": 0}
    workers: list[subprocess.Popen] = []
    start = time.monotonic()
    try:
        while not (scheduler_file.exists() and scheduler_file.stat().st_size):
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        client = Client(address, timeout=30)
        for run in range(args.runs):
            while len(workers) < 2:
                workers.append(_start_worker(address, f"r{run}w{len(workers)}", work / f"worker-{run}-{len(workers)}.log"))
            client.wait_for_workers(2, timeout=120)
            out = work / f"out{run}.zarr"
            result: dict[str, object] = {}

            def run_predict(out: Path = out, result: dict = result) -> None:
                try:
                    result["value"] = predict(image, models, out, options=options, client=client, progress=False)[0].values
                except RunInterruptedError as exc:
                    result["stopped"] = exc
                except Exception as exc:  # noqa: BLE001 - counted and shown
                    result["error"] = exc

            thread = threading.Thread(target=run_predict, daemon=True)
            thread.start()
            kill_at = rng.randint(1, total - 10)
            while _done(out) < kill_at and thread.is_alive():
                time.sleep(0.01)
            victim = workers.pop(rng.randrange(len(workers)))
            _kill_group(victim)
            thread.join(timeout=args.stall + 60)
            if thread.is_alive():
                outcome = "hang"
            elif "stopped" in result:
                resumed = predict(image, models, out, options=options, client=client, resume=True, progress=False)[0].values
                outcome = "stopped" if np.allclose(resumed, reference, atol=1e-5, rtol=0) else "wrong"
            elif "value" in result:
                outcome = "ok" if np.allclose(result["value"], reference, atol=1e-5, rtol=0) else "wrong"
            else:
                outcome = "wrong"
            counts[outcome] += 1
            print(f"run {run + 1}/{args.runs}: killed a worker at {kill_at} of {total} chunks -> {outcome}"
                  + (f" ({result.get('stopped') or result.get('error')})" if outcome != "ok" else ""), flush=True)
            if outcome == "hang":  # a hung run keeps its tasks on the scheduler: start the next run on fresh workers
                for w in workers:
                    _kill_group(w)
                workers = []
            shutil.rmtree(out, ignore_errors=True)
        client.close()
    finally:
        for w in workers:
            _kill_group(w)
        os.killpg(scheduler.pid, signal.SIGTERM)
        for b in burners:
            b.terminate()
    minutes = (time.monotonic() - start) / 60
    summary = ", ".join(f"{k} {v}" for k, v in counts.items())
    print(f"{args.runs} runs with a worker killed for good under {args.load} busy processes in {minutes:.0f} min: {summary}")
    if not args.no_save:
        R.save_row(SUITE, 
            "Worker killed for good mid-run (reliability)",
            ["date", "machine", "command", "runs", "ok", "stopped (bounded wait, resumed)", "hang", "wrong output", "minutes"],
            [R.today(), M.machine(), R.command_line(), args.runs, counts["ok"], counts["stopped"], counts["hang"], counts["wrong"], f"{minutes:.0f}"],
        )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
