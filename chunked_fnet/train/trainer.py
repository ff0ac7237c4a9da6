"""Train one fnet U-Net per structure, faithful to the paper by default, resumable exactly, fast.

A run directory holds everything: ``config.yaml`` (what was asked), ``split.json`` (which pairs
train, validate and test), ``stats.json`` (per-frame z-score statistics), ``training.json`` (how the steps
compute: precision, memory layout, optimizer), ``losses.csv`` and ``losses.png``,
``checkpoints/latest`` (model + optimiser + iteration, rewritten atomically every
``checkpoint_every`` iterations), ``throughput.json`` (iterations per second, time spent waiting for
data), ``plateau.json`` (where a ``plateau:`` rule stopped the run, if it did), ``learning_rate.json`` (where a
``learning_rate_decay:`` rule lowered the rate) and, at the end, ``<structure>.ckpt`` (the model for inference).

Several structures train in one run (:func:`train_many`; a config with ``structures:``): one U-Net
each, every batch of bright-field patches read once and fed to all of them, each structure with its
own ordinary run directory ``<output>/<structure>`` that ``evaluate`` and ``predict`` use as any other.
Each model sees exactly the patches, initial weights and updates it would have seen trained alone.

**Training until the validation loss plateaus** (``plateau: {patience: 5, min_delta: 0.01}``): the run
stops at the first validation where the last ``patience`` validations have not improved the best loss
before them by ``min_delta`` (relative); ``iterations`` is then the most it may run. The rule needs a
validation split (``split: validation`` in the manifest) so that the test split plays no part in when
training ends. It is a pure function of ``losses.csv``, so a resumed run stops where an uninterrupted
one would; a run that has stopped reports so on ``--resume`` and trains no further. The model kept is the
one of the lowest validation loss (``keep: best``, the default, as Keras's ``restore_best_weights``; saved
as ``checkpoints/best`` whenever a validation beats all before it, and its card's ``iterations`` say where
it was taken) or the one at the stop (``keep: last``). A validation loss as noisy as the real-nuclei
tiles' (±20 % from one validation to the next) makes the two differ by more than ``min_delta``.

**Lowering the learning rate where the validation loss stops improving** (``learning_rate_decay: {factor: 0.1,
patience: 2}``, opt-in; the paper trains at a constant 1e-3): torch's ``ReduceLROnPlateau`` judges every
validation, and after more than ``patience`` of them without a ``min_delta`` (relative) improvement of the best
multiplies the rate by ``factor``. The rate is a pure function of the validation losses in ``losses.csv``
(replayed from the start at every validation), so a resumed run trains at exactly the rates an uninterrupted one
does; with a ``plateau:`` rule as well, a longer plateau patience gives the lowered rate time to act.
"""

from __future__ import annotations

import csv
import json
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm.auto import tqdm

from chunked_fnet.memory import reuse_freed_memory
from chunked_fnet.config import build, load_yaml_config, read_yaml_mapping
from chunked_fnet.device import Precision, resolve_device
from chunked_fnet.errors import InputError
from chunked_fnet.io.atomic import write_bytes
from chunked_fnet.model import FnetUNet, ModelCard, UNetConfig, save_checkpoint
from chunked_fnet.config import differences
from chunked_fnet.train.augment import Augmentation, check_augmentation
from chunked_fnet.train.data import PairSpec, PatchDataset, convert_if_tiff, describe_pair, expand_pairs, load_stats, save_stats
from chunked_fnet.train.manifest import Pair, read_manifest, split_pairs, validation_pairs
from chunked_fnet.train.state import load_training_state, save_training_state
from chunked_fnet.train.step import TrainStep, training_precision

__all__ = [
    "LearningRateDecay", "PlateauRule", "StructureTarget", "TrainConfig", "load_train_configs", "load_training_state", "save_training_state", "train", "train_many",
    "validation_losses",
]


class PlateauRule(BaseModel):
    """Stop when ``patience`` validations in a row have not lowered the best validation loss by ``min_delta``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    patience: int = Field(5, ge=1, description="validations without improvement before the run stops")
    min_delta: float = Field(0.01, ge=0, lt=1, description="relative improvement of the best validation loss that counts")
    keep: Literal["best", "last"] = Field("best", description="the model kept: the lowest validation loss's, or the last one trained")

    def stop_at(self, validations: Sequence[tuple[int, float]]) -> int | None:
        """The iteration of the first validation at which the rule stops the run, or None."""
        for end in range(self.patience + 1, len(validations) + 1):
            before = min(v for _, v in validations[: end - self.patience])
            recent = min(v for _, v in validations[end - self.patience : end])
            if not recent < before * (1 - self.min_delta):  # improved by less than min_delta (Keras's strict rule)
                return validations[end - 1][0]
        return None


class LearningRateDecay(BaseModel):
    """Multiply the learning rate by ``factor`` after more than ``patience`` validations without a ``min_delta``
    (relative) improvement of the best validation loss: the meaning of torch's ``ReduceLROnPlateau``, which decides it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    factor: float = Field(0.1, gt=0, lt=1, description="the rate is multiplied by this at every decay")
    patience: int = Field(2, ge=0, description="validations without improvement tolerated; the next one lowers the rate")
    min_delta: float = Field(0.01, ge=0, lt=1, description="relative improvement of the best validation loss that counts")
    cooldown: int = Field(0, ge=0, description="validations after a decay that are not judged")
    min_learning_rate: float = Field(0.0, ge=0, description="the rate is never lowered below this")

    def decays(self, learning_rate: float, validations: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
        """``(iteration, new rate)`` of every decay the validations so far call for, replayed from the start:
        the rate depends on the validation losses only, never on where a run was interrupted."""
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=learning_rate)  # carries the rate only
        scheduler = ReduceLROnPlateau(optimizer, mode="min", factor=self.factor, patience=self.patience, threshold=self.min_delta,
                                      threshold_mode="rel", cooldown=self.cooldown, min_lr=self.min_learning_rate)
        changes = []
        for iteration, loss in validations:
            before = optimizer.param_groups[0]["lr"]
            scheduler.step(loss)
            if optimizer.param_groups[0]["lr"] != before:
                changes.append((iteration, float(optimizer.param_groups[0]["lr"])))
        return changes


class TrainConfig(BaseModel):
    """Training settings; defaults are the paper's (Ounkomol et al. 2018) and its reference code's."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    manifest: str = Field(description="YAML/CSV manifest of paired images")
    output: str = Field(description="run directory (created; never overwritten)")
    structure: str = Field(description="name of the target structure, e.g. 'dna'")
    target_channel: str | int | None = Field(None, description="target channel of every image (default: the manifest's)")
    color: str = "FFFFFF"
    input_modality: str = "brightfield"
    model: UNetConfig = UNetConfig()
    voxel_size: tuple[float, float, float] = (0.29, 0.29, 0.29)  # µm z, y, x of the model grid
    patch_shape: tuple[int, int, int] = (32, 64, 64)
    augment: Augmentation = Field(
        "none", description="training patches flipped (flips) or also turned by 90 degrees (dihedral) about the optical axis; none: the paper's"
    )
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
    plateau: PlateauRule | None = Field(None, description="stop when the validation loss plateaus (needs a validation split)")
    learning_rate_decay: LearningRateDecay | None = Field(
        None, description="lower the learning rate when the validation loss stops improving (needs a validation split); none: constant, the paper's"
    )
    workers: int = Field(2, ge=0, description="DataLoader worker processes")
    prefetch: int = Field(4, ge=1, description="batches prefetched per worker")
    cache_mb: float = Field(2048, ge=0, description="per-worker cache of preprocessed pairs")
    precision: Precision = Field("auto", description="auto: bf16 where the device computes it natively, else fp32")
    compile: bool = Field(False, description="torch.compile the model (see benchmarks/run.py training speed --compile before turning on)")
    device: str = "auto"
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: all cores)")

    @model_validator(mode="after")
    def _augmentation_fits_patch(self) -> TrainConfig:
        check_augmentation(self.augment, self.patch_shape, self.voxel_size)
        return self


class StructureTarget(BaseModel):
    """One structure of a multi-structure run: its name, viewer colour and target channel."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    structure: str
    color: str = "FFFFFF"
    target_channel: str | int | None = Field(None, description="default: the channel named like the structure")
    model: UNetConfig | None = None
    learning_rate: float | None = Field(None, gt=0)


# Settings that may change on --resume without changing what the run computes.
RESUMABLE_CHANGES = {"iterations", "plateau", "checkpoint_every", "workers", "prefetch", "cache_mb", "threads", "device", "output"}
# Settings the structures of one run may set each for itself; every other one is shared, because
# the structures share the patches (manifest, split, seed, patch, batch) and the loop (iterations, device).
PER_STRUCTURE = {"output", "structure", "target_channel", "color", "model", "learning_rate", "betas", "checkpoint_every", "validate_every", "input_modality"}


def load_train_configs(path: str | Path, overrides: Mapping[str, Any] | None = None, structures: Sequence[str] | None = None) -> list[TrainConfig]:
    """The runs a training config file asks for: one, or with a ``structures:`` list (or ``structures``
    given here) one per structure, each in ``<output>/<structure>``."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    listed = raw.get("structures")
    if listed is None and not structures:
        return [build(TrainConfig, {**raw, **{k: v for k, v in (overrides or {}).items() if v is not None}}, f"config {path}")]
    if structures:
        listed = [{"structure": s} for s in structures]
    if not isinstance(listed, list) or not listed:
        raise InputError(f"config {path}: 'structures' must be a non-empty list of {{structure, color, target_channel}}")
    base = {k: v for k, v in raw.items() if k != "structures"}
    base.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if "output" not in base:
        raise InputError(f"config {path}: missing required field 'output' (the folder that gets one run per structure)")
    configs = []
    for i, item in enumerate(listed):
        target = build(StructureTarget, item if isinstance(item, dict) else {"structure": item}, f"config {path}, structures entry {i + 1}")
        settings = {**base, "structure": target.structure, "color": target.color, "output": str(Path(base["output"]) / target.structure)}
        settings["target_channel"] = target.target_channel if target.target_channel is not None else target.structure
        settings.update({k: v for k, v in (("model", target.model), ("learning_rate", target.learning_rate)) if v is not None})
        configs.append(build(TrainConfig, settings, f"config {path}, structure {target.structure!r}"))
    names = [c.structure for c in configs]
    if len(set(names)) != len(names):
        raise InputError(f"config {path}: structures listed twice: {sorted({n for n in names if names.count(n) > 1})}")
    return configs


def _set_worker_threads(_: int) -> None:
    torch.set_num_threads(1)  # loader workers preprocess; the main process owns the cores


def _check_resume(run: Path, config: TrainConfig) -> None:
    """Refuse to continue a run with settings that change what it computes (any but ``RESUMABLE_CHANGES``)."""
    settings = (load_yaml_config(TrainConfig, run / "config.yaml"), config)
    recorded, now = ({k: v for k, v in c.model_dump(mode="json").items() if k not in RESUMABLE_CHANGES} for c in settings)
    diffs = differences(recorded, now)
    if diffs:
        raise InputError(f"{run}: cannot resume with different settings ({'; '.join(diffs)}); use the recorded ones or a new output")


def _with_target(pair: Pair, config: TrainConfig) -> Pair:
    return pair if config.target_channel is None else pair.model_copy(update={"target_channel": config.target_channel})


def open_run(config: TrainConfig, resume: bool) -> Path:
    """Create (or reopen) the run directory and record its config there first, atomically: a run killed
    at any later moment, before its first checkpoint too, is one ``--resume`` continues (from iteration 0)."""
    run = Path(config.output)
    if resume:
        if not (run / "config.yaml").exists():
            raise InputError(f"{run}: not a training run to resume (no config.yaml)")
        _check_resume(run, config)
    elif run.exists() and any(run.iterdir()):
        raise InputError(f"{run} already exists and is not empty; choose a new output or pass --resume")
    if config.target_channel is None and not (run / "split.json").exists():
        untargeted = [i + 1 for i, e in enumerate(read_manifest(config.manifest)) if e.target_channel is None]
        if untargeted:
            raise InputError(
                f"manifest {config.manifest}: entry {untargeted[0]} (and {len(untargeted) - 1} more) names no target_channel; "
                f"name it there or as target_channel in the config for structure {config.structure!r}"
            )
    run.mkdir(parents=True, exist_ok=True)
    write_bytes(run / "config.yaml", yaml.safe_dump(json.loads(config.model_dump_json()), sort_keys=False).encode())
    return run


SPLITS = ("train", "validation", "test")


def read_split(run: Path) -> dict[str, list[Pair]]:
    """A run's recorded split, ``{"train": [...], "validation": [...], "test": [...]}`` (validation empty
    for runs without one, and for runs recorded before validation splits existed)."""
    saved = json.loads((run / "split.json").read_text())
    return {name: [Pair(**p) for p in saved.get(name, [])] for name in SPLITS}


def prepare_run(run: Path, config: TrainConfig) -> tuple[Path, dict[str, list[PairSpec]]]:
    """Fix the split and the per-frame statistics of an opened run (the slow part: every image is read);
    returns the run and each split's pairs, ready to read."""
    split_file = run / "split.json"
    if split_file.exists():
        split = read_split(run)
    else:
        entries = [convert_if_tiff(e, run) for e in read_manifest(config.manifest)]
        pairs = expand_pairs(entries)
        train, test = split_pairs(pairs, config.n_train, config.split_seed)
        split = {name: [_with_target(p, config) for p in chosen] for name, chosen in zip(SPLITS, (train, validation_pairs(pairs), test), strict=True)}
        write_bytes(split_file, json.dumps({name: [p.model_dump() for p in split[name]] for name in SPLITS}, indent=1).encode())
    if config.plateau is not None and not split["validation"]:
        raise InputError(
            f"{run}: plateau: stops on the validation loss, and manifest {config.manifest} marks no pair 'split: validation' "
            "(the test split must not decide when training ends); mark one, or train a fixed number of iterations"
        )
    if config.learning_rate_decay is not None and not split["validation"]:
        raise InputError(
            f"{run}: learning_rate_decay: lowers the rate on the validation loss, and manifest {config.manifest} marks no pair "
            "'split: validation' (the test split must not shape training); mark one, or train at a constant rate"
        )
    stats = load_stats(run / "stats.json")
    specs = {name: [describe_pair(p, stats) for p in tqdm(split[name], desc=f"image statistics ({name})", leave=False, disable=not sys.stderr.isatty())]
             for name in SPLITS}
    save_stats([s for name in SPLITS for s in specs[name]], run / "stats.json")
    return run, specs


def model_card(
    config: TrainConfig, iterations: int, input_channel: str | int, metrics: dict[str, float] | None = None, precision: str | None = None,
    decays: Sequence[tuple[int, float]] = (),
) -> ModelCard:
    from chunked_fnet import __version__

    return ModelCard(
        structure=config.structure,
        architecture=config.model,
        voxel_size=config.voxel_size,
        input={"modality": config.input_modality, "channel": input_channel},
        target_channel=config.target_channel if config.target_channel is not None else config.structure,
        normalization={"method": "zscore", "per": "image"},
        color=config.color,
        training={
            "dataset": str(config.manifest),
            "iterations": iterations,
            "seed": config.seed,
            "batch_size": config.batch_size,
            "patch_shape": list(config.patch_shape),
            "learning_rate": config.learning_rate,
            "learning_rate_decays": [(i, r) for i, r in decays if i < iterations],  # a decay at `iterations` acts after it
            "loss": "mse",
            "precision": precision,
            "versions": {"chunked_fnet": __version__, "torch": torch.__version__, "numpy": np.__version__},
        },
        metrics=metrics or {},
    )


def _validation_loss(step: TrainStep, batch: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model = step.model
    model.eval()
    total, count = 0.0, 0
    with torch.inference_mode(), torch.autocast(step.device.type, dtype=step.autocast, enabled=step.autocast is not None):
        for x, y in batch:
            pred = model(step.to_device(x))
            total += float(torch.nn.functional.mse_loss(pred.float(), y.to(step.device), reduction="sum"))
            count += y.numel()
    model.train()
    return total / max(count, 1)


def _plateau_stop(run: Path, config: TrainConfig, validations: Sequence[tuple[int, float]]) -> int | None:
    """Where ``config.plateau`` stops this run (recorded in the run's own ``plateau.json``), or None."""
    at = config.plateau.stop_at(validations) if config.plateau is not None else None
    if at is not None:
        record = {"stopped_at": at, "rule": config.plateau.model_dump(), "best_validation_loss": min(v for _, v in validations),
                  "best_at": min(validations, key=lambda iv: iv[1])[0], "validations": len(validations)}
        write_bytes(run / "plateau.json", json.dumps(record, indent=1).encode())
    elif (run / "plateau.json").exists():  # resumed with a rule that has not stopped it (yet): the old record is not true now
        (run / "plateau.json").unlink()
    return at


def _apply_learning_rate(run: Path, config: TrainConfig, step: TrainStep, validations: Sequence[tuple[int, float]]) -> None:
    """Set the optimizer's rate to what ``config.learning_rate_decay`` makes of these validations (recorded in the
    run's ``learning_rate.json``); without a rule the rate stays the config's."""
    rule = config.learning_rate_decay
    if rule is None:
        return
    changes = _decays(config, validations)
    rate = changes[-1][1] if changes else config.learning_rate
    for group in step.optimizer.param_groups:
        group["lr"] = rate
    record = {"initial": config.learning_rate, "now": rate, "decays": [{"iteration": i, "learning_rate": r} for i, r in changes],
              "rule": rule.model_dump(), "validations": len(validations)}
    write_bytes(run / "learning_rate.json", json.dumps(record, indent=1).encode())


def _decays(config: TrainConfig, validations: Sequence[tuple[int, float]]) -> list[tuple[int, float]]:
    """The decays ``config``'s rule makes of these validations (none without a rule): derived, never read back."""
    rule = config.learning_rate_decay
    return rule.decays(config.learning_rate, validations) if rule is not None else []


def learning_rate_decays(run: Path) -> list[tuple[int, float]]:
    """Where a run's ``learning_rate_decay`` rule lowered the rate, ``[(iteration, new rate), ...]`` (empty without one)."""
    path = Path(run) / "learning_rate.json"
    if not path.exists():
        return []
    return [(int(d["iteration"]), float(d["learning_rate"])) for d in json.loads(path.read_text())["decays"]]


BEST = Path("checkpoints") / "best"  # the lowest validation loss's model, where a plateau rule keeps the best


def _keeps_best(config: TrainConfig) -> bool:
    return config.plateau is not None and config.plateau.keep == "best"


def _best_model(run: Path, config: TrainConfig, validations: Sequence[tuple[int, float]]) -> tuple[torch.nn.Module, int] | None:
    """The model of the run's lowest validation loss and its iteration, or None where there is no validation yet.

    The first of equal losses is the best, as in the loop that saved it; a ``checkpoints/best`` of another
    iteration (a run begun with ``keep: last`` and resumed with ``keep: best``) keeps the last model, said so.
    """
    from chunked_fnet.model import load_checkpoint

    if not validations:
        return None
    best_at = min(validations, key=lambda iv: iv[1])[0]
    saved = run / BEST
    if saved.exists():
        model, card = load_checkpoint(saved)
        if card.training.iterations == best_at:
            return model, best_at
    print(f"{run}: the lowest validation loss was at iteration {best_at}, and {saved} does not hold that model "
          "(was the run begun with keep: last?); the last model is kept", file=sys.stderr)
    return None


def validation_losses(csv_path: Path) -> list[tuple[int, float]]:
    """The ``(iteration, validation loss)`` points of a run's ``losses.csv``, the curve a plateau rule judges."""
    with csv_path.open() as f:
        return [(int(r["iteration"]), float(r["val_loss"])) for r in csv.DictReader(f) if r["val_loss"]]


def _read_losses(path: Path, upto: int) -> list[list[str]]:
    if not path.exists():
        return []
    with path.open() as f:
        rows = list(csv.reader(f))[1:]
    return [r for r in rows if int(r[0]) <= upto]


def _check_shared(configs: Sequence[TrainConfig]) -> None:
    first = configs[0]
    for c in configs[1:]:
        diffs = [k for k in TrainConfig.model_fields if k not in PER_STRUCTURE and getattr(c, k) != getattr(first, k)]
        if diffs:
            raise InputError(
                f"structures {first.structure!r} and {c.structure!r} differ in {diffs}; structures trained in one run share "
                "the patches and the loop, so those settings must be equal (train them in separate runs otherwise)"
            )
    outputs = [Path(c.output).resolve() for c in configs]
    if len(set(outputs)) != len(outputs):
        raise InputError(f"structures of one run need distinct output folders, got {[c.output for c in configs]}")


def _run_precision(run: Path, config: TrainConfig, device: torch.device, resume: bool) -> str:
    """The precision the run computes in: on resume the recorded one, so a resumed run continues as it began."""
    record = run / "training.json"
    if resume and record.exists():
        return str(json.loads(record.read_text())["precision"])
    return training_precision(config.precision, device)


class _Timer:
    """Wall time per iteration and the part of it spent waiting for the loader: is data the bottleneck?"""

    def __init__(self) -> None:
        self.steps: list[float] = []
        self.wait = 0.0
        self.mark = time.perf_counter()

    def loaded(self) -> None:
        self.wait += time.perf_counter() - self.mark

    def stepped(self) -> None:
        now = time.perf_counter()
        self.steps.append(now - self.mark)
        self.mark = now

    def summary(self) -> dict[str, float | int]:
        if not self.steps:
            return {"iterations": 0}
        warm = self.steps[1:] or self.steps  # the first iteration builds kernels and fills the loader
        return {
            "iterations": len(self.steps),
            "seconds": round(sum(self.steps), 3),
            "first_iteration_s": round(self.steps[0], 4),
            "median_iteration_s": round(statistics.median(warm), 4),
            "iterations_per_s": round(1 / statistics.median(warm), 4),
            "data_wait_fraction": round(self.wait / sum(self.steps), 4),
        }


def train(config: TrainConfig, *, resume: bool = False, progress: bool = True) -> Path:
    """Train a model; returns the path of the final checkpoint (``<run>/<structure>.ckpt``)."""
    return train_many([config], resume=resume, progress=progress)[0]


def train_many(configs: Sequence[TrainConfig], *, resume: bool = False, progress: bool = True) -> list[Path]:
    """Train one model per config in one loop over one stream of patches (see the module doc);
    returns each structure's final checkpoint."""
    if not configs:
        raise InputError("no structures to train")
    _check_shared(configs)
    first = configs[0]
    opened = [open_run(c, resume) for c in configs]  # every structure's config recorded before anything slow
    prepared = [prepare_run(run, c) for run, c in zip(opened, configs, strict=True)]
    runs = [run for run, _ in prepared]
    if any([s.name for s in p[1][name]] != [s.name for s in prepared[0][1][name]] for p in prepared for name in SPLITS):
        raise InputError(f"the runs {[str(r) for r in runs]} were split differently; they cannot train together")
    input_channel = read_manifest(first.manifest)[0].input_channel
    device = resolve_device(first.device)
    precisions = {_run_precision(run, c, device, resume) for run, c in zip(runs, configs, strict=True)}
    if len(precisions) > 1:
        raise InputError(f"the runs {[str(r) for r in runs]} were trained in different precisions {sorted(precisions)}; resume them separately")
    precision = precisions.pop()
    reuse_freed_memory()  # every step allocates the same large tensors: keep them rather than fault in new pages
    if first.threads:
        torch.set_num_threads(first.threads)

    steps, starts = [], []
    for run, c in zip(runs, configs, strict=True):
        torch.manual_seed(c.seed)  # each structure starts from the weights it would have alone
        step = TrainStep(FnetUNet(c.model), device, precision, learning_rate=c.learning_rate, betas=c.betas, compile=c.compile)
        starts.append(load_training_state(run, step.model, step.optimizer) if resume else 0)
        step.match_layouts()
        steps.append(step)
        write_bytes(run / "training.json", json.dumps({**step.describe(), "structures_in_run": [x.structure for x in configs]}, indent=1).encode())
    start = min(starts)
    for run, c, s in zip(runs, configs, starts, strict=True):
        if s >= c.iterations:
            print(f"{run}: already trained {s} iterations (asked for {c.iterations})", file=sys.stderr)

    cache_bytes = int(first.cache_mb * 2**20)
    sources = list(zip(*(specs["train"] for _, specs in prepared), strict=True))
    dataset = PatchDataset(sources, first.voxel_size, first.patch_shape, first.seed, first.iterations * first.batch_size, cache_bytes, first.augment)
    validation: list[tuple[torch.Tensor, torch.Tensor]] = []
    validation_split = "validation" if prepared[0][1]["validation"] else "test"  # pytorch_fnet's: the test split
    val_sources = list(zip(*(specs[validation_split] for _, specs in prepared), strict=True))
    if val_sources and first.validation_patches:
        val_set = PatchDataset(val_sources, first.voxel_size, first.patch_shape, first.seed + 1, first.validation_patches, cache_bytes)
        items = [val_set[i] for i in range(len(val_set))]
        validation = [
            (torch.stack([x for x, _ in items[i : i + first.batch_size]]), torch.stack([y for _, y in items[i : i + first.batch_size]]))
            for i in range(0, len(items), first.batch_size)
        ]
    batches = [list(range(i * first.batch_size, (i + 1) * first.batch_size)) for i in range(start, first.iterations)]
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=first.workers,
        prefetch_factor=first.prefetch if first.workers else None,
        worker_init_fn=_set_worker_threads if first.workers else None,
        pin_memory=device.type == "cuda",
    )

    files, histories = [], []
    for run, s in zip(runs, starts, strict=True):
        rows = _read_losses(run / "losses.csv", s)  # a crash after the last checkpoint left rows to drop
        with (run / "losses.csv").open("w", newline="") as f:
            csv.writer(f, lineterminator="\n").writerows([["iteration", "train_loss", "val_loss"], *rows])
        files.append((run / "losses.csv").open("a", newline=""))
        histories.append([(int(r[0]), float(r[2])) for r in rows if r[2]])
    stopped = [_plateau_stop(run, c, h) for run, c, h in zip(runs, configs, histories, strict=True)]
    for run, c, step, h in zip(runs, configs, steps, histories, strict=True):
        _apply_learning_rate(run, c, step, h)  # a resumed run continues at the rate its validations so far call for
    for run, at in zip(runs, stopped, strict=True):
        if at is not None:
            print(f"{run}: its validation loss plateaued at iteration {at}; it trains no further", file=sys.stderr)
    writers = [csv.writer(f, lineterminator="\n") for f in files]
    label = first.structure if len(configs) == 1 else f"{len(configs)} structures"
    bar = tqdm(total=first.iterations, initial=start, desc=f"train {label}", unit="it", disable=not progress)
    timer = _Timer()
    try:
        for iteration, (x, ys) in enumerate(loader, start=start + 1):
            if all(at is not None for at in stopped):
                break
            timer.loaded()
            shown = {}
            for k, (run, c, step) in enumerate(zip(runs, configs, steps, strict=True)):
                if iteration <= starts[k] or stopped[k] is not None:
                    continue  # this structure's checkpoint is ahead (a crash between two structures' saves), or it has stopped
                value = float(step(x, ys[:, k : k + 1]))
                val = ""
                if validation and iteration % c.validate_every == 0:  # a fixed schedule: resume-invariant
                    loss = _validation_loss(step, [(vx, vy[:, k : k + 1]) for vx, vy in validation])
                    val = f"{loss:.6g}"
                    if _keeps_best(c) and all(float(val) < v for _, v in histories[k]):  # strictly: the first of equals stays
                        (run / BEST).parent.mkdir(exist_ok=True)
                        save_checkpoint(run / BEST, step.model, model_card(c, iteration, input_channel, precision=precision, decays=_decays(c, histories[k])),
                                        overwrite=True)
                    histories[k].append((iteration, float(val)))
                writers[k].writerow([iteration, f"{value:.6g}", val])
                files[k].flush()
                shown[c.structure if len(configs) > 1 else "loss"] = f"{value:.4f}"
                if val:
                    shown["val" if len(configs) == 1 else f"val_{c.structure}"] = val
                    stopped[k] = _plateau_stop(run, c, histories[k])
                    _apply_learning_rate(run, c, step, histories[k])
                if iteration % c.checkpoint_every == 0 or iteration == c.iterations or stopped[k] is not None:
                    card = model_card(c, iteration, input_channel, precision=precision, decays=_decays(c, histories[k]))
                    save_training_state(run, step.model, step.optimizer, iteration, card)
            timer.stepped()
            bar.update(1)
            bar.set_postfix(**shown)
    finally:
        bar.close()
        for f in files:
            f.close()
    summary = {**timer.summary(), "structures_in_run": len(configs), "precision": precision}
    finals = []
    for run, c, step, s, at, history in zip(runs, configs, steps, starts, stopped, histories, strict=True):
        if timer.steps or not (run / "throughput.json").exists():  # a resumed run that had stopped keeps its figures
            (run / "throughput.json").write_text(json.dumps({**summary, **step.describe()}, indent=1))
        final = run / f"{c.structure}.ckpt"
        model = step.model.cpu().to(memory_format=torch.contiguous_format)
        trained = at if at is not None else max(s, c.iterations)
        kept = _best_model(run, c, history) if _keeps_best(c) else None
        if kept is not None:
            model, trained = kept
        decays = _decays(c, history)
        save_checkpoint(final, model, model_card(c, trained, input_channel, precision=precision, decays=decays), overwrite=True)
        plot_losses(run / "losses.csv", run / "losses.png", title=f"{c.structure}: training loss", validation_split=validation_split, stopped_at=at,
                    decays=decays)
        finals.append(final)
    return finals


def plot_losses(
    csv_path: Path, png_path: Path, title: str = "loss", validation_split: str = "test", stopped_at: int | None = None,
    decays: Sequence[tuple[int, float]] = (),
) -> None:
    """Loss curves (training loss as a running mean, validation points, where a plateau rule stopped, where the
    learning rate was lowered) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with csv_path.open() as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return
    it = np.array([int(r["iteration"]) for r in rows])
    tr = np.array([float(r["train_loss"]) for r in rows])
    val = validation_losses(csv_path)
    span = max(1, len(tr) // 50)
    smooth = np.convolve(tr, np.ones(span) / span, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(it, tr, color="0.8", lw=0.6, label="train (per batch)")
    ax.plot(it[span - 1 :], smooth, color="C0", lw=1.5, label=f"train (mean of {span})")
    if val:
        ax.plot(*zip(*val), "o-", color="C3", ms=3, lw=1, label=f"validation ({validation_split} split patches)")
    if stopped_at is not None:
        ax.axvline(stopped_at, color="0.3", ls="--", lw=0.8, label=f"plateau: stopped at {stopped_at}")
    for n, (at, rate) in enumerate(decays):
        ax.axvline(at, color="C2", ls=":", lw=0.9, label="learning rate lowered" if n == 0 else None)
        ax.annotate(f"{rate:.0e}", (at, 1), xycoords=("data", "axes fraction"), xytext=(2, -10), textcoords="offset points", fontsize=6, color="C2")
    ax.set_xlabel("iteration")
    ax.set_ylabel("MSE (z-scored units)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)
