"""Host work per frame (issue 29 item 1): can one GPU worker's host side keep up with its GPU at one model?

    python benchmarks/run.py throughput host-side [--frames 8] [--reps 3] [--threads 1 2] [--compare OLD_CHECKOUT] [--no-save]

Everything but the forward pass is the real code path: ``chunked_fnet.predict.predict`` at the product's
defaults (``PredictOptions(device="cpu", precision="fp32", profile=True)``) on a real local cluster (one worker
process, 1 or 2 task threads, 127.0.0.1 only) over a time-lapse of 64x512x512 uint16 frames written by the
package's own synth (its default chunks 32x256x256 and zstd). The one model is a bioimage.io package whose
network is ``x * gain + 1e-3 * u`` (``u``: fixed uniform noise, drawn once per shape, so that the forward is a few
elementwise passes over the frame rather than a fresh random draw, and there so that its output's low mantissa bits are as
incompressible as a real prediction's, whose zstd cost the quantised ``x * gain`` alone would overstate
~4x); its card says width 1, so the auto patch is the whole frame, as the paper U-Net's is on a GPU (one
block task per frame, its chunk tasks blending and writing).

Per stage, the CPU seconds per frame: the run's own record (``profile=True``: ``RunSummary.stages``, each task
thread's CPU by stage, exclusive of nested stages; ``chunked_fnet.profiling``), and the worker's other threads
by kind (psutil, by thread name): its task threads and the device thread (``chunked_fnet-cpu_0``, where the
forward passes run) outside the stages (dask's deserialising and bookkeeping, the device thread's copies),
zarr's I/O loop (``zarr_io``), the threads that loop hands its codecs and file reads and writes to
(``asyncio_N``: decoding the input (zstd) and encoding the output (blosc lz4) run there), the event loop (scheduling,
transfers) and the rest. The client process (the scheduler, and the statistics pass of ``plan``, which reads
every frame once more) is reported apart. Every figure is per frame of a long time-lapse: the measured run of
``--frames`` less a run of ``SHORT_FRAMES`` in the same cluster, over the frames between, so a run's fixed costs
(planning, the package's load, the output's creation: ~0.12 CPU-s of the client's alone, which 8 frames would
count as 0.015 a frame) are reported apart ("fixed per run"). Frames/s is the runs' execution (``RunSummary.seconds``). Runs are
interleaved (1 thread, 2 threads, [old, new] or [bounded, reuse] (``--heap``), ...), each in a fresh subprocess and cluster after an untimed
one-frame warm-up; medians are reported.

The cluster's idle background (heartbeats, the system monitor, dask's sampling profiler: CPU per second, not
per frame) is measured for ``IDLE_S`` seconds before each run and reported apart: "host per-frame work" is the
host CPU less that background over the run's wall time, and "host at 60 ms/frame" adds it back over the GPU's
frame time, the figure to hold against the 8 threads' 0.48 CPU-s per frame. "The worker process alone" is the same
without the client and scheduler (another process; on a cluster, other cores, shared by every GPU worker), and
its one-thread loops (zarr's I/O loop, the event loop) are shown apart, each with its own idle CPU per second
treated as the process's is: each must itself fit in the GPU's frame time, whatever the number of task threads. The "8-thread projection" (Amdahl from
the 1- and 2-thread frames/s) includes this CPU's forward, which the device thread runs one frame after another
(~0.2 s a frame here): it says how the whole run scales on this CPU, not whether a GPU worker's host side keeps up.

``--compare OLD``: the same runs with ``PYTHONPATH=OLD`` (e.g. ``git worktree add /tmp/hs-before 40c72c6``)
interleaved with this checkout's, and the outputs' values checked bit-identical between the two (a package
from before ``profile`` existed gives its totals only).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import machine as M, results as R, timing as T, workloads as W

SUITE = "throughput"
SECTION = "Host work per frame (issue 29)"
COLUMNS = ["date", "case", "version", "CPU-s per frame by stage", "host CPU-s per frame", "host CPU-s per frame at the GPU's rate", "frames/s 1 thread", "frames/s 2 threads",
           "8-thread projection", "commit", "command", "machine"]
SHAPE = (64, 512, 512)
#: GPU's need: the paper U-Net's forward of one 64x512x512 frame on an H100 (issue 29), and the 8 task threads.
GPU_FRAME_S = 0.060
#: The worker's heap (``--heap``): predict's own (``bounded``: large freed arrays returned to the system, a trim
#: after every task) or an environment that keeps freed memory for reuse, which predict then keeps untrimmed.
HEAPS = {"bounded": {}, "reuse": W.REUSE_FREED_MEMORY}
GPU_THREADS = 8
#: Seconds the warmed cluster sits idle before the run, to measure its background CPU per second.
IDLE_S = 4.0
#: The run's stages (chunked_fnet.profiling) in pipeline order, then the worker's threads outside the tasks.
STAGES = ["read", "statistics", "normalize", "staging", "forward", "blend", "finish", "write", "heap trim", "task"]
THREADS = ["task and device threads outside stages", "zarr I/O loop", "zarr codec and file threads", "event loop", "other worker threads"]
#: :func:`threads_cpu`'s kinds as the rows they are reported in.
THREAD_ROWS = {"zarr": "zarr I/O loop", "codec": "zarr codec and file threads", "main": "event loop", "other": "other worker threads"}
ORDER = [*STAGES, *THREADS]

GAIN_NET = '''"""x * gain + 1e-3 * u: a near-free network whose output is continuous (the host-side benchmark). Imports only torch."""
import torch
from torch import nn


class Gain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.ones(1))
        self._noise: torch.Tensor | None = None  # drawn once per shape: the forward is elementwise passes, not a draw

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self._noise
        if u is None or u.shape != x.shape or u.dtype != x.dtype or u.device != x.device:
            u = self._noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(0), dtype=x.dtype).to(x.device)
        return x * self.gain + 1e-3 * u
'''


def thread_kind(name: str) -> str:
    """What a worker thread is, by its name: a dask task thread or the device thread (both run the profiled
    stages), zarr's I/O loop, the executor threads that loop runs codecs and file I/O in, the event loop, other."""
    if "Dask-Default-Threads" in name or name.startswith("Dask-Worker-Threads") or name.startswith("chunked_fnet-"):
        return "task"
    if name.startswith("zarr_pool") or name == "zarr_io":
        return "zarr"
    if name.startswith("asyncio_"):  # asyncio's default executor: zarr's asyncio.to_thread (codecs, file reads and writes)
        return "codec"
    return "main" if name == "MainThread" else "other"


def threads_cpu() -> dict[str, float]:
    """This process's threads' CPU seconds (user + system) by :func:`thread_kind`, and the process's total."""
    import threading

    import psutil

    names = {t.native_id: t.name for t in threading.enumerate()}
    kinds: dict[str, float] = collections.defaultdict(float)
    for t in psutil.Process().threads():
        kinds[thread_kind(names.get(t.id, ""))] += t.user_time + t.system_time
    proc = psutil.Process().cpu_times()
    return {**kinds, "process": proc.user + proc.system}


def gain_package(folder: Path) -> Path:
    """The bioimage.io package of :data:`GAIN_NET` (synth's voxel size, sizes 16 + 16k, card width 1)."""
    out = folder / f"gain-{hashlib.sha256(GAIN_NET.encode()).hexdigest()[:8]}.zip"  # a new network, a new package
    if out.exists():
        return out
    import numpy as np
    import torch
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5

    from chunked_fnet.synth.dataset import SynthConfig

    voxel = SynthConfig().voxel_size
    work = folder / out.stem
    work.mkdir(parents=True, exist_ok=True)
    (work / "gain_net.py").write_text(GAIN_NET)
    space: dict = {}
    exec(compile(GAIN_NET, str(work / "gain_net.py"), "exec"), space)  # noqa: S102 - our own source, written above
    net = space["Gain"]().eval()
    x = (500.0 + 100.0 * np.random.default_rng(0).normal(size=(1, 1, 16, 16, 16))).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(((x - x.mean()) / (x.std() + 1e-6)).astype(np.float32))).numpy()
    np.save(work / "in.npy", x)
    np.save(work / "out.npy", y)
    torch.save(net.state_dict(), work / "weights.pt")
    (work / "README.md").write_text("# gain network\n\nx * gain + 1e-3 u: the host-side benchmark's near-free model.\n")
    axis = {a: (s * 1000, v0_5.AxisId(a)) for a, s in zip("zyx", voxel, strict=True)}
    inputs = [v0_5.SpaceInputAxis(id=i, size=v0_5.ParameterizedSize(min=16, step=16), scale=s, unit="nanometer") for s, i in axis.values()]
    outputs = [v0_5.SpaceOutputAxis(id=i, size=v0_5.SizeReference(tensor_id=v0_5.TensorId("raw"), axis_id=i), scale=s, unit="nanometer")
               for s, i in axis.values()]
    zscore = v0_5.ZeroMeanUnitVarianceDescr(kwargs=v0_5.ZeroMeanUnitVarianceKwargs(axes=[i for _, i in axis.values()]))
    channel = lambda name: v0_5.ChannelAxis(channel_names=[v0_5.Identifier(name)])  # noqa: E731
    version = v0_5.Version(torch.__version__.split("+")[0])
    descr = v0_5.ModelDescr(
        name="gain network", description="x * gain + 1e-3 u (chunked_fnet's host-side benchmark)",
        authors=[v0_5.Author(name="chunked_fnet benchmarks")],
        cite=[v0_5.CiteEntry(text="chunked_fnet benchmarks", url="https://github.com/bioimage-io/spec-bioimage-io")],
        license=v0_5.LicenseId("MIT"), documentation=v0_5.FileDescr(source=work / "README.md"),
        inputs=[v0_5.InputTensorDescr(id=v0_5.TensorId("raw"), axes=[v0_5.BatchAxis(), channel("c"), *inputs],
                                      test_tensor=v0_5.FileDescr(source=work / "in.npy"), preprocessing=[zscore])],
        outputs=[v0_5.OutputTensorDescr(id=v0_5.TensorId("dna"), axes=[v0_5.BatchAxis(), channel("dna"), *outputs],
                                        test_tensor=v0_5.FileDescr(source=work / "out.npy"))],
        weights=v0_5.WeightsDescr(pytorch_state_dict=v0_5.PytorchStateDictWeightsDescr(
            source=work / "weights.pt", pytorch_version=version,
            architecture=v0_5.ArchitectureFromFileDescr(source=work / "gain_net.py", callable=v0_5.Identifier("Gain"), kwargs={}),
        )),
        config={"chunked_fnet": {"card": {"structure": "dna", "architecture": {"width": 1}}}},
    )
    save_bioimageio_package(descr, output_path=out)
    return out


def input_image(folder: Path, frames: int, shape: tuple[int, int, int] = SHAPE) -> str:
    """``frames`` x ``shape`` of ``chunked_fnet.synth`` at its defaults (uint16, chunks 32x256x256, zstd)."""
    from chunked_fnet.synth.dataset import SynthConfig, generate

    config = SynthConfig(size_t=frames, size_z=shape[0], size_y=shape[1], size_x=shape[2])
    path = folder / f"host_side_{frames}x{'x'.join(map(str, shape))}.zarr"
    marker = path.with_name(path.name + ".config.json")
    if not (path.exists() and marker.exists() and marker.read_text() == config.model_dump_json()):
        print(f"generating {path} ...", flush=True)
        generate(config, path, overwrite=True, progress=False)
        marker.write_text(config.model_dump_json())
    return str(path)


def values_digest(path: str) -> str:
    """SHA-256 of the output's decoded values (level 0), frame by frame: equal values, equal digest."""
    import numpy as np
    import zarr

    arr = zarr.open_group(path, mode="r")["0"]
    h = hashlib.sha256()
    for t in range(arr.shape[0]):
        h.update(np.ascontiguousarray(arr[t]).tobytes())
    return h.hexdigest()


#: Frames of the short run whose costs are taken from the measured run's: what is left is per frame, the run's
#: fixed costs (planning, loading the package, creating the output, the first frame's head and the last one's
#: tail) out, as they are spread over thousands of frames in a time-lapse at a GPU's rate.
SHORT_FRAMES = 2


def one_run(args: argparse.Namespace) -> dict:
    """In this process: one cluster of 1 worker x ``args.one`` threads, a warm-up frame, then a run of
    :data:`SHORT_FRAMES` frames and the measured run of ``args.frames``; each figure per frame is their
    difference over the frames between (the fixed costs of a run cancel), the totals of the long run kept too."""
    import dask
    import psutil
    from distributed import Client, LocalCluster

    from chunked_fnet.predict import PredictOptions, plan, predict

    data = Path(args.data)
    shape = tuple(args.shape)
    image = input_image(data, args.frames, shape)
    model = str(gain_package(data))
    out = tempfile.mkdtemp(prefix="host_side_", dir=args.data)
    profiled = "profile" in PredictOptions.model_fields  # an older package (--compare) has no profile: totals only
    options = PredictOptions(device="cpu", precision="fp32", **({"profile": True} if profiled else {}))
    me = psutil.Process()
    cpu = lambda: sum(me.cpu_times()[:2])  # noqa: E731
    start = cpu()
    plan(image, [model], f"{out}/unused.zarr", options)  # the statistics pass alone, in this (the client's) process
    stats_pass = cpu() - start
    frames, short = args.frames, min(SHORT_FRAMES, args.frames - 1)
    with dask.config.set(W.worker_environment(HEAPS[args.heap])):
        cluster = LocalCluster(n_workers=1, threads_per_worker=args.one, processes=True, host="127.0.0.1", dashboard_address=None,
                               scheduler_kwargs={"dashboard": False})
    with cluster, Client(cluster) as client:
        worker = lambda: next(iter(client.run(threads_cpu).values()))  # noqa: E731
        predict(image, [model], f"{out}/warm.zarr", options=options.model_copy(update={"time": (0, 1)}), client=client, progress=False)
        # What the cluster spends per second doing nothing (heartbeats, the system monitor, dask's sampling
        # profiler): a cost per second, not per frame, which a GPU's 16 frames/s spread 20x thinner than this CPU's.
        idle_before, idle_client = worker(), cpu()
        time.sleep(IDLE_S)
        idle_after = worker()
        idle_kinds = {k: (idle_after.get(k, 0.0) - idle_before.get(k, 0.0)) / IDLE_S for k in idle_after}
        idle_worker = idle_kinds["process"]
        idle_client = (cpu() - idle_client) / IDLE_S

        def measured(n: int, name: str) -> dict:
            before, c0, w0 = worker(), cpu(), time.perf_counter()
            # plan's statistics pass in this process, as with a ClusterSpec (a connected default client would take
            # it to the worker, mixing a second read of every frame into the worker's time); the run's tasks go to the cluster
            with dask.config.set(scheduler="threads"):
                _, summary = predict(image, [model], f"{out}/{name}.zarr", options=options.model_copy(update={"time": (0, n)}),
                                     client=client, progress=False)
            client_cpu, wall, after = cpu() - c0, time.perf_counter() - w0, worker()
            spent = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in ("task", "zarr", "codec", "main", "other", "process")}
            stages = {st: (summary.stages or {}).get(st, (0.0, 0.0))[0] for st in STAGES} if profiled else {}
            forward_wall = (summary.stages or {}).get("forward", (0.0, 0.0))[1] if profiled else 0.0
            return {"summary": summary, "spent": spent, "stages": stages, "client": client_cpu, "wall": wall, "seconds": summary.seconds,
                    "forward_wall": forward_wall}

        a, b = measured(short, "short"), measured(frames, "out")
    per = frames - short
    spent = {k: (b["spent"][k] - a["spent"][k]) / per for k in b["spent"]}
    stages = {st: (b["stages"][st] - a["stages"][st]) / per for st in STAGES} if profiled else {}
    if profiled:
        stages["task and device threads outside stages"] = max(0.0, spent["task"] - sum(stages.values()))
        stages["zarr I/O loop"], stages["zarr codec and file threads"] = spent["zarr"], spent["codec"]
        stages["event loop"], stages["other worker threads"] = spent["main"], spent["other"]
    summary = b["summary"]
    digest = values_digest(f"{out}/out.zarr") if args.digest else None
    shutil.rmtree(out, ignore_errors=True)
    seconds = b["seconds"] - a["seconds"]
    client_cpu, wall = (b["client"] - a["client"]) / per, (b["wall"] - a["wall"]) / per
    return {
        "threads": args.one, "frames": frames, "short_frames": short, "seconds": seconds, "fps": per / seconds, "stages": stages,
        "worker_cpu": spent["process"], "client_cpu": client_cpu, "stats_pass": stats_pass / frames,
        "wall_per_frame": wall, "idle_worker": idle_worker, "idle_client": idle_client,
        "idle_threads": {THREAD_ROWS[k]: v for k, v in idle_kinds.items() if k in THREAD_ROWS},
        # the short run less its frames' share: what a run costs once
        "fixed": {"worker_cpu": a["spent"]["process"] - short * spent["process"], "client_cpu": a["client"] - short * client_cpu,
                  "wall": a["wall"] - short * wall},
        "forward_wall": (b["forward_wall"] - a["forward_wall"]) / per if profiled else None,
        "window": list(summary.policy.window.patch_shape) if summary.policy else None, "chunks": summary.chunks, "digest": digest,
    }


def _subprocess(args: argparse.Namespace, threads: int, pythonpath: str | None, digest: bool, heap: str = "bounded") -> dict:
    """One run in a fresh interpreter (its own cluster), with ``PYTHONPATH=pythonpath`` first when given, its worker's
    heap as ``heap`` says (:data:`HEAPS`)."""
    env = dict(os.environ)
    bench = str(Path(__file__).resolve().parents[2])  # benchmarks/: the harness, importable whatever the package's checkout
    env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, bench, env.get("PYTHONPATH", "")) if p)
    cmd = [sys.executable, "-m", "suites.throughput.host_side", "--one", str(threads), "--frames", str(args.frames),
           "--shape", *map(str, args.shape), "--data", args.data, "--heap", heap, *(["--digest"] if digest else [])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False, cwd=bench)
    line = next((x for x in reversed(done.stdout.splitlines()) if x.startswith("{")), None)
    if done.returncode or line is None:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(line)


def projection(fps1: float, fps2: float, threads: int = GPU_THREADS) -> tuple[float, float]:
    """Frames/s at ``threads`` from the 1- and 2-thread rates (Amdahl: the parallel share ``p`` that the
    2-thread speed-up implies, the rest serial per frame or under the GIL), and that share."""
    s2 = fps2 / fps1
    p = min(1.0, max(0.0, 2.0 * (1.0 - 1.0 / s2)))
    return fps1 / ((1.0 - p) + p / threads), p


def host_cpu(run: dict) -> float:
    """Host CPU-s per frame: the worker process but the forward, plus the client's (statistics pass, scheduler)."""
    forward = run["stages"].get("forward", 0.0)
    return run["worker_cpu"] - forward + run["client_cpu"]


def background(run: dict) -> float:
    """CPU-s per second the idle cluster spends (worker and client processes), measured before the run."""
    return run["idle_worker"] + run["idle_client"]


def host_work(run: dict) -> float:
    """Host CPU-s per frame that scale with frames: :func:`host_cpu` less the idle background over the run's wall time."""
    return host_cpu(run) - background(run) * run["wall_per_frame"]


def _at_gpu_rate(run: dict, cpu_per_frame: float, idle_per_s: float) -> float:
    """``cpu_per_frame`` (measured at this CPU's frame rate, ``idle_per_s`` of it a cost per second) were the
    frames coming at the GPU's rate: that idle CPU over :data:`GPU_FRAME_S` instead of this CPU's frame time."""
    return cpu_per_frame - idle_per_s * run["wall_per_frame"] + idle_per_s * GPU_FRAME_S


def at_gpu_rate(run: dict) -> float:
    """Host CPU-s per frame were the frames coming at the GPU's rate (:func:`host_cpu`, its background rescaled)."""
    return _at_gpu_rate(run, host_cpu(run), background(run))


def worker_at_gpu_rate(run: dict) -> float:
    """:func:`at_gpu_rate` of the worker process alone: what its task threads, loops and codec threads must do per
    frame. The client and scheduler run in another process (on a cluster, on another node or cores, and shared by
    every GPU worker of the run)."""
    return _at_gpu_rate(run, run["worker_cpu"] - run["stages"].get("forward", 0.0), run["idle_worker"])


#: The worker's threads that are one thread each: each must itself keep to the GPU's frame time, however many task threads.
SINGLE_THREADS = ("zarr I/O loop", "event loop")


def loop_at_gpu_rate(run: dict, row: str) -> float:
    """One of :data:`SINGLE_THREADS`' CPU-s per frame at the GPU's rate, with its own idle CPU per second (measured
    before the run) rescaled."""
    return _at_gpu_rate(run, run["stages"].get(row, float("nan")), run.get("idle_threads", {}).get(row, 0.0))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--shape", nargs=3, type=int, default=SHAPE, help="z y x of a frame (the question's is 64 512 512)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--compare", default=None, help="an older checkout (its repository root) to run interleaved, as PYTHONPATH")
    parser.add_argument("--heap", nargs="+", choices=tuple(HEAPS), default=["bounded"],
                        help="the worker's heap: bounded (predict's default: freed arrays returned to the system after every task) "
                        "and/or reuse (an environment that keeps freed memory: W.REUSE_FREED_MEMORY); several: interleaved, outputs compared")
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--digest", action="store_true", help=argparse.SUPPRESS)
    W.add_data_args(parser)
    args = parser.parse_args(argv)
    if args.one is not None:
        args.heap = args.heap[0]
        print(json.dumps(one_run(args), default=float), flush=True)
        return
    if args.compare and len(args.heap) > 1:
        parser.error("--compare runs old and new with one --heap")
    Path(args.data).mkdir(parents=True, exist_ok=True)
    input_image(Path(args.data), args.frames, tuple(args.shape))  # generated once, before any timing
    gain_package(Path(args.data))
    if args.compare:
        versions = {"old": (str(Path(args.compare).resolve()), args.heap[0]), "new": (str(R.ROOT), args.heap[0])}
    elif len(args.heap) > 1:
        versions = {heap: (str(R.ROOT), heap) for heap in args.heap}
    else:
        versions = {"new": (str(R.ROOT), args.heap[0])}
    first = next(iter(versions))
    runs: dict[tuple[str, int], list[dict]] = collections.defaultdict(list)
    for rep in range(args.reps):
        for threads in args.threads:
            for name, (path, heap) in versions.items():
                run = _subprocess(args, threads, path, digest=rep == 0 and threads == args.threads[0], heap=heap)
                runs[(name, threads)].append(run)
                print(f"rep {rep + 1} {name} {threads} thread(s): {run['fps']:.3f} frames/s, host {host_cpu(run):.3f} CPU-s/frame "
                      f"(forward {run['stages'].get('forward', float('nan')):.3f})", flush=True)
    digests = {name: runs[(name, args.threads[0])][0]["digest"] for name in versions}
    med = lambda name, t, f: T.median([f(r) for r in runs[(name, t)]])  # noqa: E731
    print(f"\n{M.machine()}; {M.load_note()}")
    print(f"{args.frames} frames of {'x'.join(map(str, args.shape))}, window {runs[(first, args.threads[0])][0]['window']}, "
          f"1 worker; medians of {args.reps}; per frame")
    print(f"{'stage (CPU-s per frame)':28s}" + "".join(f"{f'{n} {t}t':>10s}" for n in versions for t in args.threads))
    nan = float("nan")
    for stage in ORDER:
        print(f"{stage:28s}" + "".join(f"{med(n, t, lambda r: r['stages'].get(stage, nan)):10.3f}" for n in versions for t in args.threads))
    for label, f in (("client (stats pass, sched.)", lambda r: r["client_cpu"]), ("plan() alone, apart from the run", lambda r: r["stats_pass"]),
                     ("host total (no forward)", host_cpu), ("idle background CPU-s/s", background),
                     ("host per-frame work", host_work), (f"host at {GPU_FRAME_S * 1e3:.0f} ms/frame", at_gpu_rate),
                     (f"worker at {GPU_FRAME_S * 1e3:.0f} ms/frame", worker_at_gpu_rate),
                     ("worker process total", lambda r: r["worker_cpu"]),
                     *((f"{t} at {GPU_FRAME_S * 1e3:.0f} ms/frame", lambda r, t=t: loop_at_gpu_rate(r, t)) for t in SINGLE_THREADS),
                     ("fixed per run: worker", lambda r: r["fixed"]["worker_cpu"]), ("fixed per run: client", lambda r: r["fixed"]["client_cpu"]),
                     ("frames/s", lambda r: r["fps"])):
        print(f"{label:28s}" + "".join(f"{med(n, t, f):10.3f}" for n in versions for t in args.threads))
    cells = {}
    for name in versions:
        if 1 in args.threads and 2 in args.threads:
            fps1, fps2 = med(name, 1, lambda r: r["fps"]), med(name, 2, lambda r: r["fps"])
            fps8, p = projection(fps1, fps2)
            host, gpu_rate, worker_rate = med(name, 1, host_cpu), med(name, 1, at_gpu_rate), med(name, 1, worker_at_gpu_rate)
            loops = "; ".join(f"{t} {med(name, 1, lambda r: loop_at_gpu_rate(r, t)):.3f}" for t in SINGLE_THREADS)
            cells[name] = (fps1, fps2, fps8, p, host, gpu_rate, worker_rate, loops)
            print(f"{name}: 2-thread speed-up {fps2 / fps1:.2f} -> parallel share {p:.2f}; projected {GPU_THREADS} threads: "
                  f"{fps8:.2f} frames/s = {1 / fps8 * 1e3:.0f} ms per frame against the GPU's {GPU_FRAME_S * 1e3:.0f} ms "
                  f"(host CPU {host:.3f} s/frame here, {gpu_rate:.3f} at the GPU's rate, against {GPU_THREADS * GPU_FRAME_S:.2f} s on "
                  f"{GPU_THREADS} threads)")
    if len(versions) > 1:
        print(f"outputs bit-identical between {' and '.join(versions)}: {len(set(digests.values())) == 1} ({digests})")
    if args.no_save or not cells:
        return
    for name, (fps1, fps2, fps8, p, host, gpu_rate, worker_rate, loops) in cells.items():
        stages = "; ".join(f"{s} {med(name, 1, lambda r: r['stages'].get(s, nan)):.3f}" for s in ORDER)
        print(R.save_row(SUITE, SECTION, COLUMNS, [
            R.today(), f"{args.frames} x {'x'.join(map(str, args.shape))}, 1 model (x*gain+u, u drawn once), defaults, 1 worker; "
            f"per frame: the run less a {SHORT_FRAMES}-frame run's", name, stages,
            f"{host:.3f}", f"{gpu_rate:.3f} (idle background {med(name, 1, background):.3f} CPU-s/s); the worker process alone {worker_rate:.3f}; "
            f"its one-thread loops (each against {GPU_FRAME_S:.3f}): {loops}", f"{fps1:.2f}", f"{fps2:.2f}", f"{fps8:.2f} frames/s (parallel share {p:.2f} from 2 threads)",
            commit(args.compare if name == "old" else R.ROOT), R.command_line(), M.machine(),
        ], figures={"host_cpu_s_per_frame": host, "host_cpu_s_per_frame_at_gpu_rate": gpu_rate, "worker_cpu_s_per_frame_at_gpu_rate": worker_rate, "fps_1_thread": fps1, "fps_2_threads": fps2, "fps_8_threads_projected": fps8,
                    **{f"stage_{s.replace(' ', '_')}_cpu_s": med(name, 1, lambda r: r["stages"].get(s, nan)) for s in ORDER}},
           params={"frames": args.frames, "shape": list(args.shape), "threads": args.threads, "reps": args.reps, "version": name,
                   "heap": versions[name][1]}))


def commit(checkout: str | Path) -> str:
    """The short commit of the checkout whose package ran (``+ changes`` when its tree is not clean)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD")
    return f"{head}{' + changes' if git('status', '--porcelain', '--untracked-files=no') else ''}" if head else "unknown"


if __name__ == "__main__":
    main()
