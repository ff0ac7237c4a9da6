"""Evaluate trained runs on their train and test splits: the paper's normalised error and Pearson r,
SSIM, PSNR and NRMSE (scikit-image) and the Fourier shell correlation resolution (µm), per image.

Whole images are predicted through the same tiled, blended predictor that chunked inference uses
(never cropped to a multiple of 16), on the model's voxel grid, against the z-scored target
(:func:`chunked_fnet.evaluate.metrics.image_metrics` says how each metric is taken).
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
from chunked_fnet.evaluate.metrics import METRICS, image_metrics
from chunked_fnet.predict.options import PredictOptions
from chunked_fnet.predict.policy import Hardware, ModelConstraints, resolve_policy
from chunked_fnet.sliding_window import predict_volume
from chunked_fnet.model import load_checkpoint
from chunked_fnet.train.data import PairReader, describe_pair, load_stats
from chunked_fnet.train.manifest import Pair

FIELDS = ["structure", "split", "image", *METRICS]


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
    jobs = [(name, Pair(**p)) for name in ("train", "validation", "test") for p in split.get(name, [])]
    for name, pair in tqdm(jobs, desc=f"evaluate {card.structure}", disable=not progress, leave=False):
        spec = describe_pair(pair, stats)
        x, y = PairReader(spec, card.voxel_size).whole()
        policy = resolve_policy(options, x.shape, constraints, hardware)
        pred = predict_volume(model.to(hardware.device), x[None], device=hardware.device, policy=policy)[0]
        rows.append({"structure": card.structure, "split": name, "image": pair.name, **image_metrics(y, pred, card.voxel_size)})
    return rows


def summarize(rows: Sequence[dict[str, object]]) -> dict[tuple[str, str], dict[str, float]]:
    """Mean and standard deviation of each metric per (structure, split), over the images where it is
    finite (a perfect image's PSNR is inf, a blank one's Pearson r NaN); where none is, the mean is the
    images' common infinity (e.g. FSC resolution inf: nothing resolved in any image), else NaN."""
    groups: dict[tuple[str, str], list[dict[str, object]]] = defaultdict(list)
    for row in rows:
        groups[(str(row["structure"]), str(row["split"]))].append(row)
    out = {}
    for key, items in groups.items():
        out[key] = {"n": float(len(items))}
        for metric in METRICS:
            every = np.array([float(r[metric]) for r in items if metric in r])  # type: ignore[arg-type]
            values = every[np.isfinite(every)]
            infinite = set(every[np.isinf(every)].tolist())
            common = infinite.pop() if len(infinite) == 1 and not np.isnan(every).any() else float("nan")
            out[key][metric] = float(values.mean()) if values.size else common
            out[key][f"{metric}_std"] = float(values.std()) if values.size else float("nan")
    return out


def write_report(rows: Sequence[dict[str, object]], out: str | Path) -> tuple[Path, Path]:
    """``metrics.csv`` (one row per image) and ``metrics.png`` (Figure 4b style, every metric) in ``out``."""
    from chunked_fnet.viz.figures import metrics_figure, save_figure

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = out / "metrics.csv"
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    figure = save_figure(metrics_figure(rows), out / "metrics.png", overwrite=True)
    return table, figure
