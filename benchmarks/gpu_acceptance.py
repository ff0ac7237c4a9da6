"""GPU acceptance: the product's GPU path, end to end on one GPU, under 8 minutes including start-up (issue 29 item 2).

    bash benchmarks/gpu_acceptance.sh [OUT_DIR] [arguments of this script]      # imports checked first, then this
    python benchmarks/gpu_acceptance.py --out OUT_DIR [--device cpu --tiny]     # --tiny: the CPU dry run CI runs

A GPU is lent to this project rarely and for minutes, so the run is built not to waste them:

- **Sections in the order of what matters most**, each under a hard time bound (``BOUNDS``, ``--bound
  NAME=SECONDS``): a section that runs over is stopped (SIGALRM), recorded as ``timed out`` with what it
  had measured, and the next one starts. A watchdog thread ends the whole process (results kept) if the
  total ``--budget`` is passed by more than ``WATCHDOG_GRACE`` seconds, whatever is blocking.
- ``results.json`` in OUT_DIR is written when each section ends (and after each measurement within one),
  so a run cut short still leaves every figure it had.
- Timers hold only what they measure: inputs, models and outputs are made outside them, and predict's time
  is its run summary's ``seconds``: the execution of the tasks (and pyramids), not planning (statistics),
  the cluster's facts or creating the output.

Sections:

1. ``1_timelapse``: ``predict()`` at the product's defaults (patch auto, precision auto) over a ``--frames``
   (>= 32) time-lapse of ``--frame`` frames on a dask-cuda ``LocalCUDACluster``, against the bare forward
   over whole frames one after the other (the run's precision and predict's memory layout: channels_last_3d
   where :func:`~chunked_fnet.sliding_window.runner.default_channels_last` says so) and MONAI's
   ``sliding_window_inference`` at its common settings (roi 32x64x64, overlap 0.25, gaussian, sw_batch_size
   4; over ``--monai-frames`` frames: its rate per voxel does not depend on how many), interleaved rounds
   after one untimed warm-up frame. Targets: predict >= 0.75x bare and >= 2x MONAI in bf16.
2. ``2_equal_to_cpu``: predict on the GPU against predict on a CPU ``LocalCluster`` of the same host, same
   input and explicit window: a seeded paper U-Net in fp32 (max |GPU - CPU| <= 1e-4) and, with
   ``--trained``, that model in fp32 and bf16 (bf16 against the CPU's own bf16 bound).
3. ``3_device_rates``: bf16 matmul (the reference), then the bare forward over a whole frame in fp32 (TF32
   off), bf16 NCDHW, bf16 channels_last_3d, and ``torch.compile`` of predict's bf16 variant: model FLOP/s
   as a fraction of the matmul rate (target: >= 40 %).
4. ``4_projection``: a ``--structures``-model ensemble predicted over frames of ``--big-frame``; the time of
   13 structures x 100 such frames projected from the measured time per frame.
5. ``5_memory``: the device's memory, the policy's estimate for the auto patch against the measured peak of
   one forward pass of it, and every section's measured peaks.
6. ``6_training``: the paper's settings (batch 24, 32x64x64) with ``train()`` in bf16 and fp32 and
   pytorch_fnet's loop rebuilt (``harness.peers``; ``benchmarks/run.py training speed`` measures the same on a CPU):
   seconds per iteration, hours for 50,000.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from harness.timing import best_time as harness_best_time  # noqa: E402  (the benchmarks' synchronised best-of timer)

#: seconds each section may take on one H100/H200 (their sum and ~30 s of start-up stay under 8 minutes)
BOUNDS = {"1_timelapse": 160, "2_equal_to_cpu": 75, "3_device_rates": 70, "4_projection": 75, "5_memory": 15, "6_training": 40}
#: the whole process is ended this long after --budget, whatever it is doing (results.json is written first)
WATCHDOG_GRACE = 20.0
#: --tiny: the CPU dry run's sizes (every section runs, in seconds, on 2 cores)
TINY = {"frame": (16, 32, 32), "frames": 32, "monai_frames": 2, "equal_frame": (16, 64, 64), "big_frame": (16, 64, 64),
        "structures": 3, "arch": "tiny", "train_iterations": 3, "rounds": 1, "compile_backend": "eager"}
T0 = time.perf_counter()


def elapsed() -> float:
    return time.perf_counter() - T0


class SectionTimeout(BaseException):
    """A section ran past its bound (raised by SIGALRM in the main thread). A BaseException, like
    KeyboardInterrupt, so that no library's ``except Exception`` swallows it and runs on."""


@dataclass
class Run:
    """What the sections share: the arguments, the device, the seeded paper U-Net, the results so far."""

    args: argparse.Namespace
    out: Path
    data: Path
    results: dict[str, Any] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)  # measured by one section, used by a later one

    @property
    def cuda(self) -> bool:
        return self.args.device.startswith("cuda")

    def save(self) -> None:
        tmp = self.out / "results.json.tmp"
        tmp.write_text(json.dumps(self.results, indent=1, default=str))
        tmp.replace(self.out / "results.json")


@dataclass
class Alarm:
    fired: bool = False


@contextlib.contextmanager
def bounded(seconds: float, name: str) -> Iterator[Alarm]:
    """Raise :class:`SectionTimeout` in this (main) thread after ``seconds``: Python code, dask waits and
    lock acquisitions are interrupted; a running CUDA kernel or compile step finishes first (the watchdog
    covers what never returns). ``fired`` tells a timeout apart from an error where a library wraps the
    exception it was interrupted by (torch.compile does)."""
    alarm_state = Alarm()

    def alarm(signum: int, frame: object) -> None:
        alarm_state.fired = True
        raise SectionTimeout(f"{name} ran past its bound of {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
    try:
        yield alarm_state
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def run_section(run: Run, name: str, body: Callable[[Run, dict], None]) -> None:
    """``body(run, entry)`` under its bound, trimmed to what is left of the budget; its failure or timeout
    is recorded and the next section runs."""
    if name.split("_")[0] in run.args.skip or name in run.args.skip:
        run.results[name] = {"skipped": "--skip"}
        run.save()
        return
    bound = min(run.args.bounds[name], run.args.budget - elapsed())
    if bound < 1:
        run.results[name] = {"skipped": f"{run.args.budget - elapsed():.0f} s left of the {run.args.budget:.0f} s budget"}
        print(f"== {name}: skipped (budget spent)", flush=True)
        run.save()
        return
    print(f"== {name} (t = {elapsed():.0f} s, bound {bound:.0f} s)", flush=True)
    entry: dict[str, Any] = {"bound_seconds": round(bound, 1)}
    run.results[name] = entry
    start = time.perf_counter()
    alarm = Alarm()
    try:
        with bounded(bound, name) as alarm:
            body(run, entry)
    except (Exception, SectionTimeout) as exc:  # a timeout or an error: recorded, and the next section runs
        if alarm.fired:
            entry["timed_out"] = f"{name} ran past its bound of {bound:.0f} s"
            print(f"  TIMED OUT: {entry['timed_out']}", flush=True)
        else:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc()[-3000:]
            print(entry["traceback"], flush=True)
    finally:
        _free_device()
    entry["seconds"] = round(time.perf_counter() - start, 1)
    run.save()


def start_watchdog(run: Run) -> None:
    """End the process ``WATCHDOG_GRACE`` s after the budget, whatever blocks the main thread."""

    def watch() -> None:
        while elapsed() < run.args.budget + WATCHDOG_GRACE:
            time.sleep(1.0)
        run.results["watchdog"] = f"the process was ended at {elapsed():.0f} s (budget {run.args.budget:.0f} s)"
        run.save()
        print(f"WATCHDOG: {run.results['watchdog']}", flush=True)
        os._exit(4)

    threading.Thread(target=watch, daemon=True, name="acceptance-watchdog").start()


# ---------------------------------------------------------------------------------------- helpers
def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _free_device() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _reset_peak() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else C.peak_rss_mib() / 1024


def best_time(fn: Callable[[], object], reps: int, warm: int = 1) -> float:
    """Best of ``reps`` synchronised wall times of ``fn()`` after ``warm`` untimed calls (``harness.timing.best_time``)."""
    return harness_best_time(fn, reps, warm, _sync)


class Utilisation:
    """GPU utilisation (%) sampled every 50 ms through NVML while active (nothing on a CPU)."""

    def __init__(self) -> None:
        self.samples: list[int] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handle, self._nvml = pynvml.nvmlDeviceGetHandleByIndex(0), pynvml
        except Exception:  # no NVML: a CPU dry run
            self._nvml = None

    def __enter__(self) -> Utilisation:
        self.samples, self._stop = [], threading.Event()
        if self._nvml is not None:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._nvml is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.samples)) if self.samples else None


def timelapse(path: Path, frames: int, shape: tuple[int, int, int], data: Path) -> str:
    """A ``frames`` x ``shape`` uint16 bright-field time-lapse: one synthetic frame (chunked_fnet.synth) of
    shape's z and at most 512 in y/x, tiled over y/x and rolled by a few voxels per frame (fast to make; the
    model's cost does not depend on the content)."""
    import zarr

    from chunked_fnet.io.reader import open_image, select_channels
    from chunked_fnet.io.writer import create_image, write_region

    if path.exists():
        return str(path)
    base_shape = (shape[0], min(512, shape[1]), min(512, shape[2]))
    base = select_channels(open_image(C.bench_input(data, 1, base_shape)), "brightfield").isel(t=0).values.astype(np.float32)
    base = np.clip((base - base.min()) / max(1e-9, float(np.ptp(base))) * 60000, 0, 65535).astype(np.uint16)
    reps = (1, math.ceil(shape[1] / base_shape[1]), math.ceil(shape[2] / base_shape[2]))
    tiled = np.tile(base, reps)[: shape[0], : shape[1], : shape[2]]
    chunks = (1, 1, min(64, shape[0]), min(256, shape[1]), min(256, shape[2]))
    create_image(path, shape=(frames, 1, *shape), chunks=chunks, dtype=tiled.dtype,
                 scale={"t": 1.0, "c": 1.0, "z": 0.29, "y": 0.29, "x": 0.29}, channel_names=["brightfield"])
    group = zarr.open_group(str(path), mode="r+")
    for t in range(frames):
        write_region(group, (slice(t, t + 1), slice(None), slice(None), slice(None), slice(None)), np.roll(tiled, 7 * t, axis=2)[None, None])
    return str(path)


def zscored_frame(image: str, t: int = 0) -> np.ndarray:
    from chunked_fnet.io.reader import open_image, select_channels

    bf = select_channels(open_image(image), "brightfield").isel(t=t).values.astype(np.float32)
    return (bf - bf.mean()) / bf.std()


def read_output(path: str) -> np.ndarray:
    import zarr

    return zarr.open_group(path, mode="r")["0"][:]


def run_record(path: str) -> dict:
    return json.loads((Path(path) / ".chunked_fnet" / "run.json").read_text())


def compare(ref: np.ndarray, other: np.ndarray, margin: int = 16) -> dict:
    """Differences over the whole output and its interior (``margin`` voxels in from the y/x edges)."""
    from chunked_fnet.evaluate.metrics import pearson_r

    diff = np.abs(other.astype(np.float64) - ref)
    inner = diff[..., margin:-margin, margin:-margin]
    return {"max_abs_diff": float(diff.max()), "max_diff_over_std": float(diff.max() / ref.std()),
            "interior_max_diff_over_std": float(inner.max() / ref.std()) if inner.size else None,
            "pearson_r": float(pearson_r(ref.ravel(), other.ravel())), "ref_std": float(ref.std())}


def autocast(device: Any, precision: str) -> contextlib.AbstractContextManager:
    import torch

    from chunked_fnet.device import autocast_dtype

    dtype = autocast_dtype(precision, device)
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()


def bare_model(checkpoint: str, device: Any, precision: str) -> tuple[Any, bool]:
    """The model as predict runs it (inference copy, eval, on the device) in predict's memory layout for
    ``precision`` (:func:`default_channels_last`, the package's one rule), and that layout."""
    import torch

    from chunked_fnet.device import autocast_dtype
    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.sliding_window.runner import default_channels_last

    channels_last = default_channels_last(device, autocast_dtype(precision, device))
    model = load_checkpoint(checkpoint)[0].inference_copy().eval().to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
    return model, channels_last


def predict_timed(image: str, models: list[str], path: str, options: Any, client: Any) -> tuple[float, float, dict]:
    """predict() once: its execution seconds (the summary's: tasks and pyramids, not planning or output
    creation), the whole call's seconds, and its run record."""
    from chunked_fnet.predict import predict

    start = time.perf_counter()
    _, summary = predict(image, models, path, options=options, client=client, progress=False)
    return summary.seconds, time.perf_counter() - start, run_record(path)


def predict_options(run: Run, **extra: Any) -> Any:
    from chunked_fnet.predict import PredictOptions

    return PredictOptions(device=run.args.device, **extra)


def cluster_spec(run: Run) -> Any:
    from chunked_fnet.cluster import ClusterSpec

    return ClusterSpec(kind="cuda") if run.cuda else ClusterSpec(kind="local", n_workers=1, threads_per_worker=2)


# ---------------------------------------------------------------------------------------- sections
def section_timelapse(run: Run, entry: dict) -> None:
    import torch
    from distributed import Client  # noqa: F401  (the cluster's client type, for readers)

    from chunked_fnet.cluster import local_client

    args, device = run.args, torch.device(run.args.device)
    frame, frames = tuple(args.frame), args.frames
    voxels = C.prod(frame)
    start = time.perf_counter()
    image = timelapse(run.data / f"timelapse_{frames}x{'x'.join(map(str, frame))}.zarr", frames, frame, run.data)
    entry.update(frames=frames, frame=frame, input_seconds=round(time.perf_counter() - start, 1))
    util = Utilisation()
    rates: dict[str, list[float]] = {}
    with local_client(cluster_spec(run)) as client:
        entry["cluster"] = {a: w["nthreads"] for a, w in client.scheduler_info()["workers"].items()}
        warm = str(run.data / "tl_warm.zarr")  # untimed: the workers load the model, cuDNN picks its kernels for the patch
        _, warm_seconds, record = predict_timed(image, [run.facts["model"]], warm, predict_options(run, time=(0, 1)), client)
        precision = record["precision"]["chosen"]
        run.facts.update(window=record["window"], precision=precision)
        entry.update(window=record["window"], precision=record["precision"], warm_up_seconds=round(warm_seconds, 1))
        shutil.rmtree(warm, ignore_errors=True)
        model, channels_last = bare_model(run.facts["model"], device, precision)
        entry["bare_layout"] = "channels_last_3d" if channels_last else "NCDHW"
        x = torch.from_numpy(zscored_frame(image))[None, None].to(device)
        x = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
        plain = None
        try:
            from monai.inferers import sliding_window_inference

            from chunked_fnet.model import load_checkpoint

            plain = load_checkpoint(run.facts["model"])[0].eval().to(device)  # what a MONAI user runs
        except ImportError as exc:
            entry["monai"] = f"not measured: {exc} (pip install monai)"
        monai_frames = min(frames, args.monai_frames)
        for rnd in range(args.rounds):
            path = str(run.data / f"tl_{rnd}.zarr")
            client.run(_reset_peak)
            with util:
                seconds, whole, _ = predict_timed(image, [run.facts["model"]], path, predict_options(run), client)
            shutil.rmtree(path, ignore_errors=True)
            rates.setdefault("predict", []).append(frames * voxels / seconds / 1e6)
            entry.setdefault("predict_rounds", []).append({"execute_seconds": round(seconds, 2), "call_seconds": round(whole, 2),
                                                           "gpu_util_mean_pct": util.mean,
                                                           "worker_peak_GiB": max(client.run(_peak_gib).values())})

            def bare() -> None:
                with torch.inference_mode(), autocast(device, precision):
                    for _ in range(frames):  # frame after frame, as a time-lapse comes
                        model(x)

            rates.setdefault("bare", []).append(frames * voxels / best_time(bare, 1, warm=1 if rnd == 0 else 0) / 1e6)
            if plain is not None:
                def monai() -> None:
                    with torch.inference_mode(), autocast(device, precision):
                        for _ in range(monai_frames):
                            sliding_window_inference(x.contiguous(), roi_size=(32, 64, 64), sw_batch_size=4, predictor=plain,
                                                     overlap=0.25, mode="gaussian")

                rates.setdefault("monai", []).append(monai_frames * voxels / best_time(monai, 1, warm=1 if rnd == 0 else 0) / 1e6)
            entry["M_vox_s"] = {k: {"median": C.median(v), "all": v} for k, v in rates.items()}
            print(f"  round {rnd + 1}: " + ", ".join(f"{k} {v[-1]:.2f} M vox/s" for k, v in rates.items()), flush=True)
            _ratios(entry, rates)
            run.save()
    run.facts["worker_peak_GiB"] = max(r["worker_peak_GiB"] for r in entry.get("predict_rounds", [{"worker_peak_GiB": 0}]))


def _ratios(entry: dict, rates: dict[str, list[float]]) -> None:
    med = {k: C.median(v) for k, v in rates.items()}
    ratios = {f"predict/{k}": med["predict"] / v for k, v in med.items() if k != "predict" and "predict" in med}
    targets = {"predict/bare": 0.75, "predict/monai": 2.0}
    entry["ratios"] = {k: {"value": v, "target": targets[k], "pass": v >= targets[k]} for k, v in ratios.items()}
    print("  ratios: " + ", ".join(f"{k} {v['value']:.2f} (target {v['target']})" for k, v in entry["ratios"].items()), flush=True)


def section_equal(run: Run, entry: dict) -> None:
    from chunked_fnet.cluster import ClusterSpec, local_client
    from chunked_fnet.predict import PredictOptions, predict
    from chunked_fnet.predict.policy import REDUCED_MAX_OVER_STD, REDUCED_MIN_R

    args = run.args
    eq_frame = tuple(args.equal_frame)
    image = C.bench_input(run.data, 1, eq_frame)
    cases = [("seeded paper U-Net", run.facts["model"], image, ("fp32",))]
    if args.trained:
        cases.append(("trained " + Path(args.trained[0]).stem, args.trained[0], args.trained[1], ("fp32", "bf16")))
    # an explicit window, the same on both sides: the whole z-depth (a patch deeper than the frame is fitted to
    # it) and a y/x patch of half the frame (at least 64), with the models' whole overlap in y/x, none in z
    yx = max(64, eq_frame[1] // 2)
    window = {"patch_shape": (16 * 32, yx, yx), "overlap": 0.75 if yx <= 64 else 96}
    cpu: dict[str, str] = {}
    cpu_bf16: dict | None = None
    with local_client(ClusterSpec(kind="local", n_workers=min(4, max(1, C.cores() // 4)), threads_per_worker=min(4, C.cores()))) as client:
        for name, ckpt, img, precisions in cases:
            path = cpu[name] = str(run.data / f"eq_cpu_{len(cpu)}.zarr")
            predict(img, [ckpt], path, options=PredictOptions(device="cpu", precision="fp32", **window), client=client, progress=False)
            if "bf16" in precisions:
                predict(img, [ckpt], path + ".bf16", options=PredictOptions(device="cpu", precision="bf16", **window), client=client, progress=False)
                cpu_bf16 = entry[f"{name}, CPU bf16 vs CPU fp32"] = compare(read_output(path).astype(np.float64), read_output(path + ".bf16"))
    with local_client(cluster_spec(run)) as client:
        for name, ckpt, img, precisions in cases:
            ref = read_output(cpu[name]).astype(np.float64)
            for precision in precisions:
                path = str(run.data / f"eq_dev_{len(entry)}_{precision}.zarr")
                predict(img, [ckpt], path, options=PredictOptions(device=args.device, precision=precision, **window), client=client, progress=False)
                row = compare(ref, read_output(path))
                if precision == "fp32":
                    row["pass"] = row["max_abs_diff"] <= 1e-4
                    row["bound"] = "max |device - CPU| <= 1e-4"
                else:
                    # the run's own bound (policy.py, the one a run in bf16 is refused outside), and beside it
                    # the device's difference against the CPU's own bf16 difference on the same image
                    row["pass"] = row["pearson_r"] >= REDUCED_MIN_R and row["max_diff_over_std"] <= REDUCED_MAX_OVER_STD
                    row["bound"] = f"r >= {REDUCED_MIN_R}, max <= {REDUCED_MAX_OVER_STD} std (policy.REDUCED_MIN_R, REDUCED_MAX_OVER_STD)"
                    if cpu_bf16 and cpu_bf16.get("max_diff_over_std"):
                        row["max_over_cpu_bf16_max"] = row["max_diff_over_std"] / cpu_bf16["max_diff_over_std"]
                entry[f"{name}, {precision}"] = row
                print(f"  {name}, {precision}: max {row['max_abs_diff']:.2e}, r {row['pearson_r']:.7f}, {'pass' if row['pass'] else 'FAIL'}", flush=True)
                run.save()


def section_rates(run: Run, entry: dict) -> None:
    import torch

    args, device = run.args, torch.device(run.args.device)
    frame = tuple(args.frame)
    voxels = C.prod(frame)
    n = 8192 if run.cuda else 1024
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    matmul = 2 * n**3 / best_time(lambda: torch.matmul(a, b), 5, warm=3) / 1e12
    a = b = None  # freed before the model runs
    entry["bf16_matmul_TFLOPs"] = matmul
    print(f"  bf16 matmul {n}^3: {matmul:.2f} TFLOP/s", flush=True)
    flops = run.facts["flops"]
    x = torch.randn(1, 1, *frame, device=device)
    variants: dict[str, dict] = {}
    entry["bare_forward_whole_frame"] = variants

    def measure(label: str, model: Any, inp: Any, precision: str, reps: int = 3, warm: int = 2) -> float:
        def step() -> None:
            with torch.inference_mode(), autocast(device, precision):
                model(inp)

        _reset_peak()
        seconds = best_time(step, reps, warm=warm)
        tflops = flops * voxels / seconds / 1e12
        variants[label] = {"seconds": seconds, "M_vox_s": voxels / seconds / 1e6, "TFLOPs": tflops,
                           "fraction_of_bf16_matmul": tflops / matmul, "peak_GiB": _peak_gib()}
        print(f"  {label:<28} {voxels / seconds / 1e6:9.2f} M vox/s {tflops:8.3f} TFLOP/s = {100 * tflops / matmul:5.1f} % of bf16 matmul", flush=True)
        run.save()
        return seconds

    from chunked_fnet.model import load_checkpoint

    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = False
    plain = load_checkpoint(run.facts["model"])[0].inference_copy().eval().to(device)
    measure("fp32 NCDHW", plain, x, "fp32")
    measure("bf16 NCDHW", plain, x, "bf16")
    cl_model = plain.to(memory_format=torch.channels_last_3d)
    x_cl = x.contiguous(memory_format=torch.channels_last_3d)
    eager = measure("bf16 channels_last_3d", cl_model, x_cl, "bf16")
    start = time.perf_counter()
    compiled = torch.compile(cl_model, backend=args.compile_backend)
    entry["compile_backend"] = args.compile_backend
    with torch.inference_mode(), autocast(device, "bf16"):
        compiled(x_cl)
    _sync()
    entry["compile_seconds"] = round(time.perf_counter() - start, 1)
    seconds = measure(f"bf16 channels_last_3d, torch.compile ({args.compile_backend})", compiled, x_cl, "bf16", warm=1)
    entry["compile_speedup_over_eager"] = eager / seconds
    best = max(v["fraction_of_bf16_matmul"] for v in variants.values())
    entry["best_fraction_of_bf16_matmul"] = {"value": best, "target": 0.40, "pass": best >= 0.40}


def section_projection(run: Run, entry: dict) -> None:
    from chunked_fnet.cluster import local_client

    args = run.args
    big, n_frames = tuple(args.big_frame), 2
    image = timelapse(run.data / f"big_{n_frames}x{'x'.join(map(str, big))}.zarr", n_frames, big, run.data)
    models = C.make_checkpoints(run.data / "ensemble", args.arch, args.structures)
    util = Utilisation()
    with local_client(cluster_spec(run)) as client:
        client.run(_reset_peak)
        path = str(run.data / "projection.zarr")
        with util:
            seconds, whole, record = predict_timed(image, models, path, predict_options(run), client)
        entry["worker_peak_GiB"] = run.facts["projection_peak_GiB"] = max(client.run(_peak_gib).values())
    shutil.rmtree(path, ignore_errors=True)
    per_frame = seconds / n_frames
    voxels = args.structures * n_frames * C.prod(big)
    entry.update(structures=args.structures, frames=n_frames, frame=big, execute_seconds=seconds, call_seconds=whole,
                 window=record["window"], precision=record["precision"], gpu_util_mean_pct=util.mean,
                 M_structure_vox_s=voxels / seconds / 1e6, achieved_TFLOPs=run.facts["flops"] * voxels / seconds / 1e12,
                 projected_hours_13x100=per_frame * 100 * 13 / args.structures / 3600)
    print(f"  {args.structures} structures x {n_frames} x {big}: {seconds:.1f} s; 13 x 100 frames: {entry['projected_hours_13x100']:.2f} h", flush=True)


def section_memory(run: Run, entry: dict) -> None:
    import torch

    from chunked_fnet.device import device_memory
    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.predict.policy import PATCH_MEMORY_FRACTION, patch_bytes

    device = torch.device(run.args.device)
    name, total = device_memory(device)
    entry.update(device=name, total_GiB=total / 2**30, patch_budget_GiB=PATCH_MEMORY_FRACTION * total / 2**30,
                 worker_peak_GiB={"1_timelapse": run.facts.get("worker_peak_GiB"), "4_projection": run.facts.get("projection_peak_GiB")})
    window = run.facts.get("window")
    if window is None:
        entry["patch"] = "not measured: section 1 did not choose a window"
        return
    precision = run.facts.get("precision", "bf16")
    model, channels_last = bare_model(run.facts["model"], device, precision)
    patch = tuple(window["patch"])
    x = torch.randn(1, 1, *patch, device=device)
    x = x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
    _free_device()
    _reset_peak()
    before = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    with torch.inference_mode(), autocast(device, precision):
        model(x)
    _sync()
    peak = (torch.cuda.max_memory_allocated() - before) if torch.cuda.is_available() else None
    width = load_checkpoint(run.facts["model"])[1].architecture.width
    estimate = patch_bytes(patch, width, 1)
    entry["auto_patch"] = {"patch": list(patch), "precision": precision, "estimate_GiB": estimate / 2**30,
                           "measured_peak_GiB": None if peak is None else peak / 2**30,
                           "measured_over_estimate": None if peak is None else peak / estimate}


def section_training(run: Run, entry: dict) -> None:
    from harness.peers import PAPER_TRAINING, run_pytorch_fnet_training
    from harness.workloads import TINY_TRAINING, paired_data, run_chunked_fnet_training

    args = run.args
    settings = TINY_TRAINING if args.tiny else PAPER_TRAINING
    tdata = paired_data(run.data / "train", fovs=3, shape=(32, 96, 96) if args.tiny else (40, 256, 256))
    n = args.train_iterations
    entry["settings"] = settings
    runs = {
        "chunked_fnet_bf16": lambda: run_chunked_fnet_training(tdata, n, args.device, "bf16", run.data / "train" / "bf16", settings=settings),
        "chunked_fnet_fp32": lambda: run_chunked_fnet_training(tdata, max(3, n // 2), args.device, "fp32", run.data / "train" / "fp32",
                                                               settings=settings),
        "pytorch_fnet": lambda: run_pytorch_fnet_training(tdata, max(3, n // 2), args.device, settings=settings),
    }
    for name, train in runs.items():
        _reset_peak()
        result = train()
        entry[name] = {"iteration_s": result["iteration_s"], "projected_hours_50k": 50_000 * result["iteration_s"] / 3600,
                       "data_wait": result.get("data_wait"), "peak_GiB": _peak_gib()}
        print(f"  train {name}: {result['iteration_s']:.4f} s/it, 50,000 it in {entry[name]['projected_hours_50k']:.2f} h", flush=True)
        run.save()


SECTIONS: dict[str, Callable[[Run, dict], None]] = {
    "1_timelapse": section_timelapse, "2_equal_to_cpu": section_equal, "3_device_rates": section_rates,
    "4_projection": section_projection, "5_memory": section_memory, "6_training": section_training,
}
assert list(SECTIONS) == list(BOUNDS)


# ---------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_acceptance_out")
    parser.add_argument("--device", default="cuda", help="cuda; cpu for a dry run of the script itself on a machine without a GPU")
    parser.add_argument("--tiny", action="store_true", help="the dry run's sizes (TINY): every section in seconds")
    parser.add_argument("--budget", type=float, default=None, help="seconds for the whole run (default: the sum of the bounds)")
    parser.add_argument("--bound", action="append", default=[], metavar="NAME=SECONDS", help="a section's bound, e.g. 4_projection=30")
    parser.add_argument("--frame", nargs=3, type=int, default=(64, 512, 512), help="frame of sections 1, 3 and 5 (z y x)")
    parser.add_argument("--frames", type=int, default=32, help="time points of section 1's time-lapse")
    parser.add_argument("--monai-frames", type=int, default=4, help="frames MONAI predicts in section 1 (a rate per voxel)")
    parser.add_argument("--equal-frame", nargs=3, type=int, default=(32, 256, 256), help="frame of section 2")
    parser.add_argument("--big-frame", nargs=3, type=int, default=(64, 1024, 1024), help="frame of the projection")
    parser.add_argument("--structures", type=int, default=13, help="ensemble size of the projection")
    parser.add_argument("--trained", nargs=2, metavar=("CHECKPOINT", "IMAGE"), help="a trained model and an OME-Zarr image for the bf16 bound")
    parser.add_argument("--arch", choices=sorted(C.ARCHS), default="default")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data", default="/tmp", help="where inputs, models and outputs are made (removed at the end)")
    parser.add_argument("--append", action="store_true", help="add the row to BENCHMARKS.md (and copy it to OUT)")
    parser.add_argument("--skip", nargs="*", default=[], help="sections to leave out, by number or name, e.g. --skip 2 6")
    parser.add_argument("--compile-backend", default="inductor", help="section 3's torch.compile backend (the dry run: eager, which traces only)")
    parser.add_argument("--train-iterations", type=int, default=20, help="section 6: bf16 iterations (fp32 and pytorch_fnet: half)")
    args = parser.parse_args(argv)
    if args.tiny:
        defaults = parser.parse_args([])
        for key, value in TINY.items():  # the tiny sizes, unless given on the command line
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    args.bounds = dict(BOUNDS)
    for item in args.bound:
        name, _, seconds = item.partition("=")
        if name not in BOUNDS:
            parser.error(f"--bound {item}: no section {name!r}; sections: {', '.join(BOUNDS)}")
        args.bounds[name] = float(seconds)
    if args.budget is None:
        args.budget = sum(args.bounds.values()) + 10
    if args.frames < 32 and not args.tiny:
        print(f"note: --frames {args.frames}: the acceptance targets are stated for a time-lapse of >= 32 frames", flush=True)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data) / f"gpu_acceptance_{os.getpid()}_{int(time.time())}"  # removed at the end
    data.mkdir(parents=True)
    run = Run(args, out, data)
    start_watchdog(run)
    import torch

    from chunked_fnet.model import count_flops_per_voxel, load_checkpoint

    run.results.update(machine=C.machine(), args={k: v for k, v in vars(args).items()}, order=list(SECTIONS))
    print(run.results["machine"], flush=True)
    run.facts["model"] = C.make_checkpoints(data / "models", args.arch, 1)[0]
    run.facts["flops"] = count_flops_per_voxel(load_checkpoint(run.facts["model"])[0])
    run.results["model"] = {"arch": args.arch, "MFLOP_per_voxel": run.facts["flops"] / 1e6, "torch": torch.__version__}
    run.save()
    try:
        for name, body in SECTIONS.items():
            run_section(run, name, body)
    finally:
        run.results["total_seconds"] = round(elapsed(), 1)
        run.save()
        shutil.rmtree(data, ignore_errors=True)
    if args.append:
        append_row(run)
        shutil.copy(C.BENCHMARKS, out / "BENCHMARKS.md")
    print(f"done in {elapsed():.0f} s; results in {out / 'results.json'}", flush=True)
    return 0


def append_row(run: Run) -> None:
    """One row in BENCHMARKS.md's GPU acceptance table, from the results (the whole record: results.json)."""
    r = run.results
    s1, s2, s3, s4, s5, s6 = (r.get(k, {}) for k in SECTIONS)

    def status(s: dict) -> str:
        return s.get("error") or s.get("timed_out") or s.get("skipped") or "-"

    ratios = "; ".join(f"{k} {v['value']:.2f} ({'pass' if v['pass'] else 'FAIL'})" for k, v in (s1.get("ratios") or {}).items())
    rates = "; ".join(f"{k} {v['median']:.1f}" for k, v in (s1.get("M_vox_s") or {}).items())
    equal = "; ".join(f"{k}: max {v['max_abs_diff']:.1e} ({v['max_diff_over_std']:.1e} std), r {v['pearson_r']:.7f}"
                      + (f", {'pass' if v['pass'] else 'FAIL'}" if "pass" in v else "") for k, v in s2.items() if isinstance(v, dict) and "max_abs_diff" in v)
    variants = "; ".join(f"{k}: {v['TFLOPs']:.1f} ({100 * v['fraction_of_bf16_matmul']:.0f} %)" for k, v in (s3.get("bare_forward_whole_frame") or {}).items())
    projection = (f"{s4['projected_hours_13x100']:.2f} h ({s4['M_structure_vox_s']:.0f} M structure-vox/s, {s4['achieved_TFLOPs']:.0f} TFLOP/s, "
                  f"window {s4['window']['patch']}, GPU {s4['gpu_util_mean_pct'] or 0:.0f} %)") if "projected_hours_13x100" in s4 else status(s4)
    memory = (f"{s5['total_GiB']:.0f} GiB; auto patch {s5['auto_patch']['patch']}: measured/estimate "
              f"{(s5['auto_patch']['measured_over_estimate'] or float('nan')):.2f}") if isinstance(s5.get("auto_patch"), dict) else status(s5)
    training = "; ".join(f"{k}: {v['iteration_s']:.3f} s/it, {v['projected_hours_50k']:.2f} h/50k" for k, v in s6.items()
                         if isinstance(v, dict) and "iteration_s" in v) or status(s6)
    C.append_row(
        "GPU acceptance runs (benchmarks/gpu_acceptance.sh, issue 29)",
        ["date", "device", "time-lapse (frames x frame, window, precision)", "M output vox/s (medians)", "predict ratios (targets: bare 0.75, MONAI 2)",
         "equal to CPU", "bf16 matmul TFLOP/s", "bare forward: TFLOP/s (% of matmul)", "projection 13 x 100 x 64x1024x1024", "memory",
         "training (s/it, h for 50,000)", "total s", "command", "machine"],
        [C.today(), C.gpu_name() or run.args.device,
         f"{s1.get('frames')} x {s1.get('frame')}, {(s1.get('window') or {}).get('patch')}, {(s1.get('precision') or {}).get('chosen')}",
         rates or status(s1), ratios or "-", equal or status(s2), f"{s3.get('bf16_matmul_TFLOPs', float('nan')):.0f}", variants or status(s3),
         projection, memory, training, f"{r.get('total_seconds', 0):.0f}", C.command_line(), C.machine()],
    )


if __name__ == "__main__":
    sys.exit(main())
