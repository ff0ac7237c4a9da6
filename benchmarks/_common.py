"""Shared helpers of the benchmark scripts: the machine line, BENCHMARKS.md rows, inputs and models.

Not part of the package; imported by the scripts in this folder (``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
from collections.abc import Sequence
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "BENCHMARKS.md"
TITLE = "# Benchmarks\n"

#: Architectures the scripts offer: the paper's (UNetConfig defaults) and a small one for quick runs.
ARCHS = {"default": {}, "small": {"depth": 2, "width": 16}, "tiny": {"depth": 2, "width": 4}}


# ---------------------------------------------------------------------------------------- machine
def cpu_model() -> str:
    """The CPU's name, with family/model and vector extensions when the name is generic (VMs)."""
    try:
        info = dict(
            (k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in Path("/proc/cpuinfo").read_text().splitlines()) if v
        )
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name", platform.machine())
    flags = set(info.get("flags", "").split())
    ext = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if flag in flags]
    if not ext and "avx2" in flags:
        ext = ["AVX2"]
    extra = [f"family {info['cpu family']} model {info['model']}"] if "cpu family" in info and "model" in info else []
    return f"{name} ({', '.join(extra + ext)})" if extra or ext else name


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_name() -> str | None:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    return None


def machine() -> str:
    """CPU model and cores, GPU (or none), and the versions that matter for the figures."""
    import dask
    import numpy
    import torch
    import zarr

    versions = [f"torch {torch.__version__}", f"dask {dask.__version__}", f"zarr {zarr.__version__}", f"numpy {numpy.__version__}"]
    if "monai" in sys.modules:
        versions.append(f"monai {sys.modules['monai'].__version__}")
    gpu = gpu_name() or "no GPU"
    return f"{cpu_model()}, {cores()} cores, {gpu}; " + ", ".join(versions)


def load_note() -> str:
    """The 1-minute load average against the cores: a busy machine makes every timing noisy."""
    try:
        return f"load {os.getloadavg()[0]:.1f} on {cores()} cores"
    except OSError:
        return "load unknown"


# ------------------------------------------------------------------------------------ BENCHMARKS.md
def append_row(section: str, columns: Sequence[str], cells: Sequence[object], path: Path = BENCHMARKS) -> str:
    """Add one row to the table under ``## section`` of BENCHMARKS.md (created with ``columns`` when
    missing, at the end of the file); returns the row. Cells are written as given; ``|`` is escaped."""
    row = "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"
    text = path.read_text() if path.exists() else TITLE
    lines = text.splitlines()
    heading = f"## {section}"
    if heading not in lines:
        block = [heading, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), row, ""]
        last = f"## {MEMORY_SECTION}"
        if last in lines:  # keep that table last: older scripts append their rows at the end of the file
            i = lines.index(last)
            lines[i:i] = block
        else:
            if lines and lines[-1].strip():
                lines.append("")
            lines += block[:-1]
    else:
        i = lines.index(heading) + 1
        while i < len(lines) and not lines[i].startswith("|"):  # skip the section's prose
            if lines[i].startswith("## "):
                break
            i += 1
        if i < len(lines) and lines[i].startswith("|"):
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            lines.insert(i, row)
        else:  # a heading without a table yet
            lines[i:i] = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns), row, ""]
    path.write_text("\n".join(lines) + "\n")
    return row


def today() -> str:
    return str(date.today())


def command_line() -> str:
    """How this script was run, for the table (relative to the repository root)."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return "`python " + " ".join([str(script), *sys.argv[1:]]) + "`"


# ------------------------------------------------------------------------------------- statistics
def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float]) -> float:
    """(max - min) / median: how far repeated measurements of one quantity disagreed."""
    m = median(values)
    return (max(values) - min(values)) / m if m else float("nan")


def fmt_spread(values: Sequence[float]) -> str:
    return f"±{100 * spread(values) / 2:.0f} %" if len(values) > 1 else "1 run"


def peak_rss_mib() -> float:
    """This process's peak resident set size over its lifetime (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


# ---------------------------------------------------------------------------------- inputs, models
def synth_input(path: str | Path, size_t: int, shape: Sequence[int], voxel: float = 0.29, seed: int = 0) -> str:
    """A synthetic paired time-lapse (chunked_fnet.synth) of ``size_t`` x ``shape`` (z, y, x) at an
    isotropic ``voxel`` µm, generated once and reused while its config is unchanged."""
    from chunked_fnet.synth.dataset import SynthConfig, generate

    config = SynthConfig(
        size_t=size_t, size_z=shape[0], size_y=shape[1], size_x=shape[2], voxel_size=(voxel,) * 3,
        chunks=(min(64, shape[0]), min(256, shape[1]), min(256, shape[2])), seed=seed,
    )
    path = Path(path)
    marker = path.with_name(path.name + ".config.json")
    wanted = config.model_dump_json()
    if path.exists() and marker.exists() and marker.read_text() == wanted:
        return str(path)
    print(f"generating {path} ({size_t} x {tuple(shape)}) ...", flush=True)
    generate(config, path, overwrite=True, progress=False)
    marker.write_text(wanted)
    return str(path)


def bench_input(data: str | Path, size_t: int, shape: Sequence[int]) -> str:
    """:func:`synth_input` under the scripts' shared data folder, named by its size so runs reuse it."""
    data = Path(data)
    data.mkdir(parents=True, exist_ok=True)
    return synth_input(data / f"input_{size_t}x{'x'.join(map(str, shape))}.zarr", size_t, shape)


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data`` (where inputs and models are cached between runs) and ``--no-append``."""
    parser.add_argument("--data", default=str(Path(tempfile.gettempdir()) / "chunked_fnet_bench"))
    parser.add_argument("--no-append", action="store_true", help="print only; do not add a row to BENCHMARKS.md")


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """The prediction workload the pipeline benchmarks share: model, volume, tiling, precision, reps."""
    parser.add_argument("--arch", choices=sorted(ARCHS), default="default", help="default: the paper's U-Net (depth 4, width 32)")
    parser.add_argument("--models", type=int, default=1, help="ensemble size (structures)")
    parser.add_argument("--shape", nargs=3, type=int, default=(32, 128, 256), help="z y x of one time point (input grid = model grid)")
    parser.add_argument("--time-points", type=int, default=1)
    parser.add_argument("--chunks", nargs=3, type=int, default=(32, 128, 128))
    parser.add_argument("--patch", nargs=3, type=int, default=(32, 64, 64))
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
    add_data_args(parser)


def workload(args: argparse.Namespace):  # noqa: ANN201
    """For :func:`add_workload_args`' options: the cached input, the checkpoints, their hashes and the
    PredictOptions, as ``(image, models, hashes, options)``."""
    from chunked_fnet.model import checkpoint_hash
    from chunked_fnet.predict import PredictOptions

    data = Path(args.data)
    image = bench_input(data, args.time_points, tuple(args.shape))
    models = make_checkpoints(data / "models", args.arch, args.models)
    options = PredictOptions(
        patch_shape=tuple(args.patch), overlap=args.overlap, blend="gaussian", batch_size=args.batch, chunks=tuple(args.chunks),
        device=args.device, precision=args.precision,
    )
    return image, models, [checkpoint_hash(p) for p in models], options


def make_checkpoints(folder: str | Path, arch: str, n: int, voxel: float = 0.29) -> list[str]:
    """``n`` randomly initialised checkpoints (torch's default init, seeds 0..n-1) of architecture
    ``arch`` (a key of :data:`ARCHS`) trained, say their cards, at an isotropic ``voxel`` µm."""
    import torch

    from chunked_fnet.model import FnetUNet, ModelCard, UNetConfig, save_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = ["dna", "er", "membrane", "mitochondria", "nucleoli", "nuclear_envelope"]
    paths = []
    for i in range(n):
        torch.manual_seed(i)
        model = FnetUNet(UNetConfig(**ARCHS[arch]))
        card = ModelCard(
            structure=names[i % len(names)] + ("" if i < len(names) else str(i)),
            architecture=model.config,
            voxel_size=(voxel,) * 3,
            input={"modality": "brightfield", "channel": "brightfield"},
            training={"dataset": "random init (benchmark)", "iterations": 0, "seed": i},
        )
        paths.append(str(save_checkpoint(folder / f"{arch}_{i}.ckpt", model, card, overwrite=True)))
    return paths


def load_run(run: str | Path):  # noqa: ANN201
    """A training run (``examples/train_cpu.py OUT --structures dna`` makes ``OUT/run_dna``): its
    structure, model and card, its normalisation statistics and its test pairs, as the benchmarks that
    measure a trained model read them."""
    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.train.data import load_stats
    from chunked_fnet.train.manifest import Pair

    run = Path(run)
    structure = next(run.glob("*.ckpt")).stem
    model, card = load_checkpoint(run / f"{structure}.ckpt")
    pairs = [Pair(**p) for p in json.loads((run / "split.json").read_text())["test"]]
    return structure, model, card, load_stats(run / "stats.json"), pairs


def prod(values: Sequence[int]) -> int:
    return int(math.prod(int(v) for v in values))


def dumps(obj: object) -> str:
    return json.dumps(obj, default=float)


#: The first table of BENCHMARKS.md (synth_memory.py, predict_memory.py append their rows at the end of the file).
MEMORY_SECTION = "Data generation and prediction memory"


def prepare_like_a_task() -> None:
    """Inside a dask worker: set up the process as the pipeline's chunk task does before its first
    model call (torch threads = the worker's threads; the task's allocator settings), so a bare
    forward pass timed in the worker runs under the same conditions as the pipeline's."""
    import chunked_fnet.predict.job as job

    for name in ("_prepare_worker_process", "_match_torch_threads"):  # the task's own set-up, whichever this version has
        setup = getattr(job, name, None)
        if setup is not None:
            setup()
            return
    import torch
    from distributed import get_worker

    torch.set_num_threads(get_worker().state.nthreads)
