"""What the training suite's measurements share: the work folder (synthetic data and training runs,
kept between calls so that a longer curve resumes a shorter one), ``--tiny`` (smoke-test sizes) and
``--no-save``, and the bf16 curve's runs, which ``training bf16-curve`` trains and ``training heldout``
scores again."""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path
from typing import Any

SUITE = "training"
#: Where data and runs are kept between calls (the name train_speed.py used, so earlier runs still resume).
WORKDIR = Path(tempfile.gettempdir()) / "chunked_fnet_train_speed"
#: z y x of the synthetic images of ``--tiny`` runs (16 x 36 x 36 on the 0.29 µm model grid).
TINY_SHAPE = (16, 96, 96)


def add_args(parser: argparse.ArgumentParser) -> None:
    """``--workdir``, ``--tiny`` and ``--no-save``, as every training measurement takes them."""
    parser.add_argument("--workdir", default=str(WORKDIR), help="where the synthetic data and the training runs are kept between calls")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke-test sizes (a depth-2, width-4 U-Net, 16x32x32 patches, small images, few iterations): "
                             "checks that the measurement runs; its figures mean nothing")
    parser.add_argument("--no-save", "--no-append", dest="no_save", action="store_true",
                        help="print only; store no result (and leave BENCHMARKS.md as it is)")


def workdir(args: argparse.Namespace) -> Path:
    """``--workdir``, or its ``tiny`` subfolder for ``--tiny`` runs (kept apart from the real ones)."""
    return Path(args.workdir) / "tiny" if args.tiny else Path(args.workdir)


def curve_run(folder: Path, precision: str, seed: int, validation_patches: int | None = None) -> Path:
    """The run folder of the bf16 curve's ``precision`` run from ``seed`` under ``folder`` (``workdir``)."""
    name = f"run_{precision}" + (f"_seed{seed}" if seed else "") + (f"_val{validation_patches}" if validation_patches else "")
    return folder / "curve" / name


def val_curve(run: Path) -> list[tuple[int, float]]:
    """The ``(iteration, validation loss)`` points of ``run`` (the trainer's own reader of ``losses.csv``)."""
    from chunked_fnet.train.trainer import validation_losses

    return validation_losses(run / "losses.csv")


def final_val(run: Path, last: int = 1) -> float:
    """The mean of the run's last ``last`` validation losses (1: the final one)."""
    values = [v for _, v in val_curve(run)]
    if not values:
        raise SystemExit(f"{run}: no validation loss in losses.csv (fewer iterations than validate_every?)")
    return statistics.fmean(values[-last:])


def model_label(config: dict[str, Any]) -> str:
    """``"depth 3, width 16, batch 8, 16x64x64"``: a run's model and batch, as the tables name them."""
    model = config.get("model") or {}
    return (f"depth {model.get('depth')}, width {model.get('width')}, batch {config['batch_size']}, "
            f"{'x'.join(map(str, config['patch_shape']))}")
