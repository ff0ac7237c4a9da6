"""The inputs and models the benchmarks share, made through the package's public API only: synthetic
time-lapses and whole frames (``chunked_fnet.synth``), seeded checkpoints of named architectures
(``chunked_fnet.model``), the prediction workload's options (``chunked_fnet.predict``), a training
run's outputs, and the training workload (paired synthetic images with a manifest, ``train()`` at
pinned settings). Cached under ``--data`` so that runs reuse them."""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Architectures the benchmarks offer: the paper's (UNetConfig defaults) and small ones for quick runs.
ARCHS: dict[str, dict[str, int]] = {"default": {}, "small": {"depth": 2, "width": 16}, "tiny": {"depth": 2, "width": 4}}
DATA = Path(tempfile.gettempdir()) / "chunked_fnet_bench"
STRUCTURES = ["dna", "er", "membrane", "mitochondria", "nucleoli", "nuclear_envelope"]
#: A worker environment that keeps freed memory for reuse (glibc): the task threads share the main heap, and
#: neither an mmap nor a trim threshold is reached, so a freed block is not unmapped but serves the next one.
#: Set through dask's ``distributed.nanny.pre-spawn-environ`` (:func:`worker_environment`), it is the user's
#: allocator, which predict keeps (``chunked_fnet.memory.allocator_set_by_user``).
REUSE_FREED_MEMORY = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(16 * 2**30), "MALLOC_TRIM_THRESHOLD_": str(16 * 2**30)}


def worker_environment(env: dict[str, str]) -> dict[str, str]:
    """The dask config that starts nanny workers with ``env`` set (for ``dask.config.set``)."""
    return {f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in env.items()}
#: The training settings of quick runs (smoke tests, the GPU acceptance dry run): a depth-2, width-4 U-Net on
#: small patches; ``harness.peers.PAPER_TRAINING`` holds the paper's.
TINY_TRAINING: dict[str, Any] = {"model": {"depth": 2, "width": 4}, "patch_shape": [16, 32, 32], "batch_size": 2}


def prod(values: Sequence[int]) -> int:
    return int(math.prod(int(v) for v in values))


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
    """The time-lapse workload: :func:`synth_input` under the shared data folder, named by its size."""
    data = Path(data)
    data.mkdir(parents=True, exist_ok=True)
    return synth_input(data / f"input_{size_t}x{'x'.join(map(str, shape))}.zarr", size_t, shape)


def load_frame(image: str, t: int = 0) -> np.ndarray:
    """The full-field workload: frame ``t`` of an image's bright-field channel in memory, z-scored
    (float32, z y x): what the in-memory peers (bare forward, MONAI, pytorch_fnet) are given."""
    from chunked_fnet import open_image, select_channels

    bf = select_channels(open_image(image), "brightfield")
    frame = bf.isel(t=t) if "t" in bf.dims else bf
    values = np.asarray(frame.squeeze(drop=True).values, dtype=np.float32)
    return ((values - values.mean()) / values.std()).astype(np.float32)


def seeded_model(arch: str, seed: int = 0):  # noqa: ANN201
    """A randomly initialised U-Net of architecture ``arch`` (torch's default init under ``seed``): the
    same weights :func:`make_checkpoints` saves as checkpoint ``seed``."""
    import torch

    from chunked_fnet.model import FnetUNet, UNetConfig

    torch.manual_seed(seed)
    return FnetUNet(UNetConfig(**ARCHS[arch]))


def make_checkpoints(folder: str | Path, arch: str, n: int, voxel: float = 0.29) -> list[str]:
    """``n`` randomly initialised checkpoints (seeds 0..n-1) of architecture ``arch`` (a key of
    :data:`ARCHS`) trained, say their cards, at an isotropic ``voxel`` µm."""
    from chunked_fnet.model import ModelCard, save_checkpoint

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        model = seeded_model(arch, i)
        card = ModelCard(
            structure=STRUCTURES[i % len(STRUCTURES)] + ("" if i < len(STRUCTURES) else str(i)),
            architecture=model.config,
            voxel_size=(voxel,) * 3,
            input={"modality": "brightfield", "channel": "brightfield"},
            training={"dataset": "random init (benchmark)", "iterations": 0, "seed": i},
        )
        paths.append(str(save_checkpoint(folder / f"{arch}_{i}.ckpt", model, card, overwrite=True)))
    return paths


def arch_label(arch: str) -> str:
    """``"default U-Net (depth 4, width 32)"``: how tables name an architecture."""
    from chunked_fnet.model import UNetConfig

    cfg = UNetConfig(**ARCHS[arch])
    return f"{arch} U-Net (depth {cfg.depth}, width {cfg.width})"


def load_run(run: str | Path) -> tuple[str, Any, Any, Any, list[Any]]:
    """The training-run workload (``examples/train_cpu.py OUT --structures dna`` makes ``OUT/run_dna``):
    its structure, model and card, its normalisation statistics and its test pairs."""
    from chunked_fnet.model import load_checkpoint
    from chunked_fnet.train.data import load_stats
    from chunked_fnet.train.manifest import Pair

    run = Path(run)
    structure = next(run.glob("*.ckpt")).stem
    model, card = load_checkpoint(run / f"{structure}.ckpt")
    pairs = [Pair(**p) for p in json.loads((run / "split.json").read_text())["test"]]
    return structure, model, card, load_stats(run / "stats.json"), pairs


def paired_data(folder: str | Path, fovs: int, shape: Sequence[int], structures: Sequence[str] = ("dna",)) -> Path:
    """The training workload: ``fovs`` synthetic fields of view of ``shape`` (z y x, the synthetic voxel
    size) in ``folder/synth.zarr`` (generated once) and ``folder/manifest.yaml`` pairing bright-field with
    ``dna`` (``structures == ("dna",)``) or with each structure's channel of its name (several)."""
    import yaml

    from chunked_fnet.synth.dataset import SynthConfig, generate

    folder = Path(folder)
    if not (folder / "synth.zarr").exists():
        generate(SynthConfig(size_t=1, size_z=shape[0], size_y=shape[1], size_x=shape[2], fovs=fovs), folder / "synth.zarr", progress=False)
    single = tuple(structures) == ("dna",)
    images = [{"path": f"synth.zarr/{i}", "input_channel": "brightfield", **({"target_channel": "dna"} if single else {})} for i in range(fovs)]
    (folder / "manifest.yaml").write_text(yaml.safe_dump({"images": images}))
    return folder


def run_chunked_fnet_training(
    data: str | Path, iterations: int, device: str, precision: str, out: str | Path, compile: bool = False, threads: int | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``chunked_fnet.train.trainer.train`` itself on :func:`paired_data`'s ``dna`` pairs at ``settings``
    (default ``harness.peers.PAPER_TRAINING``: model, patch, batch), precision pinned, no validation: loader
    workers read the patches from the OME-Zarr store while the step runs. Seconds per iteration (the
    median after the first, from the run's ``throughput.json``), the fraction of time spent waiting for
    data, and the whole record."""
    from chunked_fnet.train.trainer import TrainConfig, train

    from harness.peers import PAPER_TRAINING

    out = Path(out)
    config = TrainConfig(
        manifest=str(Path(data) / "manifest.yaml"), output=str(out), structure="dna", iterations=iterations, precision=precision,
        device=device, validation_patches=0, checkpoint_every=10**6, compile=compile, threads=threads, **(settings or PAPER_TRAINING),
    )
    train(config, progress=False)
    record = json.loads((out / "throughput.json").read_text())
    return {"iteration_s": record["median_iteration_s"], "data_wait": record["data_wait_fraction"], "record": record}


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """``--data`` (where inputs and models are cached between runs) and ``--no-save``."""
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--no-save", "--no-append", dest="no_save", action="store_true",
                        help="print only; store no result (and leave BENCHMARKS.md as it is)")


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


def workload(args: argparse.Namespace) -> tuple[str, list[str], list[str], Any]:
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


def prepare_like_a_task() -> None:
    """Inside a dask worker: torch threads = the worker's threads and the heap set-up of the pipeline's
    workers, so a bare forward timed in the worker runs under the pipeline's conditions. Built from
    public pieces (``chunked_fnet.memory``): the package's own set-up is private. An allocator the
    worker's environment sets is kept, as the pipeline's tasks keep it."""
    import torch
    from distributed import get_worker

    from chunked_fnet.memory import allocator_set_by_user, bound_heap_growth

    torch.set_num_threads(get_worker().state.nthreads)
    if allocator_set_by_user() is None:
        bound_heap_growth()
