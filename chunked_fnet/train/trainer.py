"""Train one fnet U-Net per structure, faithful to the paper by default, resumable exactly.

A run directory holds everything: ``config.yaml`` (what was asked), ``split.json`` (which pairs
train and test), ``stats.json`` (per-frame z-score statistics), ``losses.csv`` and ``losses.png``,
``checkpoints/latest`` (model + optimiser + iteration, rewritten atomically every
``checkpoint_every`` iterations) and, at the end, ``<structure>.ckpt`` (the model for inference).
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from chunked_fnet.device import Precision, autocast_dtype, resolve_device
from chunked_fnet.errors import InputError
from chunked_fnet.io.atomic import atomic_dir
from chunked_fnet.model import FnetUNet, ModelCard, UNetConfig, load_tensors, save_checkpoint, save_tensors
from chunked_fnet.model.checkpoint import write_checkpoint_files
from chunked_fnet.train.data import PairSpec, PatchDataset, convert_if_tiff, describe_pair, expand_pairs, load_stats, save_stats
from chunked_fnet.train.manifest import Pair, read_manifest, split_pairs


class TrainConfig(BaseModel):
    """Training settings; defaults are the paper's (Ounkomol et al. 2018) and its reference code's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    manifest: str = Field(description="YAML/CSV manifest of paired images")
    output: str = Field(description="run directory (created; never overwritten)")
    structure: str = Field(description="name of the target structure, e.g. 'dna'")
    color: str = "FFFFFF"
    input_modality: str = "brightfield"
    model: UNetConfig = UNetConfig()
    voxel_size: tuple[float, float, float] = (0.29, 0.29, 0.29)  # µm z, y, x of the model grid
    patch_shape: tuple[int, int, int] = (32, 64, 64)
    batch_size: int = Field(24, ge=1)
    iterations: int = Field(50_000, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)  # pytorch_fnet's Adam betas
    seed: int = 0
    n_train: int = Field(30, ge=1, description="training pairs; the rest are the test split")
    split_seed: int = 0
    checkpoint_every: int = Field(1000, ge=1)
    validate_every: int = Field(500, ge=1)
    validation_patches: int = Field(24, ge=0)
    workers: int = Field(2, ge=0, description="DataLoader worker processes")
    prefetch: int = Field(4, ge=1, description="batches prefetched per worker")
    cache_mb: float = Field(2048, ge=0, description="per-worker cache of preprocessed pairs")
    precision: Precision = "auto"
    device: str = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")


# Settings that may change on --resume without changing what the run computes.
RESUMABLE_CHANGES = {"iterations", "checkpoint_every", "workers", "prefetch", "cache_mb", "threads", "device", "output"}


def _set_worker_threads(_: int) -> None:
    torch.set_num_threads(1)  # loader workers preprocess; the main process owns the cores


def save_training_state(
    run: Path, model: FnetUNet, optimizer: torch.optim.Optimizer, iteration: int, card: ModelCard
) -> None:
    """Model, optimizer and iteration as ``checkpoints/latest``, swapped in whole: a crash keeps the previous one."""
    target = run / "checkpoints" / "latest"
    target.parent.mkdir(parents=True, exist_ok=True)
    state = optimizer.state_dict()
    tensors = {f"{idx}.{key}": value for idx, entry in state["state"].items() for key, value in entry.items() if torch.is_tensor(value)}
    with atomic_dir(target) as tmp:
        write_checkpoint_files(tmp, model, card)
        save_tensors(tmp / "optimizer.safetensors", tensors, {"param_groups": json.dumps(state["param_groups"])})
        (tmp / "state.json").write_text(json.dumps({"iteration": iteration}))


def load_training_state(run: Path, model: FnetUNet, optimizer: torch.optim.Optimizer) -> int:
    from chunked_fnet.model import load_checkpoint

    latest = run / "checkpoints" / "latest"
    if not (latest / "state.json").exists():
        raise InputError(f"{run}: nothing to resume (no checkpoints/latest/state.json)")
    loaded, _ = load_checkpoint(latest)
    model.load_state_dict(loaded.state_dict())
    tensors, metadata = load_tensors(latest / "optimizer.safetensors")
    state: dict = {"state": {}, "param_groups": json.loads(metadata["param_groups"])}
    for name, value in tensors.items():
        idx, key = name.split(".", 1)
        state["state"].setdefault(int(idx), {})[key] = value
    optimizer.load_state_dict(state)
    return int(json.loads((latest / "state.json").read_text())["iteration"])


def _check_resume(run: Path, config: TrainConfig) -> None:
    saved = TrainConfig(**yaml.safe_load((run / "config.yaml").read_text()))
    diffs = [
        f"{k}: run has {getattr(saved, k)!r}, now {getattr(config, k)!r}"
        for k in TrainConfig.model_fields
        if k not in RESUMABLE_CHANGES and getattr(saved, k) != getattr(config, k)
    ]
    if diffs:
        raise InputError(f"{run}: cannot resume with different settings ({'; '.join(diffs)})")


def prepare_run(config: TrainConfig, resume: bool) -> tuple[Path, list[PairSpec], list[PairSpec]]:
    """Create (or reopen) the run directory, fix the split and the per-frame statistics."""
    run = Path(config.output)
    if resume:
        if not (run / "config.yaml").exists():
            raise InputError(f"{run}: not a training run to resume (no config.yaml)")
        _check_resume(run, config)
    elif run.exists() and any(run.iterdir()):
        raise InputError(f"{run} already exists and is not empty; choose a new output or pass --resume")
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text(yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False))
    split_file = run / "split.json"
    if split_file.exists():
        saved = json.loads(split_file.read_text())
        train = [Pair(**p) for p in saved["train"]]
        test = [Pair(**p) for p in saved["test"]]
    else:
        entries = [convert_if_tiff(e, run) for e in read_manifest(config.manifest)]
        train, test = split_pairs(expand_pairs(entries), config.n_train, config.split_seed)
        split_file.write_text(json.dumps({"train": [p.model_dump() for p in train], "test": [p.model_dump() for p in test]}, indent=1))
    stats = load_stats(run / "stats.json")
    train_specs = [describe_pair(p, stats) for p in tqdm(train, desc="image statistics (train)", leave=False, disable=not sys.stderr.isatty())]
    test_specs = [describe_pair(p, stats) for p in test]
    save_stats([*train_specs, *test_specs], run / "stats.json")
    return run, train_specs, test_specs


def model_card(
    config: TrainConfig, iterations: int, input_channel: str | int, metrics: dict[str, float] | None = None
) -> ModelCard:
    from chunked_fnet import __version__

    return ModelCard(
        structure=config.structure,
        architecture=config.model,
        voxel_size=config.voxel_size,
        input={"modality": config.input_modality, "channel": input_channel},
        target_channel=config.structure,
        normalization={"method": "zscore", "per": "image"},
        color=config.color,
        training={
            "dataset": str(config.manifest),
            "iterations": iterations,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "patch_shape": list(config.patch_shape),
            "learning_rate": config.learning_rate,
            "loss": "mse",
            "versions": {"chunked_fnet": __version__, "torch": torch.__version__, "numpy": np.__version__},
        },
        metrics=metrics or {},
    )


def _validation_loss(model: FnetUNet, batch: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device, autocast: torch.dtype | None) -> float:
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode(), torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
        for x, y in batch:
            pred = model(x.to(device))
            total += float(torch.nn.functional.mse_loss(pred.float(), y.to(device), reduction="sum"))
            count += y.numel()
    model.train()
    return total / max(count, 1)


def _read_losses(path: Path, upto: int) -> list[list[str]]:
    if not path.exists():
        return []
    with path.open() as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if int(r[0]) <= upto]


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a model; returns the path of the final checkpoint (``<run>/<structure>.ckpt``)."""
    run, train_specs, test_specs = prepare_run(config, resume)
    input_channel = read_manifest(config.manifest)[0].input_channel
    device = resolve_device(config.device)
    autocast = autocast_dtype(config.precision, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    model = FnetUNet(config.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate, betas=config.betas)
    scaler = torch.amp.GradScaler("cuda", enabled=autocast == torch.float16)
    start = load_training_state(run, model, optimizer) if resume else 0
    if start >= config.iterations:
        print(f"{run}: already trained {start} iterations (asked for {config.iterations})", file=sys.stderr)

    cache_bytes = int(config.cache_mb * 2**20)
    dataset = PatchDataset(train_specs, config.voxel_size, config.patch_shape, config.seed, config.iterations * config.batch_size, cache_bytes)
    validation = []
    if test_specs and config.validation_patches:
        val_set = PatchDataset(test_specs, config.voxel_size, config.patch_shape, config.seed + 1, config.validation_patches, cache_bytes)
        items = [val_set[i] for i in range(len(val_set))]
        validation = [
            (torch.stack([x for x, _ in items[i : i + config.batch_size]]), torch.stack([y for _, y in items[i : i + config.batch_size]]))
            for i in range(0, len(items), config.batch_size)
        ]
    batches = [list(range(i * config.batch_size, (i + 1) * config.batch_size)) for i in range(start, config.iterations)]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=config.workers,
        prefetch_factor=config.prefetch if config.workers else None,
        worker_init_fn=_set_worker_threads if config.workers else None,
        pin_memory=device.type == "cuda",
    )

    losses_path = run / "losses.csv"
    rows = _read_losses(losses_path, start)  # a crash after the last checkpoint left rows to drop
    with losses_path.open("w", newline="") as f:
        csv.writer(f, lineterminator="\n").writerows([["iteration", "train_loss", "val_loss"], *rows])
    model.train()
    bar = tqdm(total=config.iterations, initial=start, desc=f"train {config.structure}", unit="it", disable=not progress)
    with losses_path.open("a", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        for iteration, (x, y) in enumerate(loader, start=start + 1):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                loss = torch.nn.functional.mse_loss(model(x).float(), y)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            val = ""
            if validation and iteration % config.validate_every == 0:  # a fixed schedule: resume-invariant
                val = f"{_validation_loss(model, validation, device, autocast):.6g}"
            value = float(loss.detach())
            writer.writerow([iteration, f"{value:.6g}", val])
            f.flush()
            bar.update(1)
            bar.set_postfix(loss=f"{value:.4f}", **({"val": val} if val else {}))
            if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
                save_training_state(run, model, optimizer, iteration, model_card(config, iteration, input_channel))
    bar.close()
    final = run / f"{config.structure}.ckpt"
    save_checkpoint(final, model.cpu(), model_card(config, max(start, config.iterations), input_channel), overwrite=True)
    plot_losses(losses_path, run / "losses.png", title=f"{config.structure}: training loss")
    return final


def plot_losses(csv_path: Path, png_path: Path, title: str = "loss") -> None:
    """Loss curves (training loss smoothed over a window, validation points) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    it = np.array([int(r["iteration"]) for r in rows])
    tr = np.array([float(r["train_loss"]) for r in rows])
    val = [(int(r["iteration"]), float(r["val_loss"])) for r in rows if r["val_loss"]]
    window = max(1, len(tr) // 50)
    smooth = np.convolve(tr, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(it, tr, color="0.8", lw=0.6, label="train (per batch)")
    ax.plot(it[window - 1 :], smooth, color="C0", lw=1.5, label=f"train (mean of {window})")
    if val:
        ax.plot(*zip(*val), "o-", color="C3", ms=3, lw=1, label="validation (test split patches)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("MSE (z-scored units)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
