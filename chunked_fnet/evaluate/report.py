"""Evaluate trained runs on their train and test splits: the paper's normalised error and Pearson r.

Whole images are predicted through the same tiled, blended predictor that chunked inference uses
(never cropped to a multiple of 16), on the model's voxel grid, against the z-scored target.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from chunked_fnet.errors import InputError
from chunked_fnet.evaluate.metrics import normalized_error, pearson_r
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.policy import Hardware, ModelConstraints, resolve_policy
from chunked_fnet.sliding_window import predict_volume
from chunked_fnet.model import load_checkpoint
from chunked_fnet.train.data import PairReader, describe_pair, load_stats
from chunked_fnet.train.manifest import Pair

FIELDS = ["structure", "split", "image", "normalized_error", "pearson_r"]


def evaluate_run(run: str | Path, *, options: PredictOptions | None = None, progress: bool = True) -> list[dict[str, object]]:
    """Metrics of one run's final model on every image of its train and test splits, each predicted
    whole with the run policy's window and precision for this process (``options``: the defaults, as
    ``chunked-fnet predict`` would choose them for the same model and frame)."""
    run = Path(run)
    if not (run / "config.yaml").exists() or not (run / "split.json").exists():
        raise InputError(f"{run}: not a training run (expected config.yaml and split.json in it)")
    config = yaml.safe_load((run / "config.yaml").read_text())
    ckpt = run / f"{config['structure']}.ckpt"
    model, card = load_checkpoint(ckpt)
    options = options or PredictOptions()
    hardware = Hardware.here(options.device)
    constraints = ModelConstraints(model.multiple, (model.multiple,) * 3, width=model.config.width)
    split = json.loads((run / "split.json").read_text())
    stats = load_stats(run / "stats.json")
    rows: list[dict[str, object]] = []
    jobs = [(name, Pair(**p)) for name in ("train", "test") for p in split[name]]
    for name, pair in tqdm(jobs, desc=f"evaluate {card.structure}", disable=not progress, leave=False):
        spec = describe_pair(pair, stats)
        x, y = PairReader(spec, card.voxel_size).whole()
        policy = resolve_policy(options, x.shape, constraints, hardware)
        pred = predict_volume(model.to(hardware.device), x[None], device=hardware.device, policy=policy)[0]
        rows.append(
            {
                "structure": card.structure,
                "split": name,
                "image": pair.name,
                "normalized_error": normalized_error(y, pred),
                "pearson_r": pearson_r(y, pred),
            }
        )
    return rows


def summarize(rows: Sequence[dict[str, object]]) -> dict[tuple[str, str], dict[str, float]]:
    """Mean and standard deviation of each metric per (structure, split)."""
    groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        groups[(str(row["structure"]), str(row["split"]))].append(row)
    out = {}
    for key, items in groups.items():
        out[key] = {"n": float(len(items))}
        for metric in ("normalized_error", "pearson_r"):
            values = np.array([float(r[metric]) for r in items])
            out[key][metric] = float(values.mean())
            out[key][f"{metric}_std"] = float(values.std())
    return out


def write_report(rows: Sequence[dict[str, object]], out: str | Path) -> tuple[Path, Path]:
    """``metrics.csv`` (one row per image) and ``metrics.png`` (Figure 4b style) in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "metrics.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    figure = out / "metrics.png"
    plot_metrics(rows, figure)
    return table, figure


def plot_metrics(rows: Sequence[dict[str, object]], path: Path) -> None:
    """Per-structure bars (mean over images) for train and test, with each image as a dot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    structures = sorted({str(r["structure"]) for r in rows})
    summary = summarize(rows)
    fig, axes = plt.subplots(1, 2, figsize=(3 + 1.2 * len(structures), 3.6), dpi=120)
    width = 0.38
    for ax, metric, label in zip(axes, ("normalized_error", "pearson_r"), ("normalised error (blank = 1)", "Pearson r"), strict=True):
        for k, (split, color) in enumerate((("train", "0.6"), ("test", "C0"))):
            xs = np.arange(len(structures)) + (k - 0.5) * width
            means = [summary.get((s, split), {}).get(metric, np.nan) for s in structures]
            errs = [summary.get((s, split), {}).get(f"{metric}_std", 0.0) for s in structures]
            ax.bar(xs, means, width, yerr=errs, color=color, label=split, capsize=2)
            for x, s in zip(xs, structures, strict=True):
                vals = [float(r[metric]) for r in rows if r["structure"] == s and r["split"] == split]
                ax.plot([x] * len(vals), vals, "k.", ms=3)
        ax.set_xticks(np.arange(len(structures)), structures, rotation=30, ha="right")
        ax.set_ylabel(label)
        ax.set_ylim(0, 1.05 if metric == "pearson_r" else max(1.05, ax.get_ylim()[1]))
    axes[0].axhline(1.0, color="k", lw=0.6, ls="--")
    axes[1].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
